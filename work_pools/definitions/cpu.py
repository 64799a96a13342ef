from work_pools.pool_definition import CPU_IMAGE, PoolDefinition

POOL = PoolDefinition(
    name="cpu",
    kind="kubernetes",
    gpu_type=None,
    gpus_per_node=0,
    image=CPU_IMAGE,
    concurrency_limit=16,
    description="Kubernetes Jobs on CPU-only nodes, for tasks that ask for no GPU.",
)
