"""The plain steps of one run share one child process (tasks/runner.py::one_child), for real:
quickstart evaluations and a training in real children, their PIDs read from the step's PID file
while each step runs, as an operator would."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tasks.jobs import EvaluateJob
from tasks.runner import ChildError, one_child, run_child
from tasks.train import run_training
from tests.quickstart_task import quickstart_task

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODEL = CONFIGS / "quickstart" / "tiny-model"
DATA = CONFIGS / "quickstart" / "qa.jsonl"
INPUTS = {"model": {"path": str(MODEL)}, "dataset": {"path": str(DATA), "source_type": "local"}}


def small_task() -> Any:
    return quickstart_task(
        {
            "spec.hyperparameters.max_steps": 6,
            "spec.hyperparameters.save_steps": 3,
            "spec.evaluation.max_samples": 8,
            "spec.evaluation.generation_prompts": 1,
            "spec.evaluation.max_new_tokens": 4,
        }
    )


def evaluation(task: Any, workdir: Path, label: str, model_path: Path = MODEL, **fields: Any) -> EvaluateJob:
    return EvaluateJob(
        label=label,  # type: ignore[arg-type]
        task=task.model_dump(mode="json", by_alias=True),
        model_path=str(model_path),
        dataset_path=str(DATA),
        dataset_source_type="local",
        result_path=str(workdir / f"eval-{label}.json"),
        **fields,
    )


class Pids:
    """The PID in ``<workdir>/<step>.pid`` at each line a step prints."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.seen: dict[str, set[int]] = {}

    def watching(self, step: str) -> Any:
        def on_line(line: str) -> None:
            path = self.workdir / f"{step}.pid"
            if path.exists():
                self.seen.setdefault(step, set()).add(int(path.read_text()))

        return on_line


def test_evaluate_train_evaluate_run_in_one_child_and_each_keeps_its_log(tmp_path: Path) -> None:
    task, pids = small_task(), Pids(tmp_path)
    with one_child():
        run_child(evaluation(task, tmp_path, "before"), tmp_path, pids.watching("evaluate-before"), lambda e: None)
        trained = run_training(task, INPUTS, tmp_path, pids.watching("train"), lambda e: None)
        after = evaluation(task, tmp_path, "after", adapter_dir=trained.final_dir)
        run_child(after, tmp_path, pids.watching("evaluate-after"), lambda e: None)
    [one] = {pid for found in pids.seen.values() for pid in found}
    assert set(pids.seen) == {"evaluate-before", "train", "evaluate-after"}
    # the child is gone once the block ends: it exits when its stdin closes
    with pytest.raises(ProcessLookupError):
        os.kill(one, 0)
    # three steps, three logs, each with its own step's lines only
    before_log, train_log = (tmp_path / "evaluate-before.log").read_text(), (tmp_path / "train.log").read_text()
    assert "before: eval_loss" in before_log and "step 6/6" not in before_log
    assert "step 6/6" in train_log and "eval_loss" not in train_log
    assert "after: eval_loss" in (tmp_path / "evaluate-after.log").read_text()
    # the trained adapter scored better than the base: the steps ran for real, in that order
    before = json.loads((tmp_path / "eval-before.json").read_text())
    after_result = json.loads((tmp_path / "eval-after.json").read_text())
    assert after_result["eval_loss"] < before["eval_loss"]
    assert trained.global_step == 6


def test_a_failed_step_ends_its_child_and_the_next_step_gets_a_new_one(tmp_path: Path) -> None:
    task, pids = small_task(), Pids(tmp_path)
    with one_child():
        broken = evaluation(task, tmp_path, "before", model_path=tmp_path / "no-such-model")
        with pytest.raises(ChildError, match="evaluate-before process exited with code 1"):
            run_child(broken, tmp_path, pids.watching("evaluate-before"), lambda e: None)
        run_child(evaluation(task, tmp_path, "after"), tmp_path, pids.watching("evaluate-after"), lambda e: None)
    assert (tmp_path / "eval-after.json").is_file()
    assert pids.seen["evaluate-before"].isdisjoint(pids.seen["evaluate-after"])


def test_a_killed_child_fails_its_step_by_signal_and_the_block_goes_on(tmp_path: Path) -> None:
    task = small_task()
    killed: list[int] = []

    def kill_at_first_line(line: str) -> None:
        if not killed:
            killed.append(int((tmp_path / "train.pid").read_text()))
            os.killpg(killed[0], signal.SIGKILL)

    with one_child():
        with pytest.raises(ChildError, match="killed by signal 9"):
            run_training(task, INPUTS, tmp_path, kill_at_first_line, lambda e: None)
        result = run_training(task, INPUTS, tmp_path, [].append, lambda e: None)
    assert result.global_step == 6
