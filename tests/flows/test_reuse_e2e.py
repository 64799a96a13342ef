"""A re-run of an unchanged, completed task reuses its finished steps, for real: two `mloc run`s
of the same short quickstart on one MLOC home (an embedded Prefect server each)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.quickstart_task import write_short_quickstart

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

MLOC = Path(sys.executable).parent / "mloc"
RUN_ID = re.compile(r"^run ([0-9a-f-]{36}): Completed$", re.MULTILINE)


def test_a_rerun_reuses_the_training_and_evaluations_and_points_at_the_first_runs_training(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(MLOC_HOME=str(tmp_path / "mloc"), PREFECT_HOME=str(tmp_path / "prefect"), HF_HUB_OFFLINE="1")
    task = write_short_quickstart(tmp_path)
    outputs = []
    for _ in range(2):
        ran = subprocess.run([str(MLOC), "run", str(task)], env=env, capture_output=True, text=True, timeout=600)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        outputs.append(ran.stdout + ran.stderr)
    first, second = (RUN_ID.search(out)[1] for out in outputs)  # type: ignore[index]
    assert first != second
    [workdir] = (tmp_path / "mloc" / "runs" / "quickstart-tiny-sft").iterdir()

    # the second run says what it reused, and from which run
    assert (
        f"Task run 'train' - training already completed in {workdir} (step 10/10): reused from run {first}"
        in (outputs[1])
    )
    for label in ("before", "after"):
        assert f"evaluation ({label}) reused from run {first}, not evaluated again" in outputs[1]
    # it started no child: a child's start would have put the first run's log aside
    assert sorted(p.name for p in workdir.glob("*.log")) == ["evaluate-after.log", "evaluate-before.log", "train.log"]
    # the same figures, and the published manifest names the first run's training
    for figure in ("training:  10 steps", "eval_loss:"):
        [a] = [line for line in outputs[0].splitlines() if figure in line]
        [b] = [line for line in outputs[1].splitlines() if figure in line]
        assert a == b
    manifest = json.loads((tmp_path / "out" / "mloc-manifest.json").read_text())
    assert manifest["training"]["flow_run_id"] == first
    assert manifest["flow_run_id"] == second
