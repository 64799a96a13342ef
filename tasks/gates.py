"""A run's metrics, as its taskType computes them, and its quality gates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.registry import trainer_for

if TYPE_CHECKING:
    from configs import InferenceTask, TrainingTask


class QualityGateFailed(RuntimeError):
    """A quality gate of spec.evaluation.gates was not met; nothing was uploaded."""


def metrics(task: TrainingTask, before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, float]:
    """The flat metrics gates and the manifest use, from the type's own ``metrics`` hook."""
    return trainer_for(task.spec.task_type).metrics(before, after)


def failed_gates(task: TrainingTask | InferenceTask, values: dict[str, float]) -> list[str]:
    failures = []
    for gate in task.spec.evaluation.gates:
        value = values.get(gate.metric)
        if value is None:
            failures.append(f"{gate.metric} was not measured")
        elif gate.min is not None and value < gate.min:
            failures.append(f"{gate.metric} = {value:.4g} is below the minimum {gate.min:g}")
        elif gate.max is not None and value > gate.max:
            failures.append(f"{gate.metric} = {value:.4g} is above the maximum {gate.max:g}")
    return failures
