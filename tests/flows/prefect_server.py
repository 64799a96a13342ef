"""A real `prefect server start` in a subprocess, for the tests that need one of their own
(one they can stop, kill and start again), with the environment its clients use."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def server_env(home: Path, port: int, **extra: str) -> dict[str, str]:
    """This process's environment without its Prefect settings, pointed at a server on ``port``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        HF_HUB_OFFLINE="1",
        **extra,
    )
    return env


def start(env: dict[str, str], port: int, log: Path, timeout_s: float = 180) -> subprocess.Popen[bytes]:
    """`prefect server start` on ``port`` with ``env``, its output appended to ``log``; returns
    once it answers /health."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"prefect server exited:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(f"prefect server did not answer in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop the server and everything it started (SIGKILL: as a crash would)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    proc.wait(timeout=60)


@contextlib.contextmanager
def running(env: dict[str, str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """:func:`start`, and :func:`stop` on the way out."""
    proc = start(env, port, log)
    try:
        yield proc
    finally:
        stop(proc)


def start_worker(env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """`mloc worker`, as the README starts it, in a process group of its own (:func:`stop` ends it
    and the flow runs it spawned)."""
    return subprocess.Popen(
        [str(BIN / "mloc"), "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=cwd,
    )


@contextlib.contextmanager
def worker(env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    """:func:`start_worker`, and :func:`stop` on the way out."""
    proc = start_worker(env, cwd)
    try:
        yield proc
    finally:
        stop(proc)
