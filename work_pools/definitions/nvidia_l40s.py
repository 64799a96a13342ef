from work_pools.pool_definition import CUDA_IMAGE, PoolDefinition

POOL = PoolDefinition(
    name="nvidia-l40s",
    kind="kubernetes",
    gpu_type="nvidia-l40s",
    # the common 4-GPU L40S servers (g6e.12xlarge/24xlarge); raise to 8 where 8-GPU nodes join the pool
    gpus_per_node=4,
    image=CUDA_IMAGE,
    concurrency_limit=8,
    description="Kubernetes Jobs on NVIDIA L40S 48GB nodes (up to 4 GPUs per node).",
)
