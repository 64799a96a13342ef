"""The Prefect server ``mloc run`` runs against when PREFECT_API_URL is not set.

Two kinds, both Prefect's own server application (``prefect.server.api.server:create_app``
under uvicorn), on Prefect's own database in PREFECT_HOME:

- **embedded**: started by ``mloc run`` as its very first step, so that the server boots while
  the command validates the task and imports the pipeline, and stopped when the run ends.
  Its database is kept between runs; once a Prefect version has migrated it, later starts skip
  the migration check (a stamp file beside the database says which version did).
- **long-lived**: ``mloc server start`` runs ``prefect server start`` (the UI included) in the
  background and notes its address in ``<MLOC_HOME>/server.json``; ``mloc run`` uses it while it
  answers, and ``mloc server stop`` ends it. Worth it where a user runs many tasks: a run then
  pays for no server start at all.

Standard library only: this module is imported before Prefect is.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from flows.state import mloc_home

STATE_FILE = "server.json"
DEFAULT_PORT = 4200


class ServerError(RuntimeError):
    """A local server did not start; the message says why and where its log is."""


def _prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(api_url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _uses_default_database() -> bool:
    """Whether the server's database is PREFECT_HOME's SQLite file (a stamp can vouch for it)."""
    return not os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") and not os.environ.get(
        "PREFECT_SERVER_DATABASE_CONNECTION_URL"
    )


def _stamp() -> Path:
    return _prefect_home() / ".mloc-migrated"


def _migrated() -> bool:
    """The database exists and this very Prefect version migrated it."""
    database = _prefect_home() / "prefect.db"
    try:
        return _uses_default_database() and database.is_file() and _stamp().read_text() == _prefect_version()
    except OSError:
        return False


@dataclass
class EmbeddedServer:
    """A Prefect server of this command's own, booting in the background from :func:`start_embedded`."""

    process: subprocess.Popen[bytes]
    api_url: str
    log: Path
    migrating: bool

    def wait(self, timeout_s: float) -> str:
        """Block until it answers; its API URL. Raises ServerError if it exits or does not answer."""
        deadline = time.monotonic() + timeout_s
        while not healthy(self.api_url, timeout_s=2.0):
            if self.process.poll() is not None:
                raise ServerError(f"the embedded Prefect server exited; its log: {self.log}\n{_tail(self.log)}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"the embedded Prefect server did not answer within {timeout_s:.0f} s; its log: {self.log}"
                )
            time.sleep(0.05)
        if self.migrating and _uses_default_database():
            with contextlib.suppress(OSError):  # it migrated the database: later starts may skip that
                _stamp().write_text(_prefect_version())
        return self.api_url

    def stop(self) -> None:
        """Stop it without waiting for its shutdown: every request of the run has been answered."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=0.5)


def start_embedded() -> EmbeddedServer:
    """Start Prefect's server application on a free loopback port, as Prefect's own ephemeral
    server does (no UI, no scheduler services), and return at once; :meth:`EmbeddedServer.wait`."""
    home = _prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    migrating = not _migrated()
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    }
    if not migrating:
        env["PREFECT_API_DATABASE_MIGRATE_ON_START"] = "false"
    log = home / "mloc-embedded-server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *_uvicorn(),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal reaches `mloc run`, which stops it
        )
    return EmbeddedServer(process, f"http://127.0.0.1:{port}/api", log, migrating)


def _uvicorn() -> list[str]:
    from importlib.util import find_spec

    spec = find_spec("prefect")
    assert spec is not None and spec.origin is not None
    app_dir = str(Path(spec.origin).parent.parent)
    return [sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory", "prefect.server.api.server:create_app"]


# --- the long-lived server ---------------------------------------------------------------------


def _state_path() -> Path:
    return mloc_home() / STATE_FILE


def running() -> dict[str, str | int] | None:
    """The long-lived local server ``mloc server start`` started, while it answers."""
    try:
        state = json.loads(_state_path().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("api_url"), str):
        return None
    return state if healthy(state["api_url"]) else None


def start_long_lived(port: int = DEFAULT_PORT, timeout_s: float = 180) -> dict[str, str | int]:
    """``prefect server start`` in the background on ``port``; returns its state once it answers."""
    up = running()
    if up is not None:
        return up
    if not _port_free(port):
        raise ServerError(f"port {port} is taken: give another with --port")
    home = _prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    log = mloc_home() / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    prefect = Path(sys.executable).parent / "prefect"
    env = {
        **os.environ,
        "PREFECT_SERVER_ANALYTICS_ENABLED": os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # it outlives this command
        )
    api_url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout_s
    while not healthy(api_url, timeout_s=2.0):
        if process.poll() is not None:
            raise ServerError(f"prefect server start exited; its log: {log}\n{_tail(log)}")
        if time.monotonic() > deadline:
            _kill_group(process.pid)
            raise ServerError(f"the server did not answer within {timeout_s:.0f} s; its log: {log}")
        time.sleep(0.2)
    state: dict[str, str | int] = {"api_url": api_url, "pid": process.pid, "log": str(log)}
    _state_path().write_text(json.dumps(state, indent=1) + "\n")
    return state


def stop_long_lived() -> bool:
    """Stop the long-lived server; False when none was noted."""
    try:
        state = json.loads(_state_path().read_text())
    except (OSError, ValueError):
        return False
    _state_path().unlink(missing_ok=True)
    pid = state.get("pid") if isinstance(state, dict) else None
    if isinstance(pid, int):
        _kill_group(pid)
    return True


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
