"""Inference tasks through the `mloc` flow on a real Prefect server, nothing mocked.

The rag quickstart (configs/quickstart/rag.yaml) runs end to end: the real all-MiniLM-L6-v2
embeds the support manual, the tiny chat model answers on the CPU, the predictions and the
manifest land at the destination and the artifacts on the server; a second run reuses the
index. Bad inputs fail with a message naming what to fix and upload nothing. A remote
model is a real ``transformers serve`` behind a key-checking proxy, the key in a Prefect
Secret block that is never echoed anywhere; an endpoint that is down, or that rejects the
key, fails the run before any question is asked.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from configs import InferenceTask, validate_text
from tests.conftest import free_port
from tests.flows.openai_servers import Proxy, keyed_proxy, transformers_serve

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart"
RAG_YAML = QUICKSTART / "rag.yaml"
NAME = "quickstart-rag"
PREDICTION_FIELDS = {
    "question",
    "answer",
    "retrieved",
    "prompt",
    "tool_calls",
    "latency_s",
    "input_tokens",
    "output_tokens",
}


# ---- helpers ----


def rag_task(edits: dict[str, Any]) -> InferenceTask:
    """configs/quickstart/rag.yaml with the value at each dotted path of ``edits`` replaced, validated like a file."""
    from tasks.registry import TASK_TYPES

    data = yaml.safe_load(RAG_YAML.read_text())
    for dotted, value in edits.items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
    result = validate_text(yaml.safe_dump(data), RAG_YAML.name, TASK_TYPES)
    assert isinstance(result.task, InferenceTask), [i.format() for i in result.issues]
    return result.task


def destination(path: Path) -> dict[str, Any]:
    return {"spec.output.destination": {"type": "local", "path": str(path)}}


def run(task: InferenceTask) -> Any:
    from flows.pipeline import pipeline

    return pipeline(task=task, base_dir=str(QUICKSTART), return_state=True)


def failure(state: Any) -> str:
    assert state.is_failed(), state
    return str(state.result(raise_on_failure=False))


def read_run(flow_run_id: Any) -> tuple[Any, list[Any], list[Any]]:
    """The flow run, its task runs and its artifacts, from the server."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return flow_run, task_runs, artifacts


