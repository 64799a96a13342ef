"""The Kubernetes manifests under infra/k8s, checked without a cluster.

Every object validates against the OpenAPI schema of the newest Kubernetes release that
kubernetes-validate ships, in strict mode: an unknown or misspelt field is an error, as it
is for `kubectl apply --validate=strict`. The workers' Role stays namespaced and grants
exactly what prefect-kubernetes uses. No file under infra/ carries a credential.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from infra_files import INFRA, K8S, k8s_object, k8s_objects, namespace, yaml_documents
from kubernetes_validate import utils as kv

KUBERNETES_VERSION = kv.latest_version()
CLUSTER_SCOPED = {"Namespace", "PriorityClass", "StorageClass", "ClusterRole", "ClusterRoleBinding"}

OBJECTS = k8s_objects()


def _id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"


def test_manifests_hold_what_the_job_template_and_charts_refer_to() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in OBJECTS}
    assert {
        ("Namespace", "mloc"),
        ("ServiceAccount", "prefect-worker"),
        ("Role", "prefect-worker"),
        ("RoleBinding", "prefect-worker"),
        ("ServiceAccount", "mloc-job"),
        ("ServiceAccount", "mloc-orchestrator"),
        ("Role", "mloc-orchestrator"),
        ("RoleBinding", "mloc-orchestrator"),
        ("PersistentVolumeClaim", "mloc-hf-cache"),
    } <= kinds


@pytest.mark.parametrize("item", OBJECTS, ids=_id)
def test_manifest_validates_strictly(item: tuple[Path, dict[str, Any]]) -> None:
    _, doc = item
    try:
        kv.validate(doc, KUBERNETES_VERSION, strict=True)
    except kv.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(top level)"
        pytest.fail(f"not valid for Kubernetes {KUBERNETES_VERSION}: {where}: {exc.message}")


def test_strict_validation_rejects_a_misspelt_field() -> None:
    """The check above would prove nothing if the validator let unknown fields through."""
    claim = k8s_object("PersistentVolumeClaim", "mloc-hf-cache")
    spec = dict(claim["spec"])
    spec["accessMode"] = spec.pop("accessModes")
    with pytest.raises(kv.ValidationError, match="accessMode"):
        kv.validate({**claim, "spec": spec}, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("item", [o for o in OBJECTS if o[1]["kind"] not in CLUSTER_SCOPED], ids=_id)
def test_namespaced_objects_live_in_the_mloc_namespace(item: tuple[Path, dict[str, Any]]) -> None:
    assert item[1]["metadata"].get("namespace") == namespace()


def test_no_cluster_wide_rbac() -> None:
    assert not [doc["kind"] for _, doc in OBJECTS if doc["kind"] in {"ClusterRole", "ClusterRoleBinding"}]


# What prefect-kubernetes' worker and its observer call on the Kubernetes API (create, read,
# watch and delete Jobs; list, watch and read pods and a crashed pod's log), and nothing else.
WORKER_NEEDS = {
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
}


def _grants(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


def test_worker_role_grants_exactly_what_the_worker_uses() -> None:
    role = k8s_object("Role", "prefect-worker")
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
    assert _grants(role) == WORKER_NEEDS


def test_worker_role_is_bound_to_the_worker_account_only() -> None:
    binding = k8s_object("RoleBinding", "prefect-worker")
    account = k8s_object("ServiceAccount", "prefect-worker")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "prefect-worker"}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": namespace()}
    ]


def test_job_pods_get_no_kubernetes_api_access() -> None:
    job_account = k8s_object("ServiceAccount", "mloc-job")
    assert job_account.get("automountServiceAccountToken") is False
    for _, doc in OBJECTS:
        if doc["kind"] in {"RoleBinding", "ClusterRoleBinding"}:
            assert all(s.get("name") != "mloc-job" for s in doc["subjects"]), doc["metadata"]["name"]


def test_cache_claim_is_the_one_the_job_template_mounts_and_shared_across_nodes() -> None:
    from work_pools.job_template import DEFAULT_CACHE_CLAIM

    claim = k8s_object("PersistentVolumeClaim", DEFAULT_CACHE_CLAIM)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


# --- no credentials anywhere under infra/ -------------------------------------------------

# keys that hold a credential's value (compared lower-case, without '-' and '_')
SECRET_KEY = re.compile(
    r"(password|passwd|token|apikey|accesskey|accesskeyid|secretkey|secretaccesskey|privatekey"
    r"|clientsecret|authstring|connectionstring)$"
)
# credential-shaped literals, whatever key or file they are in
SECRET_LITERALS = {
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "Prefect API key": re.compile(r"\bpnu_[A-Za-z0-9]{20,}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}
URL_WITH_PASSWORD = re.compile(r"://[^\s:/@]+:(?P<password>[^\s@/]+)@")


def _placeholder(value: str) -> bool:
    """USER:PASSWORD, <password>, $DB_PASSWORD / ${DB_PASSWORD}: a stand-in, not a value."""
    return bool(re.fullmatch(r"[A-Z_]+|<[^>]+>|\$\{?[A-Za-z_]+\}?", value))


def secret_values(doc: Any, path: str = "") -> list[str]:
    """Where a YAML document holds a non-empty credential value."""
    found = []
    if isinstance(doc, dict):
        if doc.get("kind") == "Secret":
            for field in ("data", "stringData"):
                found += [f"{path}{field}.{k}" for k, v in (doc.get(field) or {}).items() if v not in ("", None)]
        for key, value in doc.items():
            normal = str(key).lower().replace("-", "").replace("_", "")
            literal = isinstance(value, str | int | float) and not isinstance(value, bool)
            if SECRET_KEY.search(normal) and literal and str(value) != "" and not _placeholder(str(value)):
                found.append(f"{path}{key}")
            found += secret_values(value, f"{path}{key}.")
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found += secret_values(value, f"{path}{i}.")
    return list(dict.fromkeys(found))  # a Secret's data key can match both rules


def secret_literals(text: str) -> list[str]:
    found = [name for name, pattern in SECRET_LITERALS.items() if pattern.search(text)]
    found += [
        f"password in URL ...{m.group(0)}"
        for m in URL_WITH_PASSWORD.finditer(text)
        if not _placeholder(m.group("password"))
    ]
    return found


def test_secret_scan_finds_credentials_and_leaves_references_alone() -> None:
    """The scans below would prove nothing if they could not tell a value from a reference."""
    assert secret_values({"postgresql": {"auth": {"password": "hunter2"}}}) == ["postgresql.auth.password"]
    assert secret_values({"env": [{"name": "X", "HF_TOKEN": "abc"}]}) == ["env.0.HF_TOKEN"]
    assert secret_values({"kind": "Secret", "stringData": {"HF_TOKEN": "abc", "AWS_ACCESS_KEY_ID": ""}}) == [
        "stringData.HF_TOKEN"
    ]
    references = {
        "automountServiceAccountToken": False,
        "secret": {"create": False, "name": "mloc-prefect-db"},
        "secretKeyRef": {"name": "mloc-credentials", "key": "HF_TOKEN"},
        "HF_TOKEN": "",
        "password": "<your password>",
    }
    assert secret_values(references) == []
    assert secret_literals("HF_TOKEN=hf_" + "a" * 34) == ["Hugging Face token"]
    assert secret_literals("postgresql+asyncpg://prefect:s3cret@db:5432/prefect")
    assert not secret_literals("postgresql+asyncpg://USER:PASSWORD@HOST:5432/DATABASE")
    assert not secret_literals("postgresql+asyncpg://prefect:${DB_PASSWORD}@db:5432/prefect")


INFRA_YAML = sorted(p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml"})
INFRA_FILES = sorted(p for p in INFRA.rglob("*") if p.is_file())


@pytest.mark.parametrize("path", INFRA_YAML, ids=lambda p: str(p.relative_to(INFRA)))
def test_no_yaml_under_infra_holds_a_credential_value(path: Path) -> None:
    for doc in yaml_documents(path):
        assert secret_values(doc) == [], f"{path.relative_to(INFRA)}: credential values; reference a Secret by name"


@pytest.mark.parametrize("path", INFRA_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_no_file_under_infra_holds_a_credential_literal(path: Path) -> None:
    assert secret_literals(path.read_text()) == []


def test_no_secret_manifest_is_shipped() -> None:
    """Real credentials are created with kubectl (infra/README.md), never applied from the repo."""
    assert not [doc["metadata"]["name"] for _, doc in OBJECTS if doc["kind"] == "Secret"]


def test_k8s_folder_holds_only_manifests() -> None:
    assert K8S.is_dir()
    assert all(p.suffix in {".yaml", ".yml"} for p in K8S.iterdir()), "kubectl apply -f infra/k8s/ reads every file"


# --- the REST facade ----------------------------------------------------------------------


def _facade_env() -> dict[str, Any]:
    [container] = k8s_object("Deployment", "mloc-api")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_facade_serves_mloc_api_on_its_service_port() -> None:
    deployment, service = k8s_object("Deployment", "mloc-api"), k8s_object("Service", "mloc-api")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"][:2] == ["mloc", "api"] and "0.0.0.0" in container["args"]
    from work_pools import cpu_pool

    assert container["image"] == cpu_pool().image  # the image MLOC is installed in, at its version
    port = container["args"][container["args"].index("--port") + 1]
    assert container["ports"] == [{"name": "http", "containerPort": int(port)}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    # it needs no Kubernetes API: its own account, no token
    assert pod["serviceAccountName"] == "mloc-api" and pod["automountServiceAccountToken"] is False
    assert k8s_object("ServiceAccount", "mloc-api")["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_facade_takes_its_token_and_the_database_from_secrets_by_name() -> None:
    import yaml

    from work_pools import base_job_template, pools

    env = _facade_env()
    server = yaml.safe_load((INFRA / "helm" / "prefect-server-values.yaml").read_text())
    assert env["MLOC_API_TOKEN"] == {"secretKeyRef": {"name": "mloc-api-token", "key": "token"}}
    # /stats reads the server's database, as a read-only role of its own: not the server's secret
    assert env["MLOC_USAGE_SOURCE"] == "database"
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == {
        "secretKeyRef": {"name": "mloc-usage-db", "key": "connection-string"}
    }
    assert server["secret"]["name"] != "mloc-usage-db"
    assert env["PREFECT_API_URL"].startswith("http://prefect-server.mloc.svc.cluster.local:4200/")
    runbook = (INFRA / "README.md").read_text()
    assert "create secret generic mloc-api-token" in runbook and "--from-literal=token=" not in runbook
    assert "create secret generic mloc-usage-db" in runbook
    assert "GRANT SELECT ON flow, flow_run TO mloc_usage" in runbook
    # ...and no flow-run pod can reach either database secret: they run users' code
    for pool in pools():
        for secret in (server["secret"]["name"], "mloc-usage-db"):
            assert secret not in str(base_job_template(pool)), pool.name


def test_orchestrator_role_is_bound_to_its_account_only_and_grants_no_wildcard() -> None:
    # what it grants is checked against the calls the flow pod makes, in tests/flows/test_trainjob_e2e.py
    role = k8s_object("Role", "mloc-orchestrator")
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
    assert _grants(role) == {
        ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "delete"},
        ("", "pods"): {"list"},
        ("", "pods/log"): {"get"},
    }
    binding = k8s_object("RoleBinding", "mloc-orchestrator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mloc-orchestrator", "namespace": namespace()}]
    assert k8s_object("ServiceAccount", "mloc-orchestrator")["automountServiceAccountToken"] is True
