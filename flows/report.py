"""What a run reports and publishes: metrics, quality gates, Prefect artifacts, the
staged outputs and their manifest (lineage)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from configs import TrainingTask
from tasks.gates import failed_gates
from tasks.registry import TASK_TYPES


def mloc_version() -> str:
    """The installed MLOC's version, from its package metadata (as `mloc --version` prints it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mloc")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def eval_results(
    task: TrainingTask,
    inputs: dict[str, dict[str, Any]],
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    values: dict[str, float],
) -> dict[str, Any]:
    """The eval_results artifact: same shape whichever backend produced it."""
    return {
        "task": task.metadata.name,
        "model": {"identifier": inputs["model"]["identifier"], "revision": inputs["model"]["revision"]},
        "dataset": {"identifier": inputs["dataset"]["identifier"], "revision": inputs["dataset"]["revision"]},
        "metrics": values,
        "before": before,
        "after": after,
        "gates": [g.model_dump() for g in task.spec.evaluation.gates],
        "failed_gates": failed_gates(task, values),
    }


def _markdown(task: TrainingTask, results: dict[str, Any]) -> str:
    lines = [
        f"# {task.metadata.name}",
        "",
        f"- model: `{results['model']['identifier']}` at `{results['model']['revision'][:12]}`",
        f"- dataset: `{results['dataset']['identifier']}` at `{results['dataset']['revision'][:12]}`",
        f"- taskType: `{task.spec.task_type}`, owner `{task.metadata.owner}`, project `{task.metadata.project}`",
        "",
        "| metric | before | after |",
        "|---|---|---|",
    ]
    before, after = results["before"] or {}, results["after"] or {}
    for name in _measured(task, before, after):
        lines.append(f"| {name} | {before.get(name, float('nan')):.4f} | {after.get(name, float('nan')):.4f} |")
    if results["failed_gates"]:
        lines += ["", "**Quality gates failed:** " + "; ".join(results["failed_gates"])]
    generations = after.get("generations") or []
    if generations:
        lines += ["", "## Generations (held-out prompts)", "", "| prompt | reference | output |", "|---|---|---|"]
        lines += [f"| {_cell(g['prompt'])} | {_cell(g['reference'])} | {_cell(g['output'])} |" for g in generations]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()[:200]


