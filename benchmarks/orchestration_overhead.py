"""What MLOC and Prefect add on top of the training itself, on the quickstart.

Runs, side by side and alternating, `mloc run configs/quickstart.yaml` (an embedded
Prefect server, child processes, artifacts, upload) and a bare TRL script doing the same
steps (benchmarks/bare_trl_quickstart.py), and prints the median wall times, their
ratio, and the overhead in seconds.

    .venv/bin/python benchmarks/orchestration_overhead.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1)
    rounds = parser.parse_args().rounds
    mloc = str(Path(sys.executable).parent / "mloc")
    times: dict[str, list[float]] = {"bare TRL script": [], "mloc run": []}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as home:
            # a fresh MLOC_HOME and Prefect database each round: nothing cached, nothing resumed
            env = {**os.environ, "MLOC_HOME": f"{home}/mloc", "PREFECT_HOME": f"{home}/prefect", "HF_HUB_OFFLINE": "1"}
            env.pop("PREFECT_API_URL", None)
            times["bare TRL script"].append(timed([sys.executable, "benchmarks/bare_trl_quickstart.py"], env))
            times["mloc run"].append(timed([mloc, "run", "configs/quickstart.yaml"], env))
    bare = statistics.median(times["bare TRL script"])
    full = statistics.median(times["mloc run"])
    print(f"quickstart, {rounds} round(s), median wall time")
    print(f"{'':18} {'seconds':>8} {'ratio':>6}")
    print(f"{'bare TRL script':18} {bare:8.1f} {1.0:6.2f}")
    print(f"{'mloc run':18} {full:8.1f} {full / bare:6.2f}")
    print(f"orchestration overhead: {full - bare:.1f} s ({100 * (full - bare) / full:.0f}% of the mloc run)")


if __name__ == "__main__":
    main()
