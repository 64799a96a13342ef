"""The serve flow (``mloc-serve``): converge a ServingTask with a backend, publish how it stands.

A backend is what tasks/serving/ offers for one place a service can run: its goals
(tasks/serving/goals.py) and its status. :data:`BACKENDS` is the registry: ``local`` (a server
process on loopback, tasks/serving/local.py) and ``kubernetes`` (a Deployment on the task's pool,
flows/serve_kubernetes.py, for a flow run that is a pod of that pool); a new place is one module
plus one line here. The flow logs each goal's outcome as
converging settles it, and publishes the status as the markdown artifact
``<name>-service-status``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.states import Failed

from configs.models import ServingTask
from tasks.serving.goals import Converged, Goal, GoalRecord, converge
from tasks.serving.status import ServiceStatus, now

FLOW_NAME = "mloc-serve"  # the usage report reads its runs too (flows.usage_compute.BILLED_FLOWS)
STATUS_SUFFIX = "-service-status"


@dataclass(frozen=True)
class Backend:
    """One place a service runs: its goals (and what they work on) for a task, and its status."""

    name: str
    goals: Callable[[ServingTask, Path, str | None], tuple[list[Goal[Any]], Any]]
    status: Callable[[ServingTask, str | None], ServiceStatus]


def _local() -> Backend:
    from tasks.serving import local

    def goals(task: ServingTask, base_dir: Path, endpoint: str | None) -> tuple[list[Goal[Any]], Any]:
        ctx = local.service(task, base_dir)
        return list(local.goals(ctx)), ctx

    return Backend("local", goals, lambda task, endpoint: local.status(task.metadata.name))


def _kubernetes() -> Backend:
    """Run where the flow run is a pod of the task's pool: its MLOC home is the cache volume the
    replicas mount, and the Kubernetes API is its service account's (or KUBECONFIG's)."""
    from flows import serve_kubernetes
    from flows.home import mloc_home
    from work_pools import pool_for_task

    def context(task: ServingTask, base_dir: Path, endpoint: str | None) -> serve_kubernetes.ClusterService:
        return serve_kubernetes.ClusterService(
            task, pool_for_task(task), base_dir=base_dir, home=mloc_home(), base_url=endpoint or ""
        )

    def goals(task: ServingTask, base_dir: Path, endpoint: str | None) -> tuple[list[Goal[Any]], Any]:
        ctx = context(task, base_dir, endpoint)
        return list(serve_kubernetes.goals(ctx)), ctx

    def status(task: ServingTask, endpoint: str | None) -> ServiceStatus:
        return serve_kubernetes.cluster_status(context(task, Path("."), endpoint))

    return Backend("kubernetes", goals, status)


BACKENDS: dict[str, Callable[[], Backend]] = {"local": _local, "kubernetes": _kubernetes}


def status_key(name: str) -> str:
    return f"{name}{STATUS_SUFFIX}"


def _markdown(status: ServiceStatus, converged: Converged) -> str:
    rows = "\n".join(
        f"| {r.name} | {r.outcome} | {r.reason or ''} | {r.detail.splitlines()[0] if r.detail else ''} |"
        for r in converged.records
    )
    return f"{status.markdown()}\n## Goals\n\n| goal | outcome | reason | detail |\n|---|---|---|---|\n{rows}\n"


def _failed_status(task: ServingTask, backend: str, failed: GoalRecord, probed: ServiceStatus | None) -> ServiceStatus:
    """The status of a converge that failed at ``failed``, with what the probes saw besides."""
    return ServiceStatus(
        name=task.metadata.name,
        phase="Failed",
        reason=failed.reason,
        message=f"{failed.name}: {failed.detail}",
        backend=backend,
        engine=probed.engine if probed else None,
        base_url=probed.base_url if probed else None,
        models=probed.models if probed else [],
        replicas_wanted=probed.replicas_wanted if probed else 0,
        replicas_ready=probed.replicas_ready if probed else 0,
        since=now(),
    )


@flow(name=FLOW_NAME, log_prints=False)
def serve(
    task: ServingTask,
    base_dir: str,
    backend: str = "local",
    endpoint: str | None = None,
    watch: bool = False,
    watch_seconds: float | None = None,
    poll_seconds: float = 30.0,
) -> dict[str, Any] | State[Any]:
    """Converge ``task``'s service with ``backend`` and return its status and what each goal did;
    a Failed state holding the same when the service is Failed.

    ``endpoint`` is where this run reaches the service (default: the backend's own address, on a
    cluster its Service's DNS name). With ``watch``, a Running service is then watched, every
    ``poll_seconds``, until it is deleted (or for ``watch_seconds``): the run stays Running for as
    long as the service is, and carries the GPUs its ready replicas hold as held intervals
    (replicas × gpu.count, of its GPU type), which the usage report bills under task type serving.
    """
    from prefect.artifacts import create_markdown_artifact

    logger = get_run_logger()
    if backend not in BACKENDS:
        raise ValueError(f"'{backend}' is not a serving backend among [{', '.join(BACKENDS)}]")
    chosen = BACKENDS[backend]()
    _tag_run(task)
    goals, ctx = chosen.goals(task, Path(base_dir), endpoint)

    def told(record: GoalRecord) -> None:
        how = logger.error if record.outcome == "failed" else logger.info
        reason = f" ({record.reason})" if record.reason else ""
        how("goal %s: %s%s in %.1f s — %s", record.name, record.outcome, reason, record.seconds, record.detail)

    converged = converge(goals, ctx, on_record=told)
    try:
        status: ServiceStatus | None = chosen.status(task, endpoint)
    except LookupError:  # nothing was started
        status = None
    failed = converged.failed
    if failed is not None and (status is None or status.phase != "Failed"):
        # what this converge could not do decides; a server of an older spec may still answer
        status = _failed_status(task, chosen.name, failed, status)
    assert status is not None  # a converge that achieved its goals leaves a service to probe
    logger.info("service %s: %s", task.metadata.name, status.line())
    create_markdown_artifact(
        _markdown(status, converged),
        key=status_key(task.metadata.name),
        description=f"How the service {task.metadata.name} stands",
    )
    result = {"status": status.to_dict(), "converged": converged.to_dict()}
    if watch and status.phase == "Running":
        watched = _watch(task, lambda: chosen.status(task, endpoint), watch_seconds, poll_seconds)
        if watched is not None:
            status = watched
            result["status"] = status.to_dict()
    if status.phase == "Failed":  # the run fails too: the UI, automations and `prefect flow-run` see it
        return Failed(message=f"{task.metadata.name} is {status.line()}", data=result)
    return result


# --- usage: the run is tagged as the service's, and holds what its replicas hold ---------------


def _tag_run(task: ServingTask) -> None:
    """The usage tags of a serving run: its owner, project and task type serving; the run itself
    (an orchestrating process) holds no GPU, its replicas' GPUs are held intervals (:func:`_watch`)."""
    from flows.pipeline import _tag_this_run, run_tags

    _tag_this_run(run_tags(task, trainjob=True))


def _hold(gpu_type: str, gpus: int, since: datetime, end: datetime | None) -> None:
    """Open (end None) or close one held interval on this flow run, its tags read fresh."""
    from prefect import get_client
    from prefect.runtime import flow_run

    from flows.usage_compute import held_tag, with_held

    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run.id).tags
        client.update_flow_run(flow_run.id, tags=with_held(current, held_tag(gpu_type, gpus, since, end)))


