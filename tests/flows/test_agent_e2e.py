"""The `agent` taskType end to end: the `mloc` flow on a real Prefect server, the agent talking
HTTP to a model server.

- A scripted OpenAI-compatible server (scripted_openai.py: LangChain's scripted tool-calling
  model, moved to the HTTP boundary) drives the agent through the retriever and the calculator,
  and loops it into spec.agent.max_iterations; its recorded requests show what reached the model.
- The agent quickstart (configs/quickstart/agent.yaml) runs on a real `transformers serve` of the
  tiny chat model on the CPU. That server accepts the `tools` of a chat completion request, but
  for the tiny (llama) model it parses no tool calls: the tiny model answers every question in
  one turn, with text.
- `mloc validate` refuses the agent tasks that could not work, and says what to change.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from configs import InferenceTask, validate_text
from tasks.registry import TASK_TYPES
from tests.flows.openai_servers import transformers_serve
from tests.flows.scripted_openai import (
    Messages,
    Reply,
    ScriptedOpenAI,
    answer_after_tools,
    call,
    question,
    text,
    tool_results,
)

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart"
QUESTIONS = [json.loads(line) for line in (QUICKSTART / "support" / "questions.jsonl").read_text().splitlines()]
BIN = Path(sys.executable).parent
MLOC = BIN / "mloc"
TINY_CHAT_MODEL = "configs/quickstart/tiny-chat-model"  # as agent.yaml names it: the path the server got
EXPRESSION = "365 * 2 + 1"
EXPRESSION_VALUE = "731"
# the header of each passage the retriever shows the model: [chunk id] (source: file)
PASSAGE = re.compile(r"^\[(\S+)\] \(source: (\S+)\)\n", re.M)


def agent_yaml(base_url: str, model: str, out: Path, *, tools: list[str], max_iterations: int, retrieval: bool) -> str:
    """An agent task over the quickstart corpus and questions (absolute paths), its model remote."""
    spec: dict[str, Any] = {
        "taskType": "agent",
        "resources": {"hardware": {"cpu": "2", "memory": "4Gi"}},
        "model": {"source": {"type": "remote", "base_url": base_url, "model": model, "timeout_seconds": 30}},
        "agent": {"tools": tools, "max_iterations": max_iterations},
        "inputs": {
            "source": {"type": "local", "path": str(QUICKSTART / "support" / "questions.jsonl")},
            "question_field": "question",
            "answer_field": "answer",
        },
        "evaluation": {"match": "contains"},
        "output": {"destination": {"type": "local", "path": str(out)}, "artifacts": ["predictions", "eval_results"]},
    }
    if retrieval:
        spec["retrieval"] = {
            "documents": {"type": "local", "path": str(QUICKSTART / "support" / "manuals")},
            "embedding_model": {"type": "local", "path": str(QUICKSTART / "all-MiniLM-L6-v2")},
            "chunk_size": 300,
            "chunk_overlap": 40,
            "top_k": 2,
        }
        spec["inputs"]["document_field"] = "document"
    task = {
        "apiVersion": "mloc/v1",
        "kind": "InferenceTask",
        "metadata": {"name": "agent-e2e", "owner": "tests", "project": "mloc-tests"},
        "spec": spec,
    }
    return yaml.safe_dump(task, sort_keys=False)


def load(text_: str) -> InferenceTask:
    result = validate_text(text_, "agent.yaml", TASK_TYPES)
    assert isinstance(result.task, InferenceTask), [i.format() for i in result.issues]
    return result.task


def run(task: InferenceTask, base_dir: Path) -> Any:
    from flows.pipeline import pipeline

    return pipeline(task=task, base_dir=str(base_dir), return_state=True)


def published(out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line]
    return predictions, json.loads((out / "mloc-manifest.json").read_text())


def requests_for(server: ScriptedOpenAI, asked: str) -> list[dict[str, Any]]:
    return [body for body in server.requests if question(body["messages"]) == asked]


# --- the scripted model: retriever, then calculator, then the answer -------------------------


def _search(messages: Messages) -> Reply:
    return call("retriever", query=question(messages))


def _compute(messages: Messages) -> Reply:
    return call("calculator", expression=EXPRESSION)


def _answer(messages: Messages) -> Reply:
    passages, value = tool_results(messages)
    first = PASSAGE.split(passages)[3].strip()  # the first passage, without its [chunk id] header
    return text(f"{first} (and {EXPRESSION} = {value})")


@pytest.mark.slow
@pytest.mark.e2e
def test_the_agent_calls_the_retriever_then_the_calculator_then_answers(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOC_HOME", str(tmp_path / "home"))
    out = tmp_path / "published"
    with ScriptedOpenAI(answer_after_tools([_search, _compute], _answer)) as server:
        task_yaml = tmp_path / "agent.yaml"
        task_yaml.write_text(
            agent_yaml(
                server.base_url, server.model, out, tools=["retriever", "calculator"], max_iterations=4, retrieval=True
            )
        )
        state = run(load(task_yaml.read_text()), tmp_path)
    assert state.is_completed(), state.message

    # the model was offered both tools, and was sent each tool's result before it answered
    offered = {tool["function"]["name"] for tool in server.requests[0]["tools"]}
    assert offered == {"retriever", "calculator"}
    assert len(server.requests) == 3 * len(QUESTIONS)  # retriever, calculator, answer: per question
    predictions, manifest = published(out)
    assert [p["id"] for p in predictions] == [q["id"] for q in QUESTIONS]
    first = predictions[0]
    asked = QUESTIONS[0]["question"]
    calls = requests_for(server, asked)
    assert len(calls) == 3
    last_sent = calls[-1]["messages"]
    tool_messages = [m["content"] for m in last_sent if m["role"] == "tool"]
    assert len(tool_messages) == 2
    # the retriever's chunk text reached the model, as did the calculator's result
    assert first["retrieved"], "no retriever hits recorded"
    passages = PASSAGE.split(tool_messages[0])[1:]
    assert passages[0::3] == [hit["chunk_id"] for hit in first["retrieved"]]
    assert passages[1::3] == [hit["source"] for hit in first["retrieved"]]
    for hit, chunk in zip(first["retrieved"], passages[2::3], strict=True):
        manual = (QUICKSTART / "support" / "manuals" / Path(hit["source"]).name).read_text()
        assert " ".join(chunk.split()) in " ".join(manual.split())  # the manual's own words
    assert first["retrieved"][0]["source"].endswith("warranty.md")
    assert "two-year warranty" in tool_messages[0]
    assert tool_messages[1] == EXPRESSION_VALUE

    # predictions.jsonl records both tool calls with their args and results, and the hits
    retriever_call, calculator_call = first["tool_calls"]
    assert retriever_call["name"] == "retriever" and retriever_call["args"] == {"query": asked}
    assert retriever_call["result"] == tool_messages[0]
    assert calculator_call == {"name": "calculator", "args": {"expression": EXPRESSION}, "result": EXPRESSION_VALUE}
    assert first["error"] is None
    assert first["answer"].endswith(f"(and {EXPRESSION} = {EXPRESSION_VALUE})")
    assert first["answer"].split(" (and ")[0] in tool_messages[0]
    assert first["input_tokens"] > 0 and first["output_tokens"] > 0
    assert [m["role"] for m in first["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    assert all(len(p["tool_calls"]) == 2 and p["retrieved"] for p in predictions)

    # hit@k is computed from the hits the agent saw: the right manual, as for the rag quickstart
    metrics = manifest["metrics"]
    assert metrics["hit_at_k"] >= 0.9, metrics
    assert metrics["error_rate"] == 0
    assert "answer_accuracy" in metrics
    assert state.result()["inference"]["tool_calls"] == 2 * len(QUESTIONS)


@pytest.mark.slow
@pytest.mark.e2e
def test_a_looping_model_is_stopped_by_max_iterations(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.inference.agent_loop import limit_message

    monkeypatch.setenv("MLOC_HOME", str(tmp_path / "home"))
    out = tmp_path / "published"
    looped = QUESTIONS[2]

    def script(messages: Messages) -> Reply:
        if question(messages) == looped["question"]:  # this one never answers
            return call("calculator", expression="1 + 1")
        return text(f"the answer is {question(messages)}")

    with ScriptedOpenAI(script) as server:
        task_yaml = tmp_path / "agent.yaml"
        task_yaml.write_text(
            agent_yaml(server.base_url, server.model, out, tools=["calculator"], max_iterations=3, retrieval=False)
        )
        state = run(load(task_yaml.read_text()), tmp_path)
    assert state.is_completed(), state.message

    predictions, manifest = published(out)
    by_id = {p["id"]: p for p in predictions}
    stopped = by_id[looped["id"]]
    assert stopped["answer"] is None
    assert stopped["error"] == limit_message(3, 3)
    assert "stopped at spec.agent.max_iterations (3)" in stopped["error"]
    # exactly max_iterations tool calls ran, and the model saw every result before it was stopped
    assert stopped["tool_calls"] == [{"name": "calculator", "args": {"expression": "1 + 1"}, "result": "2"}] * 3
    calls = requests_for(server, looped["question"])
    assert len(calls) == 4 and [m["content"] for m in calls[-1]["messages"] if m["role"] == "tool"] == ["2"] * 3
    # the other questions are answered
    others = [p for p in predictions if p["id"] != looped["id"]]
    assert len(others) == len(QUESTIONS) - 1
    assert all(p["error"] is None and p["answer"] == f"the answer is {p['question']}" for p in others)
    assert manifest["metrics"]["error_rate"] == pytest.approx(1 / len(QUESTIONS))
    assert manifest["metrics"]["error_rate"] > 0


# --- mloc validate ----------------------------------------------------------------------------


def validate(tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> subprocess.CompletedProcess[str]:
    """`mloc validate` on agent.yaml as ``edit`` changes it, written beside the quickstart's copy."""
    data = yaml.safe_load((QUICKSTART / "agent.yaml").read_text())
    edit(data["spec"])
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return subprocess.run([str(MLOC), "validate", str(path)], capture_output=True, text=True, timeout=120)


