from work_pools.pool_definition import PoolDefinition

POOL = PoolDefinition(
    name="any-gpu",
    kind="kubernetes",
    gpu_type="any",
    # the largest nodes of any type; where no node has that many free, the pod waits Pending
    gpus_per_node=8,
    image="ghcr.io/mloc/worker-cuda:0.1.0",
    concurrency_limit=8,
    description="Kubernetes Jobs on whichever NVIDIA GPU node is free (up to 8 GPUs per node).",
)
