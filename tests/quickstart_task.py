"""The quickstart task (configs/quickstart.yaml) with edits, validated: what the pipeline,
preflight and resume tests start from."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from configs import TrainingTask, validate_text
from tasks.registry import TASK_TYPES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# the tags flows.pipeline.run_tags puts on every run of the quickstart task
QUICKSTART_TAGS = {
    "owner:quickstart",
    "project:mloc-quickstart",
    "task-type:sft",
    "gpu:none",
    "gpu-count:0",
    "replicas:1",
}


def quickstart_task(edits: Mapping[str, Any] | None = None) -> TrainingTask:
    """configs/quickstart.yaml with the value at each dotted path of ``edits`` replaced
    ("spec.hyperparameters.max_steps": 30), validated like a file."""
    data = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    for dotted, value in (edits or {}).items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
    result = validate_text(yaml.safe_dump(data), "quickstart.yaml", TASK_TYPES)
    assert isinstance(result.task, TrainingTask), [i.format() for i in result.issues]
    return result.task
