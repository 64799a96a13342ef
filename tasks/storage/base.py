"""What every storage provider shares: the result types, the errors, and file hashing."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from blocks.credentials import CredentialsError
from configs.models import (
    HuggingFaceDestination,
    HuggingFaceModelSource,
    LocalDestination,
    LocalSource,
    S3Destination,
    S3Source,
)

Source = HuggingFaceModelSource | S3Source | LocalSource
Destination = S3Destination | HuggingFaceDestination | LocalDestination
Kind = Literal["model", "dataset"]
T = TypeVar("T")

MANIFEST = "mloc-manifest.json"
PROBE_PREFIX = ".mloc-write-probe-"

# A file written within this window of being hashed may change again without its mtime
# moving (timestamps tick coarsely), so its hash is not cached ("racy clean", as git says).
_RACY_NS = 2_000_000_000
_CHUNK = 1 << 20


# --- fetching ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    path: str  # local directory (or single file) ready to load with transformers/datasets
    source_type: str  # "huggingface" | "s3" | "local"
    identifier: str  # repo id, "s3://bucket/path", or the resolved local path
    revision: str  # HF commit sha; S3: sha256 over sorted (key, ETag) pairs; local: "local"
    content_hash: str  # "sha256:<hex>" over sorted (relative path, file sha256)
    downloaded_files: int  # 0 when everything came from the cache
    downloaded_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DownloadError(RuntimeError):
    """A permanent problem (missing repo, bucket or path; no access; offline and not cached).

    The message says what to fix; retrying the same fetch would fail the same way.
    """


def _credential(load: Callable[[str | None], T], block_name: str | None) -> T:
    try:
        return load(block_name)
    except CredentialsError as exc:
        raise DownloadError(str(exc)) from exc


# --- publishing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Uploaded:
    """Where a result was published and what it consists of."""

    uri: str
    #: relative paths published, the manifest last
    files: list[str]
    #: the staged files actually sent; unchanged S3 objects are skipped, the manifest is not counted
    transferred: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class UploadError(RuntimeError):
    """A destination cannot be written; the message names it and the fix, never a secret."""


def _foreign(existing: set[str], files: list[str], has_manifest: bool, where: str) -> list[str]:
    """Existing files that the new upload replaces or removes; refuses to delete data MLOC did not write."""
    stale = sorted(p for p in existing if p not in files and p != MANIFEST)
    foreign = [p for p in stale if not Path(p).name.startswith(PROBE_PREFIX)]
    if foreign and not has_manifest:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UploadError(
            f"{where} already holds files that MLOC did not write ({shown}; no {MANIFEST}) — point "
            "output.destination at a new or empty location, or remove those files"
        )
    return stale


# --- content hash and file helpers ------------------------------------------------------------


def content_hash(root: Path, cache_dir: Path) -> str:
    """sha256 over the sorted (relative path, file sha256) pairs of a directory or one file.

    Per-file hashes are cached by (absolute path, size, mtime_ns), so a big unchanged
    directory costs a stat per file, not a read.
    """
    index_path = cache_dir / "hashes" / f"{hashlib.sha256(str(root).encode()).hexdigest()[:32]}.json"
    known = _read_json(index_path)
    kept: dict[str, Any] = {}
    digest = hashlib.sha256()
    now_ns = time.time_ns()
    for rel, file in _files(root):
        stat = file.stat()
        key = str(file)
        entry = known.get(key)
        if entry and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
            file_hash = entry["sha256"]
        else:
            file_hash = _sha256(file)
        if now_ns - stat.st_mtime_ns > _RACY_NS:
            kept[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_hash}
        digest.update(f"{rel}\0{file_hash}\n".encode())
    # Rewritten with the current files only, so entries of deleted files do not pile up.
    _write_json(index_path, kept)
    return f"sha256:{digest.hexdigest()}"


def _files(root: Path) -> list[tuple[str, Path]]:
    if root.is_file():
        return [(root.name, root)]
    found = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            file = Path(dirpath, name)
            if file.is_file():  # follows the HF cache's snapshot -> blob symlinks
                found.append((file.relative_to(root).as_posix(), file))
    return sorted(found)


def _sha256(file: Path) -> str:
    """The hex sha256 of a file's bytes, read in chunks (the manifest's and the content hash's)."""
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # Two flows on one worker may share the cache: a reader sees the old or the new index, never half.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
