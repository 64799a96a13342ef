"""Preflight finds, in seconds and before any training, what would fail later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from configs import TrainingTask, validate_text
from tasks.preflight import PreflightError, missing_target_modules, preflight, weight_names
from tasks.registry import TASK_TYPES

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODEL = CONFIGS / "quickstart" / "tiny-model"
INPUTS = {
    "model": {"path": str(MODEL), "source_type": "local"},
    "dataset": {"path": str(CONFIGS / "quickstart" / "qa.jsonl"), "source_type": "local"},
}


def task(tmp_path: Path, **edits: Any) -> TrainingTask:
    data = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    data["spec"]["output"]["destination"] = {"type": "local", "path": str(tmp_path / "out")}
    for dotted, value in edits.items():
        *parents, last = dotted.split("__")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
    result = validate_text(yaml.safe_dump(data), "quickstart.yaml", TASK_TYPES)
    assert isinstance(result.task, TrainingTask), [i.format() for i in result.issues]
    return result.task


def test_the_quickstart_passes(tmp_path: Path) -> None:
    notes = preflight(task(tmp_path), INPUTS, CONFIGS)
    assert any("459 rows" in n for n in notes)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "no probe left behind"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    broken = task(
        tmp_path,
        spec__dataset__preprocessing__prompt_template="Q: {question} ({topic})",
        spec__model__adapter__target_modules=["q_proj", "query_key_value"],
        spec__output__destination={"type": "local", "path": str(blocker / "out")},
    )
    with pytest.raises(PreflightError) as info:
        preflight(broken, INPUTS, CONFIGS)
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert "{topic}" in problems[0] and "question, answer" in problems[0]
    assert "query_key_value not found in the model" in problems[1] and "q_proj" in problems[1]
    assert str(blocker) in problems[2]


def test_qlora_on_a_cpu_is_refused_not_switched(tmp_path: Path) -> None:
    """QLoRA needs CUDA: on a CPU worker that is an error, never a silent fall back to LoRA."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this worker has a CUDA GPU; the refusal is for CPU workers")
    data = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    data["spec"]["model"]["adapter"]["type"] = "qlora"
    data["spec"]["resources"]["hardware"]["gpu"] = {"type": "any", "count": 1}  # the task asks for a GPU...
    data["spec"]["output"]["destination"] = {"type": "local", "path": str(tmp_path / "out")}
    qlora = validate_text(yaml.safe_dump(data), "x.yaml", TASK_TYPES).task
    assert isinstance(qlora, TrainingTask)
    with pytest.raises(PreflightError, match="needs a CUDA GPU"):  # ...but this worker has none
        preflight(qlora, INPUTS, CONFIGS)


def test_module_names_come_from_the_safetensors_header() -> None:
    names = weight_names(MODEL)
    assert names and any(n.endswith("self_attn.q_proj.weight") for n in names)
    assert missing_target_modules(["q_proj", "mlp.down_proj", "nope"], names) == ["nope"]