def test_the_agent_quickstart_is_valid() -> None:
    proc = subprocess.run(
        [str(MLOC), "validate", str(QUICKSTART / "agent.yaml")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_validate_refuses_an_agent_on_a_local_model(tmp_path: Path) -> None:
    def local(spec: dict[str, Any]) -> None:
        spec["model"]["source"] = {"type": "local", "path": "tiny-chat-model"}

    proc = validate(tmp_path, local)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = [line for line in proc.stdout.splitlines() if "spec.model.source.type:" in line]
    assert "ChatHuggingFace" in line and "never parse tool calls" in line  # the reason
    assert "use type: remote" in line  # the fix


def test_validate_refuses_the_retriever_without_retrieval(tmp_path: Path) -> None:
    def no_retrieval(spec: dict[str, Any]) -> None:
        del spec["retrieval"]
        del spec["inputs"]["document_field"]
        spec["agent"]["tools"] = ["retriever"]

    proc = validate(tmp_path, no_retrieval)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = [line for line in proc.stdout.splitlines() if "spec.agent.tools[0]:" in line]
    assert "there is no spec.retrieval" in line and ("add it" in line and "drop the tool" in line)


def test_validate_names_the_valid_tools_for_an_unknown_one(tmp_path: Path) -> None:
    def unknown(spec: dict[str, Any]) -> None:
        spec["agent"]["tools"] = ["retriever", "web_search"]

    proc = validate(tmp_path, unknown)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = [line for line in proc.stdout.splitlines() if "spec.agent.tools[1]:" in line]
    assert "'web_search'" in line and "retriever" in line and "calculator" in line


# --- the agent quickstart on a real `transformers serve` --------------------------------------


@pytest.mark.slow
@pytest.mark.e2e
def test_the_agent_quickstart_on_transformers_serve(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOC_HOME", str(tmp_path / "home"))
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    out = tmp_path / "published"
    with transformers_serve(TINY_CHAT_MODEL, tmp_path, hf_home=hf_home, cwd=ROOT) as root:
        base_url = f"{root}/v1"
        # its model list is the Hub cache's (lru-cached once it succeeds), never the model it is
        # pinned to; with no Hub cache folder at all, GET /v1/models is an HTTP 500
        assert httpx.get(f"{base_url}/models", timeout=30).status_code == 500
        (hf_home / "hub").mkdir()
        assert httpx.get(f"{base_url}/models", timeout=30).json() == {"object": "list", "data": []}

        # a tmp copy of agent.yaml, its base_url on this server; its paths stay the quickstart's
        quickstart = (QUICKSTART / "agent.yaml").read_text()
        assert "base_url: http://127.0.0.1:8000/v1" in quickstart and f"model: {TINY_CHAT_MODEL}" in quickstart
        copy = tmp_path / "agent.yaml"
        copy.write_text(
            quickstart.replace("http://127.0.0.1:8000/v1", base_url).replace(
                "path: ../../.mloc/outputs/quickstart-agent", f"path: {out}"
            )
        )
        started = time.monotonic()
        state = run(load(copy.read_text()), QUICKSTART)
        took = time.monotonic() - started
    assert state.is_completed(), state.message
    print(f"agent quickstart on transformers serve: {took:.1f} s")
    assert took < 120, f"the agent quickstart took {took:.0f} s"

    predictions, manifest = published(out)
    assert len(predictions) == len(QUESTIONS)
    # the server took the tools and answered in text: the tiny model calls none, so nothing is retrieved
    assert all(p["error"] is None and isinstance(p["answer"], str) for p in predictions)
    assert all(p["tool_calls"] == [] and p["retrieved"] == [] for p in predictions)
    assert all(p["input_tokens"] > 0 and 0 < p["output_tokens"] <= 24 for p in predictions)  # generation.max_new_tokens
    assert manifest["metrics"]["error_rate"] == 0
    assert manifest["metrics"]["hit_at_k"] == 0


@pytest.mark.slow
def test_a_transformers_serve_with_other_cached_models_is_not_refused(tmp_path: Path) -> None:
    from configs.models import RemoteModelSource
    from tasks.inference import remote

    hf_home = tmp_path / "hf"
    commit = "0" * 40
    repo = hf_home / "hub" / "models--someone--other-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "config").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").symlink_to("../../blobs/config")
    with transformers_serve(TINY_CHAT_MODEL, tmp_path, hf_home=hf_home, cwd=ROOT) as root:
        base_url = f"{root}/v1"
        listed = [entry["id"] for entry in httpx.get(f"{base_url}/models", timeout=30).json()["data"]]
        assert listed == ["someone/other-model"]  # the cache, not the pinned tiny model
        source = RemoteModelSource(type="remote", base_url=base_url, model=TINY_CHAT_MODEL)
        assert remote.check_endpoint(source, None, attempts=1) == listed  # a warning, and the run goes on
