"""Real OpenAI-compatible servers on loopback for end-to-end tests of remote models.

- ``transformers_serve``: ``transformers serve`` pinned to a local model folder, offline, on
  the CPU; yields its root URL once ``/health`` answers.
- ``keyed_proxy``: a real reverse proxy in front of it (``transformers serve`` takes no API
  key) that answers 401 unless the request carries ``Authorization: Bearer <key>``, as a
  hosted endpoint would; it counts the requests it got.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from tests.conftest import free_port


@contextlib.contextmanager
def transformers_serve(
    model: Path | str,
    scratch: Path,
    *,
    hf_home: Path | None = None,
    cwd: Path | None = None,
    startup_s: float = 120,
) -> Iterator[str]:
    """``transformers serve`` of ``model`` (a folder whose tokenizer has a chat template; a
    relative one is read from ``cwd``, and is the name requests must give) on a free loopback
    port; ``scratch`` holds its log. ``hf_home`` is the Hub cache it lists, left as it is; by
    default an empty one under ``scratch``. Yields the root URL (the OpenAI API is under
    ``/v1``); the server is stopped on exit."""
    if hf_home is None:
        # /v1/models lists the models of the Hub cache (never the pinned one): an empty cache, an
        # empty list. Without the directory it answers 500.
        hf_home = scratch / "hf"
        (hf_home / "hub").mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env |= {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home), "CUDA_VISIBLE_DEVICES": ""}
    log = scratch / f"serve-{port}.log"
    command = [str(Path(sys.executable).parent / "transformers"), "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--device", "cpu", "--log-level", "info", str(model)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            assert proc.poll() is None, f"transformers serve exited:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"transformers serve did not answer:\n{log.read_text()[-3000:]}"
            time.sleep(0.25)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@dataclass
class Proxy:
    """A running keyed proxy: its OpenAI API root and what it saw."""

    base_url: str  # ends in /v1
    key: str  # the one key it accepts
    hits: list[str] = field(default_factory=list)  # "<method> <path> <status>" of each request


@contextlib.contextmanager
def keyed_proxy(upstream: str, key: str) -> Iterator[Proxy]:
    """A stdlib HTTP server forwarding to ``upstream`` with httpx, 401 unless the request
    carries ``Authorization: Bearer <key>``; yields a :class:`Proxy`."""
    proxy = Proxy(base_url="", key=key)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # no request lines on stderr
            pass

        def reply(self, status: int, body: bytes, content_type: str) -> None:
            proxy.hits.append(f"{self.command} {self.path} {status}")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Authorization") != f"Bearer {key}":
                error = {"error": {"message": "invalid API key", "code": 401}}
                self.reply(401, json.dumps(error).encode(), "application/json")
                return
            headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
            answer = httpx.request(self.command, upstream + self.path, content=body, headers=headers, timeout=120)
            self.reply(answer.status_code, answer.content, answer.headers.get("content-type", "application/json"))

        do_GET = do_POST = forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    proxy.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
