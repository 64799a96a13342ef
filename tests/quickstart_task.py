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


# what the download step hands the training and evaluation of the quickstart task: its model
# and data where they ship
QUICKSTART_INPUTS = {
    "model": {"path": str(CONFIGS / "quickstart" / "tiny-model")},
    "dataset": {"path": str(CONFIGS / "quickstart" / "qa.jsonl"), "source_type": "local"},
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


def write_short_quickstart(folder: Path, *, evaluation: bool = True) -> Path:
    """``folder/task.yaml``: the quickstart in 10 steps (a small evaluation, or none), its model
    and data where they ship, its output under ``folder/out``: an `mloc run` that takes seconds."""
    task = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    for role in ("model", "dataset"):
        task["spec"][role]["source"]["path"] = str(CONFIGS / task["spec"][role]["source"]["path"])
    task["spec"]["hyperparameters"].update(max_steps=10, save_steps=10)
    if evaluation:
        task["spec"]["evaluation"].update(max_samples=8, generation_prompts=1, max_new_tokens=4)
    else:
        task["spec"]["evaluation"] = {"enabled": False}
        task["spec"]["output"]["artifacts"] = [a for a in task["spec"]["output"]["artifacts"] if a != "eval_results"]
    task["spec"]["output"]["destination"]["path"] = str(folder / "out")
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path
