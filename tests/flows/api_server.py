"""`mloc api` in a subprocess, and how the tests speak to it (test_api.py, test_usage_postgres.py)."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
# A submission is a few Prefect API calls, each retried by Prefect's client when its SQLite
# test database is briefly locked: seconds on a busy 2-core machine, over httpx's 5 s default.
TIMEOUT = 60


def post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, timeout=TIMEOUT, **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, timeout=TIMEOUT, **kwargs)


@dataclass(frozen=True)
class Api:
    url: str
    token: str
    prefect: str  # the Prefect API it talks to
    pid: int = 0  # the `mloc api` process

    def rss_mib(self) -> float:
        """The process's resident memory now."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def auth(self, **headers: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}", **headers}

    def prefect_call(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, self.prefect + path, json=body, timeout=TIMEOUT)
        response.raise_for_status()
        return response.json()

    def counts(self) -> tuple[int, int, int]:
        """Deployments, flow runs and flows: what a refused request must leave as it was."""
        return (
            self.prefect_call("POST", "/deployments/count", {}),
            self.prefect_call("POST", "/flow_runs/count", {}),
            self.prefect_call("POST", "/flows/count", {}),
        )


def subprocess_env(prefect_url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLOC_API_"))}
    env.update(PREFECT_API_URL=prefect_url, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


@contextlib.contextmanager
def serving(prefect_url: str, port: int, home: Path, **extra_env: str) -> Iterator[Api]:
    """`mloc api` on ``port``; afterwards, its whole output must not hold the token."""
    token = secrets.token_urlsafe(32)
    log = home / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "mloc"), "api", "--host", "127.0.0.1", "--port", str(port)],
            env=subprocess_env(prefect_url, home / "prefect", MLOC_API_TOKEN=token, **extra_env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"mloc api exited:\n{log.read_text()}"
            try:
                if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"mloc api did not answer in 60 s:\n{log.read_text()}"
            time.sleep(0.2)
        yield Api(url, token, prefect_url, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    output = log.read_text()
    assert "token from env MLOC_API_TOKEN" in output and "GET /api/v1/" in output  # it did log, and...
    assert token not in output  # ...never the token
    source = extra_env.get("MLOC_USAGE_SOURCE", "api")
    assert f"/stats from the {source}" in output


def september_stats(prefect_url: str, port: int, home: Path, project: str, **env: str) -> Any:
    """GET /api/v1/stats of ``project`` over 2025-09-01..02 from a fresh `mloc api` started with ``env``."""
    with serving(prefect_url, port, home, **env) as app:
        response = get(
            f"{app.url}/api/v1/stats",
            params={"project": project, "start_date": "2025-09-01", "end_date": "2025-09-02"},
            headers=app.auth(),
        )
    assert response.status_code == 200, response.text
    return response.json()
