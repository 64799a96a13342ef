"""The agent task's tools and loop: LangChain's real `create_agent` loop, driven by a scripted model.

The model is a scripted tool-calling chat model, as LangChain's own agent tests do (their fake
tool-calling models): `bind_tools` returns the model itself, each call replies with the next
scripted `AIMessage` (with `tool_calls`), and every call records the messages it was given, so a
test can assert that a tool's result really reached the model. Everything else — the agent graph,
tool execution, the call-limit middleware — is LangChain's own code. No network, no real model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import BaseTool
from pydantic import Field

from tasks.inference.agent_loop import AgentRun, run_agent
from tasks.inference.tools import TOOLS, Hit, build_tools, calculator, evaluate, retriever_tool


class ScriptedChatModel(BaseChatModel):
    """Replies from `script` in order; with `loop` set, then calls that tool forever."""

    script: list[AIMessage] = Field(default_factory=list)
    loop: tuple[str, dict[str, Any]] | None = None
    received: list[list[BaseMessage]] = Field(default_factory=list)
    bound: list[str] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: str | None = None, **kwargs: Any) -> Any:
        self.bound = [t.name for t in tools if isinstance(t, BaseTool)]
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        self.received.append(list(messages))
        n = len(self.received)
        if self.script:
            reply = self.script.pop(0)
        elif self.loop is not None:
            name, args = self.loop
            reply = AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"loop-{n}"}])
        else:
            raise AssertionError("the scripted model ran out of replies")
        return ChatResult(generations=[ChatGeneration(message=reply)])


def call(name: str, args: dict[str, Any], call_id: str, **usage: int) -> AIMessage:
    return AIMessage(
        content="",
        tool_calls=[{"name": name, "args": args, "id": call_id}],
        usage_metadata=_usage(**usage) if usage else None,
    )


def reply(text: str, **usage: int) -> AIMessage:
    return AIMessage(content=text, usage_metadata=_usage(**usage) if usage else None)


def _usage(input_tokens: int = 0, output_tokens: int = 0) -> Any:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens, "total_tokens": input_tokens + output_tokens}


def tool_messages(received: list[BaseMessage]) -> list[ToolMessage]:
    return [m for m in received if isinstance(m, ToolMessage)]


CORPUS = {
    "refund-0": ("Refunds are issued within 14 days of a return being received.", "policy.md"),
    "ship-0": ("Standard shipping takes 3 to 5 business days.", "shipping.md"),
    "warranty-0": ("The warranty covers manufacturing defects for two years.", "warranty.md"),
}


def word_overlap_search(queries: list[str]) -> Callable[[str], list[Hit]]:
    """A tiny in-memory search: passages sharing words with the query, best overlap first, top 2."""

    def search(query: str) -> list[Hit]:
        queries.append(query)
        words = set(query.lower().split())
        scored = [
            (len(words & set(text.lower().rstrip(".").split())), cid, text, src) for cid, (text, src) in CORPUS.items()
        ]
        ranked = sorted(scored, key=lambda s: -s[0])
        return [Hit(cid, text, float(score), src) for score, cid, text, src in ranked if score > 0][:2]

    return search


# --- the loop ----------------------------------------------------------------------------------


def test_calculator_runs_and_its_result_reaches_the_model() -> None:
    model = ScriptedChatModel(
        script=[
            call("calculator", {"expression": "(17+4)*3"}, "c1", input_tokens=20, output_tokens=5),
            reply("The answer is 63.", input_tokens=30, output_tokens=6),
        ]
    )
    run = run_agent(
        model, build_tools(["calculator"]), "What is (17+4)*3?", max_iterations=6, system_prompt="Be exact."
    )

    assert model.bound == ["calculator"]
    assert len(model.received) == 2
    [result] = tool_messages(model.received[1])
    assert result.content == "63" and result.tool_call_id == "c1"
    assert model.received[0][0].content == "Be exact."  # create_agent sends the system prompt
    assert run.answer == "The answer is 63."
    assert run.error is None
    assert run.tool_calls == [{"name": "calculator", "args": {"expression": "(17+4)*3"}, "result": "63"}]
    assert (run.input_tokens, run.output_tokens) == (50, 11)
    assert [m["role"] for m in run.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert run.messages[2]["tool_calls"][0]["name"] == "calculator"
    assert run.hits == []


def test_calculator_error_reaches_the_model_which_can_recover() -> None:
    model = ScriptedChatModel(
        script=[
            call("calculator", {"expression": "x+1"}, "c1"),
            call("calculator", {"expression": "2+1"}, "c2"),
            reply("3"),
        ]
    )
    run = run_agent(model, build_tools(["calculator"]), "q", max_iterations=6)

    [err] = tool_messages(model.received[1])
    assert str(err.content).startswith("calculator error: name 'x' is not allowed")
    assert [c["result"] for c in run.tool_calls] == [err.content, "3"]
    assert run.answer == "3" and (run.input_tokens, run.output_tokens) == (0, 0)


def test_retriever_runs_the_search_and_its_chunks_reach_the_model() -> None:
    queries: list[str] = []
    model = ScriptedChatModel(
        script=[call("retriever", {"query": "how many days for refunds"}, "r1"), reply("Within 14 days [refund-0].")]
    )
    tools = build_tools(["retriever", "calculator"], word_overlap_search(queries))
    run = run_agent(model, tools, "How long do refunds take?", max_iterations=3)

    assert queries == ["how many days for refunds"]
    assert model.bound == ["retriever", "calculator"]
    [seen] = tool_messages(model.received[1])
    assert "[refund-0]" in str(seen.content) and "within 14 days" in str(seen.content)
    assert run.answer == "Within 14 days [refund-0]."
    assert run.hits[0] == Hit("refund-0", CORPUS["refund-0"][0], 2.0, "policy.md")  # "days", "refunds"
    assert {h.chunk_id for h in run.hits} <= set(CORPUS)
    assert run.tool_calls[0]["name"] == "retriever" and "[refund-0]" in run.tool_calls[0]["result"]


def test_retriever_hits_are_recorded_once_each_across_calls() -> None:
    model = ScriptedChatModel(
        script=[
            call("retriever", {"query": "refunds take days"}, "r1"),
            call("retriever", {"query": "refunds"}, "r2"),
            reply("ok"),
        ]
    )
    run = run_agent(model, build_tools(["retriever"], word_overlap_search([])), "q", max_iterations=6)
    assert [h.chunk_id for h in run.hits] == ["refund-0", "ship-0"]
    assert len(run.tool_calls) == 2


def test_retriever_with_no_match_says_so() -> None:
    tool = retriever_tool(lambda query: [])
    assert "No passages matched" in tool.invoke({"query": "zebra"})


@pytest.mark.parametrize("max_iterations", [1, 3])
def test_looping_model_is_stopped_by_max_iterations(max_iterations: int) -> None:
    model = ScriptedChatModel(loop=("calculator", {"expression": "1+1"}))
    run = run_agent(model, build_tools(["calculator"]), "loop forever", max_iterations=max_iterations)

    assert run.answer is None
    assert run.error == (
        f"the agent made {max_iterations} tool calls without answering: stopped at spec.agent.max_iterations "
        f"({max_iterations}) — raise it, or check that the model ends with an answer"
    )
    # exactly max_iterations calls ran, each recorded with its result; the model saw every result
    assert run.tool_calls == [{"name": "calculator", "args": {"expression": "1+1"}, "result": "2"}] * max_iterations
    assert len(model.received) == max_iterations + 1
    assert len(tool_messages(model.received[-1])) == max_iterations
    assert any(m["role"] == "tool" for m in run.messages)


def test_a_parallel_batch_past_the_limit_is_stopped_before_it_runs() -> None:
    # the bound counts tool calls, not turns: a turn whose calls would pass it runs none of them
    def two_calls(first: str, second: str) -> AIMessage:
        return AIMessage(
            content="",
            tool_calls=[
                {"name": "retriever", "args": {"query": first}, "id": f"{first}-id"},
                {"name": "calculator", "args": {"expression": second}, "id": f"{second}-id"},
            ],
        )

    queries: list[str] = []
    model = ScriptedChatModel(script=[two_calls("refunds", "1+1"), two_calls("shipping", "2+2"), reply("never")])
    run = run_agent(
        model, build_tools(["retriever", "calculator"], word_overlap_search(queries)), "q", max_iterations=3
    )

    assert queries == ["refunds"]  # the second turn's search never ran
    assert [c["name"] for c in run.tool_calls] == ["retriever", "calculator"]
    assert [h.chunk_id for h in run.hits] == ["refund-0"]  # hits seen before the stop are kept
    assert run.answer is None
    assert run.error is not None and run.error.startswith("the agent made 2 tool calls without answering")
    assert "spec.agent.max_iterations (3)" in run.error


def test_an_answer_within_the_limit_is_not_stopped() -> None:
    model = ScriptedChatModel(
        script=[
            call("calculator", {"expression": "1+1"}, "c1"),
            call("calculator", {"expression": "2*2"}, "c2"),
            reply("4"),
        ]
    )
    run = run_agent(model, build_tools(["calculator"]), "q", max_iterations=2)
    assert run.error is None and run.answer == "4" and len(run.tool_calls) == 2


def test_model_errors_are_raised() -> None:
    class Broken(ScriptedChatModel):
        def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
            raise RuntimeError("the model server is down")

    with pytest.raises(RuntimeError, match="model server is down"):
        run_agent(Broken(), build_tools(["calculator"]), "q", max_iterations=3)


def test_max_iterations_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        run_agent(ScriptedChatModel(), [], "q", max_iterations=0)


def test_agent_run_is_json_able() -> None:
    import json

    model = ScriptedChatModel(script=[call("retriever", {"query": "shipping days"}, "r1"), reply("3 to 5 days")])
    run: AgentRun = run_agent(model, build_tools(["retriever"], word_overlap_search([])), "q", max_iterations=2)
    json.dumps({"messages": run.messages, "tool_calls": run.tool_calls})


# --- calculator ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("(17+4)*3", "63"),
        ("-2**2", "-4"),
        ("7 // 2 + 7 % 2", "4"),
        ("7/2", "3.5"),
        ("10/2", "5"),
        ("2**-1", "0.5"),
        ("sqrt(16) + abs(-3)", "7"),
        ("round(3.14159, 2)", "3.14"),
        ("2**100", str(2**100)),
    ],
)
def test_calculator_evaluates_arithmetic(expression: str, value: str) -> None:
    assert calculator.invoke({"expression": expression}) == value


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os')", "function '__import__' is not allowed"),
        ("x+1", "name 'x' is not allowed — use numbers and + - * / // % ** ( )"),
        ("9**9**9", "too large"),
        ("10**10**10", "too large"),
        ("(2**4000)**4000", "too large"),
        ("1/0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("1" + "+1" * 400, "too long"),
        ("(" * 300 + "1" + ")" * 300, "too long"),
        ("(" * 210 + "1" + ")" * 210, "not a valid expression"),  # past the parser's nesting limit
        ("().__class__", "calculator error"),
        ("'a' * 10", "'a' is not a number"),
        ("[1, 2]", "List is not allowed"),
        ("1 if 1 else 2", "IfExp is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("2 << 3", "LShift is not allowed"),
        ("sqrt(-1)", "math domain error"),
        ("(-8) ** 0.5", "complex"),
        ("1e308 * 10", "not a finite number"),
        ("2.5**10000", "too large"),
        ("exp(1000)", "too large"),
        ("", "empty"),
        ("1 +", "not a valid expression"),
        ("True + 1", "is not a number"),
    ],
)
def test_calculator_refuses_with_a_readable_error(expression: str, reason: str) -> None:
    start = time.monotonic()
    result = calculator.invoke({"expression": expression})
    assert time.monotonic() - start < 1
    assert result.startswith("calculator error: ")
    assert reason in result


def test_calculator_never_uses_eval() -> None:
    import inspect

    import tasks.inference.tools as tools_module

    source = inspect.getsource(tools_module)
    assert "eval(" not in source.replace("_eval(", "")
    assert "exec(" not in source
    assert evaluate("2+3") == 5


# --- the registry -------------------------------------------------------------------------------


def test_unknown_tool_lists_the_valid_ones() -> None:
    with pytest.raises(KeyError) as caught:
        build_tools(["calculator", "browser"])
    message = caught.value.args[0]
    assert "'browser'" in message and "calculator" in message and "retriever" in message


def test_retriever_needs_a_search() -> None:
    with pytest.raises(ValueError, match=r"spec\.retrieval"):
        build_tools(["retriever"])


def test_registry_and_tool_descriptions() -> None:
    assert set(TOOLS) == {"calculator", "retriever"}
    [calc, retr] = build_tools(["calculator", "retriever", "calculator"], lambda q: [])
    assert (calc.name, retr.name) == ("calculator", "retriever")
    assert "arithmetic" in calc.description and "corpus" in retr.description
