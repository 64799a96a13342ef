"""How a training child is launched: one process, or torchrun's processes across nodes.

``gpu.count: N`` on one node is N processes under torchrun (DDP), never one process seeing N
GPUs; ``replicas: R`` is R torchrun nodes of N processes each. The launcher command is the
same everywhere (:func:`launcher_command`); what differs is where the nodes are and how they
find each other, which torchrun reads from ``PET_*`` variables:

- here, :func:`local_node_env` starts R nodes on this machine that meet over loopback by c10d
  rendezvous (gloo on CPU), so the multi-node path runs for real on one machine;
- on Kubernetes, Kubeflow Trainer's ``torch-distributed`` runtime sets them for each node
  of a TrainJob.

Child side: :func:`rank`, :func:`world_size` and :func:`is_main` read torchrun's variables
(a plain child is rank 0 of 1): only rank 0 sends events and writes results. Each rank's
lines reach the parent prefixed ``[rank<R>]:`` (:data:`RANK_PREFIX`), and when a launcher
fails :func:`failure_message` names the rank that was lost.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from configs import TrainingTask

DEFAULT_RENDEZVOUS_TIMEOUT_S = 600  # torchrun's own default join timeout
RANK_PREFIX = "[rank${rank}]: "  # torchrun's log-line prefix template
# what every step child runs with, wherever it runs: lines as they are printed, no progress bars
CHILD_ENV = {"PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
# and under torchrun: each rank's lines prefixed with it, -P for the workers it starts
LAUNCHER_ENV = {"TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": RANK_PREFIX, "PYTHONSAFEPATH": "1"}
_RANK_LINE = re.compile(r"^\[rank(\d+)\]: ?(.*)$")
# torchrun's failure summary: "rank      : 1 (local_rank: 0)" then "exitcode  : -9 (pid: 123)"
_FAILED_RANK = re.compile(r"^\s*rank\s*:\s*(\d+) \(local_rank: (\d+)\)")
_EXIT_CODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


@dataclass(frozen=True)
class Launch:
    """How many nodes and processes per node one training runs as."""

    nodes: int = 1
    procs_per_node: int = 1
    gpus_per_node: int = 0
    rendezvous_timeout_s: int = DEFAULT_RENDEZVOUS_TIMEOUT_S

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        if not self.distributed:
            return "one process"
        where = "GPU" if self.gpus_per_node else "CPU"
        return (
            f"{self.nodes} node(s) × {self.procs_per_node} {where} process(es) under torchrun, "
            f"world size {self.world_size}"
        )


def launch_for(task: TrainingTask) -> Launch:
    """A task's launch: ``replicas`` nodes of ``max(gpu.count, 1)`` processes."""
    spec = task.spec
    gpus = spec.resources.hardware.gpu.count
    return Launch(
        nodes=spec.resources.replicas,
        procs_per_node=max(gpus, 1),
        gpus_per_node=gpus,
        rendezvous_timeout_s=spec.execution.rendezvous_timeout_seconds,
    )


def launcher_command(job_path: str, *, python: str | None = None) -> list[str]:
    """The command that starts one node's processes of the child ``python -m tasks JOB.json``.

    torchrun takes the node count, processes per node and rendezvous from ``PET_*``
    variables, so this command is the same here and in a TrainJob's pods. Restarts are
    Prefect's (spec.execution.retries, resuming from the last checkpoint), not torchrun's.
    """
    return [
        python or sys.executable,
        "-P",
        "-m",
        "torch.distributed.run",
        "--tee",
        "3",  # each rank's stdout and stderr to the console, prefixed with its rank
        "--max-restarts",
        "0",
        "-m",
        "tasks",
        job_path,
    ]


def child_command(job_path: str, *, python: str | None = None) -> list[str]:
    """The command of a plain (one process) child."""
    # -P: `-m` would put the working directory first on sys.path, and a user's folder named
    # configs/ or tasks/ (the natural names for task files) would then shadow MLOC's own code
    return [python or sys.executable, "-P", "-m", "tasks", job_path]


