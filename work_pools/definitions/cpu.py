from work_pools.pool_definition import PoolDefinition

POOL = PoolDefinition(
    name="cpu",
    kind="kubernetes",
    gpu_type=None,
    gpus_per_node=0,
    image="ghcr.io/mloc/worker-cpu:0.1.0",
    concurrency_limit=16,
    description="Kubernetes Jobs on CPU-only nodes, for tasks that ask for no GPU.",
)
