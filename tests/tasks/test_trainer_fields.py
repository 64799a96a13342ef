"""The hyperparameter snapshots equal the installed trainer config classes.

Validation checks `spec.hyperparameters` against these snapshots so that it never
imports torch; this test is what keeps them honest when TRL or transformers move.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_snapshots_match_installed_trainer_classes() -> None:
    from tasks.registry import BUILTIN
    from tasks.trainer_fields import fields_file, snapshots

    for task_type, text in snapshots(BUILTIN).items():
        assert fields_file(task_type).read_text() == text, (
            f"{task_type}: snapshot is stale, run `python -m tasks.trainer_fields`"
        )


def test_a_value_the_snapshot_accepts_is_accepted_by_the_real_class(tmp_path) -> None:
    """What `mloc validate` lets through, the trainer's own class takes."""
    from configs import validate_file
    from tasks.registry import TASK_TYPES
    from tasks.train_sft import trainer_config_class

    task = validate_file("configs/quickstart.yaml", TASK_TYPES).task
    assert task is not None
    config = trainer_config_class()(output_dir=str(tmp_path), use_cpu=True, **task.spec.hyperparameters)
    assert config.max_steps == task.spec.hyperparameters["max_steps"]
    assert config.learning_rate == pytest.approx(task.spec.hyperparameters["learning_rate"])
