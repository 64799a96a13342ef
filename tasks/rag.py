"""rag_inference: retrieval-augmented question answering with LangChain.

The corpus in `spec.retrieval.documents` is chunked and embedded (tasks/inference/documents.py);
each question in `spec.inputs` is answered by the model from its `top_k` nearest chunks,
put into `prompt_template`'s ``{context}`` beside its ``{question}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from configs import TaskTypeInfo
from tasks.inference.scoring import METRICS

if TYPE_CHECKING:
    from configs import InferenceTask
    from tasks.inference.documents import Hit
    from tasks.inference.models import Generator

TASK_TYPE = TaskTypeInfo(
    name="rag_inference",
    kind="InferenceTask",
    summary="Retrieval-augmented question answering with LangChain: embed a corpus, retrieve, generate.",
    requires_one_of=("retrieval",),
    example="rag_inference_service.yaml",
    metrics=METRICS,
)

DEFAULT_TEMPLATE = (
    "Answer the question using only the context below.\n\nContext:\n{context}\n\nQuestion: {question}\nAnswer:"
)


def context_of(hits: list[Hit]) -> str:
    return "\n\n".join(f"[{h.chunk_id}] {h.text}" for h in hits)


def answer(
    task: InferenceTask,
    question: str,
    *,
    search: Callable[[str], list[Hit]] | None,
    generator: Generator | None,
    chat: Any = None,
) -> dict[str, Any]:
    """Retrieve, fill the template, generate: the prediction's fields."""
    from tasks.inference.documents import hits_json

    assert search is not None and generator is not None
    hits = search(question)
    template = task.spec.prompt_template or DEFAULT_TEMPLATE
    prompt = template.format(context=context_of(hits), question=question)
    out = generator.generate(prompt)
    return {
        "answer": out.text,
        "retrieved": hits_json(hits),
        "prompt": prompt,
        "tool_calls": [],
        "input_tokens": out.input_tokens,
        "output_tokens": out.output_tokens,
        "error": None,
    }
