"""The whole pipeline on a real Prefect server: the quickstart trains for real on the CPU.

Nothing is mocked: a real Prefect API (Prefect's test harness), real TRL/PEFT training
of the shipped tiny model, and for S3 a real S3 endpoint (moto's server).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from configs import TrainingTask
from tests.quickstart_task import QUICKSTART_TAGS
from tests.quickstart_task import quickstart_task as quickstart

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def run(task: TrainingTask) -> Any:
    from flows.pipeline import pipeline

    return pipeline(task=task, base_dir=str(CONFIGS), return_state=True)


def read_flow_run(flow_run_id: Any) -> tuple[Any, list[Any], list[Any]]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return flow_run, task_runs, artifacts


def result_lines(workdir: str, name: str) -> list[str]:
    return (Path(workdir) / name).read_text().splitlines()


def task_run_logs(task_run_id: Any) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])), limit=200)
    return [log.message for log in logs]


def test_quickstart_end_to_end(prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.numpy import load_file

    monkeypatch.setenv("MLOC_HOME", str(tmp_path / "home"))
    out = tmp_path / "published"
    task = quickstart({"spec.output.destination": {"type": "local", "path": str(out)}})
    state = run(task)
    assert state.is_completed(), state.message
    result = state.result()

    flow_run, task_runs, artifacts = read_flow_run(state.state_details.flow_run_id)
    assert flow_run.name == "quickstart-tiny-sft"
    assert set(flow_run.tags) >= QUICKSTART_TAGS
    names = {r.name for r in task_runs}
    assert names == {
        "preflight-hardware",
        "download",
        "preflight",
        "evaluate-before",
        "train",
        "evaluate-after",
        "upload",
    }
    assert all(r.state.is_completed() for r in task_runs)
    keys = {a.key for a in artifacts}
    assert {"quickstart-tiny-sft-progress", "quickstart-tiny-sft-eval", "quickstart-tiny-sft-report"} <= keys
    [progress] = [a for a in artifacts if a.key == "quickstart-tiny-sft-progress"]
    assert progress.data == 100.0
    # figures for people: 4 significant digits in the table (the exact ones are in eval.json)
    [table] = [a for a in artifacts if a.key == "quickstart-tiny-sft-eval"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert all(len(f"{row[c]:g}".replace(".", "").lstrip("0")) <= 4 for row in rows for c in ("before", "after"))

    # the training child's lines are the train task run's logs, as it printed them
    [train_run] = [r for r in task_runs if r.name == "train"]
    printed = [line for line in result_lines(result["workdir"], "train.log") if line.startswith("step ")]
    assert printed and set(printed) <= set(task_run_logs(train_run.id)), "training log lines missing from the run"

    # eval loss clearly drops
    metrics = result["metrics"]
    assert metrics["eval_loss"] < 0.8 * metrics["eval_loss_before"], metrics

    # the upload holds what output.artifacts lists, and the manifest
    manifest = json.loads((out / "mloc-manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    assert {
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "eval/eval.json",
        "logs/trainer_state.json",
        "logs/train.log",
        "README.md",
    } <= listed
    assert not any(p.startswith("model/") for p in listed), "full_model was not asked for"
    assert manifest["base_model"]["content_hash"].startswith("sha256:")
    assert manifest["dataset"]["identifier"].endswith("qa.jsonl")
    assert manifest["metrics"]["eval_loss"] == pytest.approx(metrics["eval_loss"])
    assert manifest["training"]["global_step"] == task.spec.hyperparameters["max_steps"]

    # trained weights differ from the initial ones: LoRA starts its B matrices at zero
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and all(abs(w).max() > 0 for w in lora_b)


def test_qlora_on_a_cpu_worker_is_refused_before_the_download(prefect_server: None, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this worker has a CUDA GPU; the refusal is for CPU workers")
    task = quickstart(
        {
            "spec.model.adapter.type": "qlora",
            "spec.resources.hardware.gpu": {"type": "any", "count": 1},
            "spec.output.destination": {"type": "local", "path": str(tmp_path / "out")},
        }
    )
    state = run(task)
    assert state.is_failed()
    _, task_runs, _ = read_flow_run(state.state_details.flow_run_id)
    assert [r.name for r in task_runs] == ["preflight-hardware"], (
        "nothing may be downloaded for a run that cannot start"
    )
    [check] = task_runs
    assert check.state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "this worker has 0 CUDA GPU(s)" in message and "QLoRA" in message and "needs a CUDA GPU" in message
    # it held no GPU: tagged (and so billed) with 0, whatever the task asked, and its log says so
    flow_run, _, _ = read_flow_run(state.state_details.flow_run_id)
    assert {"gpu:none", "gpu-count:0"} <= set(flow_run.tags) and "gpu:any" not in flow_run.tags
    assert any("tagged and billed with 0 GPUs" in line for line in flow_run_logs(flow_run.id))


def flow_run_logs(flow_run_id: Any) -> list[str]:
    """The flow run's own log lines (not its task runs'), once Prefect's batched sender delivered them."""
    import time

    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTaskRunId

    wanted = LogFilter(
        flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]), task_run_id=LogFilterTaskRunId(is_null_=True)
    )
    messages: list[str] = []
    for _ in range(20):
        with get_client(sync_client=True) as client:
            messages = [log.message for log in client.read_logs(log_filter=wanted, limit=200)]
        if any(m.startswith("Finished in state") for m in messages):
            break
        time.sleep(0.5)
    return messages


