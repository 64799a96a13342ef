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

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.states import Failed

from configs.models import ServingTask
from tasks.serving.goals import Converged, Goal, GoalRecord, converge
from tasks.serving.status import ServiceStatus, now

FLOW_NAME = "mloc-serve"
STATUS_SUFFIX = "-service-status"


@dataclass(frozen=True)
class Backend:
    """One place a service runs: its goals (and what they work on) for a task, and its status."""

    name: str
    goals: Callable[[ServingTask, Path], tuple[list[Goal[Any]], Any]]
    status: Callable[[ServingTask], ServiceStatus]


def _local() -> Backend:
    from tasks.serving import local

    def goals(task: ServingTask, base_dir: Path) -> tuple[list[Goal[Any]], Any]:
        ctx = local.service(task, base_dir)
        return list(local.goals(ctx)), ctx

    return Backend("local", goals, lambda task: local.status(task.metadata.name))


def _kubernetes() -> Backend:
    """Run where the flow run is a pod of the task's pool: its MLOC home is the cache volume the
    replicas mount, and the Kubernetes API is its service account's (or KUBECONFIG's)."""
    from flows import serve_kubernetes
    from flows.home import mloc_home
    from work_pools import pool_for_task

    def context(task: ServingTask, base_dir: Path) -> serve_kubernetes.ClusterService:
        return serve_kubernetes.ClusterService(task, pool_for_task(task), base_dir=base_dir, home=mloc_home())

    def goals(task: ServingTask, base_dir: Path) -> tuple[list[Goal[Any]], Any]:
        ctx = context(task, base_dir)
        return list(serve_kubernetes.goals(ctx)), ctx

    return Backend("kubernetes", goals, lambda task: serve_kubernetes.cluster_status(context(task, Path("."))))


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
def serve(task: ServingTask, base_dir: str, backend: str = "local") -> dict[str, Any] | State[Any]:
    """Converge ``task``'s service with ``backend`` and return its status and what each goal did;
    a Failed state holding the same when the service is Failed."""
    from prefect.artifacts import create_markdown_artifact

    logger = get_run_logger()
    if backend not in BACKENDS:
        raise ValueError(f"'{backend}' is not a serving backend among [{', '.join(BACKENDS)}]")
    chosen = BACKENDS[backend]()
    goals, ctx = chosen.goals(task, Path(base_dir))

    def told(record: GoalRecord) -> None:
        how = logger.error if record.outcome == "failed" else logger.info
        reason = f" ({record.reason})" if record.reason else ""
        how("goal %s: %s%s in %.1f s — %s", record.name, record.outcome, reason, record.seconds, record.detail)

    converged = converge(goals, ctx, on_record=told)
    try:
        status: ServiceStatus | None = chosen.status(task)
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
    if status.phase == "Failed":  # the run fails too: the UI, automations and `prefect flow-run` see it
        return Failed(message=f"{task.metadata.name} is {status.line()}", data=result)
    return result
