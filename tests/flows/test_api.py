"""The REST facade end to end: `mloc api` in a subprocess, spoken to over HTTP, on a real Prefect API.

A submission is done once its deployment exists and its run is SCHEDULED on the right
pool; only the outputs test executes a run (as a worker would) to read what it produced.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import httpx
import pytest
import yaml

from configs import validate_text
from tasks.registry import TASK_TYPES
from tests.flows.api_server import BIN, TIMEOUT, Api, get, post, september_stats, serving, subprocess_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
YAML = {"content-type": "application/yaml"}


def unique_name() -> str:
    return f"api-test-{uuid.uuid4().hex[:10]}"


def quickstart_text(name: str, output: Path) -> str:
    """configs/quickstart.yaml with absolute local paths, its output under ``output``, named ``name``."""
    text = (CONFIGS / "quickstart.yaml").read_text()
    replaced = (
        text.replace("path: quickstart/", f"path: {CONFIGS}/quickstart/")
        .replace("path: ../.mloc/outputs/quickstart-tiny-sft", f"path: {output}")
        .replace("name: quickstart-tiny-sft", f"name: {name}")
    )
    assert replaced.count(str(CONFIGS)) == 2 and str(output) in replaced and name in replaced, "quickstart.yaml changed"
    return replaced


@pytest.fixture(scope="module")
def prefect_url(prefect_server: None) -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url
    return url


@pytest.fixture(scope="module")
def api(prefect_url: str, port_picker: Callable[[], int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`mloc api` with MLOC's work pools on its Prefect API (as `mloc pools apply` leaves them)."""
    import work_pools

    work_pools.apply()
    # the folders submitted tasks may use: the shipped quickstart's, the tests' own, and where the
    # brief's reference example (sft_mistral_7b.yaml) puts its checkpoints
    roots = f"{CONFIGS}:{tmp_path_factory.getbasetemp()}:/artifacts"
    with serving(prefect_url, port_picker(), tmp_path_factory.mktemp("mloc-api"), MLOC_API_LOCAL_ROOTS=roots) as app:
        yield app


# --- authentication ---------------------------------------------------------------------------


