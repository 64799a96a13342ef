"""What MLOC and Prefect add on top of the training itself, on the quickstart.

Runs side by side, alternating within each round:

- the bare TRL script doing the same work (benchmarks/bare_trl_quickstart.py): the baseline;
- `mloc run configs/quickstart.yaml` on a fresh MLOC home (nothing to reuse), its embedded
  server started for the run on the Prefect database earlier runs left (a user's first run
  ever, which migrates a new database, is shown apart);
- the same against a server already running (`mloc server start`), on a fresh MLOC home;
- a re-run of the unchanged quickstart on the home of that run (its training and evaluations
  reused), against the same server.

and prints the median wall times and each one's ratio to its reference. Every process gets
``OMP_NUM_THREADS=1`` (unless the caller set it): on a small shared machine torch's threads
otherwise make the figures noise.

    .venv/bin/python benchmarks/orchestration_overhead.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLOC = str(Path(sys.executable).parent / "mloc")


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base.setdefault("OMP_NUM_THREADS", "1")
    base["HF_HUB_OFFLINE"] = "1"
    times: dict[str, list[float]] = {"bare": [], "fresh": [], "running": [], "rerun": []}
    with tempfile.TemporaryDirectory() as root:
        # the long-lived server of the "running" and "rerun" rows, on a database of its own
        server_env = {**base, "MLOC_HOME": f"{root}/server-mloc", "PREFECT_HOME": f"{root}/server-prefect"}
        subprocess.run([MLOC, "server", "start", "--port", str(free_port())], env=server_env, check=True)
        try:
            # the embedded server's database is kept between runs, as a user's is: its first run
            # (the migrations of a new database) is shown apart
            first = {**base, "MLOC_HOME": f"{root}/first", "PREFECT_HOME": f"{root}/embedded-prefect"}
            times["first"] = [timed([MLOC, "run", "configs/quickstart.yaml"], first)]
            for round_ in range(rounds):
                fresh = {**base, "MLOC_HOME": f"{root}/{round_}", "PREFECT_HOME": f"{root}/embedded-prefect"}
                times["bare"].append(timed([sys.executable, "benchmarks/bare_trl_quickstart.py"], fresh))
                times["fresh"].append(timed([MLOC, "run", "configs/quickstart.yaml"], fresh))
                # the server's state file is in its MLOC home, where a run looks for it; its work
                # dirs go, so that the run is a first one, which the re-run then finds
                shutil.rmtree(Path(server_env["MLOC_HOME"]) / "runs", ignore_errors=True)
                times["running"].append(timed([MLOC, "run", "configs/quickstart.yaml"], server_env))
                times["rerun"].append(timed([MLOC, "run", "configs/quickstart.yaml"], server_env))
        finally:
            subprocess.run([MLOC, "server", "stop"], env=server_env, check=False)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"quickstart, {rounds} round(s), median wall time, OMP_NUM_THREADS={base['OMP_NUM_THREADS']}")
    rows = [
        ("bare TRL script", "bare", "bare", "—"),
        ("mloc run, a new Prefect database", "first", "bare", "—"),
        ("mloc run, fresh embedded server", "fresh", "bare", "≤ 2.0"),
        ("mloc run, server running", "running", "bare", "≤ 1.3"),
        ("re-run, unchanged task", "rerun", "running", "≤ 0.5"),
    ]
    print(f"{'':34} {'seconds':>8} {'ratio':>6}  {'of':16} target")
    for label, name, reference, target in rows:
        ratio = median[name] / median[reference]
        print(f"{label:34} {median[name]:8.1f} {ratio:6.2f}  {rows_label(reference):16} {target}")
    print("all rounds (s): " + ", ".join(f"{k} {[round(v, 1) for v in vs]}" for k, vs in times.items()))


def rows_label(name: str) -> str:
    return {"bare": "bare TRL", "running": "its first run"}[name]


if __name__ == "__main__":
    main()
