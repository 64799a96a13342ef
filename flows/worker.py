"""`mloc worker`: which pool a plain machine joins, from the GPU it has."""

from __future__ import annotations

import shutil
import subprocess

from configs.gpus import GPU_TYPES

LOCAL_POOL = "local"


def _names_from_nvidia_smi() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _names_from_torch() -> list[str]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    names = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        names.append(f"{props.name}, {props.total_memory // 2**20}")
    return names


def gpu_type_of(name_and_memory: str) -> str | None:
    """'NVIDIA A100-SXM4-80GB, 81920' -> 'nvidia-a100-80gb': matched on the product name, then on memory."""
    name, _, memory = name_and_memory.partition(",")
    label = "-".join(name.replace("NVIDIA", "").split()).lower()
    mib = int(memory) if memory.strip().isdigit() else 0
    candidates = [
        g
        for g in GPU_TYPES
        if any(label in p.lower() or p.lower().replace("nvidia-", "") in label for p in g.product_labels)
        or g.name.replace("nvidia-", "").split("-")[0] == label.split("-")[0]
    ]
    if mib and len(candidates) > 1:  # e.g. A100 40 GB vs 80 GB
        candidates.sort(key=lambda g: abs(g.memory_gib * 1024 - mib))
    return candidates[0].name if candidates else None


def detect_gpu_type() -> str | None:
    """The local GPU's type (nvidia-smi, else torch), or None on a machine without one."""
    names = _names_from_nvidia_smi() or _names_from_torch()
    types = {t for t in (gpu_type_of(n) for n in names) if t}
    return sorted(types)[0] if types else None


def queue_for(gpu_type: str | None) -> str:
    """The queue of the local process pool a task goes to: its GPU type, 'any-gpu', or 'cpu'."""
    if gpu_type is None:
        return "cpu"
    return "any-gpu" if gpu_type == "any" else gpu_type


def local_queues(gpu_type: str | None) -> list[str]:
    """The queues a plain machine serves: tasks for its GPU type, for any GPU, and CPU-only tasks."""
    return [gpu_type, "any-gpu", "cpu"] if gpu_type else ["cpu"]
