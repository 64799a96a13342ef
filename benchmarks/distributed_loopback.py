"""The quickstart's training as one process and as two torchrun nodes on loopback, side by side.

Both train the same samples in the same order (global batch 8: one process × 8, or two
nodes × 4) through MLOC's training step (tasks.train.run_training), so the ratio is the cost
of the distributed path on this machine: two launchers and interpreters, the c10d
rendezvous, and gloo's gradient all-reduce each step. Each process runs with
OMP_NUM_THREADS=1 so that the figures are stable and the two nodes do not fight for cores.

Prints, per variant, the wall time of the step (launch to result), the training's own
runtime and its tokens per second, then the ratios. On a GPU machine the same comparison
with gpu.count 1 and 2 measures what the second GPU buys.

    .venv/bin/python benchmarks/distributed_loopback.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.train import run_training  # noqa: E402
from tests.quickstart_task import QUICKSTART_INPUTS, quickstart_task  # noqa: E402

CONFIGS = ROOT / "configs"
INPUTS = QUICKSTART_INPUTS


def measure(replicas: int, batch: int) -> tuple[float, float, float]:
    task = quickstart_task(
        {"spec.resources.replicas": replicas, "spec.hyperparameters.per_device_train_batch_size": batch}
    )
    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        result = run_training(task, INPUTS, Path(workdir), lambda line: None, lambda event: None)
        wall = time.perf_counter() - started
        history = json.loads(Path(result.state_file).read_text())["log_history"]
    tokens = max(h.get("num_tokens", 0) for h in history)
    return wall, result.runtime_s, tokens / result.runtime_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    rounds = parser.parse_args().rounds
    os.environ["OMP_NUM_THREADS"] = "1"
    variants = {"1 process × 8": (1, 8), "2 nodes × 4": (2, 4)}
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    for _ in range(rounds):  # interleaved, so that a slow moment of the machine hits both
        for name, (replicas, batch) in variants.items():
            figures[name].append(measure(replicas, batch))
    print(f"OMP_NUM_THREADS=1 per process, {os.cpu_count()} CPU(s), best of {rounds} round(s)")
    print(f"{'variant':<16}{'step wall s':>13}{'train s':>10}{'tokens/s':>11}")
    best = {
        name: (min(f[0] for f in rows), min(f[1] for f in rows), max(f[2] for f in rows))
        for name, rows in figures.items()
    }
    for name, (wall, train, rate) in best.items():
        print(f"{name:<16}{wall:>13.1f}{train:>10.2f}{rate:>11.0f}")
    one, two = best["1 process × 8"], best["2 nodes × 4"]
    print(f"2 nodes / 1 process: step wall {two[0] / one[0]:.2f}×, train time {two[1] / one[1]:.2f}×, "
          f"tokens/s {two[2] / one[2]:.2f}×")  # fmt: skip


if __name__ == "__main__":
    main()
