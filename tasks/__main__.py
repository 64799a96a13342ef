"""The child process of a heavy step (see tasks/runner.py).

``python -P -m tasks JOB.json`` reads the typed job and runs its step with the taskType's hooks
(tasks/tasktype.py): train or evaluate. ``python -P -m tasks --serve`` runs one job after another,
a job file's path a line on its stdin, so that the steps of one run import the ML stack once.

Either way the process ends without the interpreter's teardown once its output is flushed: the
results are files, written and closed by then, and tearing down torch, transformers and TRL
module by module takes most of a second for nothing.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from pathlib import Path

from configs import TrainingTask
from configs.validate import load_task_data
from tasks.jobs import JOB, TrainJob
from tasks.registry import trainer_for
from tasks.runner import STEP_END, emit


def main(argv: list[str]) -> int:
    # peft 0.21 reads PreTrainedModel.is_gradient_checkpointing, which transformers 5 deprecated:
    # a warning in every run's log that no task.yaml can act on
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    job = JOB.validate_json(Path(argv[0]).read_text())
    task = load_task_data(job.task)
    if not isinstance(task, TrainingTask):
        raise TypeError(f"{task.kind} tasks have no {job.name} step")
    _configure_threads()
    trainer = trainer_for(task.spec.task_type)
    if isinstance(job, TrainJob):
        trainer.train(task, job)
    else:
        trainer.evaluate(task, job)
    return 0


_THREADS_SAID = False


def _configure_threads() -> None:
    """torch's threads as the parent chose them for the task's CPUs (tasks/threads.py); said once."""
    global _THREADS_SAID
    from tasks import threads

    count = threads.configure_torch()
    if not _THREADS_SAID and os.environ.get("RANK", "0") == "0":
        print(f"using {count} CPU thread(s): {os.environ.get(threads.WHY_ENV, 'as set')}", flush=True)
        _THREADS_SAID = True


def serve() -> int:
    """Run each job named on stdin; stop at the first that fails (its traceback is its last lines)."""
    for raw in sys.stdin:
        path = raw.strip()
        if not path:
            continue
        try:
            main([path])
        except BaseException:  # whatever it was, the parent reads it from the log
            traceback.print_exc()
            return 1
        emit(STEP_END)
    return 0


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # torchrun's ranks end together through the process group: a normal exit
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    _exit(serve() if sys.argv[1:] == ["--serve"] else main(sys.argv[1:]))
