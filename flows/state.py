"""Where MLOC keeps its state on a machine, importable without Prefect: the commands that must
answer before Prefect is imported (the local server's, ``mloc run``'s first step) read it too."""

from __future__ import annotations

import os
from pathlib import Path


def mloc_home() -> Path:
    """MLOC's own state on a worker: downloads cache and run work dirs."""
    return Path(os.environ.get("MLOC_HOME", Path.home() / ".mloc"))