def _measured(task: TrainingTask, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The type's declared metrics that its evaluation reported before or after training."""
    return [name for name in TASK_TYPES[task.spec.task_type].metric_names if name in before or name in after]


def _shown(value: float | None) -> float | None:
    """A metric as people read it: 4 significant digits (the exact value is in eval.json and the manifest)."""
    return None if value is None else float(f"{value:.4g}")


def publish(task: TrainingTask, results: dict[str, Any]) -> None:
    """Prefect artifacts: a table of metrics and a markdown report."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    before, after = results["before"] or {}, results["after"] or {}
    rows = [
        {"metric": name, "before": _shown(before.get(name)), "after": _shown(after.get(name))}
        for name in _measured(task, before, after)
    ]
    name = task.metadata.name
    create_table_artifact(rows, key=f"{name}-eval", description=f"Held-out evaluation of {name}")
    create_markdown_artifact(_markdown(task, results), key=f"{name}-report", description=f"Run report of {name}")


def stage(task: TrainingTask, trained: dict[str, Any], results: dict[str, Any], workdir: Path, staging: Path) -> None:
    """Copy exactly the artifacts spec.output.artifacts lists into ``staging``."""
    staging.mkdir(parents=True)
    wanted = task.spec.output.artifacts
    if "adapter_weights" in wanted:
        shutil.copytree(trained["final_dir"], staging / "adapter")
    if "full_model" in wanted:
        shutil.copytree(trained["merged_dir"] or trained["final_dir"], staging / "model")
    if "training_logs" in wanted:
        (staging / "logs").mkdir()
        for log in ("train.log", "evaluate-before.log", "evaluate-after.log"):
            if (workdir / log).is_file():
                shutil.copy2(workdir / log, staging / "logs" / log)
        shutil.copy2(trained["state_file"], staging / "logs" / "trainer_state.json")
    if "eval_results" in wanted:
        (staging / "eval").mkdir()
        (staging / "eval" / "eval.json").write_text(json.dumps(results, indent=1))
    (staging / "README.md").write_text(_model_card(task, results))


def _model_card(task: TrainingTask, results: dict[str, Any]) -> str:
    base = task.spec.model.source
    identifier = getattr(base, "identifier", None) or getattr(base, "path", "")
    header = ["---", "library_name: peft" if task.spec.model.adapter else "library_name: transformers"]
    if getattr(base, "type", "") == "huggingface":
        header.append(f"base_model: {identifier}")
    header += ["tags: [mloc, " + task.spec.task_type + "]", "---", ""]
    return "\n".join(header) + _markdown(task, results)


def manifest(
    task: TrainingTask,
    inputs: dict[str, dict[str, Any]],
    trained: dict[str, Any],
    values: dict[str, float],
    task_sha256: str,
    task_yaml_sha256: str | None,
    duration_s: float,
    finished_at: str,
) -> dict[str, Any]:
    """Lineage of the uploaded result: what it was made from, how, and how good it is."""
    from prefect.runtime import flow_run

    gpu = task.spec.resources.hardware.gpu

    def lineage(role: str) -> dict[str, Any] | None:
        got = inputs.get(role)
        if got is None:
            return None
        return {k: got[k] for k in ("source_type", "identifier", "revision", "content_hash")}

    return {
        "mloc_version": mloc_version(),
        "task": {
            "name": task.metadata.name,
            "owner": task.metadata.owner,
            "project": task.metadata.project,
            "task_type": task.spec.task_type,
        },
        "task_sha256": task_sha256,
        "task_yaml_sha256": task_yaml_sha256,
        "flow_run_id": str(flow_run.id) if flow_run.id else None,
        "base_model": lineage("model"),
        "dataset": lineage("dataset"),
        "reward_model": lineage("reward_model"),
        "metrics": values,
        "training": {
            "trainer": trained["trainer"],
            "global_step": trained["global_step"],
            "train_loss": trained["train_loss"],
            "runtime_s": trained["runtime_s"],
            "resumed_from": trained["resumed_from"],
            # the run that trained it: this one, or the earlier run whose training this one reused
            "flow_run_id": trained.get("flow_run_id"),
        },
        "duration_s": round(duration_s, 3),
        "finished_at": finished_at,
        "hardware": {"gpu_type": gpu.type, "gpu_count": gpu.count, "replicas": task.spec.resources.replicas},
        "artifacts": list(task.spec.output.artifacts),
    }


OUTPUTS_SUFFIX = "-outputs"  # the outputs artifact's key is <metadata.name>-outputs


def publish_outputs(task: TrainingTask, uploaded: dict[str, Any], manifest: dict[str, Any]) -> None:
    """The outputs artifact: where the upload landed, its metrics and the manifest's lineage.

    The flow's return value is not persisted and a flow-run pod's disk is gone with it, so
    this is how the REST API (:func:`outputs_of`) and the UI learn what a run produced.
    Published only after the upload (and the latest pointer) are complete: a run that has
    it has outputs to show. One ``field``/``value`` row each: a table the UI shows as a
    list, whose data is JSON the API reads back as it was written.
    """
    from prefect.artifacts import create_table_artifact

    from tasks.upload import MANIFEST

    fields = {
        "uri": uploaded["uri"],
        "manifest": f"{uploaded['uri']}/{MANIFEST}",
        "version": manifest.get("version"),
        "metrics": manifest["metrics"],
        "base_model": manifest["base_model"],
        "dataset": manifest["dataset"],
        "reward_model": manifest["reward_model"],
        "task_sha256": manifest["task_sha256"],
        "task_yaml_sha256": manifest["task_yaml_sha256"],
    }
    if "inference" in manifest:  # an inference run: its questions, tokens and tool calls
        fields["inference"] = manifest["inference"]
    name = task.metadata.name
    create_table_artifact(
        [{"field": k, "value": v} for k, v in fields.items()],
        key=f"{name}{OUTPUTS_SUFFIX}",
        description=f"Outputs of {name}: where they were uploaded, metrics, lineage",
    )


def outputs_of(table_data: Any) -> dict[str, Any]:
    """The fields :func:`publish_outputs` wrote, from its artifact's data (Prefect keeps a table as JSON text)."""
    rows = json.loads(table_data) if isinstance(table_data, str) else table_data
    return {row["field"]: row["value"] for row in rows}
