"""A multi-node training on Kubernetes: the train step submits a Kubeflow TrainJob, follows it and
cleans it up, while the flow run stays the orchestrator.

The flow pod of such a task (``work_pools.job_template.runs_as_trainjob``) is told so by the
variables ``job_variables`` gives it (:func:`target_from_env`). The train step then:

- builds the job as any launcher does (``tasks.train.prepare_training``: a completed result is
  reused, a complete checkpoint resumed) and writes it into the run's work dir under MLOC_HOME,
  the cache volume the nodes mount at the same path; every input the nodes read must be there
  or under HF_HOME (:func:`unshared_inputs`);
- creates the TrainJob (``work_pools.trainjob.render_trainjob``) named for the flow run attempt
  (:func:`trainjob_name`), each node running ``launcher_command``: torchrun, whose nodes and
  static rendezvous come from the PET_* variables Kubeflow's torch-distributed runtime sets;
- follows it through the Kubernetes API (the pods by the labels JobSet puts on them:
  ``jobset.sigs.k8s.io/jobset-name`` = the TrainJob's name, ``jobset.sigs.k8s.io/replicatedjob-name``
  = ``node``, ``batch.kubernetes.io/job-completion-index`` = the node's rank) until its
  ``Complete`` or ``Failed`` condition, streaming node 0's log (rank 0's lines, its events) to
  the step; nodes not all started within ``spec.execution.scheduling_timeout_seconds`` fail the
  step with the reason their pods give (e.g. Unschedulable);
- deletes the TrainJob unless it completed (a failure, the deadline, a cancellation: Prefect
  turns the SIGTERM of a cancelled or deleted flow pod into ``TerminationSignal``, which unwinds
  through the ``finally``); a completed one is left to Kubernetes, whose finished-job TTL and
  Kubeflow's own clean-up remove it, its pods' logs kept until then;
- records the GPUs its nodes hold as a ``held`` tag on the flow run, opened when the first pod
  runs and closed when the TrainJob ends, however it ends (flows/usage.py).

The client is kubernetes_asyncio through prefect-kubernetes' ``KubernetesCredentials``: the
in-cluster service account in a pod, else the kubeconfig (``KUBECONFIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from tasks import train
from tasks.jobs import EvaluateJob, TrainJob
from tasks.launch import (
    CHILD_ENV,
    LAUNCHER_ENV,
    Launch,
    child_command,
    failure_message,
    launch_for,
    launcher_command,
    split_rank,
)
from tasks.runner import EVENT
from work_pools.job_template import (
    DEFAULT_CACHE_CLAIM,
    NAMESPACE,
    POD_NAME_ENV,
    POD_UID_ENV,
    TRAIN_LAUNCHER_ENV,
    TRAINJOB_CACHE_CLAIM_ENV,
    TRAINJOB_NAMESPACE_ENV,
    TRAINJOB_POOL_ENV,
)
from work_pools.trainjob import API_VERSION, NODE

if TYPE_CHECKING:
    from configs import TrainingTask

GROUP, VERSION = API_VERSION.split("/")
PLURAL = "trainjobs"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
NODE_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
POLL_S = 3.0
LOG_DRAIN_S = 30.0  # after the TrainJob ends, how long node 0's log stream gets to deliver its last lines
MAX_API_FAILURES = 20  # polls in a row the API may fail before the step gives up (and deletes the TrainJob)
_INPUT_FIELDS = {
    "model": "spec.model.source",
    "dataset": "spec.dataset.source",
    "reward_model": "spec.reward_model.source",
}


class TrainJobError(RuntimeError):
    """The TrainJob failed, could not be scheduled in time, or could not be submitted."""


@dataclass(frozen=True)
class Target:
    """Where this flow run's TrainJobs go: the pool whose nodes they run on, its namespace and cache claim."""

    pool: str
    namespace: str = NAMESPACE
    cache_claim: str = DEFAULT_CACHE_CLAIM


