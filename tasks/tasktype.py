"""What a training taskType module declares for the pipeline (every `train_<type>.py`).

The pipeline, preflight, report and gates call only these hooks, so a new training type is
one module implementing them plus one line in `tasks/registry.py`:

- ``TASK_TYPE``: its `configs.TaskTypeInfo` (name, trainer config snapshot, example, and the
  metrics its evaluation produces, each with which way is better: what gates may check);
- ``trainer_config_class()``: the TRL config class `spec.hyperparameters` maps onto;
- ``required_columns(task)``: the dataset columns it needs, checked before any training;
- ``format_rows(task, rows)``: how `spec.dataset.preprocessing` turns a row into what its
  trainer reads (`tasks.data.render` for sft, `tasks.data.render_prompt` for prompt + own columns);
- ``train(task, job)``: child side, builds its TRL trainer and trains (tasks/train.py runs it);
- ``evaluate(task, job)``: child side, scores the base model (job.label "before") or the
  trained one ("after") and writes its result, whose numbers are named as in ``metrics``;
- ``metrics(before, after)``: the flat values gates and the manifest use.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from configs import TaskTypeInfo, TrainingTask
    from tasks.jobs import EvaluateJob, TrainJob

#: what an inference taskType module (rag.py, agent.py) declares: ``answer(task, question, *,
#: search, generator, chat)``, one question's prediction fields (tasks/inference/ runs the rest)
INFERENCE_HOOKS = ("answer",)
HOOKS = ("trainer_config_class", "required_columns", "format_rows", "train", "evaluate", "metrics")


class TrainerType(Protocol):
    TASK_TYPE: TaskTypeInfo

    def trainer_config_class(self) -> type: ...

    def required_columns(self, task: TrainingTask) -> list[str]: ...

    def format_rows(self, task: TrainingTask, rows: Any) -> Any: ...

    def train(self, task: TrainingTask, job: TrainJob) -> None: ...

    def evaluate(self, task: TrainingTask, job: EvaluateJob) -> None: ...

    def metrics(self, before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, float]: ...


def implements(module: ModuleType) -> bool:
    """Whether a module has every hook of its kind: only then can the pipeline run its type."""
    hooks = INFERENCE_HOOKS if module.TASK_TYPE.kind == "InferenceTask" else HOOKS
    return all(callable(getattr(module, hook, None)) for hook in hooks)


def as_trainer(module: ModuleType) -> TrainerType:
    if not implements(module):
        missing = [hook for hook in HOOKS if not callable(getattr(module, hook, None))]
        raise TypeError(f"{module.__name__} does not implement {', '.join(missing)}")
    return cast(TrainerType, module)
