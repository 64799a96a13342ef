"""dpo: direct preference optimisation with TRL's DPOTrainer.

The dataset holds `prompt`, `chosen` and `rejected` columns. `spec.hyperparameters`
are fields of `trl.DPOConfig`.
"""

from __future__ import annotations

from configs import TaskTypeInfo
from tasks.trainer_fields import fields_file

TASK_TYPE = TaskTypeInfo(
    name="dpo",
    kind="TrainingTask",
    summary="Direct preference optimisation with TRL's DPOTrainer on prompt/chosen/rejected rows.",
    fields_file=fields_file("dpo"),
    requires_one_of=(),
    example="dpo_mistral_ultrafeedback.yaml",
    metrics=(
        ("eval_loss", "lower"),
        ("eval_loss_reduction", "higher"),
        ("reward_accuracy", "higher"),
        ("reward_margin", "higher"),
    ),
)


def trainer_config_class() -> type:
    """The config class `spec.hyperparameters` maps onto."""
    from trl import DPOConfig

    return DPOConfig
