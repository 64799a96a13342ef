from work_pools.pool_definition import CUDA_IMAGE, PoolDefinition

POOL = PoolDefinition(
    name="nvidia-a10g",
    kind="kubernetes",
    gpu_type="nvidia-a10g",
    # g5.12xlarge/24xlarge carry 4; raise to 8 where g5.48xlarge nodes join the pool
    gpus_per_node=4,
    image=CUDA_IMAGE,
    concurrency_limit=8,
    description="Kubernetes Jobs on NVIDIA A10G 24GB nodes (up to 4 GPUs per node).",
)
