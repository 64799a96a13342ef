"""grpo: group relative policy optimisation with TRL's GRPOTrainer.

Completions are sampled for each `prompt` and scored by `spec.reward_functions` and/or
`spec.reward_model` (tasks/rewards.py); a completion's advantage is its reward against the
others of its group. The dataset's other columns reach the reward functions (`solution` for
the accuracy rewards). `spec.hyperparameters` are fields of `trl.GRPOConfig`. Evaluation is
the mean reward of greedy completions of the held-out prompts (tasks/evaluate_rewards.py).
"""

from __future__ import annotations

from configs import TaskTypeInfo, TrainingTask
from tasks import evaluate_rewards, rewards
from tasks.data import render_prompt
from tasks.jobs import EvaluateJob, TrainJob
from tasks.trainer_fields import fields_file

TASK_TYPE = TaskTypeInfo(
    name="grpo",
    kind="TrainingTask",
    summary="Group relative policy optimisation with TRL's GRPOTrainer, scored by a reward model and/or reward functions (TRL's and MLOC's).",
    fields_file=fields_file("grpo"),
    requires_one_of=("reward_model", "reward_functions"),
    example="grpo_qwen_math.yaml",
    metrics=evaluate_rewards.METRICS,
)


def trainer_config_class() -> type:
    """The config class `spec.hyperparameters` maps onto."""
    from trl import GRPOConfig

    return GRPOConfig


# the hooks both online-RL types share
required_columns = rewards.required_columns
format_rows = render_prompt  # prompt_template renders the prompt; solution and the other columns stay
metrics = evaluate_rewards.metrics


def train(task: TrainingTask, job: TrainJob) -> None:
    """Child side: GRPO with TRL's GRPOTrainer. A KL penalty (beta > 0; TRL's default is 0) pulls towards
    the reference: with an adapter, the base model (adapter off)."""
    from trl import GRPOConfig, GRPOTrainer

    rewards.run_online_rl(task, job, GRPOTrainer, GRPOConfig)


def evaluate(task: TrainingTask, job: EvaluateJob) -> None:
    """Child side: the mean reward of greedy completions of the held-out prompts (tasks/evaluate_rewards.py)."""
    evaluate_rewards.evaluate(task, job, trainer_config_class())
