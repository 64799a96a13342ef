"""rag_inference: retrieval-augmented question answering with LangChain.

The corpus in `spec.retrieval.documents` is chunked and embedded; each question in
`spec.inputs` is answered by the model from its `top_k` nearest chunks.
"""

from __future__ import annotations

from configs import TaskTypeInfo

# until the inference pipeline lands, validation refuses these tasks with this reason
UNAVAILABLE = "the inference pipeline (rag_inference, agent) is not built yet"

TASK_TYPE = TaskTypeInfo(
    name="rag_inference",
    kind="InferenceTask",
    summary="Retrieval-augmented question answering with LangChain: embed a corpus, retrieve, generate.",
    requires_one_of=("retrieval",),
    example="rag_inference_service.yaml",
)