def target_from_env() -> Target | None:
    """The TrainJob target this flow pod was given (job_template.job_variables); None: train here."""
    if os.environ.get(TRAIN_LAUNCHER_ENV) != "trainjob":
        return None
    pool = os.environ.get(TRAINJOB_POOL_ENV)
    if not pool:
        raise TrainJobError(f"{TRAIN_LAUNCHER_ENV}=trainjob needs {TRAINJOB_POOL_ENV}, the pool the nodes run on")
    return Target(
        pool=pool,
        namespace=os.environ.get(TRAINJOB_NAMESPACE_ENV) or NAMESPACE,
        cache_claim=os.environ.get(TRAINJOB_CACHE_CLAIM_ENV) or DEFAULT_CACHE_CLAIM,
    )


def trainjob_name(task: TrainingTask, flow_run_id: str, attempt: int, step: str = "train") -> str:
    """``<task name>-<flow run id[:8]>-<attempt>`` for the training (``-<step>`` added for another
    step, e.g. ``evaluate-before``), the task name shortened so that the last node's pod name
    (``<name>-node-0-<R-1>``) is a DNS label; a DNS-1035 name, as Kubeflow requires."""
    suffix = f"-{flow_run_id.replace('-', '')[:8]}-{attempt}" + ("" if step == "train" else f"-{step}")
    longest_pod = len(f"-{NODE}-0-{task.spec.resources.replicas - 1}")
    base = task.metadata.name if task.metadata.name[0].isalpha() else f"mloc-{task.metadata.name}"
    base = base[: 63 - longest_pod - len(suffix)].rstrip("-")
    return base + suffix


def describe(task: TrainingTask, name: str) -> str:
    gpu, replicas = task.spec.resources.hardware.gpu, task.spec.resources.replicas
    each = f"{gpu.count} × {gpu.type} GPU(s)" if gpu.count else "no GPU (CPU)"
    return f"the training runs as Kubeflow TrainJob {name} of {replicas} nodes × {each}; this flow run holds no GPU"


def shared_roots(mloc_home: Path) -> list[Path]:
    """The folders this pod shares with the TrainJob's nodes: the cache volume's mounts."""
    roots = [mloc_home]
    if os.environ.get("HF_HOME"):
        roots.append(Path(os.environ["HF_HOME"]))
    return [root.resolve() for root in roots]


def unshared_inputs(inputs: dict[str, dict[str, Any]], roots: list[Path]) -> list[str]:
    """A problem per input the TrainJob's nodes could not read: one outside the shared volume."""
    problems = []
    for role, got in inputs.items():
        path = Path(got["path"]).resolve()
        if not any(path.is_relative_to(root) for root in roots):
            problems.append(
                f"{_INPUT_FIELDS.get(role, role)}: {path} is on this pod only, and the training runs on nodes of "
                f"its own that see only the shared cache volume ({', '.join(map(str, roots))}) — put it there, "
                "or give a source (huggingface, s3) that is downloaded into it"
            )
    return problems


# --- the train step's side ------------------------------------------------------------------------


@dataclass
class _Run:
    """What one TrainJob's submission has done so far: what the clean-up undoes."""

    name: str
    namespace: str
    flow_run_id: str
    gpu_type: str | None
    gpus: int  # all nodes' GPUs: what the held tag counts
    step: str = "train"  # the step's job: its log is <step>.log, as a child's on one machine
    created: bool = False
    completed: bool = False
    held_since: datetime | None = None
    events: list[str] = field(default_factory=list)


def run_as_trainjob(
    task: TrainingTask,
    inputs: dict[str, dict[str, Any]],
    workdir: Path,
    on_line: Callable[[str], None],
    on_event: Callable[[dict[str, Any]], None],
    target: Target,
    *,
    flow_run_id: str,
    attempt: int,
    shared: list[Path],
) -> train.TrainResult:
    """Train ``task`` as a TrainJob on ``target``'s nodes and return rank 0's result; a completed
    training in ``workdir`` is reused, a checkpoint resumed, as on one machine. ``shared``: the
    folders the nodes see too (:func:`shared_roots`)."""
    prepared = train.prepare_training(task, inputs, workdir, on_line, on_event)
    if isinstance(prepared, train.TrainResult):
        return prepared
    launch = launch_for(task)
    name = trainjob_name(task, flow_run_id, attempt)
    on_line(describe(task, name))
    run_job_on_nodes(
        task,
        prepared,
        workdir,
        on_line,
        on_event,
        target,
        launch=launch,
        name=name,
        flow_run_id=flow_run_id,
        shared=shared,
    )
    return train.job_result(prepared)


