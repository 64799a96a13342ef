"""Metrics and quality gates of a run."""

from __future__ import annotations

from pathlib import Path

import yaml

from configs import TrainingTask, validate_text
from tasks.gates import failed_gates, metrics
from tasks.registry import TASK_TYPES

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def with_gates(gates: list[dict]) -> TrainingTask:
    data = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    data["spec"]["evaluation"]["gates"] = gates
    task = validate_text(yaml.safe_dump(data), "q.yaml", TASK_TYPES).task
    assert isinstance(task, TrainingTask)
    return task


def test_metrics_compare_before_and_after() -> None:
    values = metrics(with_gates([]), {"eval_loss": 3.0, "perplexity": 20.1}, {"eval_loss": 1.0, "perplexity": 2.7})
    assert values["eval_loss_reduction"] == 2.0
    assert values["eval_loss"] == 1.0 and values["perplexity_before"] == 20.1


def test_gates() -> None:
    values = metrics(with_gates([]), {"eval_loss": 3.0, "perplexity": 20.1}, {"eval_loss": 1.0, "perplexity": 2.7})
    passing = with_gates([{"metric": "perplexity", "max": 3.0}, {"metric": "eval_loss_reduction", "min": 0.5}])
    assert failed_gates(passing, values) == []
    failing = with_gates([{"metric": "perplexity", "max": 2.0}, {"metric": "eval_loss", "min": 0.1, "max": 0.9}])
    assert failed_gates(failing, values) == [
        "perplexity = 2.7 is above the maximum 2",
        "eval_loss = 1 is above the maximum 0.9",
    ]
    assert failed_gates(passing, {}) == ["perplexity was not measured", "eval_loss_reduction was not measured"]
