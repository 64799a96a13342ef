"""The Helm values under infra/helm, read as Prefect's charts read them.

Nothing is rendered (no Helm, no cluster here): each file is parsed, each worker's two files
are merged the way `helm install --values common --values pool` merges them, and the result
is checked against the rest of infra/ and MLOC: one worker per Kubernetes work pool, each
pointed at the server release, running under infra/k8s's RBAC, on the Prefect release that
constraints.txt pins.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from infra_files import HELM, INFRA, ROOT, k8s_object, namespace

SERVER_VALUES = HELM / "prefect-server-values.yaml"
WORKER_COMMON = HELM / "prefect-worker-common.yaml"
WORKER_FILES = sorted(p for p in HELM.glob("prefect-worker-*.yaml") if p != WORKER_COMMON)


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name}: Helm values must be one YAML mapping"
    return data


def helm_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of --values files: mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def pool_of(path: Path) -> str:
    return path.stem.removeprefix("prefect-worker-")


def server_api_url() -> str:
    """The in-cluster API URL of the server release (the chart's Service is named after fullnameOverride)."""
    server = load(SERVER_VALUES)
    name = server.get("fullnameOverride", "prefect-server")
    return f"http://{name}.{namespace()}.svc.cluster.local:{server['service']['port']}/api"


def prefect_version() -> str:
    pins = re.findall(r"^prefect==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert len(pins) == 1, "constraints.txt should pin prefect once"
    return pins[0]


@pytest.mark.parametrize("path", sorted(HELM.glob("*.y*ml")), ids=lambda p: p.name)
def test_values_file_is_a_yaml_mapping(path: Path) -> None:
    load(path)


def test_one_worker_per_kubernetes_work_pool() -> None:
    from work_pools import pools

    # the process pool ('local') has no worker on the cluster: `mloc worker` serves it
    assert {pool_of(p) for p in WORKER_FILES} == {p.name for p in pools() if p.kind == "kubernetes"}


@pytest.mark.parametrize("path", WORKER_FILES, ids=pool_of)
def test_worker_polls_its_pool_on_the_in_cluster_server(path: Path) -> None:
    worker = helm_merge(load(WORKER_COMMON), load(path))
    assert worker["worker"]["config"]["workPool"] == pool_of(path)
    assert worker["worker"]["config"]["type"] == "kubernetes"
    assert worker["worker"]["apiConfig"] == "selfHostedServer"
    assert worker["worker"]["selfHostedServerApiConfig"]["apiUrl"] == server_api_url()
    # several workers share the namespace: each release needs its own object names
    assert worker["fullnameOverride"] == f"prefect-worker-{pool_of(path)}"


@pytest.mark.parametrize("path", WORKER_FILES, ids=pool_of)
def test_worker_leaves_the_job_template_to_the_pool(path: Path) -> None:
    """`mloc pools apply` writes the base job template; a chart-supplied one would overwrite it."""
    worker = helm_merge(load(WORKER_COMMON), load(path))
    assert "baseJobTemplate" not in worker["worker"]["config"]


@pytest.mark.parametrize("path", WORKER_FILES, ids=pool_of)
def test_worker_runs_under_the_rbac_of_infra_k8s(path: Path) -> None:
    worker = helm_merge(load(WORKER_COMMON), load(path))
    account = k8s_object("ServiceAccount", worker["serviceAccount"]["name"])
    assert worker["serviceAccount"]["create"] is False
    assert worker["role"]["create"] is False
    assert worker["rolebinding"]["create"] is False
    assert account.get("automountServiceAccountToken") is not False, "the worker needs its token"
    # a namespaced Role only works when the observer watches this namespace, not the cluster
    env = {e["name"]: e.get("value") for e in worker["worker"]["extraEnvVars"]}
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"] == namespace()


@pytest.mark.parametrize("path", WORKER_FILES, ids=pool_of)
def test_worker_pod_is_small_and_asks_for_no_gpu(path: Path) -> None:
    resources = helm_merge(load(WORKER_COMMON), load(path))["worker"]["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}


def test_prefect_images_are_the_release_constraints_txt_pins() -> None:
    """Workers and flow runs are the server's clients; Prefect supports no client newer than its server."""
    version = prefect_version()
    server_tag = load(SERVER_VALUES)["global"]["prefect"]["image"]["prefectTag"]
    worker_tag = load(WORKER_COMMON)["worker"]["image"]["prefectTag"]
    assert server_tag == f"{version}-python3.11"
    assert worker_tag == f"{version}-python3.11-kubernetes"  # the -kubernetes image has prefect-kubernetes


def test_server_reads_its_database_url_from_an_existing_secret() -> None:
    server = load(SERVER_VALUES)
    assert server["postgresql"]["enabled"] is False
    assert server["secret"]["create"] is False
    name = server["secret"]["name"]
    runbook = (INFRA / "README.md").read_text()
    assert f"create secret generic {name}" in runbook
    assert "--from-literal=connection-string=" in runbook