def evaluate_as_trainjob(
    task: TrainingTask,
    job: EvaluateJob,
    workdir: Path,
    on_line: Callable[[str], None],
    target: Target,
    *,
    flow_run_id: str,
    attempt: int,
    shared: list[Path],
) -> dict[str, Any]:
    """Run an evaluation on one of the task's nodes (a one-node TrainJob with the GPUs of one node):
    the orchestrating flow pod has none, and a 4-bit model cannot even load without CUDA. Returns its result."""
    gpu = task.spec.resources.hardware.gpu
    launch = Launch(nodes=1, procs_per_node=1, gpus_per_node=gpu.count)
    name = trainjob_name(task, flow_run_id, attempt, job.name)
    each = f"{gpu.count} × {gpu.type} GPU(s)" if gpu.count else "no GPU (CPU)"
    on_line(f"{job.name} runs as Kubeflow TrainJob {name} on one node with {each}")
    run_job_on_nodes(
        task,
        job,
        workdir,
        on_line,
        lambda event: None,
        target,
        launch=launch,
        name=name,
        flow_run_id=flow_run_id,
        shared=shared,
    )
    result: dict[str, Any] = json.loads(Path(job.result_path).read_text())
    return result


def run_job_on_nodes(
    task: TrainingTask,
    job: TrainJob | EvaluateJob,
    workdir: Path,
    on_line: Callable[[str], None],
    on_event: Callable[[dict[str, Any]], None],
    target: Target,
    *,
    launch: Launch,
    name: str,
    flow_run_id: str,
    shared: list[Path],
) -> None:
    """Run a step's ``job`` as TrainJob ``name`` of ``launch``'s nodes on ``target``, following it to
    its end and deleting it unless it completed; raises TrainJobError when it does not complete."""
    from work_pools.catalog import pool_named
    from work_pools.trainjob import render_trainjob

    problems = unshared_inputs(_job_paths(job), shared)
    if problems:
        raise TrainJobError(
            f"the {job.name} TrainJob's nodes cannot read what it needs:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    workdir.mkdir(parents=True, exist_ok=True)
    job_path = workdir / f"{job.name}-job.json"
    job_path.write_text(job.model_dump_json(indent=1))
    pool = pool_named(target.pool)
    variables = {
        **LAUNCHER_ENV,
        **CHILD_ENV,
        # PET_MASTER_ADDR/PORT make torchrun use its static rendezvous, whose TCPStore waits `timeout`
        # seconds for every node to join (600 unless set)
        "PET_RDZV_CONF": f"timeout={launch.rendezvous_timeout_s}",
    }
    env = [{"name": name, "value": value} for name, value in variables.items()]
    # one process is the plain child; several are torchrun's, the same command as on one machine
    command = (launcher_command if launch.distributed else child_command)(str(job_path), python="python")
    manifest = render_trainjob(
        task,
        pool,
        name=name,
        command=command,
        env=env,
        namespace=target.namespace,
        cache_claim=target.cache_claim,
        nodes=launch.nodes,
        procs_per_node=launch.procs_per_node,
    )
    owner = _owner_reference()
    if owner is not None:  # deleted with this pod even when the pod cannot clean up (SIGKILL, its node lost)
        manifest["metadata"]["ownerReferences"] = [owner]
    gpu = task.spec.resources.hardware.gpu
    gpus = launch.nodes * gpu.count if pool.gpu_type is not None else 0
    run = _Run(name, target.namespace, flow_run_id, gpu.type, gpus, step=job.name)
    try:
        asyncio.run(_submit_and_follow(run, manifest, task, launch, workdir, on_line, on_event))
    finally:
        # a fresh loop: a TerminationSignal (the flow pod deleted on cancellation) leaves the first one
        # stopped midway, its tasks cancelled
        asyncio.run(_clean_up(run, on_line))


def _owner_reference() -> dict[str, Any] | None:
    """This flow pod as the owner of what it submits (its name and uid from the downward API,
    job_template.POD_NAME_ENV / POD_UID_ENV); None outside such a pod."""
    name, uid = os.environ.get(POD_NAME_ENV), os.environ.get(POD_UID_ENV)
    if not (name and uid):
        return None
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}