def test_replicas_2_train_as_two_torchrun_nodes_through_the_pipeline(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from configs import validate_text
    from flows.pipeline import pipeline
    from tasks.registry import TASK_TYPES

    monkeypatch.setenv("MLOC_HOME", str(tmp_path / "home"))
    out = tmp_path / "published"
    path = CONFIGS / "quickstart" / "sft-2-nodes.yaml"  # the shipped quickstart: replicas 2, 4 rows a step each
    data = yaml.safe_load(path.read_text())
    data["spec"]["output"]["destination"] = {"type": "local", "path": str(out)}
    task = validate_text(yaml.safe_dump(data), path.name, TASK_TYPES).task
    assert isinstance(task, TrainingTask) and task.spec.resources.replicas == 2
    state = pipeline(task=task, base_dir=str(path.parent), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    flow_run, task_runs, _ = read_flow_run(state.state_details.flow_run_id)
    assert {"replicas:2", "gpu-count:0"} <= set(flow_run.tags)
    # every rank's lines reach the train task run, prefixed with its rank; figures come from rank 0
    [train_run] = [r for r in task_runs if r.name == "train"]
    logs = task_run_logs(train_run.id)
    for rank in (0, 1):
        assert any(line.startswith(f"[rank{rank}]: rank {rank} of world size 2 ") for line in logs), logs[:20]
    assert any(line.startswith("[rank0]: step 60/60") for line in logs)
    assert result["metrics"]["eval_loss"] < 0.8 * result["metrics"]["eval_loss_before"]
    manifest = json.loads((out / "mloc-manifest.json").read_text())
    assert manifest["training"]["global_step"] == 60
    assert manifest["hardware"]["replicas"] == 2
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_s3_inputs_and_outputs_and_a_second_run_downloads_nothing(
    prefect_server: None, s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    monkeypatch.setenv("MLOC_HOME", str(tmp_path / "home"))
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="e2e-inputs")
    s3.create_bucket(Bucket="e2e-models")
    for file in sorted((CONFIGS / "quickstart" / "tiny-model").iterdir()):
        s3.upload_file(str(file), "e2e-inputs", f"models/tiny/{file.name}")
    s3.upload_file(str(CONFIGS / "quickstart" / "qa.jsonl"), "e2e-inputs", "data/qa.jsonl")
    task = quickstart(
        {
            "spec.model.source": {"type": "s3", "bucket": "e2e-inputs", "path": "models/tiny"},
            "spec.dataset.source": {"type": "s3", "bucket": "e2e-inputs", "path": "data/qa.jsonl"},
            "spec.hyperparameters.max_steps": 4,
            "spec.evaluation": {"enabled": False},
            "spec.output.destination": {"type": "s3", "bucket": "e2e-models", "path": "runs/tiny-sft"},
            "spec.output.artifacts": ["adapter_weights", "training_logs"],
        }
    )
    first = run(task)
    assert first.is_completed(), first.message
    inputs = first.result()["inputs"]
    assert inputs["model"]["downloaded_files"] > 0 and inputs["dataset"]["downloaded_files"] == 1

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="e2e-models", Prefix="runs/tiny-sft/")["Contents"]}
    assert "runs/tiny-sft/mloc-manifest.json" in keys
    assert "runs/tiny-sft/adapter/adapter_model.safetensors" in keys
    manifest = json.loads(s3.get_object(Bucket="e2e-models", Key="runs/tiny-sft/mloc-manifest.json")["Body"].read())
    assert {f"runs/tiny-sft/{f['path']}" for f in manifest["files"]} | {"runs/tiny-sft/mloc-manifest.json"} == keys

    second = run(task)
    assert second.is_completed(), second.message
    again = second.result()["inputs"]
    assert again["model"]["downloaded_files"] == 0 and again["dataset"]["downloaded_files"] == 0
    assert again["model"]["revision"] == inputs["model"]["revision"]


def test_the_readme_main_command_in_a_users_configs_folder(tmp_path: Path) -> None:
    """`mloc run configs/quickstart.yaml`, as the README's `make run` does (an embedded Prefect,
    offline, a CPU), from a user's folder whose task files live in configs/: the name of MLOC's
    own package, which the training and evaluation children must not import instead of it."""
    import os
    import re
    import shutil
    import subprocess
    import sys

    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    shutil.copy(CONFIGS / "quickstart.yaml", project / "configs")
    shutil.copytree(CONFIGS / "quickstart", project / "configs" / "quickstart")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(MLOC_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"), HF_HUB_OFFLINE="1")
    mloc = Path(sys.executable).parent / "mloc"
    proc = subprocess.run(
        [str(mloc), "run", "configs/quickstart.yaml"], cwd=project, env=env, capture_output=True, text=True, timeout=900
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "on an embedded local Prefect server" in proc.stdout
    published = project / ".mloc" / "outputs" / "quickstart-tiny-sft"
    assert ": Completed" in proc.stdout and f"outputs:   {published.as_uri()}" in proc.stdout
    assert (published / "mloc-manifest.json").is_file()
    # for people: rounded figures, no terminal progress bars, no warnings nobody can act on
    assert re.search(r"training:  60 steps, train loss \d\.\d{1,3}\n", proc.stdout), proc.stdout[-800:]
    assert "Generating train split" not in out and "examples/s]" not in out
    assert "FutureWarning" not in out and "from scratch" not in out
