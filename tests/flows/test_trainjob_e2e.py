"""A multi-node training on Kubernetes, as a Kubeflow TrainJob the train step submits, follows and
cleans up, through the whole pipeline flow on a real Prefect server.

The Kubernetes API server cannot exist here, so it is faked at the HTTP boundary
(tests/flows/fake_kubernetes.py): the real client talks HTTP to a small server whose
"controller" runs each node's command as a local process with Kubeflow's PET_* variables.
The flow pod's side is real: the variables the job template gives it, the torchrun command,
the Prefect tags and logs. One training only (2 cores); the other tests run no training.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_asyncio  # noqa: F401 — imported before KUBECONFIG is set, as elsewhere in a whole suite
import pytest

from tests.flows.fake_kubernetes import FakeKubernetes
from tests.flows.test_pipeline_e2e import flow_run_logs, read_flow_run, task_run_logs
from tests.quickstart_task import quickstart_task as quickstart

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TWO_NODES = {
    "spec.resources.replicas": 2,
    "spec.resources.hardware.gpu": {"type": "any", "count": 1},
    "spec.hyperparameters.per_device_train_batch_size": 4,
}
# the tests that train nothing evaluate nothing either
NO_EVALUATION = {
    "spec.evaluation.enabled": False,
    "spec.evaluation.gates": [],
    "spec.output.artifacts": ["adapter_weights", "training_logs"],
}


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubernetes]:
    """The fake cluster, with this process as the flow pod: MLOC_HOME and HF_HOME on the "cache
    volume" (folders the fake's nodes see at the same paths)."""
    home, hf = tmp_path / "home", tmp_path / "hf"
    home.mkdir()
    hf.mkdir()
    monkeypatch.setenv("MLOC_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(hf))
    fake = FakeKubernetes(tmp_path, {"/cache/mloc": home, "/cache/huggingface": hf})
    monkeypatch.setenv("KUBECONFIG", str(fake.start()))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    try:
        yield fake
    finally:
        fake.stop()


def run_as_trainjob(task: Any, monkeypatch: pytest.MonkeyPatch, base_dir: Path) -> Any:
    """The pipeline with the env the task's deployment gives its flow pod (job_template.job_variables)."""
    from flows.pipeline import pipeline
    from work_pools import job_variables, pool_for_task

    env = job_variables(task, pool_for_task(task))["env"]
    assert env["MLOC_TRAIN_LAUNCHER"] == "trainjob" and env["MLOC_TRAINJOB_POOL"] == "any-gpu"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return pipeline(task=task, base_dir=str(base_dir), return_state=True)


def shared_sources(tmp_path: Path) -> Path:
    """The quickstart's model and data copied onto the cache volume, where the nodes can read them."""
    sources = tmp_path / "home" / "sources"
    shutil.copytree(CONFIGS / "quickstart", sources / "quickstart")
    return sources


def calls(cluster: FakeKubernetes) -> set[tuple[str, str, str]]:
    """The (API group, resource, verb) of every call the flow pod made to the Kubernetes API."""
    import re

    made = set()
    for method, path in cluster.requests:
        if match := re.fullmatch(r"/apis/([^/]+)/[^/]+/namespaces/[^/]+/([^/]+)(/[^/]+)?", path):
            group, resource, one = match.groups()
        elif match := re.fullmatch(r"/api/v1/namespaces/[^/]+/(pods)(/[^/]+)?(/log)?", path):
            group, resource, one, log = "", match[1], match[2], match[3]
            resource += log or ""
        else:
            raise AssertionError(f"an API call the fake does not know: {method} {path}")
        verb = {"POST": "create", "DELETE": "delete"}.get(method) or ("get" if one else "list")
        made.add((group, resource, verb))
    return made


def orchestrator_grants() -> set[tuple[str, str, str]]:
    """What infra/k8s gives the orchestrating flow pod's service account."""
    import yaml

    from work_pools.job_template import ORCHESTRATOR_SERVICE_ACCOUNT

    docs = list(yaml.safe_load_all((CONFIGS.parent / "infra" / "k8s" / "21-orchestrator-rbac.yaml").read_text()))
    [role] = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == ORCHESTRATOR_SERVICE_ACCOUNT]
    return {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }


def held_tags(tags: list[str]) -> list[list[str]]:
    return [t.split(":") for t in tags if t.startswith("held:")]


