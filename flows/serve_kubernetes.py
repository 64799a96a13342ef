"""A ServingTask on Kubernetes: its objects rendered for its pool, and the goals that converge it.

This is where the two halves meet: work_pools/serving.py renders the Deployment, Service and
ScaledObject for a pool from a server command, and tasks/serving gives that command (the
engine module's, over the service's folder on the cache volume), applies the objects and
observes the pods. The goals, in order (tasks/serving/goals.py walks them):

1. the model present in the cache: the model and adapters fetched onto the cache volume;
2. the manifests applied: only what differs from the rendering is written;
3. the replicas available, or the reason Kubernetes gives why not (Unschedulable, Crashing, ...);
4. the endpoint serves the model and its adapters (vLLM's /v1/models lists them).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs import ServingTask
from tasks.serving import kubernetes, prepare, status, transformers_serve, vllm
from tasks.serving.goals import Goal, GoalFailed
from tasks.serving.plan import ServePlan, plan_for
from tasks.serving.status import ServiceStatus
from tasks.storage.base import DownloadError
from work_pools.job_template import DEFAULT_CACHE_CLAIM, MLOC_HOME, NAMESPACE
from work_pools.pool_definition import PoolDefinition
from work_pools.serving import DEFAULT_PROMETHEUS, DIGEST_ANNOTATION, pod_selector, render_service

ENGINES = {vllm.ENGINE: vllm, transformers_serve.ENGINE: transformers_serve}


def service_manifests(
    task: Any,
    pool: PoolDefinition,
    *,
    image: str | None = None,
    namespace: str = NAMESPACE,
    cache_claim: str = DEFAULT_CACHE_CLAIM,
    prometheus: str = DEFAULT_PROMETHEUS,
) -> list[dict[str, Any]]:
    """:func:`work_pools.serving.render_service` with the server command of ``task``'s engine,
    its files on the cache volume."""
    engine = ENGINES[task.spec.engine.name]
    command, working_dir = engine.server_command(plan_for(task, MLOC_HOME))
    return render_service(
        task,
        pool,
        command=command,
        working_dir=working_dir,
        image=image,
        namespace=namespace,
        cache_claim=cache_claim,
        prometheus=prometheus,
    )


# --- converging on a cluster ------------------------------------------------------------------


@dataclass
class ClusterService:
    """One ServingTask on a cluster, as the serve flow (in a pod of its pool) converges it.

    ``home`` is MLOC's home as this process sees the cache volume (the pod mounts it at
    MLOC_HOME); the service's files go there and the replicas read them at MLOC_HOME.
    ``base_url`` is where this process reaches the Service: its cluster DNS name by default.
    """

    task: ServingTask
    pool: PoolDefinition
    base_dir: Path
    home: Path
    namespace: str = NAMESPACE
    base_url: str = ""
    objects: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.objects:
            self.objects = service_manifests(self.task, self.pool, namespace=self.namespace)
        if not self.base_url:
            self.base_url = f"http://{self.name}.{self.namespace}.svc:{self.task.spec.port}/v1"

    @property
    def name(self) -> str:
        return self.task.metadata.name

    @property
    def plan(self) -> ServePlan:
        return plan_for(self.task, str(self.home))


def _model_check(ctx: ClusterService) -> tuple[bool, str]:
    if prepare.present(ctx.task, ctx.plan):
        return True, f"{ctx.plan.root} holds {', '.join(ctx.plan.served_names)}"
    return False, f"{ctx.plan.root} does not hold what the spec names"


def _model_ensure(ctx: ClusterService) -> None:
    try:
        prepare.prepare(ctx.task, ctx.plan, base_dir=ctx.base_dir, cache_dir=ctx.home / "cache")
    except DownloadError as exc:
        raise GoalFailed("ModelNotFound", str(exc)) from None


async def _applied_check(ctx: ClusterService) -> tuple[bool, str]:
    pending = await kubernetes.differing(ctx.objects, ctx.namespace, DIGEST_ANNOTATION)
    if pending:
        return False, "; ".join(pending)
    return True, f"{', '.join(o['kind'] for o in ctx.objects)} as rendered"


async def _applied_ensure(ctx: ClusterService) -> None:
    await kubernetes.apply(ctx.objects, ctx.namespace, DIGEST_ANNOTATION)


async def _available_check(ctx: ClusterService) -> tuple[bool, str]:
    view = await kubernetes.observe(ctx.name, ctx.namespace, pod_selector(ctx.name))
    phase, reason, message = kubernetes.classify(view)
    if phase == "Failed":
        raise GoalFailed(reason or "Crashing", message)
    return phase == "Running", message


def _serves_check(ctx: ClusterService) -> tuple[bool, str]:
    names = ctx.plan.served_names
    try:
        found, seen = status.served(ctx.base_url, names, ctx.task.spec.engine.name)
    except status.ProbeError as exc:
        return False, str(exc)
    missing = [n for n in names if n not in found]
    return (not missing), (f"{seen}; missing {', '.join(missing)}" if missing else seen)


def _nothing(ctx: ClusterService) -> None:
    """Nothing to do but wait: the Deployment controller starts the replicas, the engine loads the model."""


def goals(ctx: ClusterService) -> list[Goal[ClusterService]]:
    """The four goals of a service on a cluster, in the order it needs them."""
    startup = ctx.task.spec.startup_timeout_seconds
    return [
        Goal("model present in the cache", _model_check, _model_ensure),
        Goal("manifests applied", _applied_check, _applied_ensure),
        Goal("replicas available", _available_check, _nothing, timeout_seconds=startup, poll_seconds=5),
        Goal(
            "endpoint serves the model and its adapters",
            _serves_check,
            _nothing,
            timeout_seconds=120,
            poll_seconds=5,
            timeout_reason="EndpointUnreachable",
        ),
    ]


def cluster_status(ctx: ClusterService) -> ServiceStatus:
    """How the service stands: what Kubernetes says of its pods, then whether its endpoint serves;
    LookupError when it has no Deployment (never applied, or deleted)."""
    view = asyncio.run(kubernetes.observe(ctx.name, ctx.namespace, pod_selector(ctx.name)))
    if view.deployment is None:
        raise LookupError(f"no Deployment '{ctx.name}' in namespace {ctx.namespace}")
    phase, reason, message = kubernetes.classify(view)
    found: list[str] = []
    if phase == "Running":
        ok, seen = _serves_check(ctx)
        if ok:
            found = ctx.plan.served_names
        else:
            phase, reason, message = "Failed", "EndpointUnreachable", seen
    return ServiceStatus(
        name=ctx.name,
        phase=phase,  # type: ignore[arg-type]
        message=message,
        reason=reason,
        backend="kubernetes",
        engine=ctx.task.spec.engine.name,
        base_url=ctx.base_url,
        models=found,
        replicas_wanted=view.wanted,
        replicas_ready=view.available,
    )
