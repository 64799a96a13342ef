"""Applying a ServingTask's objects on Kubernetes: only what differs is written.

No Kubernetes API server can run here, so one is faked at the HTTP boundary
(tests/flows/fake_serving_cluster.py): the real client (kubernetes_asyncio, through
prefect-kubernetes' credentials and a kubeconfig pointing at the fake) sends real requests,
and the fake records each one, so the tests count the writes. The pods' endpoint cannot exist
either (a vLLM on GPUs): the fake's stand-in answers /health and /v1/models for it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_asyncio  # noqa: F401 — imported before KUBECONFIG is set, as elsewhere in a whole suite
import pytest
import yaml

from configs import ServingTask, validate_text
from configs.models import LocalSource
from flows.serve_kubernetes import ClusterService, cluster_status, goals, service_manifests
from tasks.registry import TASK_TYPES
from tasks.serving import kubernetes
from tasks.serving.goals import converge
from tests.flows.fake_serving_cluster import UNSCHEDULABLE, FakeServingCluster
from work_pools import pool_for_task
from work_pools.job_template import NAMESPACE
from work_pools.serving import DIGEST_ANNOTATION, pod_selector

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "serve_mistral_7b.yaml"
QUICKSTART_MODEL = EXAMPLE.parent / "quickstart" / "tiny-model"


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServingCluster]:
    fake = FakeServingCluster(tmp_path)
    monkeypatch.setenv("KUBECONFIG", str(fake.start()))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    try:
        yield fake
    finally:
        fake.stop()


def _task(**spec: Any) -> ServingTask:
    data = yaml.safe_load(EXAMPLE.read_text())
    for key, value in spec.items():
        if value is None:
            data["spec"].pop(key, None)
        else:
            data["spec"][key] = value
    task = validate_text(yaml.safe_dump(data), "serve.yaml", TASK_TYPES).task
    assert isinstance(task, ServingTask)
    return task


def _apply(task: ServingTask) -> list[str]:
    objects = service_manifests(task, pool_for_task(task))
    return asyncio.run(kubernetes.apply(objects, NAMESPACE, DIGEST_ANNOTATION))


def test_a_second_converge_of_an_unchanged_spec_sends_no_write(cluster: FakeServingCluster) -> None:
    task = _task()
    name = task.metadata.name
    assert _apply(task) == [f"create {kind} {name}" for kind in ("Deployment", "Service", "ScaledObject")]
    assert len(cluster.writes) == 3
    writes = list(cluster.writes)
    assert _apply(task) == []
    assert cluster.writes == writes, "an unchanged spec wrote to the API server"
    reads = [r for r in cluster.requests if r[0] == "GET"]
    assert len(reads) == 6, "each converge reads the three objects once"
    objects = service_manifests(task, pool_for_task(task))
    assert asyncio.run(kubernetes.differing(objects, NAMESPACE, DIGEST_ANNOTATION)) == []


def test_a_changed_spec_rolls_forward_what_it_changes_and_keeps_the_rest(cluster: FakeServingCluster) -> None:
    task = _task()
    name = task.metadata.name
    _apply(task)
    service_ip = cluster.get("services", NAMESPACE, name)["spec"]["clusterIP"]  # type: ignore[index]
    # KEDA's HPA has scaled the Deployment to 3 meanwhile
    cluster.objects[("deployments", NAMESPACE, name)]["spec"]["replicas"] = 3
    longer = _task(engine={**task.spec.engine.model_dump(), "max_model_len": 8192})
    before = len(cluster.writes)
    assert _apply(longer) == [f"replace Deployment {name}"]
    assert len(cluster.writes) == before + 1
    deployment = cluster.get("deployments", NAMESPACE, name)
    assert deployment is not None
    assert "8192" in deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert deployment["spec"]["replicas"] == 3, "the replacement reset the autoscaled replica count"
    # no autoscaling any more: the ScaledObject goes, the Deployment gets its own replica count
    fixed = _task(autoscaling=None, engine={**longer.spec.engine.model_dump()})
    assert sorted(_apply(fixed)) == [f"delete ScaledObject {name}", f"replace Deployment {name}"]
    assert cluster.get("scaledobjects", NAMESPACE, name) is None
    assert cluster.get("services", NAMESPACE, name)["spec"]["clusterIP"] == service_ip  # type: ignore[index]
    assert _apply(fixed) == []


@pytest.mark.parametrize(
    ("mode", "phase", "reason", "fragment"),
    [
        ("ready", "Running", None, "1 of 1 replica(s) available"),
        ("unschedulable", "Failed", "Unschedulable", UNSCHEDULABLE),
        ("crashing", "Failed", "Crashing", "exited 1"),
    ],
)
def test_the_status_is_what_kubernetes_says_of_the_pods(
    cluster: FakeServingCluster, mode: str, phase: str, reason: str | None, fragment: str
) -> None:
    task = _task(autoscaling=None)
    name = task.metadata.name
    assert asyncio.run(kubernetes.observe(name, NAMESPACE, pod_selector(name))).deployment is None
    _apply(task)
    cluster.mode = mode
    view = asyncio.run(kubernetes.observe(name, NAMESPACE, pod_selector(name)))
    got_phase, got_reason, message = kubernetes.classify(view)
    assert (got_phase, got_reason) == (phase, reason)
    assert fragment in message


def test_delete_takes_every_object_down_and_is_idempotent(cluster: FakeServingCluster) -> None:
    task = _task()
    name = task.metadata.name
    _apply(task)
    deleted = asyncio.run(kubernetes.delete_all(name, NAMESPACE))
    assert sorted(deleted) == sorted(f"delete {k} {name}" for k in ("Deployment", "Service", "ScaledObject"))
    assert not cluster.objects
    assert asyncio.run(kubernetes.delete_all(name, NAMESPACE)) == []


def _cluster_service(task: ServingTask, cluster: FakeServingCluster, tmp_path: Path) -> ClusterService:
    """The serve flow's view, with this process as the flow pod: its MLOC home is the "cache volume"."""
    model = tmp_path / "model"
    if not model.exists():
        shutil.copytree(QUICKSTART_MODEL, model)
        adapter = tmp_path / "adapter"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    local = task.model_copy(deep=True)
    local.spec.model.source = LocalSource(type="local", path=str(model))
    local.spec.model.adapters[0].source = LocalSource(type="local", path=str(tmp_path / "adapter"))
    return ClusterService(
        local,
        pool_for_task(local),
        base_dir=tmp_path,
        home=tmp_path / "home",
        base_url=cluster.endpoint(NAMESPACE, task.metadata.name),
    )


