"""agent: a tool-using LangChain agent.

Each question in `spec.inputs` is answered by the model, which may call the tools in
`spec.agent.tools` up to `max_iterations` times.
"""

from __future__ import annotations

from configs import TaskTypeInfo

# until the inference pipeline lands, validation refuses these tasks with this reason
UNAVAILABLE = "the inference pipeline (rag_inference, agent) is not built yet"

TASK_TYPE = TaskTypeInfo(
    name="agent",
    kind="InferenceTask",
    summary="A tool-using LangChain agent answering each input question.",
    requires_one_of=("agent",),
    example="agent_support_tools.yaml",
)
