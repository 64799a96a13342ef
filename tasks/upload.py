"""Publishing a run's results to its destination: a local directory, S3, or a Hub repo.

The flow stages exactly the files to publish in one directory; ``upload`` adds
``mloc-manifest.json`` (the caller's lineage plus path, size and sha256 of every file) and
publishes both so that a reader never sees a half-written result:

- local: the tree is built in a sibling temp directory and renamed into place.
- s3: the manifest is the commit marker. It is removed before anything changes and
  written last, so a reader that finds it finds every file it lists. Readers must look for
  the manifest first and ignore a prefix without one.
- huggingface: one Hub commit holds every file and the manifest; a commit is atomic.

A destination is treated as MLOC's only while it holds a manifest (or nothing): files
there that the new upload does not contain are removed. Files that MLOC did not write stop
the upload instead of being deleted. S3 and Hub calls are retried on transient errors with
the same policy as fetching (``tasks.storage.retry``). The providers live in
``tasks.storage``; this module picks one by the destination's ``type``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from configs.models import LocalDestination, S3Destination
from tasks.storage import local, s3
from tasks.storage.base import MANIFEST, PROBE_PREFIX, Destination, Uploaded, UploadError, _sha256
from tasks.storage.huggingface import _check_hub, _upload_hub
from tasks.storage.retry import DEFAULT_RETRY, RetryPolicy

__all__ = [
    "LATEST",
    "MANIFEST",
    "PROBE_PREFIX",
    "Destination",
    "UploadError",
    "Uploaded",
    "check_writable",
    "manifest_json",
    "publish_latest",
    "staged_files",
    "upload",
    "versioned",
]

Sleep = Callable[[float], None]

logger = logging.getLogger(__name__)


def _policy(retry: RetryPolicy, sleep: Sleep | None) -> RetryPolicy:
    return retry if sleep is None else dataclasses.replace(retry, sleep=sleep)


# --- entry points ------------------------------------------------------------------------------


def check_writable(
    destination: Destination, *, base_dir: Path, sleep: Sleep | None = None, retry: RetryPolicy = DEFAULT_RETRY
) -> None:
    """Fail in seconds, before any GPU time is spent, if ``upload`` could not write here.

    ``retry`` is the retry policy of S3 and Hub calls; ``sleep``, when given, replaces its
    pause between retries (tests pass a fake one).
    """
    policy = _policy(retry, sleep)
    if isinstance(destination, LocalDestination):
        local._check_local(local._local_target(destination, base_dir))
    elif isinstance(destination, S3Destination):
        s3._check_s3(s3._S3(destination, policy))
    else:
        _check_hub(destination, policy)


def upload(
    destination: Destination,
    staging_dir: Path,
    manifest: dict[str, Any],
    *,
    base_dir: Path,
    sleep: Sleep | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> Uploaded:
    """Publish every file under ``staging_dir`` plus the manifest, atomically and idempotently.

    ``manifest`` is the caller's JSON-able lineage; a ``files`` list (path, bytes, sha256 of
    each staged file) is added to it. Relative local paths are relative to ``base_dir``.
    ``retry`` and ``sleep`` are as for :func:`check_writable`.
    """
    files = staged_files(staging_dir)
    manifest_bytes = manifest_json(manifest, staging_dir, files)
    policy = _policy(retry, sleep)
    if isinstance(destination, LocalDestination):
        result = local._upload_local(local._local_target(destination, base_dir), staging_dir, files, manifest_bytes)
    elif isinstance(destination, S3Destination):
        result = s3._upload_s3(s3._S3(destination, policy), staging_dir, files, manifest_bytes)
    else:
        result = _upload_hub(destination, staging_dir, files, manifest_bytes, policy)
    logger.info("published %d file(s) to %s (%d transferred)", len(files), result.uri, len(result.transferred))
    return result


# --- the manifest ------------------------------------------------------------------------------


def staged_files(staging_dir: Path) -> list[str]:
    """The files to publish as sorted relative POSIX paths."""
    if not staging_dir.is_dir():
        raise UploadError(f"staging directory {staging_dir} does not exist — nothing to upload")
    files = sorted(p.relative_to(staging_dir).as_posix() for p in staging_dir.rglob("*") if p.is_file())
    if MANIFEST in files:
        raise UploadError(f"the staging directory already holds {MANIFEST} — upload writes it; remove it from staging")
    return files


def manifest_json(manifest: dict[str, Any], staging_dir: Path, files: list[str]) -> bytes:
    """The manifest as bytes; sorted keys so that the same content gives the same bytes."""
    entries = [
        {"path": rel, "bytes": (staging_dir / rel).stat().st_size, "sha256": _sha256(staging_dir / rel)}
        for rel in files
    ]
    return (json.dumps({**manifest, "files": entries}, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


# --- versions and the latest pointer (scheduled retraining) ------------------------------------

LATEST = "latest.json"


def versioned(destination: Destination, version: str) -> Destination:
    """Where one run of a versioned task writes: ``<path>/versions/<version>``.

    The Hub keeps versions itself (every upload is a commit, and main is the latest).
    """
    if isinstance(destination, (LocalDestination, S3Destination)):
        return destination.model_copy(update={"path": f"{destination.path.rstrip('/')}/versions/{version}"})
    return destination


def publish_latest(
    destination: Destination, version: str, uploaded: Uploaded, *, base_dir: Path, retry: RetryPolicy = DEFAULT_RETRY
) -> str | None:
    """Point ``<path>/latest.json`` at a completed upload; call it only after :func:`upload` returned.

    Written in one step (a rename, a single PUT), so a reader sees the old pointer or the new one.
    Returns where the pointer is, or None for the Hub, whose main branch is the latest.
    """
    pointer = json.dumps(
        {"version": version, "uri": uploaded.uri, "manifest": f"{uploaded.uri}/{MANIFEST}"}, indent=1, sort_keys=True
    ).encode()
    if isinstance(destination, LocalDestination):
        return local._write_pointer(local._local_target(destination, base_dir), LATEST, pointer)
    if isinstance(destination, S3Destination):
        return s3._write_pointer(s3._S3(destination, retry), LATEST, pointer)
    return None
