"""A ServingTask's model folder: the sources it names are fetched and linked where the server reads them.

Real files throughout: the quickstart model, an adapter folder as a training uploads it (a
local destination, plain and versioned with latest.json), and the training's own task.yaml.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from configs import ServingTask, validate_text
from tasks.registry import TASK_TYPES
from tasks.serving.plan import plan_for
from tasks.serving.prepare import PrepareError, prepare, present, recorded

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODEL = CONFIGS / "quickstart" / "tiny-model"


def _adapter(folder: Path) -> Path:
    """A folder as peft's save_pretrained writes one (the files prepare checks, and weights)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    return folder


def _training(tmp: Path, *, scheduled: bool = False, artifacts: tuple[str, ...] = ("adapter_weights",)) -> Path:
    task = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    task["spec"]["model"]["source"]["path"] = str(MODEL)
    task["spec"]["dataset"]["source"]["path"] = str(CONFIGS / "quickstart" / "qa.jsonl")
    task["spec"]["output"] = {"destination": {"type": "local", "path": "out"}, "artifacts": list(artifacts)}
    if scheduled:
        task["spec"]["schedule"] = {"cron": "0 3 * * *"}
    path = tmp / "train" / "task.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def _serving(tmp: Path, adapters: list[dict[str, object]]) -> ServingTask:
    data = {
        "apiVersion": "mloc/v1",
        "kind": "ServingTask",
        "metadata": {"name": "svc", "owner": "o", "project": "p"},
        "spec": {"model": {"name": "tiny", "source": {"type": "local", "path": str(MODEL)}, "adapters": adapters}},
    }
    result = validate_text(yaml.safe_dump(data), "serve.yaml", TASK_TYPES)
    assert result.task is not None, [i.format() for i in result.issues]
    assert isinstance(result.task, ServingTask)
    return result.task


def test_the_model_and_a_trainings_adapter_are_linked_by_their_served_names(tmp_path: Path) -> None:
    training = _training(tmp_path)
    uploaded = _adapter(training.parent / "out" / "adapter")
    task = _serving(tmp_path, [{"name": "sft", "source": {"type": "training", "task": "train/task.yaml"}}])
    plan = plan_for(task, str(tmp_path / "home"))
    assert not present(task, plan)
    placed = prepare(task, plan, base_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert [(p.role, p.name) for p in placed] == [("model", "tiny"), ("adapter", "sft")]
    assert Path(plan.model_dir).resolve() == MODEL.resolve()
    assert Path(plan.adapter_dir("sft")).resolve() == uploaded.resolve()
    assert (Path(plan.model_dir) / "config.json").is_file()
    assert present(task, plan)
    assert [p["content_hash"] for p in recorded(plan) or []] == [p.content_hash for p in placed]
    # preparing again changes nothing on disk
    before = {p: os.readlink(p) for p in Path(plan.root).glob("*/*")}
    prepare(task, plan, base_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert {p: os.readlink(p) for p in Path(plan.root).glob("*/*")} == before


def test_a_scheduled_training_is_served_at_the_version_latest_json_names(tmp_path: Path) -> None:
    training = _training(tmp_path, scheduled=True)
    out = training.parent / "out"
    _adapter(out / "versions" / "v1" / "adapter")
    newer = _adapter(out / "versions" / "v2" / "adapter")
    (out / "latest.json").write_text(json.dumps({"version": "v2", "uri": (out / "versions" / "v2").as_uri()}))
    task = _serving(tmp_path, [{"name": "sft", "source": {"type": "training", "task": "train/task.yaml"}}])
    plan = plan_for(task, str(tmp_path / "home"))
    prepare(task, plan, base_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert Path(plan.adapter_dir("sft")).resolve() == newer.resolve()
    pinned = _serving(
        tmp_path, [{"name": "sft", "source": {"type": "training", "task": "train/task.yaml", "version": "v1"}}]
    )
    prepare(pinned, plan, base_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert Path(plan.adapter_dir("sft")).resolve() == (out / "versions" / "v1" / "adapter").resolve()
    assert not present(task, plan), "the folder now holds v1, which the first spec does not name"


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        ("no-upload-yet", "no latest.json"),
        ("no-adapter-artifact", "does not upload adapter_weights"),
        ("not-an-adapter", "has no adapter_config.json"),
        ("missing-task", "cannot be read"),
    ],
)
def test_a_source_that_cannot_be_served_is_refused_and_the_folder_kept(
    tmp_path: Path, setup: str, fragment: str
) -> None:
    good = _serving(tmp_path, [])
    plan = plan_for(good, str(tmp_path / "home"))
    prepare(good, plan, base_dir=tmp_path, cache_dir=tmp_path / "cache")
    kept = json.loads((Path(plan.root) / "sources.json").read_text())
    task_path = "train/task.yaml"
    if setup == "no-upload-yet":
        _training(tmp_path, scheduled=True)
    elif setup == "no-adapter-artifact":
        _training(tmp_path, artifacts=("training_logs",))
    elif setup == "not-an-adapter":
        training = _training(tmp_path)
        (training.parent / "out" / "adapter").mkdir(parents=True)
    else:
        task_path = "nowhere.yaml"
    task = _serving(tmp_path, [{"name": "sft", "source": {"type": "training", "task": task_path}}])
    with pytest.raises(PrepareError, match=fragment):
        prepare(task, plan, base_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert json.loads((Path(plan.root) / "sources.json").read_text()) == kept
    assert present(good, plan)


def test_an_adapter_dropped_from_the_spec_is_no_longer_linked(tmp_path: Path) -> None:
    adapter = _adapter(tmp_path / "a")
    with_adapter = _serving(tmp_path, [{"name": "a", "source": {"type": "local", "path": str(adapter)}}])
    plan = plan_for(with_adapter, str(tmp_path / "home"))
    prepare(with_adapter, plan, base_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert Path(plan.adapter_dir("a")).is_symlink()
    without = _serving(tmp_path, [])
    assert not present(without, plan)
    prepare(without, plan, base_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert not Path(plan.adapter_dir("a")).exists()
    assert present(without, plan)
    shutil.rmtree(adapter)
    assert not present(with_adapter, plan)
