"""sft: supervised fine-tuning with TRL's SFTTrainer.

Each dataset row becomes text through `spec.dataset.preprocessing`: `prompt_template`
alone renders the whole training text; with `completion_template` the loss is taken
on the completion only. `spec.hyperparameters` are fields of `trl.SFTConfig`.
"""

from __future__ import annotations

from configs import TaskTypeInfo
from tasks.trainer_fields import fields_file

TASK_TYPE = TaskTypeInfo(
    name="sft",
    kind="TrainingTask",
    summary="Supervised fine-tuning with TRL's SFTTrainer, on all weights or a LoRA/QLoRA adapter.",
    fields_file=fields_file("sft"),
    requires_one_of=(),
    example="sft_mistral_7b.yaml",
)


def trainer_config_class() -> type:
    """The config class `spec.hyperparameters` maps onto."""
    from trl import SFTConfig

    return SFTConfig
