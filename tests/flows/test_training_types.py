"""The standard suite of a training taskType, run over every registered one (the habit of
Prefect's BlockStandardTestSuite): each type's quickstart goes through the real pipeline on a
real Prefect server, TRL trains the shipped tiny model for real on the CPU, and the checks
below hold for every type alike. A new type is covered by adding it to the registry and
shipping its quickstart; the only per-type lines here are what its trainer class is and how
far its metric must move on the tiny task.

The rm → ppo chain is part of it: the ppo run's reward model is the rm run's upload.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from configs import TrainingTask, validate_file, validate_text
from tasks.registry import BUILTIN, TASK_TYPES

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TRAINING_TYPES = [m.TASK_TYPE.name for m in BUILTIN if m.TASK_TYPE.kind == "TrainingTask"]

# What each type is trained with: the manifest must name it (ppo's is RLOOTrainer, TRL having no PPOTrainer)
TRAINER_CLASS = {
    "sft": "SFTTrainer",
    "rm": "RewardTrainer",
    "dpo": "DPOTrainer",
    "grpo": "GRPOTrainer",
    "ppo": "RLOOTrainer",
}


def quickstart_file(task_type: str) -> Path:
    """The type's quickstart: configs/quickstart.yaml for sft (the README's), configs/quickstart/<type>.yaml else."""
    return CONFIGS / "quickstart.yaml" if task_type == "sft" else CONFIGS / "quickstart" / f"{task_type}.yaml"


def quickstart_task(task_type: str, destination: Path, reward_model: Path | None = None) -> TrainingTask:
    """The quickstart, validated like a file, uploading to ``destination`` (and, for a type
    that scores with a reward model, using ``reward_model``)."""
    data = yaml.safe_load(quickstart_file(task_type).read_text())
    data["spec"]["output"]["destination"] = {"type": "local", "path": str(destination)}
    if reward_model is not None:
        data["spec"]["reward_model"] = {"source": {"type": "local", "path": str(reward_model)}}
    result = validate_text(yaml.safe_dump(data), quickstart_file(task_type).name, TASK_TYPES)
    assert isinstance(result.task, TrainingTask), [i.format() for i in result.issues]
    return result.task


class Runs:
    """Each type's quickstart run, once per module; ppo's after rm's, on rm's uploaded model."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: dict[str, dict[str, Any]] = {}

    def __getitem__(self, task_type: str) -> dict[str, Any]:
        if task_type not in self.done:
            self.done[task_type] = self._run(task_type)
        return self.done[task_type]

    def _run(self, task_type: str) -> dict[str, Any]:
        from flows.pipeline import pipeline

        reward_model = None
        if task_type == "ppo":  # the chain: ppo scores with what the rm quickstart trained and uploaded
            reward_model = self["rm"]["out"] / "model"
        out = self.root / task_type / "published"
        task = quickstart_task(task_type, out, reward_model)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLOC_HOME", str(self.root / task_type / "home"))
            state = pipeline(task=task, base_dir=str(quickstart_file(task_type).parent), return_state=True)
        assert state.is_completed(), state.message
        result = state.result()
        return {
            "task": task,
            "out": out,
            "result": result,
            "metrics": result["metrics"],
            "manifest": json.loads((out / "mloc-manifest.json").read_text()),
            "flow_run_id": state.state_details.flow_run_id,
        }


@pytest.fixture(scope="module")
def runs(prefect_server: None, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("types"))


def test_every_training_type_is_in_the_suite() -> None:
    assert sorted(TRAINING_TYPES) == sorted(TRAINER_CLASS) == sorted(MOVEMENT)


@pytest.mark.parametrize("task_type", TRAINING_TYPES)
def test_its_example_and_quickstart_validate(task_type: str) -> None:
    for path in (CONFIGS / TASK_TYPES[task_type].example, quickstart_file(task_type)):
        result = validate_file(path, TASK_TYPES)
        assert result.valid, "\n".join(i.format() for i in result.issues)
        assert result.task is not None and result.task.spec.task_type == task_type


@pytest.mark.parametrize("task_type", TRAINING_TYPES)
def test_it_trains_and_the_trained_parameters_differ_from_the_base(runs: Runs, task_type: str) -> None:
    """At least 2 optimiser steps, and the uploaded weights are not the base model's."""
    from safetensors.numpy import load_file

    run = runs[task_type]
    training = run["result"]["training"]
    assert training["global_step"] >= 2 and training["global_step"] == training["max_steps"]
    out = run["out"]
    if (out / "adapter").is_dir():  # LoRA starts its B matrices at zero: any non-zero one trained
        weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
        lora_b = {name: w for name, w in weights.items() if "lora_B" in name}
        assert lora_b and all(abs(w).max() > 0 for w in lora_b.values()), sorted(lora_b)
    if (out / "model").is_dir():  # full (or merged) weights: compared with the base, tensor by tensor
        base_dir = Path(run["task"].spec.model.source.path)
        base_dir = base_dir if base_dir.is_absolute() else quickstart_file(task_type).parent / base_dir
        base = load_file(str(base_dir / "model.safetensors"))
        trained = load_file(str(out / "model" / "model.safetensors"))
        shared = [n for n in trained if n in base and trained[n].shape == base[n].shape]
        assert shared, "the uploaded model shares no tensor with its base"
        assert any(abs(trained[n] - base[n]).max() > 0 for n in shared)
    assert (out / "adapter").is_dir() or (out / "model").is_dir()


