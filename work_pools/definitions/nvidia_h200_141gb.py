from work_pools.pool_definition import CUDA_IMAGE, PoolDefinition

POOL = PoolDefinition(
    name="nvidia-h200-141gb",
    kind="kubernetes",
    gpu_type="nvidia-h200-141gb",
    # HGX H200 boxes (and p5e/p5en instances) carry 8
    gpus_per_node=8,
    image=CUDA_IMAGE,
    concurrency_limit=4,
    description="Kubernetes Jobs on NVIDIA H200 141GB nodes (up to 8 GPUs per node).",
)
