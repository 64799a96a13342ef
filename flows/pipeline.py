"""The pipeline flow: one generic, importable Prefect flow that runs any validated task.

A TrainingTask: preflight-hardware → download → preflight → evaluate (before) → train →
evaluate (after) → upload; an InferenceTask: download → index → answer → upload
(flows/inference.py). Each step is a Prefect task run with its logs; results are published
as Prefect artifacts.
The flow is named ``mloc``, so a deployment of a task is ``mloc/<metadata.name>``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact
from prefect.cache_policies import NO_CACHE

from configs import InferenceTask, ServingTask, TrainingTask, validate_data
from configs.models import Task
from flows import inference, report, trainjob_run
from flows.home import fetch_logged, mloc_home, task_digest, upload_step
from flows.relay import Relay
from tasks import gates, preflight, train
from tasks.gates import QualityGateFailed
from tasks.registry import TASK_TYPES
from tasks.runner import one_child

FLOW_NAME = "mloc"


def run_tags(task_: TrainingTask | Any, *, held_here: bool = True, trainjob: bool = False) -> list[str]:
    """The tags every run carries; the usage report reads them.

    ``gpu``, ``gpu-count`` and ``replicas`` say what the run's own worker holds: the task's
    GPUs per node and its nodes (a run's replicas on one worker are torchrun nodes on that
    machine), or none (``held_here=False``) when the worker lacks the GPUs the task asks for.
    A run whose training is a TrainJob (``trainjob``) runs no node itself: ``gpu:none``,
    ``gpu-count:0``, ``replicas:1`` (its one orchestrating pod); the nodes' GPUs are its held tag.
    """
    spec, gpu = task_.spec, task_.spec.resources.hardware.gpu
    held_here = held_here and not trainjob
    return [
        f"owner:{task_.metadata.owner}",
        f"project:{task_.metadata.project}",
        f"task-type:{spec.task_type}",
        f"gpu:{(gpu.type if held_here else None) or 'none'}",
        f"gpu-count:{gpu.count if held_here else 0}",
        f"replicas:{1 if trainjob else spec.resources.replicas}",
    ]


def gpus_held_here(task_: TrainingTask | InferenceTask) -> tuple[bool, str | None]:
    """Whether this worker holds the GPUs the task asks for (all its replicas' GPUs, since they
    run here), and the line that says why not."""
    from tasks.modeling import cuda_device_count

    gpu, replicas = task_.spec.resources.hardware.gpu, task_.spec.resources.replicas
    if gpu.count == 0:
        return True, None
    visible = cuda_device_count()
    if visible >= gpu.count * replicas:
        return True, None
    return False, (
        f"this worker has {visible} CUDA GPU(s) for the {gpu.count * replicas} × {gpu.type} the task asks for: "
        "the run is tagged and billed with 0 GPUs"
    )


def _tag_this_run(tags: list[str]) -> None:
    """Tag the flow run itself, so a run started from the UI with edited parameters is tagged right too."""
    from prefect import get_client
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        # replace, not add: a run from a deployment copies its tags, and edited parameters may differ
        keys = {t.split(":", 1)[0] + ":" for t in tags}
        kept = {t for t in flow_run.tags if not t.startswith(tuple(keys))}
        client.update_flow_run(flow_run.id, tags=sorted(kept | set(tags)))


# --- steps ------------------------------------------------------------------------------------


@task(name="download", task_run_name="download", cache_policy=NO_CACHE)
def download_step(task_: TrainingTask, base_dir: Path) -> dict[str, dict[str, Any]]:
    sources: dict[str, Any] = {"model": task_.spec.model.source, "dataset": task_.spec.dataset.source}
    if task_.spec.reward_model is not None:
        sources["reward_model"] = task_.spec.reward_model.source
    fetched = {}
    for role, source in sources.items():
        kind: Literal["model", "dataset"] = "dataset" if role == "dataset" else "model"
        fetched[role] = fetch_logged(role, source, kind, base_dir)
    return fetched


@task(name="preflight-hardware", task_run_name="preflight-hardware", cache_policy=NO_CACHE)
def hardware_step(task_: TrainingTask) -> None:
    for note in preflight.hardware(task_, nodes_elsewhere=trainjob_run.target_from_env() is not None):
        get_run_logger().info(note)


# log_prints off: the flow's print capture would take the stdout that datasets' hashing (dill)
# captures for itself, and log pages of bytecode disassembly
@task(name="preflight", task_run_name="preflight", cache_policy=NO_CACHE, log_prints=False)
def preflight_step(task_: TrainingTask, inputs: dict[str, dict[str, Any]], base_dir: Path) -> None:
    for note in preflight.preflight(task_, inputs, base_dir):
        get_run_logger().info(note)


@task(name="evaluate", task_run_name="evaluate-{label}", cache_policy=NO_CACHE)
def evaluate_step(
    task_: TrainingTask, inputs: dict[str, dict[str, Any]], workdir: Path, label: str, trained: dict[str, Any] | None
) -> dict[str, Any]:
    """Score the base model (trained=None) or the trained one: its adapter on the base, or its full weights."""
    from tasks.jobs import EvaluateJob
    from tasks.runner import run_child

    logger = get_run_logger()
    model_path, adapter_dir = inputs["model"]["path"], None
    if trained is not None and task_.spec.model.adapter is not None:
        adapter_dir = trained["final_dir"]
    elif trained is not None:
        model_path = trained["final_dir"]
    job = EvaluateJob(
        label=cast(Literal["before", "after"], label),
        task=task_.model_dump(mode="json", by_alias=True),
        model_path=model_path,
        dataset_path=inputs["dataset"]["path"],
        dataset_source_type=inputs["dataset"]["source_type"],
        adapter_dir=adapter_dir,
        base_model_path=inputs["model"]["path"],
        reward_model_path=inputs.get("reward_model", {}).get("path"),
        result_path=str(workdir / f"eval-{label}.json"),
    )
    from prefect.runtime import flow_run

    from tasks import reuse

    earlier = reuse.finished(job, trained)
    if earlier is not None:  # this very evaluation, of this very model, already done in this work dir
        result, by = earlier
        logger.info(f"evaluation ({label}) reused from {f'run {by}' if by else 'an earlier run'}, not evaluated again")
        return result
    relay = Relay(logger)
    target = trainjob_run.target_from_env()
    try:
        if target is None:
            run_child(job, workdir, relay.line, lambda event: None)
        else:  # on one of the task's nodes: this flow pod has no GPU
            return trainjob_run.evaluate_as_trainjob(
                task_,
                job,
                workdir,
                relay.line,
                target,
                flow_run_id=str(flow_run.id),
                attempt=flow_run.run_count,
                shared=trainjob_run.shared_roots(mloc_home()),
            )
    finally:
        relay.close()
    reuse.remember(job, trained, str(flow_run.id))
    return json.loads(Path(job.result_path).read_text())


@task(name="train", task_run_name="train", cache_policy=NO_CACHE)
def train_step(task_: TrainingTask, inputs: dict[str, dict[str, Any]], workdir: Path) -> dict[str, Any]:
    name = task_.metadata.name
    artifact = cast(
        UUID, create_progress_artifact(progress=0.0, key=f"{name}-progress", description=f"Training {name}")
    )
    # the child's lines and progress reach Prefect from a thread of the relay's: training never
    # waits on the API, and survives it being down
    relay = Relay(get_run_logger(), progress_artifact=artifact)
    target = trainjob_run.target_from_env()
    try:
        if target is None:
            from prefect.runtime import flow_run

            result = train.run_training(task_, inputs, workdir, relay.line, relay.event, flow_run_id=str(flow_run.id))
        else:
            from prefect.runtime import flow_run

            result = trainjob_run.run_as_trainjob(
                task_,
                inputs,
                workdir,
                relay.line,
                relay.event,
                target,
                flow_run_id=str(flow_run.id),
                attempt=flow_run.run_count,
                shared=trainjob_run.shared_roots(mloc_home()),
            )
        relay.progress(100.0)
    finally:
        relay.close()
    return result.to_dict()


# --- the flow ---------------------------------------------------------------------------------


@flow(name=FLOW_NAME, flow_run_name="{task.metadata.name}", log_prints=True)
def pipeline(task: Task, base_dir: str = ".", task_yaml_sha256: str | None = None) -> dict[str, Any]:
    """Run one MLOC task: download, preflight, evaluate, train, evaluate, upload (training), or
    download, index, answer, upload (inference)."""
    started = time.time()
    checked = validate_data(task.model_dump(mode="json", by_alias=True), TASK_TYPES)
    if not checked.valid or checked.task is None:
        raise ValueError("the task is not valid:\n" + "\n".join(i.format() for i in checked.issues))
    task_ = checked.task
    if isinstance(task_, ServingTask):
        raise ValueError(
            f"'{task_.metadata.name}' is a ServingTask: it is served, not run — serve it with "
            "`mloc serve up FILE --local` (or the mloc-serve flow), which keeps it up and reports its status"
        )
    if isinstance(task_, InferenceTask):
        held, why_not = gpus_held_here(task_)
        _tag_this_run(run_tags(task_, held_here=held))
        if why_not:
            get_run_logger().warning(why_not)
        return inference.run_inference(task_, Path(base_dir).resolve(), started, task_yaml_sha256)
    target = trainjob_run.target_from_env()
    if target is not None:  # the TrainJob's nodes hold the GPUs (a held tag once they run), not this pod
        from prefect.runtime import flow_run

        _tag_this_run(run_tags(task_, trainjob=True))
        name = trainjob_run.trainjob_name(task_, str(flow_run.id), flow_run.run_count)
        get_run_logger().info(trainjob_run.describe(task_, name))
    else:
        held, why_not = gpus_held_here(task_)
        _tag_this_run(run_tags(task_, held_here=held))
        if why_not:
            get_run_logger().warning(why_not)
    root = Path(base_dir).resolve()
    hardware_step(task_)  # before the download: a 7B model is 14 GB to fetch for a run that cannot start
    inputs = download_step(task_, root)
    preflight_step(task_, inputs, root)
    # a fresh work dir whenever the task or its inputs change; a re-run of the same resumes
    key = hashlib.sha256(
        json.dumps([task_digest(task_), {r: i["content_hash"] for r, i in inputs.items()}]).encode()
    ).hexdigest()[:16]
    workdir = mloc_home() / "runs" / task_.metadata.name / key
    evaluating = task_.spec.evaluation.enabled
    # three task runs, one child process: it imports the ML stack once for all three
    with one_child():
        before = evaluate_step(task_, inputs, workdir, "before", None) if evaluating else None
        trained = train_step(task_, inputs, workdir)
        after = evaluate_step(task_, inputs, workdir, "after", trained) if evaluating else None
    metrics = gates.metrics(task_, before, after)
    results = report.eval_results(task_, inputs, before, after, metrics)
    report.publish(task_, results)
    failed = gates.failed_gates(task_, metrics)
    if failed:
        raise QualityGateFailed("quality gates not met, nothing uploaded: " + "; ".join(failed))
    staging = workdir / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    report.stage(task_, trained, results, workdir, staging)
    finished = datetime.now(UTC)
    manifest = report.manifest(
        task_,
        inputs,
        trained,
        metrics,
        task_digest(task_),
        task_yaml_sha256,
        time.time() - started,
        finished.isoformat(),
    )
    if task_.spec.schedule is not None:  # retraining: every run is kept, under its own version
        manifest["version"] = f"{finished:%Y%m%dT%H%M%SZ}-{manifest['flow_run_id'][:8]}"
    uploaded = upload_step(task_, staging, manifest, root)
    report.publish_outputs(task_, uploaded, manifest)
    return {
        "name": task_.metadata.name,
        "task_type": task_.spec.task_type,
        "output": uploaded["uri"],
        "metrics": metrics,
        "training": trained,
        "inputs": inputs,
        "workdir": str(workdir),
    }
