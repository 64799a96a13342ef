"""agent: a tool-using LangChain agent.

Each question in `spec.inputs` is answered by ``langchain.agents.create_agent`` with the tools
named in `spec.agent.tools` (tasks/inference/tools.py), bounded by `max_iterations` tool calls
(tasks/inference/agent_loop.py). The model must call tools, so it is a remote endpoint's chat
model: validation refuses agents on local weights.
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
    name="agent",
    kind="InferenceTask",
    summary="A tool-using LangChain agent answering each input question.",
    requires_one_of=("agent",),
    example="agent_support_tools.yaml",
    metrics=METRICS,
)

SYSTEM_PROMPT = (
    "You answer the user's question. Use the tools when they help: the retriever searches the "
    "documents, the calculator does arithmetic. Reply with the answer alone when you have it."
)


def answer(
    task: InferenceTask,
    question: str,
    *,
    search: Callable[[str], list[Hit]] | None,
    generator: Generator | None = None,
    chat: Any = None,
) -> dict[str, Any]:
    """Run the agent on one question: the prediction's fields, every tool call and result among them."""
    from tasks.inference.agent_loop import run_agent
    from tasks.inference.documents import hits_json
    from tasks.inference.tools import build_tools

    assert task.spec.agent is not None and chat is not None
    tools = build_tools(list(task.spec.agent.tools), search)
    prompt = task.spec.prompt_template.format(question=question) if task.spec.prompt_template else question
    run = run_agent(chat, tools, prompt, task.spec.agent.max_iterations, system_prompt=SYSTEM_PROMPT)
    return {
        "answer": run.answer,
        "retrieved": hits_json(list(run.hits)),
        "prompt": prompt,
        "tool_calls": run.tool_calls,
        "messages": run.messages,
        "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens,
        "error": run.error,
    }
