from work_pools.pool_definition import CUDA_IMAGE, PoolDefinition

POOL = PoolDefinition(
    name="nvidia-l40",
    kind="kubernetes",
    gpu_type="nvidia-l40",
    # the common 8-GPU L40 servers; lower where 4-GPU nodes make up the pool
    gpus_per_node=8,
    image=CUDA_IMAGE,
    concurrency_limit=8,
    description="Kubernetes Jobs on NVIDIA L40 48GB nodes (up to 8 GPUs per node).",
)
