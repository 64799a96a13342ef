"""The GPU types MLOC knows: the names a task.yaml may give in ``resources.hardware.gpu.type``.

``product_labels`` are the values NVIDIA GPU feature discovery writes into a node's
``nvidia.com/gpu.product`` label; ``bf16`` is whether the card computes in bfloat16
(compute capability 8.0 or newer).
"""

from __future__ import annotations

from dataclasses import dataclass

ANY_GPU = "any"


@dataclass(frozen=True)
class GpuType:
    name: str
    memory_gib: int
    bf16: bool
    product_labels: tuple[str, ...]


GPU_TYPES: list[GpuType] = [
    GpuType("nvidia-h200-141gb", 141, True, ("NVIDIA-H200",)),
    GpuType("nvidia-h100-80gb", 80, True, ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-SXM5-80GB")),
    GpuType("nvidia-a100-80gb", 80, True, ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe")),
    GpuType("nvidia-a100-40gb", 40, True, ("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB")),
    GpuType("nvidia-l40s", 48, True, ("NVIDIA-L40S",)),
    GpuType("nvidia-l40", 48, True, ("NVIDIA-L40",)),
    GpuType("nvidia-l4", 24, True, ("NVIDIA-L4",)),
    GpuType("nvidia-a10g", 24, True, ("NVIDIA-A10G",)),
    GpuType("nvidia-t4", 16, False, ("Tesla-T4",)),
    GpuType("nvidia-v100-32gb", 32, False, ("Tesla-V100-SXM2-32GB",)),
]

GPU_TYPE_NAMES: list[str] = [g.name for g in GPU_TYPES]


def gpu_type(name: str) -> GpuType | None:
    return next((g for g in GPU_TYPES if g.name == name), None)
