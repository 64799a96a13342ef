"""Killing the training child mid-run, then running again, resumes from the last checkpoint."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from configs import TrainingTask
from tasks.runner import ChildError
from tasks.train import last_checkpoint, run_training
from tests.quickstart_task import quickstart_task

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def small_task() -> TrainingTask:
    return quickstart_task(
        {
            f"spec.hyperparameters.{key}": value
            for key, value in {"max_steps": 30, "save_steps": 10, "logging_steps": 5}.items()
        }
    )


def test_killed_training_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    task = small_task()
    inputs = {
        "model": {"path": str(CONFIGS / "quickstart" / "tiny-model")},
        "dataset": {"path": str(CONFIGS / "quickstart" / "qa.jsonl"), "source_type": "local"},
    }
    lines: list[str] = []

    def kill_after_first_checkpoint(event: dict[str, Any]) -> None:
        if event["event"] == "progress" and event["step"] >= 15:
            pid = int((tmp_path / "train.pid").read_text())
            os.killpg(pid, signal.SIGKILL)  # as a node loss or OOM kill would: no chance to clean up

    with pytest.raises(ChildError, match="killed by signal 9"):
        run_training(task, inputs, tmp_path, lines.append, kill_after_first_checkpoint)
    assert any("checkpoint saved at step 10" in line for line in lines)
    checkpoint = last_checkpoint(tmp_path / "train")
    assert checkpoint is not None and checkpoint.name == "checkpoint-10"

    lines.clear()
    events: list[dict[str, Any]] = []
    result = run_training(task, inputs, tmp_path, lines.append, events.append)
    assert "resuming from checkpoint-10 (step 10/30)" in lines
    # each run its own log: this one's starts at the resume; the killed one's is kept beside it
    log = (tmp_path / "train.log").read_text()
    assert "resuming from checkpoint-10" in log and "step 5/30" not in log
    [earlier] = tmp_path.glob("train.*.log")
    assert "step 5/30" in earlier.read_text()
    assert result.resumed_from is not None and result.resumed_from.endswith("checkpoint-10")
    assert result.global_step == result.max_steps == 30
    assert all(e["step"] <= e["max_steps"] for e in events if e["event"] == "progress")


def test_a_finished_training_is_not_trained_again(tmp_path: Path) -> None:
    """A re-run of a completed task reuses its result; one whose result was lost after the last
    checkpoint saves that checkpoint, and neither trains past max_steps."""
    task = quickstart_task({"spec.hyperparameters.max_steps": 8, "spec.hyperparameters.save_steps": 4})
    inputs = {
        "model": {"path": str(CONFIGS / "quickstart" / "tiny-model")},
        "dataset": {"path": str(CONFIGS / "quickstart" / "qa.jsonl"), "source_type": "local"},
    }
    first = run_training(task, inputs, tmp_path, lambda line: None, lambda event: None)
    assert first.global_step == first.max_steps == 8

    lines: list[str] = []
    events: list[dict[str, Any]] = []
    again = run_training(task, inputs, tmp_path, lines.append, events.append)
    assert again == first
    assert [line for line in lines if "already completed" in line] == [
        f"training already completed in {tmp_path} (step 8/8): reused from an earlier run, not training again"
    ]
    assert not any(line.startswith("step ") for line in lines), "the trainer ran again"
    assert events == [{"event": "progress", "step": 8, "max_steps": 8}]

    # killed after writing checkpoint-8 and before its result: resuming would train step 9 of 8
    (tmp_path / "train-result.json").unlink()
    lines.clear()
    saved = run_training(task, inputs, tmp_path, lines.append, lambda event: None)
    assert "checkpoint-8 is the last step (8/8): saving it as the result, not training again" in lines
    assert saved.global_step == saved.max_steps == 8
    assert not any(line.startswith("step 9") for line in lines), lines
    assert (Path(saved.final_dir) / "adapter_model.safetensors").is_file()


def test_a_half_written_checkpoint_is_not_resumed_from(tmp_path: Path) -> None:
    complete = tmp_path / "checkpoint-10"
    complete.mkdir()
    (complete / "trainer_state.json").write_text("{}")
    (complete / "adapter_model.safetensors").write_bytes(b"x")
    (tmp_path / "checkpoint-20").mkdir()  # killed while writing: no trainer state yet
    (tmp_path / "checkpoint-20" / "adapter_model.safetensors").write_bytes(b"x")
    assert last_checkpoint(tmp_path) == complete
