"""rm: reward-model training with TRL's RewardTrainer.

The dataset holds preference pairs (`chosen` / `rejected`, optionally a shared
`prompt`); the model learns a scalar score. `spec.hyperparameters` are fields of
`trl.RewardConfig`.
"""

from __future__ import annotations

from configs import TaskTypeInfo
from tasks.trainer_fields import fields_file

TASK_TYPE = TaskTypeInfo(
    name="rm",
    kind="TrainingTask",
    summary="Reward-model training with TRL's RewardTrainer on chosen/rejected pairs.",
    fields_file=fields_file("rm"),
    requires_one_of=(),
    example="rm_qwen_helpfulness.yaml",
    metrics=(("pairwise_accuracy", "higher"), ("reward_margin", "higher")),
)


def trainer_config_class() -> type:
    """The config class `spec.hyperparameters` maps onto."""
    from trl import RewardConfig

    return RewardConfig
