"""A ServingTask on Kubernetes: its objects rendered for its pool, with its engine's command.

This is where the two halves meet: work_pools/serving.py renders the Deployment, Service and
ScaledObject for a pool from a server command, and tasks/serving gives that command (the
engine module's, over the service's folder on the cache volume) and applies the objects.
"""

from __future__ import annotations

from typing import Any

from tasks.serving import transformers_serve, vllm
from tasks.serving.plan import plan_for
from work_pools.job_template import DEFAULT_CACHE_CLAIM, MLOC_HOME, NAMESPACE
from work_pools.pool_definition import PoolDefinition
from work_pools.serving import DEFAULT_PROMETHEUS, render_service

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