def _job_paths(job: TrainJob | EvaluateJob) -> dict[str, dict[str, Any]]:
    """The paths a job's nodes read or write, by the task field they come from."""
    paths = {"model": job.model_path, "dataset": job.dataset_path, "reward_model": job.reward_model_path}
    if isinstance(job, TrainJob):
        paths["spec.hyperparameters.output_dir"] = job.output_dir
    else:
        paths |= {"the base model": job.base_model_path, "the trained adapter": job.adapter_dir}
    return {role: {"path": path} for role, path in paths.items() if path}


@contextlib.asynccontextmanager
async def _clients() -> AsyncIterator[tuple[Any, Any]]:
    from blocks.credentials import kubernetes_credentials

    credentials = kubernetes_credentials()
    async with (
        credentials.get_client("custom_objects") as custom,
        credentials.get_client("core") as core,
    ):
        yield custom, core


async def _submit_and_follow(
    run: _Run,
    manifest: dict[str, Any],
    task: TrainingTask,
    launch: Launch,
    workdir: Path,
    on_line: Callable[[str], None],
    on_event: Callable[[dict[str, Any]], None],
) -> None:
    from kubernetes_asyncio.client.exceptions import ApiException

    async with _clients() as (custom, core):
        try:
            await custom.create_namespaced_custom_object(GROUP, VERSION, run.namespace, PLURAL, manifest)
        except ApiException as exc:
            body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
            raise TrainJobError(f"TrainJob {run.name} could not be created: {exc.status} {exc.reason}: {body}") from exc
        run.created = True
        deadline = time.monotonic() + task.spec.execution.scheduling_timeout_seconds
        started: set[str] = set()  # the nodes' pods seen running (or finished)
        log_task: asyncio.Task[None] | None = None
        failures = 0
        while True:
            try:
                trainjob = await custom.get_namespaced_custom_object(GROUP, VERSION, run.namespace, PLURAL, run.name)
                pods = (await core.list_namespaced_pod(run.namespace, label_selector=_node_selector(run.name))).items
                failures = 0
            except ApiException as exc:
                if exc.status == 404:
                    raise TrainJobError(f"TrainJob {run.name} was deleted by someone else while it ran") from exc
                failures += 1
                if failures > MAX_API_FAILURES:
                    raise TrainJobError(f"the Kubernetes API failed {failures} times in a row: {exc}") from exc
                await asyncio.sleep(POLL_S)
                continue
            running = {
                p.metadata.name for p in pods if p.status and p.status.phase in ("Running", "Succeeded", "Failed")
            }
            started |= running
            if running and run.held_since is None and run.gpus:
                run.held_since = datetime.now(UTC)
                await asyncio.to_thread(_tag_held, run, None)
            node0 = [p for p in pods if _node_index(p) == 0 and p.metadata.name in running]
            if node0 and log_task is None:
                log_task = asyncio.create_task(
                    _stream_log(core, run, node0[0].metadata.name, workdir, on_line, on_event)
                )
            condition = _terminal_condition(trainjob)
            if condition is not None:
                await _drain(log_task)
                if condition["type"] == "Complete":
                    run.completed = True
                    return
                raise TrainJobError(await _failure(core, run, launch, pods, condition))
            if len(started) < launch.nodes and time.monotonic() > deadline:
                raise TrainJobError(_unscheduled(run, task, launch, pods, started))
            await asyncio.sleep(POLL_S)


