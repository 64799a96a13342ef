"""Where MLOC keeps its state on a worker, and a task's digest: what every pipeline shares."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def mloc_home() -> Path:
    """MLOC's own state on a worker: downloads cache and run work dirs."""
    return Path(os.environ.get("MLOC_HOME", Path.home() / ".mloc"))


def task_digest(task_: Any) -> str:
    return hashlib.sha256(json.dumps(task_.model_dump(mode="json", by_alias=True), sort_keys=True).encode()).hexdigest()