@pytest.mark.parametrize("task_type", TRAINING_TYPES)
def test_its_evaluation_gives_its_declared_metrics_before_and_after(runs: Runs, task_type: str) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run = runs[task_type]
    metrics = run["metrics"]
    declared = TASK_TYPES[task_type].metric_names
    assert set(declared) <= set(metrics), (declared, sorted(metrics))
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    # every declared metric the evaluation itself measures (not a before/after difference) is there before too
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run["flow_run_id"]]))
        )
    [table] = [a for a in artifacts if a.key == f"{run['task'].metadata.name}-eval"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert rows and {row["metric"] for row in rows} <= set(declared)
    for row in rows:
        assert row["before"] is not None and row["after"] is not None, row
        assert f"{row['metric']}_before" in metrics


@pytest.mark.parametrize("task_type", TRAINING_TYPES)
def test_its_outputs_upload_with_a_manifest_naming_the_trainer_used(runs: Runs, task_type: str) -> None:
    run = runs[task_type]
    manifest = run["manifest"]
    assert manifest["task"]["task_type"] == task_type
    assert manifest["training"]["trainer"] == TRAINER_CLASS[task_type]
    assert manifest["metrics"] == pytest.approx(run["metrics"])
    uploaded = {f["path"] for f in manifest["files"]}
    wanted = run["task"].spec.output.artifacts
    folders = {"adapter_weights": "adapter/", "full_model": "model/", "training_logs": "logs/", "eval_results": "eval/"}
    for artifact in wanted:
        assert any(path.startswith(folders[artifact]) for path in uploaded), (artifact, sorted(uploaded))
        assert (run["out"] / folders[artifact]).is_dir()


# How far each type's metric moves on its tiny quickstart. The runs are seeded
# (hyperparameters.seed and the held-out split's own seed), so on a CPU the figures are the
# same each run; the margins were checked across several seeds, as the notes say.
def _sft(m: dict[str, float]) -> None:
    assert m["eval_loss"] < m["eval_loss_before"], m


def _dpo(m: dict[str, float]) -> None:
    # before training the policy is its reference: every implied reward is 0, the loss ln 2
    assert m["eval_loss_before"] == pytest.approx(math.log(2), abs=1e-4)
    assert m["reward_accuracy_before"] == 0.0 and m["reward_margin_before"] == pytest.approx(0.0)
    assert m["reward_accuracy"] > m["reward_accuracy_before"], m


def _rm(m: dict[str, float]) -> None:
    # before: a fresh score head, seeded, near chance; after, held-out accuracy was 0.66-0.77 over
    # seeds 1-7 and 42 on 92 held-out pairs with the earlier quickstart model; the head_dim-64 one,
    # trained on the one thread rm.yaml's cpu "1" gives, reached 0.609: 0.58, and the gain below
    assert 0.35 <= m["pairwise_accuracy_before"] <= 0.65 and abs(m["reward_margin_before"]) < 0.1, m
    assert m["pairwise_accuracy"] >= 0.58, m
    assert m["pairwise_accuracy_gain"] >= 0.08 and m["reward_margin"] >= 1.0, m


def _grpo(m: dict[str, float]) -> None:
    # the base model's greedy answers are never short answers ending in time; after 40 steps they
    # all were, on seeds 1, 2, 3, 7 and 42 (exact_match stayed 0: the tiny model learns the format only)
    assert m["mean_reward_before"] == 0.0 and m["mean_reward_gain"] >= 0.5, m


def _ppo(m: dict[str, float]) -> None:
    # not lower, as the issue asks: the base model samples the same few tokens for every prompt, so
    # most leave-one-out advantages are 0 and the greedy answers seldom change (equal on 5 seeds)
    assert m["mean_reward"] >= m["mean_reward_before"], m


MOVEMENT = {"sft": _sft, "dpo": _dpo, "rm": _rm, "grpo": _grpo, "ppo": _ppo}


@pytest.mark.parametrize("task_type", TRAINING_TYPES)
def test_its_metric_moves_the_right_way(runs: Runs, task_type: str) -> None:
    MOVEMENT[task_type](runs[task_type]["metrics"])


def test_ppo_scores_with_the_reward_model_rm_uploaded(runs: Runs) -> None:
    """The rm → ppo chain: the ppo run downloaded the rm run's uploaded model as its reward model."""
    rm, ppo = runs["rm"], runs["ppo"]
    lineage = ppo["manifest"]["reward_model"]
    assert lineage is not None and lineage["source_type"] == "local"
    assert Path(lineage["identifier"]) == rm["out"] / "model"
    assert ppo["result"]["inputs"]["reward_model"]["content_hash"] == lineage["content_hash"]
    assert (rm["out"] / "model" / "config.json").is_file()
    config = json.loads((rm["out"] / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert len(config.get("id2label", {"0": "LABEL_0"})) == 1  # one score per sequence
