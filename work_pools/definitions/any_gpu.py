from work_pools.pool_definition import CUDA_IMAGE, PoolDefinition

POOL = PoolDefinition(
    name="any-gpu",
    kind="kubernetes",
    gpu_type="any",
    # the largest nodes of any type; where no node has that many free, the pod waits Pending
    gpus_per_node=8,
    image=CUDA_IMAGE,
    concurrency_limit=8,
    description="Kubernetes Jobs on whichever NVIDIA GPU node is free (up to 8 GPUs per node).",
)