def test_converging_through_the_goals_twice_writes_nothing_the_second_time(
    cluster: FakeServingCluster, tmp_path: Path
) -> None:
    ctx = _cluster_service(_task(), cluster, tmp_path)
    first = converge(goals(ctx), ctx, sleep=lambda s: None)
    assert first.achieved, first.to_dict()
    assert [r.outcome for r in first.records] == ["ensured", "ensured", "kept", "kept"]
    writes = list(cluster.writes)
    assert len(writes) == 3
    second = converge(goals(ctx), ctx, sleep=lambda s: None)
    assert [r.outcome for r in second.records] == ["kept"] * 4 and not second.changed
    assert cluster.writes == writes, "the second converge wrote to the API server"
    running = cluster_status(ctx)
    assert (running.phase, running.models) == ("Running", ["mistral-7b-instruct", "mistral-7b-dolly"])


def test_a_service_that_cannot_be_scheduled_fails_with_the_reason_kubernetes_gives(
    cluster: FakeServingCluster, tmp_path: Path
) -> None:
    cluster.mode = "unschedulable"
    ctx = _cluster_service(_task(), cluster, tmp_path)
    result = converge(goals(ctx), ctx, sleep=lambda s: None)
    assert result.failed is not None and result.failed.name == "replicas available"
    assert result.failed.reason == "Unschedulable" and "Insufficient nvidia.com/gpu" in result.failed.detail
    assert [r.outcome for r in result.records][-1] == "skipped"
    failed = cluster_status(ctx)
    assert (failed.phase, failed.reason) == ("Failed", "Unschedulable")
    cluster.mode = "ready"  # a GPU node joined: the next converge finds it Running without writing
    writes = list(cluster.writes)
    assert converge(goals(ctx), ctx, sleep=lambda s: None).achieved
    assert cluster.writes == writes


