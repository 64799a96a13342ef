"""Shipping an inference task: the rag quickstart deployed with `mloc deploy`, run by Prefect's
own `prefect deployment run`, by its schedule, and submitted with `POST /api/v1/tasks`.

Real subprocesses throughout: `prefect server start`, `mloc worker` on the local process pool,
`mloc deploy`, `prefect deployment run` and `mloc api`. One server and one worker serve the
module; the worker's queue runs one flow at a time, so a run that comes due while another is
running waits for it (two runs of one task never overlap, and the newer version is the later one).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.flows import prefect_server
from tests.flows.api_server import Api, get, post, serving
from tests.flows.test_deploy_e2e import api, cli, finished

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
RAG = CONFIGS / "quickstart" / "rag.yaml"
NAME = "quickstart-rag"
YAML = {"content-type": "application/yaml"}
# flows.pipeline.run_tags of the rag quickstart: what the usage report counts
RAG_TAGS = {
    "owner:quickstart",
    "project:mloc-quickstart",
    "task-type:rag_inference",
    "gpu:none",
    "gpu-count:0",
    "replicas:1",
}
RUN_TIMEOUT_S = 300  # a rag quickstart run takes well under a minute on a 2-core machine


def rag_text(destination: Path, *, name: str = NAME, schedule: dict[str, str] | None = None) -> str:
    """configs/quickstart/rag.yaml with its local paths absolute (not resolved: the embedding
    model is a link into the environment), uploading to ``destination``."""
    data = yaml.safe_load(RAG.read_text())
    data["metadata"]["name"] = name
    spec = data["spec"]
    sources = [spec["model"]["source"], spec["retrieval"]["documents"], spec["retrieval"]["embedding_model"]]
    for source in [*sources, spec["inputs"]["source"]]:
        assert source["type"] == "local", "rag.yaml changed"
        source["path"] = str(RAG.parent / source["path"])
    spec["output"]["destination"] = {"type": "local", "path": str(destination)}
    if schedule is not None:
        spec["schedule"] = schedule
    return yaml.safe_dump(data, sort_keys=False)


def rag_copy(folder: Path, **kwargs: Any) -> Path:
    path = folder / "rag.yaml"
    path.write_text(rag_text(folder / "published", **kwargs))
    return path


def deployment_runs(env: dict[str, str], deployment_id: str) -> list[Any]:
    return list(api(env, "POST", "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}}))


def artifacts_of(env: dict[str, str], run_id: str) -> dict[str, Any]:
    found = api(env, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    return {a["key"]: a for a in found if a["key"]}


def jsonl_rows(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, port_picker: Callable[[], int]) -> Iterator[dict[str, str]]:
    """A Prefect server with MLOC's pools, and `mloc worker` polling the local pool."""
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
        applied = cli(env, "mloc", "pools", "apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        # one flow at a time on the queue CPU tasks go to (made here, before the worker or a
        # deployment makes it): a run that comes due while another runs waits
        api(env, "POST", "/work_pools/local/queues", {"name": "cpu", "concurrency_limit": 1})
        with prefect_server.worker(env, tmp_path_factory.mktemp("worker")):
            yield env


@pytest.fixture(scope="module")
def mloc_api(
    server: dict[str, str], port_picker: Callable[[], int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """`mloc api` on the module's server; tasks may use the shipped quickstart assets and the tests' folders."""
    roots = f"{CONFIGS}:{tmp_path_factory.getbasetemp()}"
    home = tmp_path_factory.mktemp("mloc-api")
    with serving(server["PREFECT_API_URL"], port_picker(), home, MLOC_API_LOCAL_ROOTS=roots) as app:
        yield app


def test_the_rag_quickstart_runs_from_prefect_deployment_run(server: dict[str, str], tmp_path: Path) -> None:
    env = server
    task_file = rag_copy(tmp_path)
    deployed = cli(env, "mloc", "deploy", "--local", str(task_file))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert f"created   mloc/{NAME} -> work pool local (queue cpu)" in deployed.stdout
    deployment = api(env, "GET", f"/deployments/name/mloc/{NAME}")
    assert deployment["work_pool_name"] == "local" and deployment["work_queue_name"] == "cpu"
    assert {"owner:quickstart", "task-type:rag_inference", "gpu:none"} <= set(deployment["tags"])
    assert not deployment["schedules"]

    started = cli(env, "prefect", "deployment", "run", f"mloc/{NAME}")
    assert started.returncode == 0, started.stdout + started.stderr
    [run] = deployment_runs(env, deployment["id"])
    run = finished(env, run["id"], timeout_s=RUN_TIMEOUT_S)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["name"] == NAME
    assert set(run["tags"]) >= RAG_TAGS  # usage accounting: a CPU run, no GPU hours

    artifacts = artifacts_of(env, run["id"])
    assert {f"{NAME}-predictions", f"{NAME}-report", f"{NAME}-outputs"} <= set(artifacts), sorted(artifacts)
    table = artifacts[f"{NAME}-predictions"]["data"]
    assert len(json.loads(table) if isinstance(table, str) else table) == 10

    published = tmp_path / "published"
    predictions = jsonl_rows(published / "predictions.jsonl")
    assert len(predictions) == 10 and all(p["question"] for p in predictions)
    manifest = json.loads((published / "mloc-manifest.json").read_text())
    assert manifest["flow_run_id"] == run["id"] and manifest["task"]["task_type"] == "rag_inference"
    assert manifest["inference"]["questions"] == 10
    assert manifest["metrics"]["hit_at_k"] >= 0.9  # the task's own gate, met
    assert not (published / "latest.json").exists()  # no schedule: no versions


def next_minute(at_least_s: float = 20) -> datetime:
    """The start of the first UTC minute at least ``at_least_s`` from now."""
    soon = datetime.now(UTC) + timedelta(seconds=at_least_s + 60)
    return soon.replace(second=0, microsecond=0)


def test_a_scheduled_rerun_writes_a_new_version_and_moves_latest(server: dict[str, str], tmp_path: Path) -> None:
    """One `prefect deployment run`, then one run from the cron schedule: two version folders,
    and latest.json names the schedule's, the newer one."""
    env = server
    fire = next_minute()
    # a cron that comes due once in the test (and next a year later)
    cron = f"{fire.minute} {fire.hour} {fire.day} {fire.month} *"
    name = f"{NAME}-scheduled"
    task_file = rag_copy(tmp_path, name=name, schedule={"cron": cron, "timezone": "UTC"})
    deployed = cli(env, "mloc", "deploy", "--local", str(task_file))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert f"created   mloc/{name} -> work pool local (queue cpu)" in deployed.stdout
    deployment = api(env, "GET", f"/deployments/name/mloc/{name}")
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == [cron]

    started = cli(env, "prefect", "deployment", "run", f"mloc/{name}")
    assert started.returncode == 0, started.stdout + started.stderr
    [manual] = [r for r in deployment_runs(env, deployment["id"]) if not r["auto_scheduled"]]

    # the scheduler puts the cron's run on the server within seconds
    deadline = time.monotonic() + 30
    while True:
        due = [
            r
            for r in deployment_runs(env, deployment["id"])
            if r["auto_scheduled"] and datetime.fromisoformat(r["expected_start_time"]) == fire
        ]
        if due or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert len(due) == 1, f"no scheduled run for {fire.isoformat()}"

    manual = finished(env, manual["id"], timeout_s=RUN_TIMEOUT_S)
    assert manual["state"]["type"] == "COMPLETED", manual["state"]
    wait = (fire - datetime.now(UTC)).total_seconds()
    scheduled = finished(env, due[0]["id"], timeout_s=max(wait, 0) + RUN_TIMEOUT_S)
    assert scheduled["state"]["type"] == "COMPLETED", scheduled["state"]
    assert scheduled["expected_start_time"] == due[0]["expected_start_time"]  # the cron's run, as scheduled
    assert datetime.fromisoformat(scheduled["start_time"]) >= datetime.fromisoformat(manual["end_time"])
    assert set(scheduled["tags"]) >= RAG_TAGS

    published = tmp_path / "published"
    versions = sorted(p for p in (published / "versions").iterdir())
    assert len(versions) == 2, versions
    run_of = {}
    for folder in versions:
        assert len(jsonl_rows(folder / "predictions.jsonl")) == 10
        manifest = json.loads((folder / "mloc-manifest.json").read_text())
        assert manifest["version"] == folder.name
        run_of[manifest["flow_run_id"]] = folder
    assert set(run_of) == {manual["id"], scheduled["id"]}
    assert not (published / "predictions.jsonl").exists()  # every run under its own version only

    latest = json.loads((published / "latest.json").read_text())
    newer = run_of[scheduled["id"]]
    assert newer == versions[-1]  # version names sort by when the run finished
    assert latest["version"] == newer.name
    assert latest["uri"] == newer.as_uri() and latest["manifest"] == f"{newer.as_uri()}/mloc-manifest.json"


def test_a_rag_task_posted_to_the_api_runs_to_completion(mloc_api: Api, tmp_path: Path) -> None:
    """`POST /api/v1/tasks` with the rag quickstart's text: a run id, and the module's worker
    runs it; GET /api/v1/tasks/<id> then shows the outputs the upload wrote."""
    name = f"{NAME}-api"
    out = tmp_path / "out"
    text = rag_text(out, name=name)
    response = post(f"{mloc_api.url}/api/v1/tasks?local=true", content=text, headers=mloc_api.auth(**YAML))
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["name"], created["deployment"], created["deployment_action"]) == (name, f"mloc/{name}", "created")
    assert (created["work_pool"], created["work_queue"], created["state"]) == ("local", "cpu", "SCHEDULED")
    run_id = created["id"]

    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        status = get(f"{mloc_api.url}/api/v1/tasks/{run_id}", headers=mloc_api.auth())
        assert status.status_code == 200, status.text
        got = status.json()
        if got["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert got["state"]["type"] == "COMPLETED", got["state"]
    assert set(got["tags"]) >= RAG_TAGS
    assert {f"{name}-predictions", f"{name}-report", f"{name}-outputs"} <= {a["key"] for a in got["artifacts"]}

    outputs = got["outputs"]
    assert outputs["uri"] == out.as_uri() and outputs["version"] is None
    assert outputs["manifest"] == f"{out.as_uri()}/mloc-manifest.json"
    assert outputs["task_yaml_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert outputs["metrics"]["hit_at_k"] >= 0.9
    assert outputs["base_model"]["identifier"] == str(RAG.parent / "tiny-chat-model")
    assert outputs["dataset"]["identifier"] == str(RAG.parent / "support" / "questions.jsonl")
    manifest = json.loads((out / "mloc-manifest.json").read_text())
    assert manifest["flow_run_id"] == run_id and outputs["metrics"] == manifest["metrics"]
    assert len(jsonl_rows(out / "predictions.jsonl")) == 10
