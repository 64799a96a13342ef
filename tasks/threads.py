"""How many CPU threads a heavy step's child uses: what the task asked for, within what it can get.

Left alone, torch (and the OpenMP, MKL and OpenBLAS pools under it) starts one thread per core of
the machine. In a Kubernetes pod whose CPU limit is far below the node's core count, or on a
machine other processes share, those threads outnumber the CPUs they get: the CFS quota
throttles them all, or a preempted worker holds the rest at every barrier, and a training
runs 20–50× slower. So the parent sizes the child's pools from the task (:func:`child_env`)
and the child applies it to torch before training (:func:`configure_torch`).

The budget (:func:`cpu_budget`) is the smallest of

- ``spec.resources.hardware.cpu``, rounded down (2.5 CPUs of time kept busy by 3 threads is
  throttling; below 1 it is still 1 thread);
- the cgroup's CPU quota, rounded down the same way (what a pod's CPU limit becomes);
- the CPUs this process may run on (its affinity mask, which a cpuset also narrows);

and never below 1.

Room for the orchestrating process: when nothing but the machine (affinity or quota) bounds
the budget and that is more than 2 CPUs, one is kept for the parent, which streams the
child's lines, posts its events and may host an embedded Prefect server, and shares the
child's cgroup quota in a pod. With 1 or 2 CPUs none is kept: a kept CPU would be half or all
of the training's compute, while the parent, during training, mostly waits on a pipe. A
budget the task's cpu set below the machine's leaves that room already.

A user's own ``OMP_NUM_THREADS`` in the parent's environment wins over all of this (a positive
whole number, or OpenMP's nested list "4,2", whose first level is taken): it is how thread
counts are pinned by hand, and how the old one-thread-per-core behaviour is had back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
THREADS_ENV = "MLOC_THREADS"
# the parent's reason, for the child's log: in the child OMP_NUM_THREADS is the parent's doing,
# so the child could not tell a user's setting from it by itself
WHY_ENV = "MLOC_THREADS_WHY"
USER_ENV = "OMP_NUM_THREADS"
# each library reads its own; a user's setting of MKL's or OpenBLAS's is kept too
POOL_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_CPU = re.compile(r"^(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<milli>m?)$")


@dataclasses.dataclass(frozen=True)
class _Budget:
    requested: str | None  # as the task wrote it
    quota: float | None
    available: int
    threads: int
    kept_for_parent: bool
    user: str | None  # the user's OMP_NUM_THREADS, when it decided

    @property
    def chosen(self) -> int:
        """What the child uses: the user's first OpenMP level when they set one, else MLOC's."""
        return int(self.user.split(",")[0]) if self.user is not None else self.threads

    def describe(self) -> str:
        requested = "not set" if self.requested is None else self.requested
        quota = "none" if self.quota is None else format(Decimal(str(round(self.quota, 3))).normalize(), "f")
        why = f"spec.resources.hardware.cpu {requested}, cgroup quota {quota}, {self.available} CPUs available"
        if self.kept_for_parent:
            why += ", one kept for the orchestrating process"
        if self.user is not None:
            return f"{USER_ENV}={self.user} set by the user, over MLOC's {self.threads} ({why})"
        return why


def cpu_budget(requested: str | int | float | None, cgroup_root: Path = CGROUP_ROOT) -> int:
    """The number of threads a child should use for a task asking for ``requested`` CPUs (a
    Kubernetes quantity: "2", 2, 0.5, "500m"; None: no request, the machine decides). The
    user's OMP_NUM_THREADS is not consulted here: :func:`child_env` lets it win."""
    return _budget(requested, cgroup_root, {}).threads


def child_env(
    requested: str | int | float | None,
    environ: dict[str, str] | None = None,
    cgroup_root: Path = CGROUP_ROOT,
) -> dict[str, str]:
    """The variables the parent adds to the child's environment (``environ``: the parent's, by
    default ``os.environ``) so that its libraries start with :func:`cpu_budget`'s threads, or
    with the user's own ``OMP_NUM_THREADS``."""
    environ = dict(os.environ if environ is None else environ)
    budget = _budget(requested, cgroup_root, environ)
    pools = {name: environ.get(name) or str(budget.chosen) for name in POOL_ENVS}
    if budget.user is None:  # an unusable OMP_NUM_THREADS of the user's is replaced, not passed on
        pools[USER_ENV] = str(budget.chosen)
    return {**pools, THREADS_ENV: str(budget.chosen), WHY_ENV: budget.describe()}


def describe(
    requested: str | int | float | None,
    environ: dict[str, str] | None = None,
    cgroup_root: Path = CGROUP_ROOT,
) -> str:
    """Why :func:`cpu_budget` (or :func:`child_env`) chose its count, for a log line, e.g.
    "spec.resources.hardware.cpu 2, cgroup quota none, 2 CPUs available". In a child the parent
    configured (``MLOC_THREADS_WHY`` set) it is the parent's reason."""
    environ = dict(os.environ if environ is None else environ)
    if environ.get(WHY_ENV):
        return environ[WHY_ENV]
    return _budget(requested, cgroup_root, environ).describe()


def configure_torch() -> int:
    """Child side, before any torch work: size torch's pools from ``MLOC_THREADS`` and return the
    count. Without it (a child the parent did not configure) torch is left as it is."""
    import torch

    try:
        threads = int(os.environ.get(THREADS_ENV, ""))
    except ValueError:
        return int(torch.get_num_threads())
    threads = max(threads, 1)
    torch.set_num_threads(threads)
    # torch allows it once, before any inter-op work: a pool already started keeps its size
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)
    return threads


def _budget(requested: str | int | float | None, cgroup_root: Path, environ: dict[str, str]) -> _Budget:
    cpus = None if requested is None else _cpus(requested)
    quota = _cgroup_quota(cgroup_root)
    available = _available()
    machine = available if quota is None else min(available, _whole(quota))
    threads = machine if cpus is None else min(machine, _whole(float(cpus)))
    kept = threads == machine and machine > 2
    if kept:
        threads -= 1
    user = environ.get(USER_ENV, "").split(",")[0].strip()
    shown = None if requested is None else str(requested).strip()
    budget = _Budget(shown, quota, available, threads, kept, None)
    if user.isdigit() and int(user) > 0:
        budget = dataclasses.replace(budget, user=environ[USER_ENV])
    return budget


def _cpus(requested: str | int | float) -> Decimal:
    """A CPU quantity in CPUs, in the forms configs.quantities.cpu_quantity accepts."""
    match = _CPU.match(str(requested).strip()) if not isinstance(requested, bool) else None
    if match is None:
        raise ValueError(f"'{requested}' is not a CPU amount — count cores ('8', '0.5') or millicores ('500m')")
    number = Decimal(match["number"])
    return number / 1000 if match["milli"] else number


def _whole(cpus: float) -> int:
    # the small tolerance: a quota of 199999/100000 µs is 2 CPUs, written by someone rounding
    return max(1, math.floor(cpus + 1e-4))


def _cgroup_quota(root: Path) -> float | None:
    """The cgroup's CPU limit in CPUs, None when it has none. Read where a cgroup namespace (Docker,
    Kubernetes on cgroup v2) or a v1 container's mounts show the container's own cgroup."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        fields = v2.split()
        if len(fields) == 2 and fields[0] != "max":
            return _ratio(fields[0], fields[1])
        return None
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota = _read(root / controller / "cpu.cfs_quota_us")
        period = _read(root / controller / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return _ratio(quota, period)  # -1: no limit
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = Decimal(quota), Decimal(period)
    except InvalidOperation:
        return None
    return float(q / p) if q > 0 and p > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _available() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