def test_openapi_is_open_and_declares_the_bearer_scheme(api: Api) -> None:
    schema = get(f"{api.url}/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    operations = [(path, op) for path, item in schema["paths"].items() for op in item.values()]
    assert {p for p, _ in operations} == {
        "/api/v1/tasks",
        "/api/v1/tasks/{run_id}",
        "/api/v1/stats",
        "/api/v1/services/{name}",
    }
    for path, op in operations:
        assert op["security"] == [{name: []} for name in schemes], path
    body = schema["paths"]["/api/v1/tasks"]["post"]["requestBody"]["content"]
    assert {"application/yaml", "text/plain", "application/json"} <= set(body)
    assert get(f"{api.url}/docs").status_code == 200


def test_without_the_right_token_nothing_is_read_or_changed(api: Api, tmp_path: Path) -> None:
    name = unique_name()
    text = quickstart_text(name, tmp_path / "out")
    before = api.counts()
    wrong = [
        {},
        {"authorization": "Bearer"},
        {"authorization": f"Bearer {api.token}x"},
        {"authorization": f"Bearer {api.token[:-1]}"},
        {"authorization": f"Basic {api.token}"},
        {"authorization": api.token},
    ]
    for headers in wrong:
        requests = [
            post(f"{api.url}/api/v1/tasks?local=true", content=text, headers={**headers, **YAML}),
            # malformed JSON and a malformed id: the token is checked before either is looked at
            post(f"{api.url}/api/v1/tasks", content=b"{", headers={**headers, "content-type": "application/json"}),
            get(f"{api.url}/api/v1/tasks/not-a-uuid", headers=headers),
            get(f"{api.url}/api/v1/tasks/{uuid.uuid4()}", headers=headers),
            get(f"{api.url}/api/v1/stats?start_date=2025-09-01&end_date=2025-09-05", headers=headers),
        ]
        for response in requests:
            assert response.status_code == 401, (headers, response.request.url, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert api.token not in response.text
    assert api.counts() == before
    missing = get(f"{api.prefect}/deployments/name/mloc/{name}")
    assert missing.status_code == 404


# --- submitting -------------------------------------------------------------------------------


def test_an_invalid_task_gets_every_error_mloc_validate_gives(api: Api, tmp_path: Path) -> None:
    text = (
        quickstart_text(unique_name(), tmp_path / "out")
        .replace("taskType: sft", "taskType: sfft")
        .replace("max_seq_length: 64", "max_seq_length: 64\n      max_seq_lenght: 32")
        .replace("count: 0", "count: -1")
    )
    expected = validate_text(text, "<request>", TASK_TYPES).issues
    assert len(expected) >= 2  # the test is only as good as the errors it compares
    before = api.counts()
    response = post(f"{api.url}/api/v1/tasks", content=text, headers=api.auth(**YAML))
    assert response.status_code == 422, response.text
    body = response.json()
    assert [(e["field"], e["line"]) for e in body["errors"]] == [(i.field, i.line) for i in expected]
    assert body["errors"] == [i.to_dict() for i in expected]
    assert f"{len(expected)} error(s)" in body["detail"]

    # the same through JSON, and for text that is not YAML at all
    broken = "apiVersion: mloc/v1\nkind: [TrainingTask\n"
    response = post(f"{api.url}/api/v1/tasks", json={"task_yaml": broken}, headers=api.auth())
    assert response.status_code == 422
    assert response.json()["errors"] == [i.to_dict() for i in validate_text(broken, "<request>", TASK_TYPES).issues]
    assert "not valid YAML" in response.json()["errors"][0]["message"]
    assert api.counts() == before


def test_relative_local_paths_are_refused_at_their_lines(api: Api) -> None:
    text = (CONFIGS / "quickstart.yaml").read_text().replace("name: quickstart-tiny-sft", f"name: {unique_name()}")
    assert validate_text(text, "<request>", TASK_TYPES).valid  # valid as a file: only its paths are the problem
    lines = text.splitlines()
    before = api.counts()
    response = post(f"{api.url}/api/v1/tasks", content=text, headers=api.auth(**YAML))
    assert response.status_code == 422, response.text
    body = response.json()
    assert "must be absolute" in body["detail"]
    fields = {e["field"]: e for e in body["errors"]}
    assert set(fields) == {"spec.model.source.path", "spec.dataset.source.path", "spec.output.destination.path"}
    for error in body["errors"]:
        path = error["message"].split("'")[1]
        assert lines[error["line"] - 1].strip() == f"path: {path}"  # the line the user has to fix
    assert api.counts() == before


def test_local_paths_outside_the_allowed_folders_are_refused(api: Api, tmp_path: Path) -> None:
    """Through the API a task may read and write only under MLOC_API_LOCAL_ROOTS; '..' does not escape."""
    base = quickstart_text(unique_name(), tmp_path / "out")
    hostile = {
        "spec.model.source.path": ("path: " + str(CONFIGS / "quickstart/tiny-model"), "path: /etc"),
        "spec.dataset.source.path": ("path: " + str(CONFIGS / "quickstart/qa.jsonl"), "path: /etc/passwd"),
        "spec.output.destination.path": (f"path: {tmp_path / 'out'}", f"path: {CONFIGS}/../../../root/.ssh"),
    }
    text = base
    for old, new in hostile.values():
        assert old in text
        text = text.replace(old, new)
    for output_dir in ("/etc/cron.d", "../../../tmp/x"):
        with_dir = text.replace("  hyperparameters:\n", f"  hyperparameters:\n    output_dir: {output_dir}\n")
        before = api.counts()
        response = post(f"{api.url}/api/v1/tasks?local=true", content=with_dir, headers=api.auth(**YAML))
        assert response.status_code == 422, response.text
        fields = {e["field"]: e["message"] for e in response.json()["errors"]}
        assert set(fields) == {*hostile, "spec.hyperparameters.output_dir"}
        assert "outside the folders this API lets tasks use" in fields["spec.model.source.path"]
        assert "MLOC_API_LOCAL_ROOTS" in response.json()["detail"]
        assert api.counts() == before


def test_hostile_bodies_neither_stall_nor_bloat_the_api(api: Api) -> None:
    """An alias bomb, a 600 kB string built to make a backtracking pattern crawl, and a 2,000-deep
    list, posted while another client polls /stats: each is refused, the poller keeps getting
    answers within a second, and the API process's memory stays where it was."""
    import threading
    import time

    laughs = 'l0: &l0 ["lol"]\n' + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
    redos = quickstart_text(unique_name(), Path("/tmp/x")).replace(
        "  project: mloc-quickstart\n", f"  project: mloc-quickstart\n  annotations:\n    note: '{'a:' * 300_000}'\n"
    )
    bodies = {
        "alias bomb": laughs + (CONFIGS / "quickstart.yaml").read_text(),
        "600 kB string": redos,
        "2,000-deep list": "x: " + "[" * 2_000 + "]" * 2_000 + "\n",
    }
    assert len(bodies["600 kB string"]) > 600_000
    stats = f"{api.url}/api/v1/stats?start_date=2001-01-01&end_date=2001-01-01"
    assert get(stats, headers=api.auth()).status_code == 200  # warm: the first read imports the report
    rss_before = api.rss_mib()
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                start = time.perf_counter()
                assert client.get(stats, headers=api.auth()).status_code == 200
                latencies.append(time.perf_counter() - start)
                time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        for what, body in bodies.items():
            started = time.perf_counter()
            response = post(f"{api.url}/api/v1/tasks", content=body, headers=api.auth(**YAML))
            assert response.status_code == 422, f"{what}: {response.status_code} {response.text[:300]}"
            assert time.perf_counter() - started < 10, what
            assert len(response.content) < 20_000, f"{what}: the answer echoes the body"
    finally:
        done.set()
        poller.join()
    assert latencies and max(latencies) < 1.0, f"/stats stalled: slowest {max(latencies):.2f} s of {len(latencies)}"
    assert api.rss_mib() - rss_before < 200, f"memory grew from {rss_before:.0f} to {api.rss_mib():.0f} MiB"


def test_stats_past_the_calendar_is_a_clear_422(api: Api) -> None:
    response = get(f"{api.url}/api/v1/stats?start_date=9999-12-31&end_date=9999-12-31", headers=api.auth())
    assert response.status_code == 422, response.text
    assert "past the last day a report can cover" in response.json()["detail"]


def test_a_valid_task_is_deployed_and_gets_one_scheduled_run(api: Api, tmp_path: Path) -> None:
    name = unique_name()
    text = quickstart_text(name, tmp_path / "out")
    response = post(f"{api.url}/api/v1/tasks?local=true", content=text, headers=api.auth(**YAML))
    assert response.status_code == 201, response.text
    created = response.json()
    assert created == {
        "id": created["id"],
        "name": name,
        "deployment": f"mloc/{name}",
        "deployment_action": "created",
        "work_pool": "local",
        "work_queue": "cpu",
        "previous_work_pool": None,
        "previous_work_queue": None,
        "state": "SCHEDULED",
    }
    assert response.headers["location"] == f"/api/v1/tasks/{created['id']}"

    deployment = api.prefect_call("GET", f"/deployments/name/mloc/{name}")
    assert deployment["work_pool_name"] == "local" and deployment["work_queue_name"] == "cpu"
    assert deployment["parameters"]["task"]["metadata"]["name"] == name
    assert deployment["parameters"]["base_dir"] == "/"
    run = api.prefect_call("GET", f"/flow_runs/{created['id']}")
    assert run["deployment_id"] == deployment["id"] and run["state"]["type"] == "SCHEDULED"
    assert run["work_queue_name"] == "cpu" and run["name"] == name
    assert {"owner:quickstart", "project:mloc-quickstart", "task-type:sft", "gpu:none"} <= set(run["tags"])
    assert run["parameters"]["task"] == deployment["parameters"]["task"]

    # the same text again, as JSON: the deployment is left as it was, and a second run is created
    again = post(f"{api.url}/api/v1/tasks?local=true", json={"task_yaml": text}, headers=api.auth())
    assert again.status_code == 201, again.text
    assert again.json()["deployment_action"] == "unchanged" and again.json()["id"] != created["id"]
    runs = api.prefect_call("POST", "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}})
    assert sorted(r["id"] for r in runs) == sorted([created["id"], again.json()["id"]])
    assert api.prefect_call("GET", f"/deployments/{deployment['id']}")["updated"] == deployment["updated"]

    status = get(f"{api.url}/api/v1/tasks/{created['id']}", headers=api.auth())
    assert status.status_code == 200, status.text
    got = status.json()
    assert got["id"] == created["id"] and got["name"] == name and got["deployment"] == f"mloc/{name}"
    assert got["state"]["type"] == "SCHEDULED" and got["state"]["name"] == "Scheduled"
    assert got["tags"] == sorted(run["tags"]) and got["work_pool"] == "local"
    assert got["start_time"] is None and got["end_time"] is None and got["artifacts"] == []
    assert got["outputs"] is None


@pytest.mark.parametrize("task_type", ["sft", "rm", "dpo", "grpo", "ppo"])
def test_every_training_type_is_accepted(api: Api, task_type: str) -> None:
    """The brief's example of each training type, as it ships, renamed: deployed to the pool of its GPU type."""
    example = (CONFIGS / TASK_TYPES[task_type].example).read_text()
    name = unique_name()
    text = re.sub(r"(?m)^  name: .*$", f"  name: {name}", example, count=1)
    response = post(f"{api.url}/api/v1/tasks", content=text, headers=api.auth(**YAML))
    assert response.status_code == 201, response.text
    gpu_type = yaml.safe_load(example)["spec"]["resources"]["hardware"]["gpu"]["type"]
    assert response.json()["work_pool"] == ("any-gpu" if gpu_type == "any" else gpu_type)
    run = api.prefect_call("GET", f"/flow_runs/{response.json()['id']}")
    assert f"task-type:{task_type}" in run["tags"] and run["state"]["type"] == "SCHEDULED"


def test_by_default_a_task_goes_to_the_pool_of_its_gpu_type(api: Api, tmp_path: Path) -> None:
    name = unique_name()
    response = post(
        f"{api.url}/api/v1/tasks", content=quickstart_text(name, tmp_path / "out"), headers=api.auth(**YAML)
    )
    assert response.status_code == 201, response.text
    assert response.json()["work_pool"] == "cpu"  # the quickstart asks for no GPU
    assert response.json()["work_queue"] == "default" and response.json()["previous_work_pool"] is None
    run = api.prefect_call("GET", f"/flow_runs/{response.json()['id']}")
    assert run["work_pool_name"] == "cpu" and run["state"]["type"] == "SCHEDULED"
    assert api.prefect_call("GET", f"/deployments/name/mloc/{name}")["work_pool_name"] == "cpu"


def with_gpu(text: str, gpu_type: str) -> str:
    replaced = text.replace(
        'memory: "4Gi"\n', f'memory: "4Gi"\n      gpu:\n        type: {gpu_type}\n        count: 1\n'
    )
    assert replaced != text, "quickstart.yaml changed"
    return replaced


def test_a_deployment_of_mloc_deploy_local_is_never_moved_off_the_local_pool(api: Api, tmp_path: Path) -> None:
    """Issue 9: the same task POSTed after `mloc deploy --local` was moved to the cluster's cpu
    pool, where no worker runs it, and its run sat Late."""
    from prefect import get_client

    from flows.deploy import apply, plan

    name = unique_name()
    text = quickstart_text(name, tmp_path / "out")
    task_file = tmp_path / "task.yaml"
    task_file.write_bytes(text.encode())
    task = validate_text(text, str(task_file), TASK_TYPES).task
    assert task is not None
    with get_client(sync_client=True) as client:  # what `mloc deploy --local task.yaml` does
        assert apply(plan(task, task_file, local=True), client) == "created"
    deployed = api.prefect_call("GET", f"/deployments/name/mloc/{name}")
    assert deployed["work_pool_name"] == "local" and deployed["parameters"]["base_dir"] == str(tmp_path)

    # without `local`: it stays where it is, untouched, and the run goes there
    response = post(f"{api.url}/api/v1/tasks", content=text, headers=api.auth(**YAML))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["work_pool"] == "local", body  # it was moved to the cluster's "cpu" pool
    assert (body["work_queue"], body["previous_work_pool"], body["deployment_action"]) == ("cpu", None, "unchanged")
    assert api.prefect_call("GET", f"/deployments/{deployed['id']}") == deployed
    run = api.prefect_call("GET", f"/flow_runs/{body['id']}")
    assert (run["work_pool_name"], run["work_queue_name"], run["deployment_id"]) == ("local", "cpu", deployed["id"])
    shown = get(f"{api.url}/api/v1/tasks/{body['id']}", headers=api.auth()).json()
    assert (shown["work_pool"], shown["state"]["type"], shown["outputs"]) == ("local", "SCHEDULED", None)

    # asking for the cluster: refused, and nothing changes
    before = api.counts()
    response = post(f"{api.url}/api/v1/tasks?local=false", content=text, headers=api.auth(**YAML))
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    for said in (f"mloc/{name}", "'local'", "mloc deploy --local", "'cpu'", "?local=true", "`mloc deploy <task.yaml>`"):
        assert said in detail, (said, detail)
    assert "no run was created" in detail
    assert api.counts() == before
    assert api.prefect_call("GET", f"/deployments/{deployed['id']}") == deployed


def test_a_changed_gpu_type_moves_it_within_its_side_and_says_so(api: Api, tmp_path: Path) -> None:
    cpu_only = quickstart_text(unique_name(), tmp_path / "out")
    first = post(f"{api.url}/api/v1/tasks", content=cpu_only, headers=api.auth(**YAML))
    assert first.status_code == 201 and first.json()["work_pool"] == "cpu", first.text
    on_t4 = post(f"{api.url}/api/v1/tasks", content=with_gpu(cpu_only, "nvidia-t4"), headers=api.auth(**YAML))
    assert on_t4.status_code == 201, on_t4.text
    body = on_t4.json()
    assert (body["deployment_action"], body["work_pool"], body["previous_work_pool"]) == (
        "updated",
        "nvidia-t4",
        "cpu",
    )
    assert body["previous_work_queue"] is None  # the cluster pools have the one queue, 'default'
    name = body["name"]
    assert api.prefect_call("GET", f"/deployments/name/mloc/{name}")["work_pool_name"] == "nvidia-t4"

    # from the cluster to the local pool: refused as the other way round is
    before = api.counts()
    refused = post(f"{api.url}/api/v1/tasks?local=true", content=cpu_only, headers=api.auth(**YAML))
    assert refused.status_code == 409, refused.text
    assert "cluster pool 'nvidia-t4'" in refused.json()["detail"] and "?local=false" in refused.json()["detail"]
    assert api.counts() == before
    assert api.prefect_call("GET", f"/deployments/name/mloc/{name}")["work_pool_name"] == "nvidia-t4"

    # on the local pool a GPU type is a queue
    local = quickstart_text(unique_name(), tmp_path / "out")
    assert post(f"{api.url}/api/v1/tasks?local=true", content=local, headers=api.auth(**YAML)).status_code == 201
    moved = post(f"{api.url}/api/v1/tasks", content=with_gpu(local, "nvidia-t4"), headers=api.auth(**YAML))
    assert moved.status_code == 201, moved.text
    body = moved.json()
    assert (body["work_pool"], body["work_queue"]) == ("local", "nvidia-t4")
    assert (body["previous_work_pool"], body["previous_work_queue"]) == (None, "cpu")


def test_the_local_parameter_is_documented_in_the_schema(api: Api) -> None:
    post_op = get(f"{api.url}/openapi.json").json()["paths"]["/api/v1/tasks"]["post"]
    [local] = [p for p in post_op["parameters"] if p["name"] == "local"]
    assert local["in"] == "query" and not local.get("required", False)
    for said in ("mloc deploy --local", "Left out", "never moves", "409", "previous_work_pool"):
        assert said in local["description"], said
    assert "contradicts where the existing deployment" in post_op["responses"]["409"]["description"]


def test_a_task_no_pool_or_version_can_run_is_refused_and_nothing_is_registered(api: Api) -> None:
    name = unique_name()
    too_big = (
        (CONFIGS / "sft_mistral_7b.yaml")
        .read_text()
        .replace("name: sft-mistral-7b-on-dolly", f"name: {name}")
        .replace("count: 4", "count: 16")  # valid (at most 16), but an A100 node has 8
    )
    not_yet = (  # an agent on local weights: validation refuses it (no tool calls through transformers)
        (CONFIGS / "rag_inference_service.yaml")
        .read_text()
        .replace("name: rag-support-answers", f"name: {name}")
        .replace("taskType: rag_inference", "taskType: agent\n  agent:\n    tools: [retriever]")
        .replace("    Context:\n    {context}\n\n", "")
    )
    before = api.counts()
    response = post(f"{api.url}/api/v1/tasks", content=too_big, headers=api.auth(**YAML))
    assert response.status_code == 422, response.text
    assert "asks for 16 GPUs" in response.json()["detail"] and "gpu.count" in response.json()["detail"]
    response = post(f"{api.url}/api/v1/tasks", content=not_yet, headers=api.auth(**YAML))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["detail"] == "the task.yaml is not valid: 1 error(s)", body
    [issue] = body["errors"]
    said = issue["message"] + " — " + issue["hint"]
    assert issue["field"] == "spec.model.source.type" and "never parse tool calls" in said and "type: remote" in said
    assert api.counts() == before


def test_a_pool_missing_on_the_server_is_a_409_that_names_the_fix(
    prefect_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from flows.api_submit import ApiError, deploy, prepare

    monkeypatch.setenv("MLOC_API_LOCAL_ROOTS", f"{CONFIGS}:{tmp_path}")
    planned = prepare(quickstart_text(unique_name(), tmp_path / "out"), local=True)
    elsewhere = dataclasses.replace(planned, pool=planned.pool.model_copy(update={"name": "no-such-pool"}))
    with pytest.raises(ApiError) as refused:
        deploy(elsewhere)
    assert refused.value.status == 409 and "mloc pools apply" in refused.value.detail
    missing = httpx.get(f"{prefect_url}/deployments/name/mloc/{planned.name}", timeout=TIMEOUT)
    assert missing.status_code == 404


def test_bodies_that_are_not_a_task_yaml(api: Api) -> None:
    before = api.counts()
    cases = [
        ({"content-type": "application/xml"}, b"<task/>", 415, "application/yaml"),
        ({}, b"apiVersion: mloc/v1", 415, "application/yaml"),
        ({"content-type": "application/json"}, b"{", 422, "task_yaml"),
        ({"content-type": "application/json"}, json.dumps({"yaml": "x"}).encode(), 422, "task_yaml"),
        ({"content-type": "text/plain"}, b"\xff\xfe", 422, "UTF-8"),
        ({"content-type": "text/plain"}, b"#" * (1024 * 1024 + 1), 413, "bytes"),
    ]
    for headers, body, status, said in cases:
        response = post(f"{api.url}/api/v1/tasks", content=body, headers=api.auth(**headers))
        assert response.status_code == status, (headers, response.text)
        assert said in response.json()["detail"]
    assert api.counts() == before


# --- reading runs -----------------------------------------------------------------------------


def test_unknown_malformed_and_foreign_run_ids(api: Api) -> None:
    unknown = get(f"{api.url}/api/v1/tasks/{uuid.uuid4()}", headers=api.auth())
    assert unknown.status_code == 404 and "no MLOC task run" in unknown.json()["detail"]
    assert get(f"{api.url}/api/v1/tasks/123", headers=api.auth()).status_code == 422
    # a run of some other flow on the same Prefect server is not this API's to show
    flow = api.prefect_call("POST", "/flows/", {"name": f"not-mloc-{uuid.uuid4().hex[:6]}"})
    foreign = api.prefect_call("POST", "/flow_runs/", {"flow_id": flow["id"], "name": "foreign"})
    response = get(f"{api.url}/api/v1/tasks/{foreign['id']}", headers=api.auth())
    assert response.status_code == 404, response.text


@pytest.mark.e2e
def test_a_completed_run_gives_its_outputs(api: Api, tmp_path: Path) -> None:
    """The quickstart submitted, then executed as a worker executes a flow run, in a process of
    its own; its outputs as the API reads them back, against what landed at the destination."""
    name = unique_name()
    out = tmp_path / "out"
    text = quickstart_text(name, out).replace("max_steps: 60", "max_steps: 20")  # enough for the loss to drop
    submitted = post(f"{api.url}/api/v1/tasks?local=true", content=text, headers=api.auth(**YAML))
    assert submitted.status_code == 201, submitted.text
    run_id = submitted.json()["id"]
    assert get(f"{api.url}/api/v1/tasks/{run_id}", headers=api.auth()).json()["outputs"] is None

    env = subprocess_env(api.prefect, tmp_path / "prefect", MLOC_HOME=str(tmp_path / "home"))
    executed = subprocess.run(
        [str(BIN / "prefect"), "flow-run", "execute", run_id],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert executed.returncode == 0, executed.stdout[-4000:] + executed.stderr[-4000:]

    status = get(f"{api.url}/api/v1/tasks/{run_id}", headers=api.auth())
    assert status.status_code == 200, status.text
    got = status.json()
    assert got["state"]["type"] == "COMPLETED", got["state"]
    outputs = got["outputs"]
    assert outputs["uri"] == out.as_uri() and outputs["version"] is None
    assert outputs["manifest"] == f"{out.as_uri()}/mloc-manifest.json"
    manifest = json.loads(Path(url2pathname(urlparse(outputs["manifest"]).path)).read_text())
    assert manifest["flow_run_id"] == run_id
    assert outputs["metrics"] == manifest["metrics"]
    assert outputs["metrics"]["eval_loss"] < outputs["metrics"]["eval_loss_before"]
    for field in ("base_model", "dataset", "reward_model", "task_sha256", "task_yaml_sha256"):
        assert outputs[field] == manifest[field], field
    assert outputs["task_yaml_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert outputs["dataset"]["identifier"] == f"{CONFIGS}/quickstart/qa.jsonl"
    assert f"{name}-outputs" in {a["key"] for a in got["artifacts"]}

    # the same figures as the run's evaluation table (which shows them to 4 significant digits)
    [table] = api.prefect_call(
        "POST",
        "/artifacts/filter",
        {"artifacts": {"flow_run_id": {"any_": [run_id]}, "key": {"any_": [f"{name}-eval"]}}},
    )
    rows = {row["metric"]: row for row in json.loads(table["data"])}
    metrics = outputs["metrics"]
    assert rows["eval_loss"]["after"] == pytest.approx(metrics["eval_loss"], rel=1e-3)
    assert rows["eval_loss"]["before"] == pytest.approx(metrics["eval_loss_before"], rel=1e-3)
    assert rows["perplexity"]["after"] == pytest.approx(metrics["perplexity"], rel=1e-3)
    assert rows["perplexity"]["before"] == pytest.approx(metrics["perplexity_before"], rel=1e-3)


# --- usage ------------------------------------------------------------------------------------


def test_stats_refuses_bad_dates(api: Api) -> None:
    for query in [
        "start_date=2025-09-01",  # end_date missing
        "start_date=2025-13-01&end_date=2025-12-31",
        "start_date=01.09.2025&end_date=2025-09-05",
        "start_date=2025-02-30&end_date=2025-03-01",
        "start_date=2025-09-05&end_date=2025-09-01",  # the wrong way round
    ]:
        response = get(f"{api.url}/api/v1/stats?{query}", headers=api.auth())
        assert response.status_code == 422, (query, response.text)


def test_stats_is_the_usage_report(api: Api) -> None:
    from flows.usage import usage_report

    start, end = date.today() - timedelta(days=7), date.today()
    response = get(
        f"{api.url}/api/v1/stats",
        params={"user": "quickstart", "start_date": start.isoformat(), "end_date": end.isoformat()},
        headers=api.auth(),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert {"query_parameters", "total_gpu_hours", "total_tasks_completed", "breakdown_by_gpu"} <= set(body)
    assert body["query_parameters"]["user"] == "quickstart"
    assert body["query_parameters"]["start_date"] == start.isoformat()
    assert body["query_parameters"]["end_date"] == end.isoformat()
    expected = usage_report(user="quickstart", project=None, start_date=start, end_date=end)
    assert body == json.loads(json.dumps(expected, default=str))


# --- starting -----------------------------------------------------------------------------------


def test_mloc_api_refuses_to_start_without_a_token(prefect_url: str, tmp_path: Path) -> None:
    started = subprocess.run(
        [str(BIN / "mloc"), "api", "--port", "1"],  # never bound: it must stop before
        env=subprocess_env(prefect_url, tmp_path, MLOC_API_TOKEN=""),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2, started.stdout + started.stderr
    assert "MLOC_API_TOKEN" in started.stderr and "MLOC_API_TOKEN_BLOCK" in started.stderr


def test_mloc_api_refuses_to_start_with_an_unknown_usage_source(prefect_url: str, tmp_path: Path) -> None:
    started = subprocess.run(
        [str(BIN / "mloc"), "api", "--port", "1"],
        env=subprocess_env(prefect_url, tmp_path, MLOC_API_TOKEN="t" * 32, MLOC_USAGE_SOURCE="postgres"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2, started.stdout + started.stderr
    assert "MLOC_USAGE_SOURCE 'postgres' is not one of api, database" in started.stderr


def test_the_token_can_come_from_a_secret_block(prefect_url: str) -> None:
    from prefect.blocks.system import Secret

    from flows.api_token import TokenError, resolve_token

    value, block = secrets.token_urlsafe(24), f"api-token-{uuid.uuid4().hex[:8]}"
    Secret(value=value).save(block)
    assert resolve_token({"MLOC_API_TOKEN_BLOCK": block}) == (value, f"Prefect Secret block '{block}'")
    assert resolve_token({"MLOC_API_TOKEN": "from-env", "MLOC_API_TOKEN_BLOCK": block})[0] == "from-env"
    with pytest.raises(TokenError, match="cannot load the Prefect Secret block 'no-such-block'"):
        resolve_token({"MLOC_API_TOKEN_BLOCK": "no-such-block"})
    with pytest.raises(TokenError, match="no API token"):
        resolve_token({"MLOC_API_TOKEN": "", "MLOC_API_TOKEN_BLOCK": ""})


@pytest.mark.parametrize("source", ["api", "database"])
def test_stats_over_http_give_the_hand_computed_figures(
    source: str, prefect_url: str, port_picker: Callable[[], int], tmp_path: Path
) -> None:
    """/api/v1/stats from each source: through the Prefect API, and as deployed next to the
    server, straight from its database (MLOC_USAGE_SOURCE=database with the server's
    connection string) — the same figures, computed by hand in usage_runs.py."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    from tests.flows.usage_runs import create_runs, project_report, server_runs

    tag = uuid.uuid4().hex[:8]
    create_runs(server_runs(tag))
    env = {"MLOC_USAGE_SOURCE": source}
    if source == "database":
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = str(PREFECT_API_DATABASE_CONNECTION_URL.value())
    assert september_stats(prefect_url, port_picker(), tmp_path, f"usage-test-{tag}", **env) == project_report(tag)
