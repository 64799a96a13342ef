"""A scripted OpenAI-compatible chat server on loopback, for agent tests.

LangChain tests its agents against a scripted tool-calling chat model (a fake model whose
replies, tool calls among them, are fixed in advance). This is the same habit moved to the HTTP
boundary: a real HTTP server (the standard library's, in a thread) that answers
``POST /v1/chat/completions`` from a script, so the code under test talks to it exactly as it
would to vLLM or `transformers serve` — through ChatOpenAI, the openai client and a socket.

- The script is a list of replies, used one per request in order, or a function of the messages
  received that returns the reply (``answer_after_tools``, ``looping`` build such functions).
- A reply is ``Call`` (one or more tool calls: function name + JSON arguments, finish_reason
  "tool_calls") or ``Text`` (the final answer, finish_reason "stop"); every reply carries
  ``usage`` token counts (whitespace-separated words, so they are deterministic).
- Every request body is recorded (``server.requests``), so a test can assert what reached the
  model: the tools it was offered, each tool result it was sent.
- ``GET /v1/models`` lists the server's model name; a request for another model is refused
  with 404, as an OpenAI-compatible server would.
- ``"stream": true`` requests are answered as server-sent events, in the same shape.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Call:
    """A reply that calls tools: each entry is (tool name, its arguments)."""

    calls: tuple[tuple[str, dict[str, Any]], ...]
    content: str = ""


@dataclass(frozen=True)
class Text:
    """A final reply: text, no tool call."""

    content: str


Reply = Call | Text
Messages = list[dict[str, Any]]
Script = Sequence[Reply] | Callable[[Messages], Reply]


def call(name: str, **args: Any) -> Call:
    """A reply calling one tool ``name`` with ``args``."""
    return Call(((name, args),))


def text(content: str) -> Text:
    return Text(content)


def tool_results(messages: Messages) -> list[str]:
    """The contents of the tool messages after the last user message, in order."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    return [content_text(m) for m in messages[last_user + 1 :] if m.get("role") == "tool"]


def question(messages: Messages) -> str:
    """The text of the last user message."""
    return next((content_text(m) for m in reversed(messages) if m.get("role") == "user"), "")


def content_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def answer_after_tools(steps: Sequence[Callable[[Messages], Reply]], final: Callable[[Messages], Reply]) -> Script:
    """A script for any number of questions: with n tool results since the question, it replies
    ``steps[n](messages)``, and once every step is done, ``final(messages)``."""

    def script(messages: Messages) -> Reply:
        done = len(tool_results(messages))
        return steps[done](messages) if done < len(steps) else final(messages)

    return script


def looping(name: str, **args: Any) -> Script:
    """A model that never answers: every reply calls tool ``name`` with ``args``."""
    return lambda messages: call(name, **args)


def _words(value: Any) -> int:
    return len(json.dumps(value).split()) if not isinstance(value, str) else len(value.split())


@dataclass
class ScriptedOpenAI:
    """The server; a context manager (``with ScriptedOpenAI(script) as server: server.base_url``)."""

    script: Script
    model: str = "scripted-model"
    requests: list[dict[str, Any]] = field(default_factory=list)  # every chat completion request body
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    _replies: Iterator[Reply] | None = None
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        """The OpenAI API root (what spec.model.source.base_url takes)."""
        assert self._server is not None, "the server is not started"
        return f"http://{self.host}:{self._server.server_address[1]}/v1"

    def tool_messages(self) -> list[str]:
        """Every tool result the model was sent, across requests, each once, in order."""
        seen: list[str] = []
        for body in self.requests:
            for message in body.get("messages", []):
                if message.get("role") == "tool" and content_text(message) not in seen:
                    seen.append(content_text(message))
        return seen

    def __enter__(self) -> ScriptedOpenAI:
        if not callable(self.script):
            self._replies = iter(list(self.script))
        self._server = ThreadingHTTPServer((self.host, self.port), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="scripted-openai", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def reply_to(self, body: dict[str, Any]) -> Reply | None:
        """The script's reply to ``body`` (None: a list script ran out)."""
        with self._lock:
            self.requests.append(body)
            if callable(self.script):
                return self.script(list(body.get("messages", [])))
            assert self._replies is not None
            return next(self._replies, None)


def completion(reply: Reply, model: str, messages: Messages, number: int) -> dict[str, Any]:
    """The chat.completion object for ``reply``."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content or None}
    if isinstance(reply, Call):
        message["tool_calls"] = [
            {"id": f"call_{number}_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            for i, (name, args) in enumerate(reply.calls)
        ]
    prompt_tokens = sum(_words(m.get("content") or "") for m in messages)
    completion_tokens = _words(reply.content) + (
        sum(_words(args) + 1 for _, args in reply.calls) if isinstance(reply, Call) else 0
    )
    return {
        "id": f"chatcmpl-scripted-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if isinstance(reply, Call) else "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _chunks(done: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``done`` (a chat.completion) as chat.completion.chunk objects: the message, then the finish."""
    choice = done["choices"][0]
    delta: dict[str, Any] = {"role": "assistant", "content": choice["message"]["content"] or ""}
    if "tool_calls" in choice["message"]:
        delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(choice["message"]["tool_calls"])]
    head = {key: done[key] for key in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    yield head | {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    yield head | {"choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]}
    yield head | {"choices": [], "usage": done["usage"]}


def _handler(server: ScriptedOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                entry = {"id": server.model, "object": "model", "created": 0, "owned_by": "scripted"}
                self._send(200, {"object": "list", "data": [entry]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._error(404, f"no route {self.path}")
                return
            if body.get("model") != server.model:
                self._error(404, f"the model '{body.get('model')}' does not exist; this server serves {server.model}")
                return
            reply = server.reply_to(body)
            if reply is None:  # 400, not 5xx: the openai client would retry a 5xx
                self._error(400, f"the script ran out of replies after {len(server.requests) - 1} request(s)")
                return
            done = completion(reply, server.model, list(body.get("messages", [])), len(server.requests))
            if not body.get("stream"):
                self._send(200, done)
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            for chunk in _chunks(done):
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    return Handler
