from work_pools.pool_definition import CUDA_IMAGE, PoolDefinition

POOL = PoolDefinition(
    name="nvidia-h100-80gb",
    kind="kubernetes",
    gpu_type="nvidia-h100-80gb",
    # HGX/DGX H100 boxes (and p5 instances) carry 8
    gpus_per_node=8,
    image=CUDA_IMAGE,
    concurrency_limit=4,
    description="Kubernetes Jobs on NVIDIA H100 80GB nodes (up to 8 GPUs per node).",
)
