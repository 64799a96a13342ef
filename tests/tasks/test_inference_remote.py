"""A model on a remote OpenAI-compatible endpoint: the key from a Prefect Secret block, a
ChatOpenAI on it, and the check that the endpoint answers before any question is asked.

Everything here is a real HTTP server on loopback: ``transformers serve`` of the repo's tiny
model, a keyed reverse proxy in front of it (``transformers serve`` takes no API key), and
small stdlib servers that drop connections, answer 503, or list models.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from blocks.credentials import CredentialsError
from tasks.inference.remote import EndpointError, api_key, backoff_waits, chat_model, check_endpoint
from tests.conftest import free_port
from tests.flows.openai_servers import transformers_serve

TINY_MODEL = Path(__file__).parents[2] / "configs/quickstart/tiny-model"
# the tiny model's tokenizer has no chat template; chat completions need one
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
KEY = f"sk-mloc-{uuid.uuid4().hex}"  # the one key the proxy accepts


@dataclass(frozen=True)
class Source:
    base_url: str
    model: str
    credentials_block: str | None = None


@dataclass(frozen=True)
class Generation:
    max_new_tokens: int = 8
    temperature: float = 0.0
    top_p: float = 1.0


# ---- real servers on loopback ----


@contextlib.contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """A stdlib HTTP server with ``handler`` on a free loopback port, in a thread; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class Handler(BaseHTTPRequestHandler):
    hits = 0  # requests this handler class answered (each test makes a subclass of its own)

    def log_message(self, format: str, *args: object) -> None:  # no request lines on stderr
        pass

    def reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def keyed_proxy(upstream: str) -> type[Handler]:
    """A real reverse proxy (stdlib http.server forwarding with httpx): 401 unless the request
    carries ``Authorization: Bearer KEY``, as a hosted OpenAI-compatible endpoint would."""

    class Proxy(Handler):
        def forward(self) -> None:
            type(self).hits += 1
            if self.headers.get("Authorization") != f"Bearer {KEY}":
                self.reply(401, json.dumps({"error": {"message": "invalid API key", "code": 401}}).encode())
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
            answer = httpx.request(self.command, upstream + self.path, content=body, headers=headers, timeout=60)
            self.reply(answer.status_code, answer.content, answer.headers.get("content-type", "application/json"))

        do_GET = do_POST = forward

    return Proxy


@dataclass(frozen=True)
class Served:
    url: str  # transformers serve's root
    model: str  # the name it is pinned to


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``transformers serve`` pinned to a copy of the tiny model (with a chat template), offline, on CPU."""
    root = tmp_path_factory.mktemp("serve")
    model = root / "tiny-model"
    shutil.copytree(TINY_MODEL, model)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    with transformers_serve(model, root) as url:
        yield Served(url, str(model))


@pytest.fixture(scope="module")
def proxy(served: Served) -> Iterator[tuple[str, type[Handler]]]:
    """The keyed proxy in front of the server: its API root and its handler (for the hit count)."""
    handler = keyed_proxy(served.url)
    with http_server(handler) as port:
        yield f"http://127.0.0.1:{port}/v1", handler


@pytest.fixture
def secret_block(prefect_server: None) -> Callable[[str], str]:
    """Saves a real Prefect Secret block holding a value; returns the block's name."""
    from prefect.blocks.system import Secret

    def save(value: str) -> str:
        name = f"mloc-endpoint-{uuid.uuid4().hex[:8]}"
        Secret(value=value).save(name)
        return name

    return save


def leaks(secret: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if secret in r.getMessage() or secret in str(r.args)]


# ---- against transformers serve ----


