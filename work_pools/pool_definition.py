"""What one work-pool definition says, checked against the GPU catalog when it is loaded."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from configs.errors import choice_hint
from configs.gpus import ANY_GPU, GPU_TYPE_NAMES, gpu_type

# The images the pools' flow runs start in (infra/docker/, built and pushed per infra/README.md).
# One place to raise the tag on an MLOC release.
CPU_IMAGE = "ghcr.io/mloc/worker-cpu:0.1.0"
CUDA_IMAGE = "ghcr.io/mloc/worker-cuda:0.1.0"


class PoolDefinition(BaseModel):
    """One Prefect work pool: which GPUs its jobs get, from which image, how many runs at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=63,
        description="The Prefect work pool's name; for GPU pools, the GPU type it serves.",
    )
    kind: Literal["kubernetes", "process"] = Field(
        description="The Prefect worker type: 'kubernetes' runs each flow run as a Job, "
        "'process' as a subprocess on the worker's own machine."
    )
    gpu_type: str | None = Field(
        description=f"The GPU type (a name from configs.gpus) this pool serves, '{ANY_GPU}' for whichever GPU "
        "a node has, or null for CPU-only work."
    )
    gpus_per_node: int = Field(
        ge=0,
        le=64,
        description="The most GPUs one node of this pool offers: the largest gpu.count a replica may ask for.",
    )
    image: str | None = Field(
        description="The default container image of the pool's jobs (a deployment may override it); "
        "null for process pools."
    )
    concurrency_limit: int | None = Field(
        ge=0, description="How many flow runs of this pool may run at once; null for no limit."
    )
    description: str = Field(min_length=1, description="Shown in the Prefect UI beside the pool.")

    @field_validator("gpu_type")
    @classmethod
    def _known_gpu_type(cls, value: str | None) -> str | None:
        if value is not None and value != ANY_GPU and gpu_type(value) is None:
            raise ValueError(f"'{value}' is not a known GPU type — " + choice_hint(value, [*GPU_TYPE_NAMES, ANY_GPU]))
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PoolDefinition:
        if self.kind == "process":
            # a process pool runs on whatever machine its worker is on; MLOC cannot pin hardware there
            if self.gpu_type is not None or self.gpus_per_node or self.image is not None:
                raise ValueError("a process pool has no gpu_type, gpus_per_node or image — set them to null, 0, null")
            return self
        if self.image is None:
            raise ValueError("a kubernetes pool needs an image")
        if (self.gpu_type is None) != (self.gpus_per_node == 0):
            raise ValueError("gpus_per_node must be 0 exactly when gpu_type is null (a CPU-only pool)")
        return self

    @property
    def product_labels(self) -> tuple[str, ...]:
        """The ``nvidia.com/gpu.product`` node labels this pool's jobs may land on; empty: no constraint."""
        known = gpu_type(self.gpu_type) if self.gpu_type else None
        return known.product_labels if known else ()
