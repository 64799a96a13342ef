"""Creating or updating every pool on the Prefect API, idempotently."""

from __future__ import annotations

import json
from typing import Any

from work_pools.catalog import pools
from work_pools.job_template import base_job_template
from work_pools.pool_definition import PoolDefinition
from work_pools.selection import PoolError


def _wanted(pool: PoolDefinition) -> dict[str, Any]:
    return {
        "description": pool.description,
        "concurrency_limit": pool.concurrency_limit,
        "base_job_template": base_job_template(pool),
    }


def _normalised(value: Any) -> str:
    # the server returns JSON; compare as JSON so tuples and key order make no difference
    return json.dumps(value, sort_keys=True)


def apply(client: Any = None) -> list[str]:
    """Create or update every pool; returns one line per pool: created, updated or unchanged.

    Every pool is checked before any is written, so a pool that exists with another worker
    type stops the whole apply (Prefect cannot change a pool's type, and deleting it is the
    administrator's call: it would cut its deployments off).
    """
    if client is None:
        from prefect import get_client

        with get_client(sync_client=True) as own_client:
            return apply(own_client)

    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    existing = {}
    for pool in pools():
        try:
            existing[pool.name] = client.read_work_pool(pool.name)
        except ObjectNotFound:
            continue
        if existing[pool.name].type != pool.kind:
            raise PoolError(
                f"work pool '{pool.name}' exists with type '{existing[pool.name].type}' but is defined as "
                f"'{pool.kind}' — delete it (prefect work-pool delete {pool.name}) and apply again"
            )

    lines = []
    for pool in pools():
        wanted = _wanted(pool)
        current = existing.get(pool.name)
        if current is None:
            client.create_work_pool(WorkPoolCreate(name=pool.name, type=pool.kind, **wanted))
            action = "created"
        elif all(_normalised(getattr(current, key)) == _normalised(value) for key, value in wanted.items()):
            action = "unchanged"
        else:
            client.update_work_pool(pool.name, WorkPoolUpdate(**wanted))
            action = "updated"
        lines.append(f"{action:9} {pool.name} ({pool.kind})")
    return lines
