"""The dpo quickstart (configs/quickstart/dpo.yaml) through the real pipeline on a real
Prefect server: TRL's DPOTrainer trains a LoRA adapter of the shipped tiny model for real on
the CPU, and the evaluation scores the held-out preference pairs before and after."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from configs import TrainingTask, validate_text
from tasks.registry import TASK_TYPES

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart"


def dpo_task(destination: Path) -> TrainingTask:
    data = yaml.safe_load((QUICKSTART / "dpo.yaml").read_text())
    data["spec"]["output"]["destination"] = {"type": "local", "path": str(destination)}
    result = validate_text(yaml.safe_dump(data), "dpo.yaml", TASK_TYPES)
    assert isinstance(result.task, TrainingTask), [i.format() for i in result.issues]
    return result.task


def flow_run_artifacts(flow_run_id: Any) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def test_dpo_quickstart_end_to_end(prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.numpy import load_file

    from flows.pipeline import pipeline

    monkeypatch.setenv("MLOC_HOME", str(tmp_path / "home"))
    out = tmp_path / "published"
    task = dpo_task(out)
    state = pipeline(task=task, base_dir=str(QUICKSTART), return_state=True)
    assert state.is_completed(), state.message
    metrics = state.result()["metrics"]

    # before training the policy is the reference: every implied reward is 0, so the DPO loss is
    # -log sigmoid(0) = ln 2 and no pair counts as won (a tie is not r_chosen > r_rejected)
    assert metrics["eval_loss_before"] == pytest.approx(math.log(2), abs=1e-4)
    assert metrics["reward_accuracy_before"] == 0.0 and metrics["reward_margin_before"] == pytest.approx(0.0)
    # after: the training is seeded (hyperparameters.seed, and the held-out split's own seed), so
    # these figures are the same every run on a CPU; reward_accuracy > before holds as soon as the
    # adapter moved the policy off the reference, and the task's own gate asks more of it
    assert metrics["reward_accuracy"] > metrics["reward_accuracy_before"], metrics
    assert metrics["eval_loss_reduction"] == pytest.approx(metrics["eval_loss_before"] - metrics["eval_loss"])

    # the adapter trained: LoRA starts its B matrices at zero
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and all(abs(w).max() > 0 for w in lora_b)

    # the upload holds the manifest, whose metrics carry the dpo ones
    manifest = json.loads((out / "mloc-manifest.json").read_text())
    assert manifest["metrics"]["reward_accuracy"] == pytest.approx(metrics["reward_accuracy"])
    assert manifest["training"]["global_step"] == task.spec.hyperparameters["max_steps"]
    assert "eval/eval.json" in {f["path"] for f in manifest["files"]}

    # the eval table lists the dpo metrics the evaluation measured, before and after
    [table] = [a for a in flow_run_artifacts(state.state_details.flow_run_id) if a.key == "quickstart-tiny-dpo-eval"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {row["metric"] for row in rows} == {"eval_loss", "reward_accuracy", "reward_margin"}
    assert all(row["before"] is not None and row["after"] is not None for row in rows)
