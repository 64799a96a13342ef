"""The child process of a heavy step: ``python -P -m tasks JOB.json`` (see tasks/runner.py).

Reads the typed job and runs its step with the taskType's hooks (tasks/tasktype.py): train or evaluate.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from configs import TrainingTask
from configs.validate import load_task_data
from tasks.jobs import JOB, TrainJob
from tasks.registry import trainer_for


def main(argv: list[str]) -> int:
    # peft 0.21 reads PreTrainedModel.is_gradient_checkpointing, which transformers 5 deprecated:
    # a warning in every run's log that no task.yaml can act on
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    job = JOB.validate_json(Path(argv[0]).read_text())
    task = load_task_data(job.task)
    if not isinstance(task, TrainingTask):
        raise TypeError(f"{task.kind} tasks have no {job.name} step")
    trainer = trainer_for(task.spec.task_type)
    if isinstance(job, TrainJob):
        trainer.train(task, job)
    else:
        trainer.evaluate(task, job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