def test_a_model_that_cannot_be_fetched_fails_before_anything_is_applied(
    cluster: FakeServingCluster, tmp_path: Path
) -> None:
    ctx = _cluster_service(_task(), cluster, tmp_path)
    ctx.task.spec.model.source = LocalSource(type="local", path=str(tmp_path / "nowhere"))
    result = converge(goals(ctx), ctx, sleep=lambda s: None)
    assert result.failed is not None and result.failed.reason == "ModelNotFound"
    assert "does not exist" in result.failed.detail
    assert cluster.writes == []


@pytest.mark.slow
def test_the_serve_flow_converges_on_the_cluster_and_fails_with_the_reason_it_saw(
    cluster: FakeServingCluster, tmp_path: Path, prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mloc-serve flow with backend 'kubernetes', as it runs in a pod of the pool (its MLOC home
    the cache volume): it applies the objects, and a service Kubernetes cannot schedule fails the run."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.serve import serve, status_key

    monkeypatch.setenv("MLOC_HOME", str(tmp_path / "home"))
    ctx = _cluster_service(_task(), cluster, tmp_path)  # local copies of the model and adapter
    cluster.mode = "unschedulable"
    state = serve(ctx.task, str(tmp_path), backend="kubernetes", return_state=True)
    assert state.is_failed()
    assert "Failed (Unschedulable)" in str(state.message)
    assert [w[0] for w in cluster.writes] == ["POST", "POST", "POST"]
    assert (tmp_path / "home" / "serving" / ctx.name / "sources.json").is_file()  # the model went to the "cache volume"
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[status_key(ctx.name)]))
        )
    assert "| phase | Failed |" in str(artifact.data) and "Unschedulable" in str(artifact.data)


@pytest.mark.slow
def test_a_watched_service_is_billed_for_its_ready_replicas_gpus_under_task_type_serving(
    cluster: FakeServingCluster, tmp_path: Path, prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serve flow watching a Running service holds replicas × gpu.count GPUs while it runs; the
    usage report reads its run like a pipeline run's: task type serving, the GPUs as a held interval."""
    import threading
    from datetime import UTC, datetime

    from prefect import get_client

    from flows import pipeline
    from flows import serve as serve_flow
    from flows.usage_compute import BILLED_FLOWS, gpu_hours_by_type, records

    assert (pipeline.FLOW_NAME, serve_flow.FLOW_NAME) == BILLED_FLOWS
    monkeypatch.setenv("MLOC_HOME", str(tmp_path / "home"))
    ctx = _cluster_service(_task(), cluster, tmp_path)

    def take_down_later() -> None:
        time.sleep(6)
        asyncio.run(kubernetes.delete_all(ctx.name, NAMESPACE))

    threading.Thread(target=take_down_later, daemon=True).start()
    started = datetime.now(UTC)
    state = serve_flow.serve(
        ctx.task,
        str(tmp_path),
        backend="kubernetes",
        endpoint=ctx.base_url,
        watch=True,
        poll_seconds=0.5,
        watch_seconds=120,
        return_state=True,
    )
    ended = datetime.now(UTC)
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    tags = run.tags
    assert {"task-type:serving", "owner:jane-roe", "project:chat-assistant", "gpu-count:0"} <= set(tags), tags
    [held] = [t for t in tags if t.startswith("held:")]
    assert held.startswith("held:nvidia-l40s:1:") and not held.endswith(":open"), held  # 1 replica × 1 GPU
    [record] = records([(str(run.id), tags, "COMPLETED", run.start_time, run.end_time)])
    hours = gpu_hours_by_type(record, started.replace(hour=0, minute=0), ended.replace(hour=23, minute=59), ended)
    assert record.task_type == "serving" and set(hours) == {"nvidia-l40s"}
    assert 3 / 3600 <= hours["nvidia-l40s"] <= (ended - started).total_seconds() / 3600 + 2 / 3600, hours