def test_two_nodes_train_as_a_trainjob(
    prefect_server: None, cluster: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = quickstart({**TWO_NODES, "spec.output.destination": {"type": "local", "path": str(tmp_path / "out")}})
    # the flow pod's name and uid, as the downward API gives them (work_pools/job_template.py)
    monkeypatch.setenv("MLOC_POD_NAME", "quickstart-flow-pod")
    monkeypatch.setenv("MLOC_POD_UID", "0b7e1c3e-5f7a-4c1e-9d2b-6a1f0e9c8d7b")
    # the API drops the training's log stream mid-run, as API servers and kubelets do
    cluster.cut_log = lambda pod: 12 if "evaluate" not in pod else None
    state = run_as_trainjob(task, monkeypatch, shared_sources(tmp_path))
    assert state.is_completed(), state.message
    # each TrainJob is owned by the flow pod: Kubernetes deletes it with the pod, however the pod ends
    owner = {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "quickstart-flow-pod",
        "uid": "0b7e1c3e-5f7a-4c1e-9d2b-6a1f0e9c8d7b",
    }
    assert all(t["metadata"]["ownerReferences"] == [owner] for t in cluster.created)

    # the evaluations run on one of the task's nodes too (the flow pod has no GPU): three TrainJobs
    before, trainjob, after = cluster.created
    assert before["metadata"]["name"] == trainjob["metadata"]["name"] + "-evaluate-before"
    assert after["metadata"]["name"] == trainjob["metadata"]["name"] + "-evaluate-after"
    for evaluation in (before, after):
        evaluating = evaluation["spec"]["trainer"]
        assert (evaluating["numNodes"], evaluating["numProcPerNode"]) == (1, 1)
        assert evaluating["command"][:4] == ["python", "-P", "-m", "tasks"]
    metrics = state.result()["metrics"]
    assert metrics["eval_loss"] < 0.8 * metrics["eval_loss_before"], metrics
    trainer = trainjob["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 1
    assert trainer["command"][:4] == ["python", "-P", "-m", "torch.distributed.run"]
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert env["PET_RDZV_CONF"] == "timeout=600" and env["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] == "[rank${rank}]: "
    assert not cluster.running(), "the TrainJob's nodes were left running"
    assert cluster.deleted == [], "a completed TrainJob is left to Kubernetes' TTL"

    flow_run, task_runs, _ = read_flow_run(state.state_details.flow_run_id)
    [train_run] = [r for r in task_runs if r.name == "train"]
    logs = task_run_logs(train_run.id)
    assert any("step 60/60" in line for line in logs), logs[-20:]
    # followed again from where it was cut: every line once, none lost
    assert any("log stream was cut and followed again" in line for line in logs)
    steps = [line for line in logs if line.startswith("[rank0]: step ") and "loss" in line and "train_loss" not in line]
    assert [int(line.split()[2].split("/")[0]) for line in steps] == list(range(5, 61, 5)), steps
    assert any("world size 2" in line for line in logs), "the two nodes did not train as one"
    # the flow pod held no GPU itself; the nodes' GPUs are closed held intervals, one per TrainJob:
    # one node's 1 GPU for each evaluation, 2 × 1 for the training
    assert {"gpu:none", "gpu-count:0", "replicas:1"} <= set(flow_run.tags)
    held = sorted(held_tags(flow_run.tags), key=lambda t: int(t[3]))
    assert [(t[1], t[2]) for t in held] == [("any", "1"), ("any", "2"), ("any", "1")], held
    assert all(end != "open" and int(start) <= int(end) for _, _, _, start, end in held)
    name = trainjob["metadata"]["name"]
    assert any(f"TrainJob {name} of 2 nodes × 1 × any GPU(s)" in line for line in flow_run_logs(flow_run.id))
    assert state.result()["training"]["global_step"] == 60
    # the orchestrator's service account may do what it did, and no more than infra/k8s grants
    assert calls(cluster) <= orchestrator_grants()


def test_nodes_that_cannot_be_scheduled_fail_the_step_at_the_deadline(
    prefect_server: None, cluster: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.mode = "unschedulable"
    task = quickstart(
        {
            **TWO_NODES,
            "spec.execution": {"scheduling_timeout_seconds": 4},
            **NO_EVALUATION,
            "spec.output.destination": {"type": "local", "path": str(tmp_path / "out")},
        }
    )
    started = time.monotonic()
    state = run_as_trainjob(task, monkeypatch, shared_sources(tmp_path))
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "Unschedulable" in message and "Insufficient nvidia.com/gpu" in message, message
    assert "0 of 2 nodes started within 4 s" in message, message
    assert time.monotonic() - started < 90
    [trainjob] = cluster.created
    assert cluster.deleted == [trainjob["metadata"]["name"]]
    flow_run, _, _ = read_flow_run(state.state_details.flow_run_id)
    assert held_tags(flow_run.tags) == [], "no pod ran: no GPU was held"


def test_a_failed_node_fails_the_step_by_name_and_the_trainjob_is_deleted(
    prefect_server: None, cluster: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no training: node 0 waits (as torchrun would for its peer), node 1 fails at once
    cluster.commands = {
        0: [sys.executable, "-c", "import time; print('[rank0]: waiting for rank 1', flush=True); time.sleep(300)"],
        1: [sys.executable, "-c", "print('[rank1]: CUDA error: out of memory', flush=True); raise SystemExit(3)"],
    }
    task = quickstart(
        {
            **TWO_NODES,
            **NO_EVALUATION,
            "spec.output.destination": {"type": "local", "path": str(tmp_path / "out")},
        }
    )
    state = run_as_trainjob(task, monkeypatch, shared_sources(tmp_path))
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    [trainjob] = cluster.created
    name = trainjob["metadata"]["name"]
    assert f"TrainJob {name} failed (FailedJobs" in message, message
    assert "node 1 exited with code 3" in message and "out of memory" in message, message
    assert cluster.deleted == [name] and not cluster.running()
    assert ("trainer.kubeflow.org", "trainjobs", "delete") in calls(cluster) <= orchestrator_grants()
    flow_run, _, _ = read_flow_run(state.state_details.flow_run_id)
    [[_, gpu_type, gpus, _, end]] = held_tags(flow_run.tags)
    assert (gpu_type, gpus) == ("any", "2") and end != "open", "the held interval is closed however it ends"


def test_a_local_source_off_the_shared_volume_fails_before_submission(
    prefect_server: None, cluster: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = quickstart(
        {
            **TWO_NODES,
            **NO_EVALUATION,
            "spec.output.destination": {"type": "local", "path": str(tmp_path / "out")},
        }
    )
    state = run_as_trainjob(task, monkeypatch, CONFIGS)  # the model and data where the repo has them
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "spec.model.source" in message and "spec.dataset.source" in message and "shared" in message, message
    assert cluster.created == []
