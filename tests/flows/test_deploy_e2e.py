"""Shipping a task: `mloc deploy`, then Prefect's own CLI runs it on a real worker.

Real subprocesses throughout: `prefect server start`, `prefect worker start` on the
local process pool, `mloc deploy` and `prefect deployment run`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.flows import prefect_server
from tests.quickstart_task import QUICKSTART_TAGS

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
BIN = Path(sys.executable).parent


def quickstart_copy(folder: Path, schedule: bool) -> Path:
    text = (CONFIGS / "quickstart.yaml").read_text()
    text = text.replace("path: quickstart/", f"path: {CONFIGS}/quickstart/")
    text = text.replace("path: ../.mloc/outputs/quickstart-tiny-sft", f"path: {folder}/published")
    if schedule:
        text = text.replace(
            "  output:\n", '  schedule:\n    cron: "0 3 * * *"\n    timezone: Europe/Berlin\n  output:\n'
        )
    path = folder / "quickstart.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, port_picker: Callable[[], int]) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("prefect")
    port = port_picker()
    env = prefect_server.server_env(
        home,
        port,
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",  # scheduled runs appear in seconds, not a minute
        PREFECT_WORKER_QUERY_SECONDS="2",
        MLOC_HOME=str(home / "mloc"),
    )
    with prefect_server.running(env, port, home / "server.log"):
        yield env


def cli(env: dict[str, str], *args: str, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / args[0]), *args[1:]], env=env, capture_output=True, text=True, timeout=timeout)


def api(env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    response = httpx.request(method, env["PREFECT_API_URL"] + path, json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def finished(env: dict[str, str], run_id: str, timeout_s: float = 600) -> Any:
    """The flow run once it is in a final state (or as it is after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = api(env, "GET", f"/flow_runs/{run_id}")
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") or time.monotonic() > deadline:
            return run
        time.sleep(3)


def scheduled_runs(env: dict[str, str], deployment_id: str) -> list[str]:
    runs = api(
        env,
        "POST",
        "/flow_runs/filter",
        {
            "deployments": {"id": {"any_": [deployment_id]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        },
    )
    return sorted(r["id"] for r in runs if r["auto_scheduled"])


def test_deploy_needs_a_server_and_its_pools(server: dict[str, str], tmp_path: Path) -> None:
    """Without PREFECT_API_URL, or before `mloc pools apply`: a clear message, no traceback, nothing registered."""
    task_file = quickstart_copy(tmp_path, schedule=False)
    no_server = {k: v for k, v in server.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path / "p")}
    refused = cli(no_server, "mloc", "deploy", "--local", str(task_file))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "PREFECT_API_URL is not set" in refused.stderr and "nothing was changed" in refused.stderr
    assert "Traceback" not in refused.stderr and "temporary server" not in refused.stdout + refused.stderr
    pools_refused = cli(no_server, "mloc", "pools", "apply")
    assert pools_refused.returncode == 2 and "PREFECT_API_URL is not set" in pools_refused.stderr

    # this module's server has no pools until the next test applies them
    no_pool = cli(server, "mloc", "deploy", "--local", str(task_file))
    assert no_pool.returncode == 1, no_pool.stdout + no_pool.stderr
    assert "work pool(s) local do not exist on the Prefect server" in no_pool.stderr
    assert "run `mloc pools apply` first" in no_pool.stderr and "Traceback" not in no_pool.stderr
    assert not api(server, "POST", "/deployments/filter", {})


def test_deploy_then_prefect_runs_it_on_a_worker(server: dict[str, str], tmp_path: Path) -> None:
    env = server
    applied = cli(env, "mloc", "pools", "apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    task_file = quickstart_copy(tmp_path, schedule=True)

    deployed = cli(env, "mloc", "deploy", "--local", str(task_file))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "created   mloc/quickstart-tiny-sft -> work pool local (queue cpu)" in deployed.stdout
    assert "run it with: prefect deployment run 'mloc/quickstart-tiny-sft'" in deployed.stdout
    assert "a worker polls work pool 'local': start one with `mloc worker`" in deployed.stdout
    deployment = api(env, "GET", "/deployments/name/mloc/quickstart-tiny-sft")
    assert deployment["work_pool_name"] == "local" and deployment["work_queue_name"] == "cpu"
    assert {"owner:quickstart", "task-type:sft", "gpu:none"} <= set(deployment["tags"])
    assert deployment["parameters"]["task"]["metadata"]["name"] == "quickstart-tiny-sft"

    # the cron schedule shows up as scheduled runs
    deadline = time.monotonic() + 60
    while not (before := scheduled_runs(env, deployment["id"])) and time.monotonic() < deadline:
        time.sleep(2)
    assert before, "no scheduled runs appeared"

    # re-deploying the unchanged file changes nothing: the same scheduled runs, nothing dropped or added
    again = cli(env, "mloc", "deploy", "--local", str(task_file))
    assert again.returncode == 0 and "unchanged mloc/quickstart-tiny-sft" in again.stdout, again.stdout
    time.sleep(5)  # more than two scheduler loops
    assert scheduled_runs(env, deployment["id"]) == before

    # `mloc worker`, as the README says, with no `prefect` on PATH: it must use its own interpreter's
    with prefect_server.worker(env | {"PATH": "/usr/bin:/bin"}, tmp_path):
        started = cli(env, "prefect", "deployment", "run", "mloc/quickstart-tiny-sft")
        assert started.returncode == 0, started.stdout + started.stderr
        every = api(env, "POST", "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}})
        runs = [r for r in every if not r["auto_scheduled"]]
        assert len(runs) == 1
        run = finished(env, runs[0]["id"])
        assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["name"] == "quickstart-tiny-sft"
    assert set(run["tags"]) >= QUICKSTART_TAGS
    # a scheduled task writes a new version per run, and moves latest only after the upload
    latest = json.loads((tmp_path / "published" / "latest.json").read_text())
    version_dir = tmp_path / "published" / "versions" / latest["version"]
    assert (version_dir / "mloc-manifest.json").is_file()
    assert latest["manifest"] == f"{version_dir.as_uri()}/mloc-manifest.json"


def absolute_quickstart(task_type: str, folder: Path) -> Path:
    """configs/quickstart/<type>.yaml with its local paths made absolute, uploading under ``folder``."""
    source = CONFIGS / "quickstart" / f"{task_type}.yaml"
    data = yaml.safe_load(source.read_text())
    spec = data["spec"]
    for section in ("model", "dataset", "reward_model"):
        if section in spec and spec[section]["source"]["type"] == "local":
            spec[section]["source"]["path"] = str((source.parent / spec[section]["source"]["path"]).resolve())
    spec["output"]["destination"] = {"type": "local", "path": str(folder / task_type)}
    path = folder / f"{task_type}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_every_training_type_deploys_and_dpo_runs_from_prefect_deployment_run(
    server: dict[str, str], tmp_path: Path
) -> None:
    """`mloc deploy` takes the quickstart of every training type; the dpo one then runs as a
    user runs it, with Prefect's own `prefect deployment run`, on `mloc worker`."""
    env = server
    assert cli(env, "mloc", "pools", "apply").returncode == 0
    types = ["rm", "dpo", "grpo", "ppo"]
    files = [absolute_quickstart(t, tmp_path) for t in types]
    deployed = cli(env, "mloc", "deploy", "--local", *map(str, files))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    for task_type in types:
        assert f"mloc/quickstart-tiny-{task_type} -> work pool local (queue cpu)" in deployed.stdout
        deployment = api(env, "GET", f"/deployments/name/mloc/quickstart-tiny-{task_type}")
        assert f"task-type:{task_type}" in deployment["tags"]

    with prefect_server.worker(env, tmp_path):
        started = cli(env, "prefect", "deployment", "run", "mloc/quickstart-tiny-dpo")
        assert started.returncode == 0, started.stdout + started.stderr
        deployment = api(env, "GET", "/deployments/name/mloc/quickstart-tiny-dpo")
        [run] = api(env, "POST", "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}})
        run = finished(env, run["id"])
        assert run["state"]["type"] == "COMPLETED", run["state"]
    manifest = json.loads((tmp_path / "dpo" / "mloc-manifest.json").read_text())
    assert manifest["flow_run_id"] == run["id"] and manifest["training"]["trainer"] == "DPOTrainer"
    assert manifest["metrics"]["reward_accuracy"] > manifest["metrics"]["reward_accuracy_before"]
    assert (tmp_path / "dpo" / "adapter" / "adapter_model.safetensors").is_file()


def test_a_task_that_cannot_run_is_refused_and_nothing_is_registered(server: dict[str, str], tmp_path: Path) -> None:
    env = server
    text = (CONFIGS / "sft_mistral_7b.yaml").read_text()
    too_many = tmp_path / "too-many.yaml"
    too_many.write_text(
        text.replace("name: sft-mistral-7b-on-dolly", "name: too-many-gpus").replace("count: 4", "count: 16")
    )
    fine = tmp_path / "fine.yaml"
    fine.write_text(text.replace("name: sft-mistral-7b-on-dolly", "name: fine-but-not-alone"))
    # a task that validation refuses with its reason: an agent on local weights cannot call tools
    not_yet = tmp_path / "agent-local.yaml"
    not_yet.write_text(
        (CONFIGS / "rag_inference_service.yaml")
        .read_text()
        .replace("taskType: rag_inference", "taskType: agent\n  agent:\n    tools: [retriever]")
        .replace("    Context:\n    {context}\n\n", "")
    )
    refused = cli(env, "mloc", "deploy", str(fine), str(too_many), str(not_yet))
    assert refused.returncode == 1
    assert (
        "too-many.yaml" in refused.stderr
        and "asks for 16 GPUs per replica but a nvidia-a100-80gb node offers at most 8" in refused.stderr
        and "nothing was deployed" in refused.stderr
    )
    assert "spec.model.source.type: 'huggingface' loads the weights through transformers" in refused.stderr
    names = [d["name"] for d in api(env, "POST", "/deployments/filter", {})]
    assert not {"fine-but-not-alone", "too-many-gpus", "rag-support-answers"} & set(names)
