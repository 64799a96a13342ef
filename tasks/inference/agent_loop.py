"""One `agent` question: LangChain's own agent loop (`create_agent`) over the task's tools, recorded.

The bound on the loop is LangChain's `ToolCallLimitMiddleware(run_limit=max_iterations,
exit_behavior="error")`: after each model turn it counts the tool calls the model asked for, and if
they would take the run past `max_iterations` tool calls it raises before any of that turn's calls
run. So at most `max_iterations` tool calls execute (exactly that many when the model calls one tool
per turn), and the model always sees every result it got before it is stopped. langgraph's
`recursion_limit` stays as a backstop, set well above what that bound allows. Hitting either comes
back as `AgentRun.error`, with everything done so far recorded; any other error (the model's, a
tool's) is raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import ToolCallLimitMiddleware
from langchain.agents.middleware.tool_call_limit import ToolCallLimitExceededError
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.errors import GraphRecursionError

from tasks.inference.tools import Hit

RETRIEVER = "retriever"
# langgraph supersteps one model→tool round takes (model, the middleware's hook, tools), with slack
_STEPS_PER_ROUND = 4


@dataclass
class AgentRun:
    """What one question's agent run did: the answer, every tool call in order, and its cost."""

    answer: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {"name", "args", "result"}
    hits: list[Hit] = field(default_factory=list)  # retriever hits the agent saw, first sighting order
    input_tokens: int = 0
    output_tokens: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)  # JSON-able transcript
    error: str | None = None


def limit_message(tool_calls: int, max_iterations: int) -> str:
    return (
        f"the agent made {tool_calls} tool calls without answering: stopped at spec.agent.max_iterations "
        f"({max_iterations}) — raise it, or check that the model ends with an answer"
    )


def run_agent(
    model: BaseChatModel,
    tools: list[BaseTool],
    question: str,
    max_iterations: int,
    system_prompt: str | None = None,
) -> AgentRun:
    """Answer `question` with a LangChain agent over `tools`, at most `max_iterations` tool calls."""
    if max_iterations < 1:
        raise ValueError(f"spec.agent.max_iterations must be at least 1, not {max_iterations}")
    agent = create_agent(
        model,
        tools,
        system_prompt=system_prompt,
        middleware=[ToolCallLimitMiddleware(run_limit=max_iterations, exit_behavior="error")],
    )
    question_message = HumanMessage(content=question)
    messages: list[BaseMessage] = [question_message]
    stopped = False
    try:
        # stream the state so what happened before a stop is still at hand
        for state in agent.stream(
            {"messages": [question_message]},
            config={"recursion_limit": _STEPS_PER_ROUND * (max_iterations + 2) + 10},
            stream_mode="values",
        ):
            messages = list(state["messages"])
    except (ToolCallLimitExceededError, GraphRecursionError):
        stopped = True

    run = _record(messages, system_prompt)
    if stopped:
        run.answer = None
        run.error = limit_message(len(run.tool_calls), max_iterations)
    elif run.answer is None:
        run.error = "the agent stopped without an answer: its last message was not a reply from the model"
    return run


def _record(messages: list[BaseMessage], system_prompt: str | None) -> AgentRun:
    run = AgentRun(answer=None)
    if system_prompt:
        run.messages.append({"role": "system", "content": system_prompt})
    requested: dict[str, dict[str, Any]] = {}
    seen_chunks: set[str] = set()
    for message in messages:
        if isinstance(message, AIMessage):
            for call in message.tool_calls:
                requested[call["id"] or ""] = {"name": call["name"], "args": call["args"]}
            usage = message.usage_metadata
            if usage:
                run.input_tokens += usage.get("input_tokens", 0)
                run.output_tokens += usage.get("output_tokens", 0)
        elif isinstance(message, ToolMessage):
            made = requested.get(message.tool_call_id, {"name": message.name, "args": {}})
            run.tool_calls.append({"name": made["name"], "args": made["args"], "result": message.text})
            if made["name"] == RETRIEVER and isinstance(message.artifact, list):
                for hit in message.artifact:
                    if isinstance(hit, Hit) and hit.chunk_id not in seen_chunks:
                        seen_chunks.add(hit.chunk_id)
                        run.hits.append(hit)
        run.messages.append(_transcript_entry(message))
    last = messages[-1] if messages else None
    if isinstance(last, AIMessage) and not last.tool_calls:
        run.answer = last.text
    return run


def _transcript_entry(message: BaseMessage) -> dict[str, Any]:
    if isinstance(message, AIMessage):
        entry: dict[str, Any] = {"role": "assistant", "content": message.text}
        if message.tool_calls:
            entry["tool_calls"] = [{"id": c["id"], "name": c["name"], "args": c["args"]} for c in message.tool_calls]
        return entry
    if isinstance(message, ToolMessage):
        return {"role": "tool", "name": message.name, "tool_call_id": message.tool_call_id, "content": message.text}
    if isinstance(message, HumanMessage):
        return {"role": "user", "content": message.text}
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": message.text}
    return {"role": message.type, "content": message.text}
