from work_pools.pool_definition import CUDA_IMAGE, PoolDefinition

POOL = PoolDefinition(
    name="nvidia-v100-32gb",
    kind="kubernetes",
    gpu_type="nvidia-v100-32gb",
    # DGX-1 and p3dn.24xlarge carry 8
    gpus_per_node=8,
    image=CUDA_IMAGE,
    concurrency_limit=4,
    description="Kubernetes Jobs on NVIDIA V100 32GB nodes (up to 8 GPUs per node; no bfloat16).",
)
