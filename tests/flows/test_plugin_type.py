"""Adding a training taskType costs one module: a throwaway type (TRL's KTO, in
tests/flows/kto_type/) is installed as a distribution of its own that registers the module
under the ``mloc.task_types`` entry point group, and MLOC, unchanged, lists, validates,
deploys and runs it: real subprocesses of `mloc`, a real `prefect server start`, and a real
KTO training of the shipped tiny model on the CPU.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.flows import prefect_server

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart"
BIN = Path(sys.executable).parent


def install_plugin(site: Path) -> None:
    """The module, its trainer-field snapshot and a dist-info naming its entry point, on a path
    of its own: what `pip install` of a package registering a task type leaves behind."""
    from trl import KTOConfig

    from tasks.trainer_fields import describe

    site.mkdir()
    shutil.copy2(Path(__file__).with_name("kto_type") / "mloc_kto_type.py", site)
    (site / "kto.json").write_text(json.dumps(describe(KTOConfig), indent=1, sort_keys=True) + "\n")
    info = site / "mloc_kto_type-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mloc-kto-type\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mloc.task_types]\nkto = mloc_kto_type\n")


def kto_task(folder: Path) -> Path:
    """The dpo quickstart's preference pairs as KTO's rows (chosen: desirable, rejected: not), and a task.yaml."""
    rows = [json.loads(line) for line in (QUICKSTART / "preferences.jsonl").read_text().splitlines()][:200]
    with (folder / "kto.jsonl").open("w") as out:
        for row in rows:
            for completion, label in ((row["chosen"], True), (row["rejected"], False)):
                out.write(json.dumps({"prompt": row["prompt"], "completion": completion, "label": label}) + "\n")
    task = yaml.safe_load((QUICKSTART / "dpo.yaml").read_text())
    task["metadata"]["name"] = "quickstart-tiny-kto"
    spec = task["spec"]
    spec["taskType"] = "kto"
    spec["model"]["source"]["path"] = str(QUICKSTART / "tiny-model")
    spec["dataset"]["source"]["path"] = str(folder / "kto.jsonl")
    spec["hyperparameters"] = {
        "max_steps": 10,
        "per_device_train_batch_size": 8,
        "learning_rate": 5.0e-3,
        "logging_steps": 5,
        "seed": 42,
        "report_to": "none",
        "bf16": False,
        "activation_checkpointing": False,
    }
    spec["evaluation"] = {"held_out_fraction": 0.1, "max_samples": 32, "generation_prompts": 1, "max_new_tokens": 4}
    spec["output"]["destination"] = {"type": "local", "path": str(folder / "published")}
    path = folder / "kto.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def mloc(env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "mloc"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_a_type_of_another_distribution_validates_deploys_and_runs(
    tmp_path: Path, port_picker: Callable[[], int]
) -> None:
    from safetensors.numpy import load_file

    install_plugin(tmp_path / "site")
    task_file = kto_task(tmp_path)
    port = port_picker()
    env = prefect_server.server_env(tmp_path / "prefect", port, MLOC_HOME=str(tmp_path / "mloc"))
    plain = dict(env)
    env["PYTHONPATH"] = str(tmp_path / "site")

    # without the distribution, kto is no taskType; with it, it is one like the built-in ones
    unknown = mloc(plain, "validate", str(task_file))
    assert unknown.returncode == 1 and "'kto' is not a valid taskType" in unknown.stdout + unknown.stderr
    listed = mloc(env, "task-types")
    assert listed.returncode == 0, listed.stderr
    assert "kto" in listed.stdout and "KTOTrainer" in listed.stdout and "[trl.KTOConfig]" in listed.stdout
    valid = mloc(env, "validate", str(task_file))
    assert valid.returncode == 0, valid.stdout + valid.stderr
    # its hyperparameters are checked against KTOConfig's fields, its gates against its metrics
    bad = yaml.safe_load(task_file.read_text())
    bad["spec"]["hyperparameters"]["desirable_wieght"] = 1.0
    bad["spec"]["evaluation"]["gates"] = [{"metric": "reward_accuracy", "min": 0.5}]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    refused = mloc(env, "validate", str(tmp_path / "bad.yaml"))
    said = refused.stdout + refused.stderr
    assert refused.returncode == 1, said
    assert "desirable_wieght" in said and "desirable_weight" in said
    assert "'reward_accuracy' is not a metric taskType 'kto' measures" in said and "eval_loss" in said

    with prefect_server.running(env, port, tmp_path / "server.log"):
        applied = mloc(env, "pools", "apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        deployed = mloc(env, "deploy", "--local", str(task_file))
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert "created   mloc/quickstart-tiny-kto" in deployed.stdout
        ran = mloc(env, "run", str(task_file))
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]

    published = tmp_path / "published"
    manifest = json.loads((published / "mloc-manifest.json").read_text())
    assert manifest["task"]["task_type"] == "kto" and manifest["training"]["trainer"] == "KTOTrainer"
    assert manifest["training"]["global_step"] == 10
    assert {"eval_loss", "eval_loss_before", "eval_loss_reduction"} <= set(manifest["metrics"])
    weights = load_file(str(published / "adapter" / "adapter_model.safetensors"))
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and all(abs(w).max() > 0 for w in lora_b)  # LoRA's B matrices start at zero
