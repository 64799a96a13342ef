"""What the training and inference pipelines share: where MLOC keeps its state on a worker,
a task's digest, and the upload step."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.state import mloc_home
from tasks import download, upload

__all__ = ["fetch_logged", "mloc_home", "task_digest", "upload_step"]


def task_digest(task_: Any) -> str:
    return hashlib.sha256(json.dumps(task_.model_dump(mode="json", by_alias=True), sort_keys=True).encode()).hexdigest()


def fetch_logged(role: str, source: Any, kind: Any, base_dir: Path) -> dict[str, Any]:
    """``download.fetch`` into the worker's cache, and the step's log line of what came."""
    got = download.fetch(source, kind=kind, base_dir=base_dir, cache_dir=mloc_home() / "cache")
    get_run_logger().info(
        "%s: %s at %s (%s), %d file(s) downloaded",
        role,
        got.identifier,
        got.revision[:12],
        got.content_hash[:19],
        got.downloaded_files,
    )
    return got.to_dict()


@task(name="upload", task_run_name="upload", cache_policy=NO_CACHE)
def upload_step(task_: Any, staging: Path, manifest: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Publish the staged outputs; a task with a schedule writes a new version each run and
    moves the latest pointer to it only once the upload is complete."""
    logger = get_run_logger()
    destination = task_.spec.output.destination
    version = manifest.get("version")
    if version:
        destination = upload.versioned(destination, version)
    uploaded = upload.upload(destination, staging, manifest, base_dir=base_dir)
    logger.info("uploaded %d file(s) to %s", len(uploaded.files), uploaded.uri)
    if version:
        pointer = upload.publish_latest(task_.spec.output.destination, version, uploaded, base_dir=base_dir)
        logger.info("latest now points at version %s (%s)", version, pointer or "the repo's main branch")
    return uploaded.to_dict()
