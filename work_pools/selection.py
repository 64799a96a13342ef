"""Which pool runs a task: the one serving its GPU type, if a node of it can hold one replica."""

from __future__ import annotations

from typing import Any

from configs.gpus import ANY_GPU
from work_pools.catalog import pool_named, pools
from work_pools.pool_definition import PoolDefinition

LOCAL_POOL = "local"


class PoolError(ValueError):
    """No work pool can run the task as it is written."""


def cpu_pool() -> PoolDefinition:
    """The Kubernetes pool of work that needs no GPU (CPU tasks, the daily usage report)."""
    [pool] = [p for p in pools() if p.kind == "kubernetes" and p.gpu_type is None]
    return pool


def pool_for_task(task: Any, *, local: bool = False) -> PoolDefinition:
    """The pool a task's deployment goes to: ``local`` when asked, else by ``resources.hardware.gpu``."""
    if local:
        return pool_named(LOCAL_POOL)
    gpu = task.spec.resources.hardware.gpu
    candidates = [p for p in pools() if p.kind == "kubernetes" and p.gpu_type == gpu.type]
    if not candidates:
        served = ", ".join(f"{p.name} ({p.gpu_type or 'no GPU'})" for p in pools() if p.kind == "kubernetes")
        raise PoolError(
            f"spec.resources.hardware.gpu.type: no work pool serves '{gpu.type}' — the pools are: {served}; "
            f"pick one of their GPU types or '{ANY_GPU}', or add a pool definition to work_pools/definitions/"
        )
    pool = candidates[0]
    if gpu.count > pool.gpus_per_node:
        node = "GPU" if gpu.type == ANY_GPU else gpu.type
        raise PoolError(
            f"spec.resources.hardware.gpu.count: asks for {gpu.count} GPUs per replica but a {node} node offers at most {pool.gpus_per_node} — "
            "lower gpu.count and raise replicas, or pick a bigger GPU type"
        )
    return pool
