"""The inference pipeline of the `mloc` flow (rag_inference, agent): download → index →
answer → upload, each a Prefect task run with its logs.

- download fetches the model (unless it is remote), the embedding model, the documents and
  the inputs, with the download code the training pipeline uses, and checks every question
  row before anything runs;
- index chunks and embeds the documents into LangChain's in-memory vector store, saved
  under the task's run folder by corpus and embedding model: a re-run with the same ones
  loads it and embeds nothing;
- answer runs the taskType's ``answer`` hook on each question and writes predictions.jsonl;
- the run's metrics (tasks/inference/scoring.py) meet the gates, the predictions are
  published as a table artifact and a markdown report, and upload publishes what
  ``spec.output.artifacts`` lists, versioned and ``latest.json`` moved last for a
  scheduled task, as for training.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from configs import InferenceTask
from flows.home import fetch_logged, mloc_home, task_digest, upload_step
from tasks.gates import QualityGateFailed

_EMBEDDINGS: dict[str, Any] = {}  # one embedding model loaded per process, shared by index and answer


class InputsError(ValueError):
    """The questions file does not fit spec.inputs: a row without its question, a field of the wrong type."""


# --- download ---------------------------------------------------------------------------------


@task(name="download", task_run_name="download", cache_policy=NO_CACHE)
def download_step(task_: InferenceTask, base_dir: Path) -> dict[str, dict[str, Any]]:
    logger = get_run_logger()
    spec = task_.spec
    sources: dict[str, tuple[Any, Literal["model", "dataset"]]] = {}
    if spec.model.source.type != "remote":
        sources["model"] = (spec.model.source, "model")
    if spec.retrieval is not None:
        sources["embedding_model"] = (spec.retrieval.embedding_model, "model")
        sources["documents"] = (spec.retrieval.documents, "dataset")
    sources["inputs"] = (spec.inputs.source, "dataset")
    fetched: dict[str, dict[str, Any]] = {}
    for role, (source, kind) in sources.items():
        fetched[role] = fetch_logged(role, source, kind, base_dir)
    if spec.model.source.type == "remote":
        logger.info(
            "model: %s at %s (remote: nothing to download)", spec.model.source.model, spec.model.source.base_url
        )
    questions = load_questions(task_, fetched["inputs"])
    logger.info("inputs: %d question(s)", len(questions))
    return fetched


def load_questions(task_: InferenceTask, inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The question rows, each checked: its question a non-empty string, and its reference
    answer and document strings where spec.inputs names those fields. The error names the
    file, the line and the field."""
    spec = task_.spec.inputs
    path = Path(inputs["path"])
    fields = [("question_field", spec.question_field, True)]
    fields += [
        (n, f, False) for n, f in (("answer_field", spec.answer_field), ("document_field", spec.document_field)) if f
    ]
    rows: list[tuple[str, dict[str, Any]]] = []
    if inputs["source_type"] != "huggingface" and path.is_file() and path.suffix == ".jsonl":
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputsError(f"spec.inputs: {path.name} line {number} is not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise InputsError(f"spec.inputs: {path.name} line {number} is not a JSON object")
            rows.append((f"{path.name} line {number}", row))
    else:
        from tasks.data import DataError, load_rows

        source = task_.spec.inputs.source
        try:
            data = load_rows(
                str(path),
                inputs["source_type"],
                split=getattr(source, "split", "train"),
                subset=getattr(source, "subset", None),
            )
        except DataError as exc:
            raise InputsError(f"spec.inputs: {exc}") from exc
        rows = [(f"{path.name} row {i + 1}", dict(row)) for i, row in enumerate(data)]
    if not rows:
        raise InputsError(f"spec.inputs: {path.name} holds no question — add rows with a '{spec.question_field}' field")
    for where, row in rows:
        for setting, name, required in fields:
            value = row.get(name)
            if value is None:
                present = ", ".join(sorted(row)) or "none"
                raise InputsError(
                    f"spec.inputs: {where} has no '{name}' (spec.inputs.{setting}) — its fields are: {present}"
                )
            if not isinstance(value, str) or (required and not value.strip()):
                raise InputsError(f"spec.inputs: {where}: '{name}' must be non-empty text, not {value!r:.40}")
    return [
        {
            "id": str(row.get("id", index + 1)),
            "question": row[spec.question_field],
            "reference": row.get(spec.answer_field) if spec.answer_field else None,
            "document": row.get(spec.document_field) if spec.document_field else None,
        }
        for index, (_, row) in enumerate(rows)
    ]


# --- index ------------------------------------------------------------------------------------


def _embeddings(path: str) -> Any:
    from tasks.inference.embeddings import SentenceTransformerEmbeddings

    if path not in _EMBEDDINGS:
        _EMBEDDINGS[path] = SentenceTransformerEmbeddings(path)
    return _EMBEDDINGS[path]


@task(name="index", task_run_name="index", cache_policy=NO_CACHE)
def index_step(task_: InferenceTask, inputs: dict[str, dict[str, Any]], workdir: Path) -> dict[str, Any]:
    from tasks.inference import documents

    logger = get_run_logger()
    retrieval = task_.spec.retrieval
    assert retrieval is not None
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    docs = documents.load_documents(inputs["documents"]["path"], inputs["documents"]["source_type"], retrieval)
    chunks = documents.chunk(docs, retrieval)
    embedding = inputs["embedding_model"]
    index = documents.build_or_load(
        chunks,
        _embeddings(embedding["path"]),
        embedding["content_hash"],
        retrieval,
        mloc_home() / "runs" / task_.metadata.name / "index",
    )
    how = "reused (same corpus and embedding model)" if index.reused else "embedded"
    summary = (
        f"{len(docs)} document(s), {index.chunks} chunk(s) of at most {retrieval.chunk_size} characters; index {how}, "
        f"corpus {index.corpus_hash[:19]}, in {time.monotonic() - started:.1f} s"
    )
    logger.info(summary)
    (workdir / "index.log").write_text(
        summary + "\n" + "".join(f"{c.metadata['chunk_id']}\t{len(c.page_content)} chars\n" for c in chunks)
    )
    return {"path": str(index.path), "chunks": index.chunks, "corpus_hash": index.corpus_hash, "reused": index.reused}


# --- answer -----------------------------------------------------------------------------------


@task(name="answer", task_run_name="answer", cache_policy=NO_CACHE)
def answer_step(
    task_: InferenceTask, inputs: dict[str, dict[str, Any]], index: dict[str, Any] | None, workdir: Path
) -> list[dict[str, Any]]:
    from tasks.inference import documents
    from tasks.registry import module_for

    logger = get_run_logger()
    spec = task_.spec
    questions = load_questions(task_, inputs["inputs"])
    search = None
    if index is not None and spec.retrieval is not None:
        from langchain_core.vectorstores import InMemoryVectorStore

        store = InMemoryVectorStore.load(index["path"], _embeddings(inputs["embedding_model"]["path"]))
        top_k = spec.retrieval.top_k

        def search(query: str) -> list[documents.Hit]:
            return documents.search(store, query, top_k)

    generator, chat = _model(task_, inputs)
    hook = module_for(spec.task_type).answer
    workdir.mkdir(parents=True, exist_ok=True)
    predictions: list[dict[str, Any]] = []
    with open(workdir / "answer.log", "w") as log:
        for number, row in enumerate(questions, start=1):
            started = time.monotonic()
            fields = hook(task_, row["question"], search=search, generator=generator, chat=chat)
            prediction = {**row, **fields, "latency_s": round(time.monotonic() - started, 4)}
            predictions.append(prediction)
            retrieved = ", ".join(f"{h['chunk_id']} {h['score']:.2f}" for h in prediction["retrieved"][:3])
            line = (
                f"question {number}/{len(questions)} ({row['id']}): "
                + (
                    f"answered in {prediction['latency_s']:.2f} s"
                    if prediction["error"] is None
                    else prediction["error"]
                )
                + (f"; {len(prediction['tool_calls'])} tool call(s)" if prediction["tool_calls"] else "")
                + (f"; retrieved {retrieved}" if retrieved else "")
            )
            log.write(line + "\n")
            (logger.info if prediction["error"] is None else logger.warning)(line)
    return predictions


def _model(task_: InferenceTask, inputs: dict[str, dict[str, Any]]) -> tuple[Any, Any]:
    """The generator (rag) and chat model (agent) of the task's model."""
    source = task_.spec.model.source
    if source.type == "remote":
        from tasks.inference import remote
        from tasks.inference.models import RemoteGenerator

        key = remote.api_key(source.credentials_block)
        served = remote.check_endpoint(source, key)
        get_run_logger().info(
            "model endpoint %s answers%s", source.base_url, f" and serves {len(served)} model(s)" if served else ""
        )
        chat = remote.chat_model(source, task_.spec.generation, key, timeout_s=source.timeout_seconds)
        return RemoteGenerator(chat), chat
    from tasks.inference.models import LocalGenerator

    generator = LocalGenerator(inputs["model"]["path"], task_.spec.generation)
    get_run_logger().info("model loaded on %s, context %d tokens", generator.device, generator.context)
    return generator, None


# --- upload -----------------------------------------------------------------------------------


# --- the pipeline -----------------------------------------------------------------------------


def _served_by(task_: InferenceTask, root: Path) -> InferenceTask:
    """``task_`` with its ``service`` model source resolved to the endpoint the ServingTask answers at."""
    from tasks.serving.endpoint import resolve
    from work_pools.job_template import NAMESPACE

    source = task_.spec.model.source
    assert source.type == "service"
    remote = resolve(source, root, mloc_home(), NAMESPACE)
    get_run_logger().info("model: %s of the service %s, at %s", remote.model, source.task, remote.base_url)
    model = task_.spec.model.model_copy(update={"source": remote})
    return task_.model_copy(update={"spec": task_.spec.model_copy(update={"model": model})})


def run_inference(task_: InferenceTask, root: Path, started: float, task_yaml_sha256: str | None) -> dict[str, Any]:
    """The inference steps of the `mloc` flow, after the run is tagged."""
    import hashlib

    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.runtime import flow_run

    from flows import report
    from tasks.inference import publish, scoring

    if task_.spec.model.source.type == "service":  # from here on, the service's endpoint is a remote model
        task_ = _served_by(task_, root)
    inputs = download_step(task_, root)
    key = hashlib.sha256(
        json.dumps([task_digest(task_), {r: i["content_hash"] for r, i in inputs.items()}]).encode()
    ).hexdigest()[:16]
    workdir = mloc_home() / "runs" / task_.metadata.name / key
    index = index_step(task_, inputs, workdir) if task_.spec.retrieval is not None else None
    predictions = answer_step(task_, inputs, index, workdir)
    predictions_file = workdir / publish.PREDICTIONS
    partial = predictions_file.with_suffix(".partial")
    partial.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    partial.replace(predictions_file)
    values = scoring.metrics(predictions, task_.spec.evaluation.match)
    results = publish.eval_results(task_, inputs, index, values, predictions)
    name = task_.metadata.name
    create_table_artifact(publish.table_rows(predictions), key=f"{name}-predictions", description=f"Answers of {name}")
    create_markdown_artifact(
        publish.markdown(task_, results, predictions), key=f"{name}-report", description=f"Run report of {name}"
    )
    if results["failed_gates"]:
        raise QualityGateFailed("quality gates not met, nothing uploaded: " + "; ".join(results["failed_gates"]))
    staging = workdir / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    publish.stage(task_, results, workdir, staging, predictions_file)
    finished = datetime.now(UTC)
    usage = {
        "questions": len(predictions),
        "input_tokens": sum(p["input_tokens"] for p in predictions),
        "output_tokens": sum(p["output_tokens"] for p in predictions),
        "tool_calls": sum(len(p["tool_calls"]) for p in predictions),
    }
    manifest = publish.manifest(
        task_,
        inputs,
        index,
        values,
        usage,
        task_digest(task_),
        task_yaml_sha256,
        time.time() - started,
        finished.isoformat(),
        str(flow_run.id) if flow_run.id else None,
        report.mloc_version(),
    )
    if task_.spec.schedule is not None:  # every scheduled run is kept, under its own version
        manifest["version"] = f"{finished:%Y%m%dT%H%M%SZ}-{manifest['flow_run_id'][:8]}"
    uploaded = upload_step(task_, staging, manifest, root)
    report.publish_outputs(task_, uploaded, manifest)  # type: ignore[arg-type]
    return {
        "name": name,
        "task_type": task_.spec.task_type,
        "output": uploaded["uri"],
        "metrics": values,
        "inference": usage,
        "inputs": inputs,
        "index": index,
        "workdir": str(workdir),
    }
