"""The jobs a step's child process is handed: one typed model per step, dispatched on ``step``.

The parent writes a job as JSON next to the step's log; the child (``python -m tasks``)
reads it back through :data:`JOB`, so a field misspelt on either side is an error at once,
not a ``KeyError`` deep inside a training.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: dict[str, Any] = Field(description="The validated task, as its JSON form.")
    model_path: str = Field(description="The base model's folder on this worker.")
    dataset_path: str = Field(description="The dataset's file or folder on this worker.")
    dataset_source_type: str = Field(description="local, s3 or huggingface: how to read dataset_path.")
    result_path: str = Field(description="Where the child writes its result, as JSON.")
    reward_model_path: str | None = Field(
        None, description="The reward model's folder, for the types that score with one (ppo, grpo)."
    )

    @property
    def name(self) -> str:
        """The step's name: its log is ``<name>.log``, its PID file ``<name>.pid``."""
        raise NotImplementedError


class TrainJob(_Job):
    step: Literal["train"] = "train"
    output_dir: str = Field(description="Where checkpoints and the final weights go.")
    resume_from: str | None = Field(None, description="The complete checkpoint to resume from.")

    @property
    def name(self) -> str:
        return "train"


class EvaluateJob(_Job):
    step: Literal["evaluate"] = "evaluate"
    label: Literal["before", "after"] = Field(description="The base model (before) or the trained one (after).")
    adapter_dir: str | None = Field(None, description="The trained adapter, applied on the base model.")
    base_model_path: str | None = Field(
        None, description="The base model, for evaluations that compare with it (a full fine-tune's reference)."
    )

    @property
    def name(self) -> str:
        return f"evaluate-{self.label}"


Job = Annotated[TrainJob | EvaluateJob, Field(discriminator="step")]
JOB: TypeAdapter[TrainJob | EvaluateJob] = TypeAdapter(Job)
