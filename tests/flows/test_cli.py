"""The `mloc` command itself: what it says about itself."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

MLOC = Path(sys.executable).parent / "mloc"


def test_version_is_the_installed_package_version() -> None:
    proc = subprocess.run([str(MLOC), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"mloc {version('mloc')}\n"
