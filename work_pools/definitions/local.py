from work_pools.pool_definition import PoolDefinition

POOL = PoolDefinition(
    name="local",
    kind="process",
    gpu_type=None,
    gpus_per_node=0,
    image=None,
    # one machine: two training runs at once would fight over its GPUs and memory
    concurrency_limit=1,
    description="Flow runs as processes on the one machine a `mloc worker` runs on, with whatever GPUs it has.",
)
