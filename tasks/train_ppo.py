"""ppo: online reinforcement learning from a reward model.

TRL removed its PPOTrainer, so a `ppo` task runs TRL's maintained online RL trainer
for the same setup, `trl.RLOOTrainer` (REINFORCE leave-one-out): a policy, a frozen
reference and a reward model scoring sampled completions, with a KL penalty. It needs
no value model, so it uses less memory than PPO did. `spec.hyperparameters` are
fields of `trl.RLOOConfig` (`num_generations` completions per prompt, `beta` for
the KL penalty, ...).
"""

from __future__ import annotations

from configs import TaskTypeInfo
from tasks.trainer_fields import fields_file

TASK_TYPE = TaskTypeInfo(
    name="ppo",
    kind="TrainingTask",
    summary="PPO-style online RL with a reward model. TRL removed PPOTrainer; this runs TRL's maintained RLOOTrainer (REINFORCE leave-one-out).",
    fields_file=fields_file("ppo"),
    requires_one_of=("reward_model",),
    example="ppo_zephyr_7b.yaml",
    metrics=(("mean_reward", "higher"), ("mean_reward_gain", "higher")),
)


def trainer_config_class() -> type:
    """The config class `spec.hyperparameters` maps onto."""
    from trl import RLOOConfig

    return RLOOConfig
