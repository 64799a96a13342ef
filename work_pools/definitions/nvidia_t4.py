from work_pools.pool_definition import CUDA_IMAGE, PoolDefinition

POOL = PoolDefinition(
    name="nvidia-t4",
    kind="kubernetes",
    gpu_type="nvidia-t4",
    # g4dn.12xlarge carries 4; raise to 8 where g4dn.metal nodes join the pool
    gpus_per_node=4,
    image=CUDA_IMAGE,
    concurrency_limit=8,
    description="Kubernetes Jobs on NVIDIA T4 16GB nodes (up to 4 GPUs per node; no bfloat16).",
)