@pytest.mark.slow
def test_a_completion_with_the_secret_blocks_key_through_the_keyed_proxy(
    proxy: tuple[str, type[Handler]],
    served: Served,
    secret_block: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    base_url, _ = proxy
    block = secret_block(KEY)
    key = api_key(block)
    assert isinstance(key, SecretStr) and key.get_secret_value() == KEY
    source = Source(base_url, served.model, block)

    assert check_endpoint(source, key) == []  # transformers serve lists its (empty) Hub cache only
    model = chat_model(source, Generation(), key)
    reply = model.invoke("Say hello.")
    streamed = [chunk for chunk in model.stream("Say hello.")]

    assert isinstance(reply.content, str) and reply.content.strip()
    usage = reply.usage_metadata
    assert usage is not None and usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    streamed_usage = [c.usage_metadata for c in streamed if c.usage_metadata]  # stream_usage=True
    assert streamed_usage and streamed_usage[-1]["output_tokens"] > 0
    assert "".join(str(c.content) for c in streamed).strip()
    assert KEY not in repr(model) and KEY not in str(model) and KEY not in repr(key) and KEY not in str(key)
    with pytest.raises(EndpointError) as down:  # nor does an error about the endpoint
        check_endpoint(Source(f"http://127.0.0.1:{free_port()}/v1", served.model, block), key, attempts=1)
    assert KEY not in str(down.value) and KEY not in repr(down.value)
    assert not leaks(KEY, caplog)


@pytest.mark.slow
def test_no_key_reaches_an_endpoint_that_wants_none(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the placeholder, not the worker's key, is sent
    source = Source(f"{served.url}/v1", served.model)

    assert check_endpoint(source, None) == []
    reply = chat_model(source, Generation(max_new_tokens=4), None).invoke("Hi")

    assert str(reply.content).strip()
    assert reply.usage_metadata is not None and 0 < reply.usage_metadata["output_tokens"] <= 4


@pytest.mark.slow
def test_a_rejected_key_names_the_block_at_once_without_echoing_it(
    proxy: tuple[str, type[Handler]],
    served: Served,
    secret_block: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    base_url, handler = proxy
    wrong = f"sk-wrong-{uuid.uuid4().hex}"
    block = secret_block(wrong)
    before = handler.hits

    with pytest.raises(EndpointError) as caught:
        check_endpoint(Source(base_url, served.model, block), api_key(block), first_wait_s=5)

    message = str(caught.value)
    assert message == (
        f"the endpoint {base_url} rejected the API key from Prefect Secret block '{block}' (401) — "
        "update the block's value"
    )
    assert handler.hits - before == 1  # no retries
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert not leaks(wrong, caplog)
    with pytest.raises(EndpointError, match=r"wants an API key \(401\) — set spec\.model\.source\.credentials_block"):
        check_endpoint(Source(base_url, served.model), None)


@pytest.mark.slow
def test_a_missing_secret_block_says_how_to_create_it(prefect_server: None) -> None:
    name = f"mloc-absent-{uuid.uuid4().hex[:8]}"
    with pytest.raises(CredentialsError, match=rf"no Prefect Secret block named '{name}' — create it"):
        api_key(name)
    assert api_key(None) is None


# ---- endpoints that are down or wrong (small real servers; no model) ----


def test_backoff_doubles_up_to_the_cap() -> None:
    assert backoff_waits(5, 0.5, 8) == [0.5, 1, 2, 4]
    assert backoff_waits(7, 1, 8) == [1, 2, 4, 8, 8, 8]
    assert backoff_waits(1, 0.5, 8) == []


def test_an_endpoint_nobody_listens_on_is_retried_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tasks.inference.remote")
    base_url = f"http://127.0.0.1:{free_port()}/v1"

    started = time.monotonic()
    with pytest.raises(EndpointError) as caught:
        check_endpoint(Source(base_url, "m"), None, attempts=4, first_wait_s=0.2, max_wait_s=0.5)
    elapsed = time.monotonic() - started

    assert elapsed >= 0.2 + 0.4 + 0.5
    assert str(caught.value).startswith(f"the model endpoint {base_url} did not answer after 4 tries over ~1s: ")
    assert ": ConnectionRefusedError: [Errno 111] Connection refused — " in str(caught.value)
    assert str(caught.value).endswith("— check spec.model.source.base_url and that the server is up")
    retries = [r.getMessage() for r in caplog.records if "did not answer" in r.getMessage()]
    assert len(retries) == 3 and retries[-1].endswith("try 4 of 4 in 0.5s")


def test_each_try_reaches_an_endpoint_that_drops_connections() -> None:
    accepted = 0
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def drop() -> None:  # accepts and closes at once, as a crashing server would
            nonlocal accepted
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = listener.accept()
                    accepted += 1
                    conn.close()

        threading.Thread(target=drop, daemon=True).start()
        base_url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        started = time.monotonic()
        with pytest.raises(EndpointError, match=r"did not answer after 3 tries over ~\d+s: \w+"):
            check_endpoint(Source(base_url, "m"), None, attempts=3, first_wait_s=0.1, max_wait_s=1)
        elapsed = time.monotonic() - started

    assert accepted == 3
    assert elapsed >= 0.1 + 0.2


def test_a_5xx_is_retried_and_then_reported(caplog: pytest.LogCaptureFixture) -> None:
    class Unavailable(Handler):
        def do_GET(self) -> None:
            type(self).hits += 1
            self.reply(503, b'{"error": "loading"}')

    expected = r"after 3 tries over ~\d+s: HTTP 503 — check"
    with http_server(Unavailable) as port, pytest.raises(EndpointError, match=expected):
        check_endpoint(Source(f"http://127.0.0.1:{port}/v1", "m"), None, attempts=3, first_wait_s=0.05)
    assert Unavailable.hits == 3


def test_a_model_the_endpoint_does_not_list_is_a_warning_naming_the_listed_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a warning, not a refusal: transformers serve lists its Hub cache, never its pinned model
    class Lister(Handler):
        def do_GET(self) -> None:
            type(self).hits += 1
            models = [
                {"id": name, "object": "model", "created": 0, "owned_by": "org"} for name in ("org/a", "org/b@v2")
            ]
            self.reply(200, json.dumps({"object": "list", "data": models}).encode())

    with http_server(Lister) as port, caplog.at_level(logging.WARNING, logger="tasks.inference.remote"):
        base_url = f"http://127.0.0.1:{port}/v1"
        assert check_endpoint(Source(base_url, "org/c"), None) == ["org/a", "org/b@v2"]
        assert check_endpoint(Source(base_url, "org/b"), None) == ["org/a", "org/b@v2"]

    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        f"model endpoint {base_url} does not list model 'org/c' (it lists: org/a, org/b@v2): if the first "
        "question fails, fix spec.model.source.model"
    ]
    assert Lister.hits == 2


def test_a_model_list_that_keeps_failing_with_500_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Handler):
        def do_GET(self) -> None:
            type(self).hits += 1
            self.reply(500, b'{"error": "no cache"}')

    with http_server(Broken) as port, caplog.at_level(logging.WARNING, logger="tasks.inference.remote"):
        served = check_endpoint(Source(f"http://127.0.0.1:{port}/v1", "m"), None, attempts=3, first_wait_s=0.05)
    assert served == [] and Broken.hits == 3
    assert "its model list failed 3 times (HTTP 500): going on" in caplog.text


def test_a_wrong_api_root_is_not_retried() -> None:
    class NotFound(Handler):
        def do_GET(self) -> None:
            type(self).hits += 1
            self.reply(404, b'{"detail": "Not Found"}')

    expected = r"answered GET /models with HTTP 404 — check spec\.model\.source"
    with http_server(NotFound) as port, pytest.raises(EndpointError, match=expected):
        check_endpoint(Source(f"http://127.0.0.1:{port}", "m"), None)
    assert NotFound.hits == 1
