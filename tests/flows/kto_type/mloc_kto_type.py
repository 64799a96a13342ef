"""kto: Kahneman-Tversky optimisation with TRL's KTOTrainer (a type of another distribution).

Not part of MLOC: tests/flows/test_plugin_type.py installs this module as a distribution of
its own that registers it under the ``mloc.task_types`` entry point group, and shows that
MLOC validates, deploys and runs it with nothing else changed. Rows are prompt, completion
and a boolean label (desirable or not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from configs import TaskTypeInfo, TrainingTask
from tasks.data import render_prompt
from tasks.evaluate import evaluate_in_child, language_model_metrics
from tasks.jobs import EvaluateJob, TrainJob
from tasks.train import run_trainer

TASK_TYPE = TaskTypeInfo(
    name="kto",
    kind="TrainingTask",
    summary="Kahneman-Tversky optimisation with TRL's KTOTrainer on labelled completions.",
    fields_file=Path(__file__).with_name("kto.json"),  # written beside it by the distribution's build
    example="kto.yaml",
    metrics=(("eval_loss", "lower"), ("perplexity", "lower"), ("eval_loss_reduction", "higher")),
)


def trainer_config_class() -> type:
    from trl import KTOConfig

    return KTOConfig


def required_columns(task: TrainingTask) -> list[str]:
    return ["prompt", "completion", "label"]


format_rows = render_prompt  # a prompt_template renders the prompt; completion and label stay


def train(task: TrainingTask, job: TrainJob) -> None:
    from trl import KTOConfig, KTOTrainer

    run_trainer(task, job, KTOTrainer, KTOConfig, rows="labelled completions", format_rows=format_rows, ref_model=None)


def evaluate(task: TrainingTask, job: EvaluateJob) -> None:
    """Held-out loss of the completions, as sft measures it."""
    evaluate_in_child(task, job, format_rows)


def metrics(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, float]:
    return language_model_metrics(before, after)
