"""What an inference run publishes: predictions, eval_results, the report, the manifest.

Domain logic only; flows/inference.py turns these into Prefect artifacts and uploads them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.gates import failed_gates

if TYPE_CHECKING:
    from configs import InferenceTask

PREDICTIONS = "predictions.jsonl"


def model_lineage(task: InferenceTask, inputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The answering model: the weights' revision and content hash, or the remote endpoint."""
    source = task.spec.model.source
    if source.type == "remote":
        return {"source_type": "remote", "endpoint": source.base_url, "model": source.model}
    got = inputs["model"]
    return {k: got[k] for k in ("source_type", "identifier", "revision", "content_hash")}


def lineage(inputs: dict[str, dict[str, Any]], role: str) -> dict[str, Any] | None:
    got = inputs.get(role)
    return None if got is None else {k: got[k] for k in ("source_type", "identifier", "revision", "content_hash")}


def eval_results(
    task: InferenceTask,
    inputs: dict[str, dict[str, Any]],
    index: dict[str, Any] | None,
    values: dict[str, float],
    predictions: list[dict[str, Any]],
) -> dict[str, Any]:
    spec = task.spec
    return {
        "task": task.metadata.name,
        "model": model_lineage(task, inputs),
        "embedding_model": lineage(inputs, "embedding_model"),
        "corpus_hash": index["corpus_hash"] if index else None,
        "inputs": lineage(inputs, "inputs"),
        "questions": len(predictions),
        "match": spec.evaluation.match,
        "top_k": spec.retrieval.top_k if spec.retrieval else None,
        "metrics": values,
        "gates": [g.model_dump() for g in spec.evaluation.gates],
        "failed_gates": failed_gates(task, values),
    }


def markdown(task: InferenceTask, results: dict[str, Any], predictions: list[dict[str, Any]]) -> str:
    model = results["model"]
    named = (model.get("endpoint") and f"`{model['model']}` at {model['endpoint']}") or (
        f"`{model['identifier']}` at `{model['revision'][:12]}`"
    )
    lines = [
        f"# {task.metadata.name}",
        "",
        f"- model: {named}",
        f"- taskType: `{task.spec.task_type}`, owner `{task.metadata.owner}`, project `{task.metadata.project}`",
        f"- questions: {len(predictions)}",
    ]
    if results["embedding_model"]:
        emb = results["embedding_model"]
        lines.append(
            f"- embedding model: `{emb['identifier']}` at `{emb['revision'][:12]}`, corpus `{results['corpus_hash'][:19]}`"
        )
    if results["metrics"]:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in results["metrics"].items()]
    if results["failed_gates"]:
        lines += ["", "**Quality gates failed:** " + "; ".join(results["failed_gates"])]
    lines += ["", "## Answers", "", "| question | answer | reference | retrieved |", "|---|---|---|---|"]
    for p in predictions[:50]:
        answer = p["answer"] if p["answer"] is not None else f"*{p['error']}*"
        retrieved = ", ".join(h["chunk_id"] for h in p["retrieved"][:3])
        lines.append(
            f"| {_cell(p['question'])} | {_cell(answer)} | {_cell(p.get('reference') or '')} | {_cell(retrieved)} |"
        )
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()[:200]


def table_rows(predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The predictions as a Prefect table artifact shows them: one flat row a question."""
    return [
        {
            "id": p["id"],
            "question": p["question"][:200],
            "answer": (p["answer"] or "")[:200],
            "reference": p.get("reference"),
            "retrieved": ", ".join(h["chunk_id"] for h in p["retrieved"]),
            "tool_calls": len(p["tool_calls"]),
            "latency_s": p["latency_s"],
            "tokens": p["input_tokens"] + p["output_tokens"],
            "error": p["error"],
        }
        for p in predictions
    ]


def stage(task: InferenceTask, results: dict[str, Any], workdir: Path, staging: Path, predictions_file: Path) -> None:
    """Copy exactly the artifacts spec.output.artifacts lists into ``staging``, with a README."""
    staging.mkdir(parents=True)
    wanted = task.spec.output.artifacts
    if "predictions" in wanted:
        shutil.copy2(predictions_file, staging / PREDICTIONS)
    if "eval_results" in wanted:
        (staging / "eval").mkdir()
        (staging / "eval" / "eval.json").write_text(json.dumps(results, indent=1))
    if "logs" in wanted:
        (staging / "logs").mkdir()
        for log in ("index.log", "answer.log"):
            if (workdir / log).is_file():
                shutil.copy2(workdir / log, staging / "logs" / log)
    predictions = [json.loads(line) for line in predictions_file.read_text().splitlines() if line]
    (staging / "README.md").write_text(
        "---\ntags: [mloc, " + task.spec.task_type + "]\n---\n\n" + markdown(task, results, predictions)
    )


def manifest(
    task: InferenceTask,
    inputs: dict[str, dict[str, Any]],
    index: dict[str, Any] | None,
    values: dict[str, float],
    usage: dict[str, Any],
    task_sha256: str,
    task_yaml_sha256: str | None,
    duration_s: float,
    finished_at: str,
    flow_run_id: str | None,
    mloc_version: str,
) -> dict[str, Any]:
    """Lineage of the uploaded predictions: the model (revision or endpoint), the embedding
    model's revision, the corpus hash, the inputs; what they cost in tokens."""
    gpu = task.spec.resources.hardware.gpu
    return {
        "mloc_version": mloc_version,
        "task": {
            "name": task.metadata.name,
            "owner": task.metadata.owner,
            "project": task.metadata.project,
            "task_type": task.spec.task_type,
        },
        "task_sha256": task_sha256,
        "task_yaml_sha256": task_yaml_sha256,
        "flow_run_id": flow_run_id,
        "base_model": model_lineage(task, inputs),
        "dataset": lineage(inputs, "inputs"),
        "reward_model": None,
        "embedding_model": lineage(inputs, "embedding_model"),
        "documents": lineage(inputs, "documents"),
        "corpus_hash": index["corpus_hash"] if index else None,
        "metrics": values,
        "inference": usage,
        "duration_s": round(duration_s, 3),
        "finished_at": finished_at,
        "hardware": {"gpu_type": gpu.type, "gpu_count": gpu.count, "replicas": task.spec.resources.replicas},
        "artifacts": list(task.spec.output.artifacts),
    }
