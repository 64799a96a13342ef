"""How long `mloc --help` and `mloc validate` take, next to a bare Python start.

Prints the median wall time of each command over N runs and its ratio to
`python -c pass`, and checks that validation never imports torch.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = 7


def wall(cmd: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    mloc = shutil.which("mloc") or str(Path(sys.executable).parent / "mloc")
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "mloc --help": [mloc, "--help"],
        "mloc validate <one file>": [mloc, "validate", "configs/sft_mistral_7b.yaml"],
        "mloc validate configs/": [mloc, "validate", "configs/"],
    }
    base = None
    print(f"{'command':32} {'median s':>9} {'x python':>9}")
    for name, cmd in cases.items():
        seconds = wall(cmd)
        base = base or seconds
        print(f"{name:32} {seconds:9.3f} {seconds / base:9.1f}")


if __name__ == "__main__":
    main()
