"""Running a heavy step (training, evaluation) in a child process: spawn it, stream its
lines and events, stop it. It knows no task: a job is any model with a ``name``.

A child process means: cancelling or timing out a run kills the work for sure, and GPU
memory is given back when it exits. A distributed step (tasks/launch.py) is one torchrun
launcher per node instead, every one streamed the same way; their ranks' lines arrive
prefixed with the rank. The child prints its log lines; lines starting with ``EVENT``
carry JSON events (progress, metrics) that the parent turns into Prefect artifacts.

Inside :func:`one_child`, the plain (one process) steps of a run share one long-lived child
instead (``python -m tasks --serve``, which reads job files from its stdin): evaluate-before,
train and evaluate-after then import torch, transformers and TRL once, not three times. A step
that fails ends that child; the next step starts a new one.

Parent side: :func:`run_child`. Child side: ``python -m tasks JOB.json`` (tasks/__main__.py),
which sends events with :func:`emit`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from tasks.launch import (
    CHILD_ENV,
    Launch,
    child_command,
    free_port,
    launcher_command,
    local_node_env,
    serve_command,
    split_rank,
)

EVENT = "@@mloc-event "
# what a serving child prints once a job is done; the parent then sends the next one
STEP_END = "step-end"


class ChildError(RuntimeError):
    """The child process failed; the message carries the end of its log."""


# after one node's launcher failed, how long the others get to notice and stop by themselves
NODE_GRACE_S = 60.0


def emit(event: str, **payload: Any) -> None:
    """Child side: send an event to the parent (from rank 0 only, in a distributed step)."""
    if os.environ.get("RANK", "0") == "0":
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
    launch: Launch | None = None,
) -> None:
    """Run ``job`` in a child process, or as ``launch``'s torchrun nodes on this machine when
    it is distributed, streaming their lines; raises ChildError if it fails.

    The children's PIDs are written to ``<workdir>/<step>.pid`` (one a line, node 0 first)
    while they run, and their whole output to ``<workdir>/<step>.log``: this run's, the log
    an earlier run left there being kept beside it as ``<step>.<UTC time it ended>.log``.
    """
    from tasks.launch import failure_message

    step = job.name
    workdir.mkdir(parents=True, exist_ok=True)
    job_path = workdir / f"{step}-job.json"
    job_path.write_text(job.model_dump_json(indent=1))
    distributed = launch is not None and launch.distributed
    # torchrun's nodes here share this machine's CPUs: each process gets its share of them
    env = {**os.environ, **CHILD_ENV, **_thread_env(job, launch.world_size if launch is not None else 1)}
    shared = _SHARED.get()
    if shared is not None and not distributed:
        shared.run(job_path, step, workdir, env, on_line, on_event)
        return
    if launch is not None and distributed:
        endpoint, run_id = f"127.0.0.1:{free_port()}", uuid.uuid4().hex[:12]
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d] or [
            str(i) for i in range(launch.nodes * launch.gpus_per_node)
        ]
        commands = [
            (
                launcher_command(str(job_path)),
                {**env, **local_node_env(launch, node, endpoint=endpoint, run_id=run_id, visible=visible)},
            )
            for node in range(launch.nodes)
        ]
    else:
        commands = [(child_command(str(job_path)), env)]
    log_path = _fresh_log(workdir, step)
    procs = [_start(command, node_env) for command, node_env in commands]
    pid_file = workdir / f"{step}.pid"
    pid_file.write_text("\n".join(str(p.pid) for p in procs))
    node_lines: list[list[str]] = [[] for _ in procs]
    lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
    for node, proc in enumerate(procs):
        threading.Thread(target=_read, args=(proc, node, lines), daemon=True).start()
    try:
        with open(log_path, "w") as log:
            open_streams, failed_at = len(procs), None
            while open_streams:
                try:
                    node, line = lines.get(timeout=1.0)
                except queue.Empty:
                    line = ""
                    node = -1
                if node >= 0 and line is None:
                    open_streams -= 1
                elif node >= 0 and line is not None:
                    _, text = split_rank(line)
                    if text.startswith(EVENT):
                        on_event(json.loads(text[len(EVENT) :]))
                        continue
                    log.write(line + "\n")
                    log.flush()
                    node_lines[node] = [*node_lines[node][-200:], line]
                    on_line(line)
                if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
                    failed_at = time.monotonic()
                if failed_at is not None and time.monotonic() - failed_at > NODE_GRACE_S:
                    for proc in procs:  # a node left waiting on a peer that is gone
                        _stop(proc)
        codes: list[int | None] = [proc.wait() for proc in procs]
    finally:
        for proc in procs:
            _stop(proc)
        pid_file.unlink(missing_ok=True)
    if any(codes):
        if launch is not None and distributed:
            raise ChildError(failure_message(step, launch, node_lines, codes))
        code = codes[0] or 0
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise ChildError(f"the {step} process {how}; its last lines:\n" + "\n".join(node_lines[0][-15:]))


def _fresh_log(workdir: Path, step: str) -> Path:
    """``<step>.log`` for this run: each run its own log, so what is uploaded is this run's, not
    every earlier one's; an earlier run's is kept beside it under the time it ended."""
    log_path = workdir / f"{step}.log"
    if log_path.exists():
        ended = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(log_path.stat().st_mtime))
        log_path.rename(workdir / f"{step}.{ended}.log")
    return log_path


def _thread_env(job: _Job, processes: int = 1) -> dict[str, str]:
    """The thread settings of the child for the CPUs the job's task asks for (tasks/threads.py),
    split evenly among ``processes`` processes on this machine."""
    from tasks.threads import child_env, cpu_budget

    task = getattr(job, "task", None)
    hardware = task.get("spec", {}).get("resources", {}).get("hardware", {}) if isinstance(task, dict) else {}
    cpu = hardware.get("cpu")
    return child_env(max(cpu_budget(cpu) // processes, 1) if processes > 1 else cpu)


_SHARED: contextvars.ContextVar[_StepProcess | None] = contextvars.ContextVar("mloc_step_process", default=None)


@contextlib.contextmanager
def one_child() -> Iterator[None]:
    """Within this block, every plain step :func:`run_child` runs goes to one long-lived child,
    started by the first of them; it is stopped on the way out (at once if the block failed)."""
    process = _StepProcess()
    token = _SHARED.set(process)
    ok = False
    try:
        yield
        ok = True
    finally:
        _SHARED.reset(token)
        process.close(graceful=ok)


class _StepProcess:
    """A child that runs one job after another: a job file's path a line on its stdin, and
    :data:`STEP_END` printed once the job is done. It exits on its own when a job fails."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[tuple[int, str | None]] = queue.Queue()

    def run(
        self,
        job_path: Path,
        step: str,
        workdir: Path,
        env: dict[str, str],
        on_line: Callable[[str], None],
        on_event: Callable[[dict[str, Any]], None],
    ) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.lines = queue.Queue()
            self.proc = _start(serve_command(), env, stdin=True)
            threading.Thread(target=_read, args=(self.proc, 0, self.lines), daemon=True).start()
        proc = self.proc
        assert proc.stdin is not None
        log_path = _fresh_log(workdir, step)
        pid_file = workdir / f"{step}.pid"
        pid_file.write_text(str(proc.pid))
        tail: list[str] = []
        done = False
        try:
            proc.stdin.write(f"{job_path}\n")
            proc.stdin.flush()
            with open(log_path, "w") as log:
                while True:
                    _, line = self.lines.get()
                    if line is None:  # the child exited: the job failed, or it was killed
                        break
                    _, text = split_rank(line)
                    if text.startswith(EVENT):
                        event = json.loads(text[len(EVENT) :])
                        if event.get("event") == STEP_END:
                            done = True
                            break
                        on_event(event)
                        continue
                    log.write(line + "\n")
                    log.flush()
                    tail = [*tail[-200:], line]
                    on_line(line)
        except BaseException:
            _stop(proc)  # the step was interrupted (a cancellation, a timeout): its work stops with it
            raise
        finally:
            pid_file.unlink(missing_ok=True)
        if not done:
            code = proc.wait()
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            raise ChildError(f"the {step} process {how}; its last lines:\n" + "\n".join(tail[-15:]))

    def close(self, *, graceful: bool) -> None:
        """End the child: it exits by itself once its stdin closes, without the interpreter's slow
        teardown; one that does not within a while, or any after a failure, is stopped."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if graceful and proc.poll() is None:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        _stop(proc)


def _start(command: list[str], env: dict[str, str], *, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env=env,
        start_new_session=True,  # its own process group: stopping it stops what it started too
    )


def _read(proc: subprocess.Popen[str], node: int, lines: queue.Queue[tuple[int, str | None]]) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        lines.put((node, raw.rstrip("\n")))
    lines.put((node, None))


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop a child and everything it started. torchrun starts each rank in a session of its
    own, out of reach of the group's signal: it stops them itself on SIGTERM, and whatever is
    still alive once it has exited (or been killed) is killed here."""
    if proc.poll() is not None:
        return
    started = _descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        started |= _descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
    for pid in started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _descendants(root: int) -> set[int]:
    """The PIDs below ``root`` in the process tree (from /proc; none where there is no /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
