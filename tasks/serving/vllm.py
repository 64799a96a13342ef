"""The vLLM engine: ``vllm serve``, with LoRA adapters served beside the base model.

vLLM lives in an interpreter of its own (tasks/vllm_env.py): its ``vllm`` command is given
here as ``executable``. Its OpenAI server answers ``/health`` and ``/v1/models`` and exports
``vllm:num_requests_waiting`` on ``/metrics``, which KEDA scales on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.serving.plan import ServePlan

ENGINE = "vllm"
# where the CUDA worker image puts vLLM's own environment (infra/docker/Dockerfile.cuda)
IMAGE_EXECUTABLE = "/opt/vllm/bin/vllm"


def server_command(plan: ServePlan, executable: str = IMAGE_EXECUTABLE) -> tuple[list[str], str | None]:
    """(argv, working directory) of the server for ``plan``."""
    engine = plan.engine
    argv = [
        executable,
        "serve",
        plan.model_dir,
        "--served-model-name",
        plan.model_name,
        "--host",
        plan.host,
        "--port",
        str(plan.port),
        "--dtype",
        engine.dtype,
        "--gpu-memory-utilization",
        f"{engine.gpu_memory_utilization:g}",
    ]
    if engine.max_model_len is not None:
        argv += ["--max-model-len", str(engine.max_model_len)]
    if plan.gpus > 1:
        argv += ["--tensor-parallel-size", str(plan.gpus)]
    if plan.adapters:
        argv += [
            "--enable-lora",
            "--max-lora-rank",
            str(engine.max_lora_rank),
            "--max-loras",
            str(len(plan.adapters)),
            "--lora-modules",
            *(f"{name}={plan.adapter_dir(name)}" for name in plan.adapters),
        ]
    return argv, None
