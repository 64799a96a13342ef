"""The quickstart's training with its threads capped to the task's CPUs and uncapped, idle and
beside a busy process, side by side.

A training child whose torch starts one thread per core slows down many times over as soon as
something else keeps a core busy (a preempted OpenMP worker holds the others at every barrier),
which is what a pod's CPU limit below the node's core count or a shared machine amounts to.
tasks/threads.py sizes the child's pools from spec.resources.hardware.cpu instead. Each variant
trains through MLOC's training step (tasks.train.run_training), so the thread settings are the
ones the product gives its child, as the child's own log line says:

- capped: spec.resources.hardware.cpu 1 (beside the busy processes: what the task was given);
- uncapped: cpu and OMP_NUM_THREADS both the machine's CPU count, the old one-thread-per-core
  behaviour (above 2 CPUs the cpu alone would keep one for the parent; a user's
  OMP_NUM_THREADS wins over that).

Busy means CPU count − 1 processes spinning (``python -c "while True: pass"``): on a 2-core
machine one spinner on one of the cores. Prints, per variant, the median training runtime
(the trainer's train_runtime) and the step's wall time, each variant's ratio to its own idle
runtime, and the busy uncapped runtime over the busy capped one.

    .venv/bin/python benchmarks/thread_capping.py [--rounds 3] [--steps 60]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.train import run_training  # noqa: E402
from tests.quickstart_task import QUICKSTART_INPUTS, quickstart_task  # noqa: E402

CONFIGS = ROOT / "configs"
INPUTS = QUICKSTART_INPUTS
THREADS_LINE = "CPU thread(s)"  # the child's "using N CPU thread(s): why" (tasks/__main__.py)


@contextlib.contextmanager
def spinners(count: int) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5)  # running before the training starts, not racing its first steps
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def omp_threads(value: str | None) -> Iterator[None]:
    """The benchmark's own OMP_NUM_THREADS for one variant: the parent environment the child inherits."""
    before = os.environ.pop("OMP_NUM_THREADS", None)
    if value is not None:
        os.environ["OMP_NUM_THREADS"] = value
    try:
        yield
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)
        if before is not None:
            os.environ["OMP_NUM_THREADS"] = before


def measure(cpu: str, omp: str | None, steps: int) -> tuple[float, float, str]:
    """(train_runtime s, step wall s, the child's thread line)."""
    task = quickstart_task({"spec.resources.hardware.cpu": cpu, "spec.hyperparameters.max_steps": steps})
    said: list[str] = []
    with tempfile.TemporaryDirectory() as workdir, omp_threads(omp):
        started = time.perf_counter()
        result = run_training(task, INPUTS, Path(workdir), lambda line: said.append(line), lambda event: None)
        wall = time.perf_counter() - started
    thread_line = next((line for line in said if THREADS_LINE in line), "(the child said nothing about threads)")
    return result.runtime_s, wall, thread_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cpus < 2:
        sys.exit("needs 2 CPUs or more: one for the training, the rest kept busy")
    variants = {  # name: (busy, spec.resources.hardware.cpu, OMP_NUM_THREADS)
        "capped, idle": (False, "1", None),
        "capped, busy": (True, "1", None),
        "uncapped, idle": (False, str(cpus), str(cpus)),
        "uncapped, busy": (True, str(cpus), str(cpus)),
    }
    load_before = os.getloadavg()[0]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    settings: dict[str, str] = {}
    for _ in range(args.rounds):  # interleaved, so that a slow moment of the machine hits every variant
        for name, (busy, cpu, omp) in variants.items():
            with spinners(cpus - 1 if busy else 0):
                train, wall, settings[name] = measure(cpu, omp, args.steps)
            runs[name].append((train, wall))
    median = {name: tuple(statistics.median(r[i] for r in rows) for i in (0, 1)) for name, rows in runs.items()}
    # "idle" is only as idle as the machine: other work on it shows in the load average
    print(f"quickstart, {args.steps} steps, {cpus} CPU(s), busy = {cpus - 1} spinning process(es), "
          f"median of {args.rounds} round(s), 1-min load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")  # fmt: skip
    print(f"{'variant':<16}{'train s':>9}{'wall s':>9}{'× own idle':>12}  thread settings (the child's log line)")
    for name, (train, wall) in median.items():
        idle = median[name.split(",")[0] + ", idle"][0]
        print(f"{name:<16}{train:>9.2f}{wall:>9.1f}{train / idle:>12.2f}  {settings[name]}")
    busy_capped, busy_uncapped = median["capped, busy"][0], median["uncapped, busy"][0]
    print(f"busy: uncapped / capped train time {busy_uncapped / busy_capped:.1f}×")


if __name__ == "__main__":
    main()