async def _clean_up(run: _Run, on_line: Callable[[str], None]) -> None:
    """Delete the TrainJob unless it completed, and close the held interval, whatever happened."""
    try:
        if run.created and not run.completed:
            from kubernetes_asyncio.client.exceptions import ApiException

            async with _clients() as (custom, _):
                try:
                    # foreground: its JobSet, Jobs and pods go with it, and the GPUs are free once it is gone
                    await custom.delete_namespaced_custom_object(
                        GROUP, VERSION, run.namespace, PLURAL, run.name, propagation_policy="Foreground"
                    )
                    on_line(f"TrainJob {run.name} deleted")
                except ApiException as exc:
                    if exc.status != 404:
                        on_line(
                            f"TrainJob {run.name} could not be deleted ({exc.status} {exc.reason}): delete it by hand"
                        )
    finally:
        if run.held_since is not None:
            await asyncio.to_thread(_tag_held, run, datetime.now(UTC))


def _tag_held(run: _Run, end: datetime | None) -> None:
    """Add (end None) or close the run's held interval on the flow run, read fresh from the server:
    update_flow_run replaces the whole list."""
    from prefect import get_client

    from flows.usage_compute import held_tag, with_held

    assert run.held_since is not None
    tag = held_tag(run.gpu_type or "any", run.gpus, run.held_since, end)
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(UUID(run.flow_run_id)).tags
        client.update_flow_run(UUID(run.flow_run_id), tags=with_held(current, tag))


def _node_selector(name: str) -> str:
    return f"{JOBSET_NAME_LABEL}={name},{REPLICATED_JOB_LABEL}={NODE}"


def _node_index(pod: Any) -> int | None:
    value = (pod.metadata.labels or {}).get(NODE_INDEX_LABEL)
    return int(value) if value is not None and value.isdigit() else None


def _terminal_condition(trainjob: dict[str, Any]) -> dict[str, Any] | None:
    for condition in (trainjob.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return dict(condition)
    return None


async def _stream_log(
    core: Any,
    run: _Run,
    pod: str,
    workdir: Path,
    on_line: Callable[[str], None],
    on_event: Callable[[dict[str, Any]], None],
) -> None:
    """Node 0's log, followed: its lines to ``on_line`` and ``<workdir>/<step>.log`` (as a child on one
    machine writes them), rank 0's events to ``on_event``.

    A stream that ends while the container still runs (the API server or kubelet dropped it) is
    followed again from where it stopped: lines carry the API's timestamps, the new stream starts a
    little before the last one seen, and what was already delivered is skipped. The log is complete
    when a new stream brings nothing new.
    """
    from kubernetes_asyncio.client.exceptions import ApiException

    log_path = workdir / f"{run.step}.log"
    if log_path.exists():
        ended = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(log_path.stat().st_mtime))
        log_path.rename(workdir / f"{run.step}.{ended}.log")
    last: str | None = None  # the newest timestamp delivered, normalised (_stamp_key)
    at_last = 0  # how many delivered lines carry it
    with open(log_path, "w") as log:
        for attempt in range(MAX_LOG_STREAMS):
            if attempt:
                await asyncio.sleep(1.0)
            since = {} if last is None else {"since_seconds": max(1, math.ceil(time.time() - _stamp_epoch(last)) + 2)}
            try:
                response = await core.read_namespaced_pod_log(
                    pod, run.namespace, container=NODE, follow=True, timestamps=True, _preload_content=False, **since
                )
            except ApiException:  # the pod is gone: what it printed was delivered
                return
            fresh, repeated = 0, 0
            try:
                async for raw in response.content:
                    stamp, _, line = raw.decode(errors="replace").rstrip("\r\n").partition(" ")
                    key = _stamp_key(stamp)
                    if last is not None and key < last:
                        continue
                    if key == last:
                        repeated += 1
                        if repeated <= at_last:
                            continue
                        at_last += 1
                    else:
                        last, at_last = key, 1
                    fresh += 1
                    _deliver(line, log, on_line, on_event)
            finally:
                response.release()
            if fresh == 0 and last is not None:
                return
            if attempt:
                on_line(f"(node 0's log stream was cut and followed again: {fresh} line(s) recovered)")


MAX_LOG_STREAMS = 50  # streams of one pod's log: the first, and re-follows after it was cut


