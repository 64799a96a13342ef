"""ppo: online reinforcement learning from a reward model.

TRL removed its PPOTrainer, so a `ppo` task runs TRL's maintained online RL trainer
for the same setup, `trl.RLOOTrainer` (REINFORCE leave-one-out): a policy, a frozen
reference and a reward model scoring sampled completions, with a KL penalty. It needs
no value model, so it uses less memory than PPO did. `spec.hyperparameters` are
fields of `trl.RLOOConfig` (`num_generations` completions per prompt, `beta` for
the KL penalty, ...). `spec.reward_functions`, if given, add to the reward model's
score (tasks/rewards.py). Evaluation is the mean reward of greedy completions of the
held-out prompts (tasks/evaluate_rewards.py).
"""

from __future__ import annotations

from configs import TaskTypeInfo, TrainingTask
from tasks import evaluate_rewards, rewards
from tasks.data import render_prompt
from tasks.jobs import EvaluateJob, TrainJob
from tasks.trainer_fields import fields_file

TASK_TYPE = TaskTypeInfo(
    name="ppo",
    kind="TrainingTask",
    summary="PPO-style online RL with a reward model. TRL removed PPOTrainer; this runs TRL's maintained RLOOTrainer (REINFORCE leave-one-out).",
    fields_file=fields_file("ppo"),
    requires_one_of=("reward_model",),
    example="ppo_zephyr_7b.yaml",
    metrics=evaluate_rewards.METRICS,
)


def trainer_config_class() -> type:
    """The config class `spec.hyperparameters` maps onto."""
    from trl import RLOOConfig

    return RLOOConfig


# the hooks both online-RL types share
required_columns = rewards.required_columns
format_rows = render_prompt  # prompt_template renders the prompt; solution and the other columns stay
metrics = evaluate_rewards.metrics


def train(task: TrainingTask, job: TrainJob) -> None:
    """Child side: RLOO with TRL's RLOOTrainer against the reward model; with an adapter, the base
    model (adapter off) is the KL penalty's reference."""
    from trl import RLOOConfig, RLOOTrainer

    scorers = " + ".join(["the reward model", *task.spec.reward_functions])
    print(
        "ppo runs TRL's RLOOTrainer (TRL has no PPOTrainer): REINFORCE leave-one-out over "
        f"{rewards.setting(task, RLOOConfig, 'num_generations')} completions per prompt, scored by {scorers}, "
        f"with a KL penalty of beta {rewards.setting(task, RLOOConfig, 'beta'):g} against the reference",
        flush=True,
    )
    rewards.run_online_rl(task, job, RLOOTrainer, RLOOConfig)


def evaluate(task: TrainingTask, job: EvaluateJob) -> None:
    """Child side: the mean reward of greedy completions of the held-out prompts (tasks/evaluate_rewards.py)."""
    evaluate_rewards.evaluate(task, job, trainer_config_class())
