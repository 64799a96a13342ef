"""Finished evaluations kept in a run's work dir, for a re-run of the same task to reuse.

The work dir is keyed by the task and its inputs' hashes (flows/pipeline.py), so what an
earlier run evaluated there is what this one would evaluate again, with one exception that
the key here covers: the model "after" is the training's, and a training redone (a result
lost, a resumed run) is another model. So an evaluation is reused only when its record names
the very job (model, adapter, data, task), the very training, and this MLOC version.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tasks.jobs import EvaluateJob


def _key(job: EvaluateJob, trained: dict[str, Any] | None) -> str:
    what = [job.model_dump(mode="json"), trained, version("mloc")]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _record(job: EvaluateJob) -> Path:
    return Path(job.result_path).with_suffix(".done.json")


def finished(job: EvaluateJob, trained: dict[str, Any] | None) -> tuple[dict[str, Any], str | None] | None:
    """(the result, the run that evaluated it) of this very evaluation done earlier in this work dir."""
    try:
        record = json.loads(_record(job).read_text())
        if record.get("key") != _key(job, trained):
            return None
        return json.loads(Path(job.result_path).read_text()), record.get("flow_run_id")
    except (OSError, ValueError, AttributeError):
        return None


def remember(job: EvaluateJob, trained: dict[str, Any] | None, flow_run_id: str | None) -> None:
    """Note that the result at ``job.result_path`` is this evaluation's, done by ``flow_run_id``."""
    record = {"key": _key(job, trained), "flow_run_id": flow_run_id}
    _record(job).write_text(json.dumps(record, indent=1) + "\n")
