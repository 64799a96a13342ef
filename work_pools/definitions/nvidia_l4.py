from work_pools.pool_definition import CUDA_IMAGE, PoolDefinition

POOL = PoolDefinition(
    name="nvidia-l4",
    kind="kubernetes",
    gpu_type="nvidia-l4",
    # g6.48xlarge carries 8 (g6.12xlarge 4, smaller ones 1)
    gpus_per_node=8,
    image=CUDA_IMAGE,
    concurrency_limit=8,
    description="Kubernetes Jobs on NVIDIA L4 24GB nodes (up to 8 GPUs per node).",
)
