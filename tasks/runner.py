"""Running a heavy step (training, evaluation) in a child process: spawn it, stream its
lines and events, stop it. It knows no task: a job is any model with a ``name``.

A child process means: cancelling or timing out a run kills the work for sure, GPU
memory is given back when it exits, and a multi-GPU launcher can take its place later.
The child prints its log lines; lines starting with ``EVENT`` carry JSON events
(progress, metrics) that the parent turns into Prefect artifacts.

Parent side: :func:`run_child`. Child side: ``python -m tasks JOB.json`` (tasks/__main__.py),
which sends events with :func:`emit`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

EVENT = "@@mloc-event "


class ChildError(RuntimeError):
    """The child process failed; the message carries the end of its log."""


def emit(event: str, **payload: Any) -> None:
    """Child side: send an event to the parent."""
    print(EVENT + json.dumps({"event": event, **payload}), flush=True)


class _Job(Protocol):
    @property
    def name(self) -> str: ...

    def model_dump_json(self, *, indent: int | None = None) -> str: ...


def run_child(
    job: _Job,
    workdir: Path,
    on_line: Callable[[str], None],
    on_event: Callable[[dict[str, Any]], None],
) -> None:
    """Run ``job`` in a child process, streaming its lines; raises ChildError if it fails.

    The child's PID is written to ``<workdir>/<step>.pid`` while it runs, and its whole
    output to ``<workdir>/<step>.log``: this run's, the log an earlier run left there being
    kept beside it as ``<step>.<UTC time it ended>.log``.
    """
    step = job.name
    workdir.mkdir(parents=True, exist_ok=True)
    job_path = workdir / f"{step}-job.json"
    job_path.write_text(job.model_dump_json(indent=1))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        # -P: `-m` would put the working directory first on sys.path, and a user's folder named
        # configs/ or tasks/ (the natural names for task files) would then shadow MLOC's own code
        [sys.executable, "-P", "-m", "tasks", str(job_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env=env,
        start_new_session=True,  # its own process group: stopping it stops what it started too
    )
    pid_file = workdir / f"{step}.pid"
    pid_file.write_text(str(proc.pid))
    tail: list[str] = []
    log_path = workdir / f"{step}.log"
    if log_path.exists():  # each run its own log: what is uploaded is this run's, not every earlier one's
        ended = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(log_path.stat().st_mtime))
        log_path.rename(workdir / f"{step}.{ended}.log")
    try:
        with open(log_path, "w") as log:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                if line.startswith(EVENT):
                    on_event(json.loads(line[len(EVENT) :]))
                    continue
                log.write(line + "\n")
                log.flush()
                tail = [*tail[-40:], line]
                on_line(line)
        code = proc.wait()
    finally:
        _stop(proc)
        pid_file.unlink(missing_ok=True)
    if code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise ChildError(f"the {step} process {how}; its last lines:\n" + "\n".join(tail[-15:]))


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