def _deliver(line: str, log: Any, on_line: Callable[[str], None], on_event: Callable[[dict[str, Any]], None]) -> None:
    rank, text = split_rank(line)
    if text.startswith(EVENT):
        if rank in (None, 0):
            with contextlib.suppress(ValueError):
                on_event(json.loads(text[len(EVENT) :]))
        return
    log.write(line + "\n")
    log.flush()
    on_line(line)


def _stamp_key(stamp: str) -> str:
    """An RFC 3339 timestamp of the API's ("2026-12-02T03:47:00.123456789Z") as a string that sorts
    in time order: its fraction padded to nanoseconds."""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return f"{seconds}.{fraction.ljust(9, '0')[:9]}"


def _stamp_epoch(key: str) -> float:
    seconds = datetime.strptime(key.split(".")[0], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return seconds.timestamp()


async def _drain(log_task: asyncio.Task[None] | None) -> None:
    if log_task is None:
        return
    try:
        await asyncio.wait_for(log_task, LOG_DRAIN_S)
    except Exception:  # the lines are a report; the TrainJob's condition is the outcome
        log_task.cancel()


async def _failure(core: Any, run: _Run, launch: Launch, pods: list[Any], condition: dict[str, Any]) -> str:
    """The Failed condition, with the rank that was lost first and its last lines, read from the nodes' logs."""
    why = f"TrainJob {run.name} failed ({condition.get('reason', '?')}: {condition.get('message', '')})"
    by_node = {_node_index(p): p for p in pods}
    node_lines: list[list[str]] = []
    codes: list[int | None] = []
    for node in range(launch.nodes):
        pod = by_node.get(node)
        codes.append(_exit_code(pod) if pod is not None else None)
        if pod is None:
            node_lines.append([])
            continue
        try:
            text = await core.read_namespaced_pod_log(pod.metadata.name, run.namespace, container=NODE, tail_lines=200)
        except Exception:  # a pod already gone leaves no lines
            text = ""
        node_lines.append(str(text or "").splitlines())
    failed = [(_finished_at(by_node[n]), codes[n] in _STOPPED, n) for n, code in enumerate(codes) if code]
    if not failed:
        return why
    # the node that failed first, not those JobSet stopped because of it (SIGTERM, then SIGKILL)
    first = min(failed)[2]
    codes = [code if node == first else None for node, code in enumerate(codes)]
    return why + "; " + failure_message(run.step, launch, node_lines, codes)


_STOPPED = (137, 143)  # a container killed by SIGKILL or SIGTERM


def _terminated(pod: Any) -> Any:
    for status in (pod.status.container_statuses or []) if pod.status else []:
        if status.name == NODE and status.state and status.state.terminated:
            return status.state.terminated
    return None


def _exit_code(pod: Any) -> int | None:
    terminated = _terminated(pod)
    return None if terminated is None else int(terminated.exit_code)


def _finished_at(pod: Any) -> datetime:
    terminated = _terminated(pod)
    return (terminated.finished_at if terminated is not None else None) or datetime.max.replace(tzinfo=UTC)


def _unscheduled(run: _Run, task: TrainingTask, launch: Launch, pods: list[Any], started: set[str]) -> str:
    """Why the nodes did not all start: each waiting pod's scheduling or container reason."""
    reasons = []
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        if pod.metadata.name in started:
            continue
        status = pod.status
        why = None
        for condition in (status.conditions or []) if status else []:
            if condition.type == "PodScheduled" and condition.status != "True":
                why = f"{condition.reason}: {condition.message}"
        for container in (status.container_statuses or []) if status else []:
            if why is None and container.state and container.state.waiting:
                why = f"{container.state.waiting.reason}: {container.state.waiting.message}"
        reasons.append(
            f"pod {pod.metadata.name} is {status.phase if status else 'Pending'} ({why or 'no reason given'})"
        )
    if not pods:
        reasons.append("no pod of it was created (is Kubeflow Trainer installed, with its torch-distributed runtime?)")
    timeout = task.spec.execution.scheduling_timeout_seconds
    return (
        f"TrainJob {run.name}: {len(started)} of {launch.nodes} nodes started within {timeout} s "
        "(spec.execution.scheduling_timeout_seconds), so it was deleted; " + "; ".join(reasons)
    )