def run_logs(flow_run_id: Any) -> list[Any]:
    """Every log of the flow run and its task runs, once Prefect's batched sender delivered them."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    wanted = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    logs: list[Any] = []
    for _ in range(40):
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=wanted, limit=200)
        if any(log.task_run_id is None and log.message.startswith("Finished in state") for log in logs):
            break
        time.sleep(0.5)
    return logs


def task_run_lines(logs: list[Any], task_runs: list[Any], name: str) -> list[str]:
    [wanted] = [r.id for r in task_runs if r.name == name]
    return [log.message for log in logs if log.task_run_id == wanted]


def nothing_uploaded(out: Path) -> None:
    assert not out.exists(), f"a failed run uploaded: {sorted(p.name for p in out.rglob('*'))}"


# ---- 1. the rag quickstart ----


def test_the_rag_quickstart_end_to_end_then_a_rerun_reuses_the_index(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.storage.base import content_hash

    home = tmp_path / "home"
    monkeypatch.setenv("MLOC_HOME", str(home))
    out = tmp_path / "published"
    task = rag_task(destination(out))
    questions = [json.loads(line) for line in (QUICKSTART / "support/questions.jsonl").read_text().splitlines()]

    state = run(task)
    assert state.is_completed(), state.message

    # one prediction a question, in order, with what a user reads off it
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["question"] for p in predictions] == [q["question"] for q in questions]
    for p in predictions:
        assert set(p) >= PREDICTION_FIELDS, sorted(PREDICTION_FIELDS - set(p))
        assert isinstance(p["answer"], str) and p["tool_calls"] == []
        assert p["latency_s"] > 0 and p["input_tokens"] > 0 and 0 < p["output_tokens"] <= 24
        assert len(p["retrieved"]) == task.spec.retrieval.top_k  # type: ignore[union-attr]
        assert all(isinstance(h["chunk_id"], str) and isinstance(h["score"], float) for h in p["retrieved"])
        assert [h["score"] for h in p["retrieved"]] == sorted((h["score"] for h in p["retrieved"]), reverse=True)

    # the chunks retrieved are the ones the prompt holds, as the saved index stores them
    [index_file] = (home / "runs" / NAME / "index").glob("index-*.json")
    stored = json.loads(index_file.read_text())
    assert len(stored) >= 8  # at least a chunk a manual page
    for p in predictions:
        for hit in p["retrieved"]:
            assert f"[{hit['chunk_id']}] {stored[hit['chunk_id']]['text']}" in p["prompt"], hit
        assert p["question"] in p["prompt"]

    # metrics, lineage and the upload
    manifest = json.loads((out / "mloc-manifest.json").read_text())
    metrics = manifest["metrics"]
    assert metrics["hit_at_k"] >= 0.9, metrics  # 1.0 on this corpus: each question finds its manual page
    assert set(metrics) == {"answer_accuracy", "hit_at_k", "error_rate", "mean_latency_s"}
    assert metrics["error_rate"] == 0
    embedding = manifest["embedding_model"]
    assert embedding["identifier"] == str((QUICKSTART / "all-MiniLM-L6-v2").resolve())
    assert embedding["content_hash"] == content_hash(QUICKSTART / "all-MiniLM-L6-v2", tmp_path / "hashes")
    assert manifest["corpus_hash"].startswith("sha256:")
    assert manifest["documents"]["content_hash"].startswith("sha256:")
    assert manifest["base_model"]["content_hash"].startswith("sha256:")
    assert manifest["inference"]["questions"] == len(questions)
    assert manifest["inference"]["input_tokens"] == sum(p["input_tokens"] for p in predictions)
    listed = {f["path"] for f in manifest["files"]}
    assert {"predictions.jsonl", "eval/eval.json", "logs/answer.log", "README.md"} <= listed
    assert json.loads((out / "eval" / "eval.json").read_text())["corpus_hash"] == manifest["corpus_hash"]

    # the three artifacts on the server
    flow_run, task_runs, artifacts = read_run(state.state_details.flow_run_id)
    assert {r.name for r in task_runs} == {"download", "index", "answer", "upload"}
    by_key = {a.key: a for a in artifacts}
    assert {f"{NAME}-predictions", f"{NAME}-report", f"{NAME}-outputs"} <= set(by_key)
    table = by_key[f"{NAME}-predictions"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [r["question"] for r in rows] == [q["question"] for q in questions]
    assert "hit_at_k" in by_key[f"{NAME}-report"].data
    outputs = by_key[f"{NAME}-outputs"].data
    fields = {r["field"]: r["value"] for r in (json.loads(outputs) if isinstance(outputs, str) else outputs)}
    assert fields["metrics"]["hit_at_k"] == metrics["hit_at_k"]
    logs = run_logs(flow_run.id)
    assert any("index embedded" in m for m in task_run_lines(logs, task_runs, "index"))

    # a second run of the same task reuses the index: nothing embedded again
    written = index_file.stat().st_mtime_ns
    again = run(task)
    assert again.is_completed(), again.message
    assert index_file.stat().st_mtime_ns == written
    assert list((home / "runs" / NAME / "index").glob("index-*.json")) == [index_file]
    _, task_runs, _ = read_run(again.state_details.flow_run_id)
    lines = task_run_lines(run_logs(again.state_details.flow_run_id), task_runs, "index")
    assert any("index reused (same corpus and embedding model)" in m for m in lines), lines
    second = json.loads((out / "mloc-manifest.json").read_text())
    assert second["corpus_hash"] == manifest["corpus_hash"]
    assert second["metrics"]["hit_at_k"] == metrics["hit_at_k"]


# ---- 2. bad inputs ----


@pytest.fixture
def inputs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOC_HOME", str(tmp_path / "home"))
    folder = tmp_path / "inputs"
    folder.mkdir()
    return folder


def test_an_empty_documents_folder_fails_naming_the_setting(prefect_server: None, inputs_dir: Path) -> None:
    empty = inputs_dir / "manuals"
    empty.mkdir()
    out = inputs_dir.parent / "out" / "published"
    state = run(rag_task({**destination(out), "spec.retrieval.documents": {"type": "local", "path": str(empty)}}))

    message = failure(state)
    assert message.startswith(f"spec.retrieval.documents: {empty} holds no document (it is empty)"), message
    nothing_uploaded(out)


def test_a_question_row_without_its_question_fails_naming_file_line_and_field(
    prefect_server: None, inputs_dir: Path
) -> None:
    questions = inputs_dir / "questions.jsonl"
    rows = [
        {"question": "How long is the warranty?", "answer": "two years", "document": "warranty.md"},
        {"query": "How long does delivery take?", "answer": "three to five days", "document": "shipping.txt"},
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = inputs_dir.parent / "out" / "published"
    state = run(rag_task({**destination(out), "spec.inputs.source": {"type": "local", "path": str(questions)}}))

    message = failure(state)
    assert message == (
        "spec.inputs: questions.jsonl line 2 has no 'question' (spec.inputs.question_field) — "
        "its fields are: answer, document, query"
    )
    _, task_runs, _ = read_run(state.state_details.flow_run_id)
    assert [r.name for r in task_runs] == ["download"], "nothing runs past the download on a bad question file"
    nothing_uploaded(out)


def test_a_row_without_the_document_field_fails_naming_it(prefect_server: None, inputs_dir: Path) -> None:
    questions = inputs_dir / "questions.jsonl"
    rows = [
        {"question": "How long is the warranty?", "answer": "two years", "source": "warranty.md"},
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = inputs_dir.parent / "out" / "published"
    task = rag_task(
        {
            **destination(out),
            "spec.inputs.source": {"type": "local", "path": str(questions)},
            "spec.inputs.document_field": "document",
        }
    )
    message = failure(run(task))
    assert message == (
        "spec.inputs: questions.jsonl line 1 has no 'document' (spec.inputs.document_field) — "
        "its fields are: answer, question, source"
    )
    nothing_uploaded(out)


# ---- 3 and 4. a remote model ----

KEY = f"sk-mloc-{uuid.uuid4().hex}"  # the one key the proxy accepts


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """``transformers serve`` of the quickstart's tiny chat model, behind the keyed proxy."""
    with (
        transformers_serve(QUICKSTART / "tiny-chat-model", tmp_path_factory.mktemp("serve")) as url,
        keyed_proxy(url, KEY) as keyed,
    ):
        yield keyed


