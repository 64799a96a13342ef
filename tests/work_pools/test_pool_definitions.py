"""The pool definitions: one module each, consistent with the GPU catalog."""

from __future__ import annotations

import pkgutil

import pytest
from pydantic import ValidationError

import work_pools.definitions
from configs.gpus import GPU_TYPE_NAMES
from work_pools import PoolDefinition, pool_named, pools


def test_the_pools_the_product_names() -> None:
    assert [p.name for p in pools()] == [
        "any-gpu",
        "cpu",
        "local",
        "nvidia-a100-40gb",
        "nvidia-a100-80gb",
        "nvidia-a10g",
        "nvidia-h100-80gb",
        "nvidia-h200-141gb",
        "nvidia-l4",
        "nvidia-l40",
        "nvidia-l40s",
        "nvidia-t4",
        "nvidia-v100-32gb",
    ]


def test_one_module_per_pool_named_for_it() -> None:
    modules = sorted(m.name for m in pkgutil.iter_modules(work_pools.definitions.__path__))
    assert modules == sorted(p.name.replace("-", "_") for p in pools())


def test_every_gpu_type_that_validates_has_exactly_one_pool() -> None:
    # `mloc validate` accepts every catalog type, so `mloc deploy` must have a pool for each
    served = [p.gpu_type for p in pools() if p.kind == "kubernetes"]
    assert len(served) == len(set(served)), "two pools serve the same GPU type"
    assert set(GPU_TYPE_NAMES) <= set(served)
    # a GPU pool is named for the type it serves
    assert all(p.name == p.gpu_type for p in pools() if p.gpu_type not in (None, "any"))


def test_pool_named_lists_the_valid_names() -> None:
    assert pool_named("nvidia-t4").gpus_per_node == 4
    with pytest.raises(KeyError, match=r"'nvidia-t5' is not a work pool among \[any-gpu, cpu, local, "):
        pool_named("nvidia-t5")


def test_definitions_are_checked_against_the_catalog() -> None:
    good = pool_named("nvidia-l40s").model_dump()
    with pytest.raises(ValidationError, match="'nvidia-l40z' is not a known GPU type — did you mean"):
        PoolDefinition(**{**good, "gpu_type": "nvidia-l40z"})
    with pytest.raises(ValidationError, match="gpus_per_node must be 0 exactly when gpu_type is null"):
        PoolDefinition(**{**good, "gpus_per_node": 0})
    with pytest.raises(ValidationError, match="a process pool has no gpu_type"):
        PoolDefinition(**{**good, "kind": "process"})
    with pytest.raises(ValidationError, match="replicas\n  Extra inputs are not permitted"):
        PoolDefinition(**{**good, "replicas": 2})
