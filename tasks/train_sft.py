"""sft: supervised fine-tuning with TRL's SFTTrainer.

Each dataset row becomes text through `spec.dataset.preprocessing`: `prompt_template`
alone renders the whole training text; with `completion_template` the loss is taken
on the completion only. `spec.hyperparameters` are fields of `trl.SFTConfig`.
"""

from __future__ import annotations

from typing import Any

from configs import TaskTypeInfo, TrainingTask
from configs.checks import template_fields
from tasks.data import render
from tasks.evaluate import evaluate_in_child, language_model_metrics
from tasks.jobs import EvaluateJob, TrainJob
from tasks.train import run_trainer
from tasks.trainer_fields import fields_file

TASK_TYPE = TaskTypeInfo(
    name="sft",
    kind="TrainingTask",
    summary="Supervised fine-tuning with TRL's SFTTrainer, on all weights or a LoRA/QLoRA adapter.",
    fields_file=fields_file("sft"),
    requires_one_of=(),
    example="sft_mistral_7b.yaml",
    metrics=(("eval_loss", "lower"), ("perplexity", "lower"), ("eval_loss_reduction", "higher")),
)


def trainer_config_class() -> type:
    """The config class `spec.hyperparameters` maps onto."""
    from trl import SFTConfig

    return SFTConfig


def required_columns(task: TrainingTask) -> list[str]:
    """The columns the templates name (none without templates: the rows are TRL's own format)."""
    prep = task.spec.dataset.preprocessing
    fields = [
        f
        for template in (prep.prompt_template, prep.completion_template)
        if template
        for f in template_fields(template)
    ]
    return list(dict.fromkeys(fields))


format_rows = render  # prompt_template alone renders the whole text; with completion_template, the two


def evaluate(task: TrainingTask, job: EvaluateJob) -> None:
    """Child side: held-out loss and perplexity of the completions, and a few generations."""
    evaluate_in_child(task, job, format_rows)


def metrics(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, float]:
    return language_model_metrics(before, after)


def train(task: TrainingTask, job: TrainJob) -> None:
    """Child side: fine-tune with TRL's SFTTrainer and save the result."""
    from trl import SFTConfig, SFTTrainer

    run_trainer(task, job, SFTTrainer, SFTConfig, rows="examples", format_rows=format_rows)
