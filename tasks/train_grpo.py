"""grpo: group relative policy optimisation with TRL's GRPOTrainer.

Completions are sampled for each `prompt` and scored by `spec.reward_model` and/or
`spec.reward_functions`. `spec.hyperparameters` are fields of `trl.GRPOConfig`.
"""

from __future__ import annotations

from configs import TaskTypeInfo
from tasks.trainer_fields import fields_file

TASK_TYPE = TaskTypeInfo(
    name="grpo",
    kind="TrainingTask",
    summary="Group relative policy optimisation with TRL's GRPOTrainer, scored by a reward model or TRL's reward functions.",
    fields_file=fields_file("grpo"),
    requires_one_of=("reward_model", "reward_functions"),
    example="grpo_qwen_math.yaml",
    metrics=(("mean_reward", "higher"), ("mean_reward_gain", "higher")),
)


def trainer_config_class() -> type:
    """The config class `spec.hyperparameters` maps onto."""
    from trl import GRPOConfig

    return GRPOConfig
