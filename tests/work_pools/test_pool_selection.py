"""Which pool a task goes to, and the job variables its deployment sets there."""

from __future__ import annotations

import pytest

import work_pools.selection
from tests.work_pools.samples import sample_task
from work_pools import PoolError, job_variables, pool_for_task, pool_named, pools

GPU_TYPES_WITH_POOLS = sorted(p.gpu_type for p in pools() if p.gpu_type not in (None, "any"))


@pytest.mark.parametrize("gpu_type", GPU_TYPES_WITH_POOLS)
def test_each_gpu_type_goes_to_its_pool(gpu_type: str) -> None:
    pool = pool_for_task(sample_task(gpu_type, 1))
    assert (pool.name, pool.kind, pool.gpu_type) == (gpu_type, "kubernetes", gpu_type)


def test_any_gpu_and_cpu_only() -> None:
    assert pool_for_task(sample_task("any", 2)).name == "any-gpu"
    assert pool_for_task(sample_task(None)).name == "cpu"


def test_local_wins_over_the_gpu_type() -> None:
    assert pool_for_task(sample_task("nvidia-h100-80gb", 8), local=True).name == "local"
    assert pool_for_task(sample_task("nvidia-h100-80gb", 16), local=True).kind == "process"


def test_a_full_node_is_allowed_one_more_gpu_is_not() -> None:
    assert pool_for_task(sample_task("nvidia-a10g", 4)).name == "nvidia-a10g"
    with pytest.raises(PoolError) as error:
        pool_for_task(sample_task("nvidia-a10g", 16))
    assert str(error.value) == (
        "spec.resources.hardware.gpu.count: asks for 16 GPUs per replica but a nvidia-a10g node offers at most 4 — "
        "lower gpu.count and raise replicas, or pick a bigger GPU type"
    )
    with pytest.raises(PoolError, match="asks for 9 GPUs per replica but a GPU node offers at most 8"):
        pool_for_task(sample_task("any", 9))


def test_a_gpu_type_without_a_pool_lists_the_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    without_t4 = [p for p in pools() if p.name != "nvidia-t4"]
    monkeypatch.setattr(work_pools.selection, "pools", lambda: without_t4)
    with pytest.raises(PoolError) as error:
        pool_for_task(sample_task("nvidia-t4", 1))
    message = str(error.value)
    assert message.startswith("spec.resources.hardware.gpu.type: no work pool serves 'nvidia-t4' — the pools are: ")
    assert "any-gpu (any), cpu (no GPU), nvidia-a100-40gb (nvidia-a100-40gb)" in message
    assert "local" not in message  # a process pool serves no GPU type
    assert message.endswith("pick one of their GPU types or 'any', or add a pool definition to work_pools/definitions/")
    assert isinstance(error.value, ValueError)


def test_job_variables_carry_the_tasks_resources() -> None:
    task = sample_task("nvidia-h100-80gb", 8, cpu="32", memory="500Gi")
    assert job_variables(task, pool_for_task(task)) == {
        "cpu_request": "32",
        "cpu_limit": "32",
        "memory_request": "500Gi",
        "memory_limit": "500Gi",
        "shm_size": "256000Mi",
        "gpu_count": 8,
    }
    cpu_only = sample_task(None, cpu="500m", memory="3G")
    variables = job_variables(cpu_only, pool_for_task(cpu_only))
    assert "gpu_count" not in variables
    assert (variables["cpu_limit"], variables["memory_limit"], variables["shm_size"]) == ("500m", "3G", "1431Mi")
    assert job_variables(task, pool_named("local")) == {}