def _watch(
    task: ServingTask, read: Callable[[], ServiceStatus], watch_seconds: float | None, poll_seconds: float
) -> ServiceStatus | None:
    """Follow the service until it is deleted (or ``watch_seconds`` pass), holding an interval of
    ready replicas × gpu.count GPUs while it is Running; the last status seen, None once deleted."""
    logger = get_run_logger()
    gpu = task.spec.resources.hardware.gpu
    deadline = None if watch_seconds is None else time.monotonic() + watch_seconds
    held: tuple[int, datetime] | None = None  # (GPUs, since) of the open interval
    last: ServiceStatus | None = None
    try:
        while deadline is None or time.monotonic() < deadline:
            try:
                last = read()
            except LookupError:
                logger.info("service %s is gone: the watch ends", task.metadata.name)
                last = None
                break
            gpus = last.replicas_ready * gpu.count if last.phase == "Running" else 0
            if held is not None and held[0] != gpus:
                _hold(gpu.type or "any", held[0], held[1], datetime.now(UTC))
                held = None
            if held is None and gpus > 0:
                held = (gpus, datetime.now(UTC))
                _hold(gpu.type or "any", gpus, held[1], None)
                logger.info("service %s holds %d GPU(s) (%s)", task.metadata.name, gpus, last.line())
            time.sleep(poll_seconds)
    finally:
        if held is not None:
            _hold(gpu.type or "any", held[0], held[1], datetime.now(UTC))
    return last