@pytest.fixture
def secret_block(prefect_server: None) -> Callable[[str], str]:
    """Saves a real Prefect Secret block holding a value on the test server; returns its name."""
    from prefect.blocks.system import Secret

    def save(value: str) -> str:
        name = f"mloc-endpoint-{uuid.uuid4().hex[:8]}"
        Secret(value=value).save(name)
        return name

    return save


def remote_task(out: Path, base_url: str, block: str | None) -> InferenceTask:
    source = {
        "type": "remote",
        "base_url": base_url,
        "model": str(QUICKSTART / "tiny-chat-model"),
        "credentials_block": block,
        "timeout_seconds": 120,
    }
    return rag_task({**destination(out), "spec.model.source": source})


def files_holding(root: Path, secret: str) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_remote_model_behind_a_keyed_endpoint_answers_and_the_key_shows_nowhere(
    prefect_server: None,
    proxy: Proxy,
    secret_block: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("MLOC_HOME", str(home))
    out = tmp_path / "published"
    block = secret_block(KEY)
    before = len(proxy.hits)

    state = run(remote_task(out, proxy.base_url, block))
    assert state.is_completed(), state.message

    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 10
    assert all(p["input_tokens"] > 0 and p["output_tokens"] > 0 for p in predictions)
    assert all(isinstance(p["answer"], str) for p in predictions)
    seen = proxy.hits[before:]
    assert seen[0] == "GET /v1/models 200"  # the endpoint checked before any question
    assert seen.count("POST /v1/chat/completions 200") == 10 and not [h for h in seen if not h.endswith(" 200")]
    manifest = json.loads((out / "mloc-manifest.json").read_text())
    assert manifest["base_model"] == {
        "source_type": "remote",
        "endpoint": proxy.base_url,
        "model": str(QUICKSTART / "tiny-chat-model"),
    }
    assert manifest["inference"]["output_tokens"] == sum(p["output_tokens"] for p in predictions) > 0

    # the key is nowhere: logs, parameters, artifacts, uploaded files, the run's work files
    flow_run, _, artifacts = read_run(state.state_details.flow_run_id)
    logs = run_logs(flow_run.id)
    assert any(f"model endpoint {proxy.base_url} answers" in log.message for log in logs)
    assert not [log.message for log in logs if KEY in log.message]
    assert KEY not in json.dumps(flow_run.parameters, default=str)
    assert block in json.dumps(flow_run.parameters, default=str)  # what it holds is the block's name
    assert len(artifacts) >= 3
    assert not [a.key for a in artifacts if KEY in json.dumps(a.data, default=str)]
    assert not files_holding(out, KEY)
    assert not files_holding(home, KEY)


def test_an_endpoint_that_is_down_fails_after_its_retries(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOC_HOME", str(tmp_path / "home"))
    out = tmp_path / "published"
    base_url = f"http://127.0.0.1:{free_port()}/v1"  # nobody listens there

    started = time.monotonic()
    message = failure(run(remote_task(out, base_url, None)))
    elapsed = time.monotonic() - started

    # check_endpoint's defaults: 5 tries, waits 0.5 + 1 + 2 + 4 s between them
    assert message.startswith(f"the model endpoint {base_url} did not answer after 5 tries over ~"), message
    assert "Connection refused" in message and message.endswith(
        "check spec.model.source.base_url and that the server is up"
    )
    assert elapsed >= 7.5
    nothing_uploaded(out)


def test_a_rejected_key_fails_naming_the_block(
    prefect_server: None,
    proxy: Proxy,
    secret_block: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLOC_HOME", str(tmp_path / "home"))
    out = tmp_path / "published"
    wrong = f"sk-wrong-{uuid.uuid4().hex}"
    block = secret_block(wrong)
    before = len(proxy.hits)

    state = run(remote_task(out, proxy.base_url, block))
    message = failure(state)

    assert message == (
        f"the endpoint {proxy.base_url} rejected the API key from Prefect Secret block '{block}' (401) — "
        "update the block's value"
    )
    assert proxy.hits[before:] == ["GET /v1/models 401"], "one try, and no question asked"
    nothing_uploaded(out)
    logs = run_logs(state.state_details.flow_run_id)
    assert not [log.message for log in logs if wrong in log.message]
