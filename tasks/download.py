"""download: put a model or dataset source on the worker's disk, ready to load.

- ``huggingface``: ``snapshot_download`` into the standard Hugging Face cache (HF_HOME,
  HF_HUB_CACHE and HF_HUB_OFFLINE apply), so transformers and datasets find the files again.
- ``s3``: a mirror under ``cache_dir/s3/<bucket>/<path>``; an ETag index kept outside the
  mirror lets a second fetch of unchanged objects download nothing.
- ``local``: used in place.

Every fetch reports what it resolved to (a revision and a content hash) for lineage.
Problems retrying cannot fix raise :class:`DownloadError` at once; network hiccups,
throttling and 5xx answers are retried with exponential backoff and full jitter.
The providers live in ``tasks.storage``; this module picks one by the source's ``type``.
"""

from __future__ import annotations

from pathlib import Path

from configs.models import LocalSource, S3Source
from tasks.storage.base import DownloadError, Fetched, Kind, Source, content_hash
from tasks.storage.huggingface import _fetch_hf
from tasks.storage.local import _fetch_local
from tasks.storage.retry import DEFAULT_RETRY, RetryPolicy
from tasks.storage.s3 import _fetch_s3

__all__ = [
    "DEFAULT_RETRY",
    "DownloadError",
    "Fetched",
    "Kind",
    "RetryPolicy",
    "Source",
    "content_hash",
    "describe",
    "fetch",
]


def describe(fetched: Fetched) -> str:
    """One log line: what was fetched, at which revision, and what it cost."""
    return (
        f"{fetched.source_type} {fetched.identifier} @ {fetched.revision[:12]} "
        f"({fetched.content_hash[:19]}…): {fetched.downloaded_files} file(s), "
        f"{fetched.downloaded_bytes} bytes downloaded -> {fetched.path}"
    )


def fetch(
    source: Source, *, kind: Kind, base_dir: Path, cache_dir: Path, retry: RetryPolicy = DEFAULT_RETRY
) -> Fetched:
    """Make ``source`` available on local disk and say exactly what was fetched.

    ``base_dir`` is the task.yaml's folder (relative local paths start there); ``cache_dir``
    holds the S3 mirror and the file-hash index. Hub downloads use the standard HF cache.
    """
    if isinstance(source, LocalSource):
        return _fetch_local(source, base_dir, cache_dir)
    if isinstance(source, S3Source):
        return _fetch_s3(source, cache_dir, retry)
    return _fetch_hf(source, kind, cache_dir, retry)