def serve_command(*, python: str | None = None) -> list[str]:
    """The command of a child that runs one plain job after another (tasks/runner.py::one_child)."""
    return [python or sys.executable, "-P", "-m", "tasks", "--serve"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_node_env(launch: Launch, node: int, *, endpoint: str, run_id: str, visible: list[str]) -> dict[str, str]:
    """The variables node ``node`` of a run on this machine is started with: c10d rendezvous
    at ``endpoint`` (one of the nodes hosts it), its share of the visible GPUs, and threads
    split between the processes the CPUs run."""
    env = {
        "PET_NNODES": str(launch.nodes),
        "PET_NPROC_PER_NODE": str(launch.procs_per_node),
        "PET_RDZV_BACKEND": "c10d",
        "PET_RDZV_ENDPOINT": endpoint,
        "PET_RDZV_ID": run_id,
        "PET_RDZV_CONF": f"join_timeout={launch.rendezvous_timeout_s}",
        "PET_MONITOR_INTERVAL": "0.5",
        **LAUNCHER_ENV,
    }
    if launch.gpus_per_node:
        share = visible[node * launch.gpus_per_node : (node + 1) * launch.gpus_per_node]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(share)
    elif "OMP_NUM_THREADS" not in os.environ:
        # every process on one machine: torch would otherwise start a thread per core in each
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // launch.world_size))
    return env


# --- child side -------------------------------------------------------------------------------


def rank() -> int:
    """This process's global rank (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this process is rank 0: the one that sends events and writes results."""
    return rank() == 0


# --- parent side: reading the ranks' lines and the launcher's failure ---------------------------


def split_rank(line: str) -> tuple[int | None, str]:
    """(rank, the line without its prefix) of a line a rank printed; (None, line) for the launcher's own."""
    match = _RANK_LINE.match(line)
    return (int(match.group(1)), match.group(2)) if match else (None, line)


@dataclass(frozen=True)
class RankFailure:
    rank: int
    local_rank: int
    exit_code: int

    def how(self) -> str:
        if self.exit_code < 0:
            try:
                name = f" ({signal.Signals(-self.exit_code).name})"
            except ValueError:
                name = ""
            return f"was killed by signal {-self.exit_code}{name}"
        return f"exited with code {self.exit_code}"


def rank_failures(lines: list[str]) -> list[RankFailure]:
    """The failed ranks torchrun's failure summary in ``lines`` names."""
    found: list[RankFailure] = []
    pending: tuple[int, int] | None = None
    for line in lines:
        failed = _FAILED_RANK.match(line)
        if failed:
            pending = (int(failed.group(1)), int(failed.group(2)))
            continue
        code = _EXIT_CODE.match(line)
        if code and pending is not None:
            found.append(RankFailure(pending[0], pending[1], int(code.group(1))))
            pending = None
    return found


def failure_message(step: str, launch: Launch, node_lines: list[list[str]], node_codes: list[int | None]) -> str:
    """What went wrong in a distributed step, naming the rank that was lost first: a rank
    killed by a signal (a lost node, an OOM kill) over the ranks that failed because of it."""
    failures = [f for lines in node_lines for f in rank_failures(lines)]
    timed_out = any("RendezvousTimeoutError" in line for lines in node_lines for line in lines)
    if failures:
        killed = [f for f in failures if f.exit_code < 0]
        first = (killed or failures)[0]
        others = sorted({f.rank for f in failures} - {first.rank})
        node = first.rank // launch.procs_per_node
        message = (
            f"the {step} lost rank {first.rank} of {launch.world_size} (node {node}, local rank "
            f"{first.local_rank}): it {first.how()}"
        )
        if others:
            message += f"; rank(s) {', '.join(map(str, others))} stopped with it"
        tail = [text for r, text in map(split_rank, _all(node_lines)) if r == first.rank][-10:]
    elif timed_out:
        message = (
            f"the {step}'s {launch.nodes} nodes did not all join within {launch.rendezvous_timeout_s} s "
            "(spec.execution.rendezvous_timeout_seconds)"
        )
        tail = _all(node_lines)[-10:]
    else:
        failed = [i for i, code in enumerate(node_codes) if code]
        node = failed[0] if failed else 0
        message = f"the {step}'s launcher on node {node} exited with code {node_codes[node]}"
        tail = node_lines[node][-15:]
    return message + "; its last lines:\n" + "\n".join(tail)


def _all(node_lines: list[list[str]]) -> list[str]:
    return [line for lines in node_lines for line in lines]
