"""The local Prefect servers `mloc run` uses when PREFECT_API_URL is not set, for real: the
embedded one it boots per run, on a database kept between runs, and the long-lived one of
`mloc server start`, which runs are sent to while it is up."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from tests.quickstart_task import write_short_quickstart

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

MLOC = Path(sys.executable).parent / "mloc"


def local_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(MLOC_HOME=str(tmp_path / "mloc"), PREFECT_HOME=str(tmp_path / "prefect"), HF_HUB_OFFLINE="1")
    return env


def mloc(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MLOC), *args], env=env, capture_output=True, text=True, timeout=600)


def flow_runs(database: Path) -> list[str]:
    with sqlite3.connect(database) as db:
        return [name for (name,) in db.execute("SELECT name FROM flow_run ORDER BY created")]


def test_the_embedded_server_keeps_its_database_and_migrates_it_once(tmp_path: Path) -> None:
    env, task = local_env(tmp_path), write_short_quickstart(tmp_path, evaluation=False)
    stamp = tmp_path / "prefect" / ".mloc-migrated"
    first = mloc(env, "run", str(task))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "on an embedded local Prefect server" in first.stdout
    # the first start migrated the new database, and says so for the next ones
    assert stamp.read_text() == version("prefect")
    second = mloc(env, "run", str(task))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    # both runs in one database: the UI of a later `prefect server start` on it shows them all
    assert flow_runs(tmp_path / "prefect" / "prefect.db") == ["quickstart-tiny-sft"] * 2
    # Prefect's own throwaway server was never started beside MLOC's
    assert "temporary server" not in first.stdout + first.stderr + second.stdout + second.stderr
    # the server is gone with the command
    assert not [line for line in _server_lines() if str(tmp_path) in line]


def _server_lines() -> list[str]:
    """The command lines of running uvicorn servers, with their environment's PREFECT_HOME."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "uvicorn" in args:
            found.append(args + " " + environ)
    return found


def test_runs_go_to_the_long_lived_server_while_it_is_up(tmp_path: Path, port_picker: Callable[[], int]) -> None:
    env, port = local_env(tmp_path), port_picker()
    started = mloc(env, "server", "start", "--port", str(port))
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        api = f"http://127.0.0.1:{port}/api"
        assert api in started.stdout
        assert mloc(env, "server", "status").returncode == 0
        ran = mloc(env, "run", str(write_short_quickstart(tmp_path, evaluation=False)))
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        assert f"on the local MLOC server at {api} (mloc server start)" in ran.stdout
        # the run is on that server, which is still up after the run
        [run] = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=30).json()
        assert run["name"] == "quickstart-tiny-sft" and run["state_type"] == "COMPLETED"
        assert httpx.get(f"{api}/health", timeout=10).status_code == 200
    finally:
        stopped = mloc(env, "server", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    status = mloc(env, "server", "status")
    assert status.returncode == 1 and "no local MLOC server is running" in status.stdout
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5)
