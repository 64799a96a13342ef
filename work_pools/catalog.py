"""All pool definitions, found as the modules of ``work_pools.definitions``."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from work_pools import definitions as _pool_modules
from work_pools.pool_definition import PoolDefinition


@cache
def _all() -> tuple[PoolDefinition, ...]:
    found = []
    for module in pkgutil.iter_modules(_pool_modules.__path__):
        definition = getattr(importlib.import_module(f"{_pool_modules.__name__}.{module.name}"), "POOL", None)
        if not isinstance(definition, PoolDefinition):
            raise TypeError(f"work_pools/definitions/{module.name}.py must define POOL = PoolDefinition(...)")
        found.append(definition)
    return tuple(sorted(found, key=lambda p: p.name))


def pools() -> list[PoolDefinition]:
    """Every pool definition, sorted by name."""
    return list(_all())


def pool_named(name: str) -> PoolDefinition:
    """The definition of pool ``name``; KeyError lists the valid names."""
    for pool in pools():
        if pool.name == name:
            return pool
    raise KeyError(f"'{name}' is not a work pool among [{', '.join(p.name for p in pools())}]")
