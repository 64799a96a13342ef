from work_pools.pool_definition import CUDA_IMAGE, PoolDefinition

POOL = PoolDefinition(
    name="nvidia-a100-40gb",
    kind="kubernetes",
    gpu_type="nvidia-a100-40gb",
    # HGX/DGX A100 boxes (and p4d instances) carry 8
    gpus_per_node=8,
    image=CUDA_IMAGE,
    concurrency_limit=4,
    description="Kubernetes Jobs on NVIDIA A100 40GB nodes (up to 8 GPUs per node).",
)
