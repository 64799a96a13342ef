"""local: a source used in place; a result built beside its destination and renamed into place."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from configs.models import LocalDestination, LocalSource
from tasks.storage.base import (
    MANIFEST,
    PROBE_PREFIX,
    DownloadError,
    Fetched,
    Uploaded,
    UploadError,
    _foreign,
    content_hash,
)

# --- fetch ------------------------------------------------------------------------------------


def _fetch_local(source: LocalSource, base_dir: Path, cache_dir: Path) -> Fetched:
    path = (base_dir / Path(source.path).expanduser()).resolve()  # an absolute source.path replaces base_dir
    if not path.exists():
        raise DownloadError(f"local path '{source.path}' does not exist (resolved to {path}) — check the path")
    return Fetched(
        path=str(path),
        source_type="local",
        identifier=str(path),
        revision="local",
        content_hash=content_hash(path, cache_dir),
        downloaded_files=0,
        downloaded_bytes=0,
    )


# --- upload -----------------------------------------------------------------------------------


def _local_target(destination: LocalDestination, base_dir: Path) -> Path:
    path = Path(destination.path).expanduser()
    return (path if path.is_absolute() else base_dir / path).resolve()


def _check_local(target: Path) -> None:
    # the result is built beside the target and renamed, so it is the parent that must be writable
    probe = target.parent / f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UploadError(
            f"local destination {target} is not writable ({exc.strerror or exc}) — mount a writable volume "
            "there or change output.destination.path"
        ) from exc
    _local_existing(target)


def _local_existing(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise UploadError(f"local destination {target} is a file — give a directory path")
    if target.is_dir():
        existing = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
        _foreign(existing, [], MANIFEST in existing, f"local destination {target}")


def _upload_local(target: Path, staging_dir: Path, files: list[str], manifest_bytes: bytes) -> Uploaded:
    _local_existing(target)
    temp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex}")
    try:
        for rel in files:
            (temp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(staging_dir / rel, temp / rel)
        (temp / MANIFEST).write_bytes(manifest_bytes)
        _swap_into_place(temp, target)
    except OSError as exc:
        raise UploadError(
            f"could not write local destination {target} ({exc.strerror or exc}) — the previous result, if any, "
            "is unchanged; free space or fix permissions and retry"
        ) from exc
    finally:
        # after a successful swap the temp directory is gone; after a failure it holds a partial copy
        shutil.rmtree(temp, ignore_errors=True)
    return Uploaded(uri=target.as_uri(), files=[*files, MANIFEST], transferred=list(files))


def _swap_into_place(new: Path, target: Path) -> None:
    if not target.exists():
        new.rename(target)
        return
    old = target.with_name(f"{target.name}.old-{uuid.uuid4().hex}")
    target.rename(old)
    try:
        new.rename(target)
    except OSError:
        old.rename(target)  # put the published version back before reporting
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_pointer(folder: Path, name: str, body: bytes) -> str:
    """Write ``folder/name`` in one rename, so a reader sees the old file or the new one; returns its URI."""
    target = folder / name
    temp = target.with_name(f".{name}.{uuid.uuid4().hex}")
    temp.write_bytes(body)
    temp.replace(target)
    return target.as_uri()
