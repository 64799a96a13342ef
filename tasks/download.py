"""download: put a model or dataset source on the worker's disk, ready to load.

- ``huggingface``: ``snapshot_download`` into the standard Hugging Face cache (HF_HOME,
  HF_HUB_CACHE and HF_HUB_OFFLINE apply), so transformers and datasets find the files again.
- ``s3``: a mirror under ``cache_dir/s3/<bucket>/<path>``; an ETag index kept outside the
  mirror lets a second fetch of unchanged objects download nothing.
- ``local``: used in place.

Every fetch reports what it resolved to (a revision and a content hash) for lineage.
Problems retrying cannot fix raise :class:`DownloadError` at once; network hiccups,
throttling and 5xx answers are retried with exponential backoff and full jitter.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from blocks.credentials import CredentialsError, hf_token, s3_client
from configs.models import HuggingFaceModelSource, LocalSource, S3Source

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

Source = HuggingFaceModelSource | S3Source | LocalSource
Kind = Literal["model", "dataset"]
T = TypeVar("T")

# A file written within this window of being hashed may change again without its mtime
# moving (timestamps tick coarsely), so its hash is not cached ("racy clean", as git says).
_RACY_NS = 2_000_000_000
_CHUNK = 1 << 20


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


def describe(fetched: Fetched) -> str:
    """One log line: what was fetched, at which revision, and what it cost."""
    return (
        f"{fetched.source_type} {fetched.identifier} @ {fetched.revision[:12]} "
        f"({fetched.content_hash[:19]}…): {fetched.downloaded_files} file(s), "
        f"{fetched.downloaded_bytes} bytes downloaded -> {fetched.path}"
    )


class DownloadError(RuntimeError):
    """A permanent problem (missing repo, bucket or path; no access; offline and not cached).

    The message says what to fix; retrying the same fetch would fail the same way.
    """


def _full_jitter(ceiling: float) -> float:
    return random.uniform(0, ceiling)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: before retry n, sleep U(0, min(cap, base·2ⁿ))."""

    attempts: int = 5
    base_s: float = 1.0
    cap_s: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[float], float] = _full_jitter

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts is {self.attempts} — a fetch needs at least 1 attempt")

    def ceiling(self, retry: int) -> float:
        return min(self.cap_s, self.base_s * 2**retry)


DEFAULT_RETRY = RetryPolicy()


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


def _with_retries(what: str, op: Callable[[], T], is_transient: Callable[[Exception], bool], policy: RetryPolicy) -> T:
    for attempt in range(1, policy.attempts + 1):
        try:
            return op()
        except DownloadError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == policy.attempts:
                raise DownloadError(
                    f"{what}: gave up after {attempt} attempts — last error: {type(exc).__name__}: {exc}"
                ) from exc
            delay = policy.jitter(policy.ceiling(attempt - 1))
            logger.warning("%s failed (%s); retry %d in %.1f s", what, type(exc).__name__, attempt, delay)
            policy.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")


# --- local ------------------------------------------------------------------------------------


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


# --- content hash -----------------------------------------------------------------------------


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
            file_hash = _sha256_file(file)
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


def _sha256_file(file: Path) -> str:
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


# --- Hugging Face Hub -------------------------------------------------------------------------


def _fetch_hf(source: HuggingFaceModelSource, kind: Kind, cache_dir: Path, retry: RetryPolicy) -> Fetched:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    token = _credential(hf_token, source.credentials_block)
    storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=source.identifier, repo_type=kind)
    before = _blobs(storage)
    snapshot = _with_retries(
        f"download of {kind} '{source.identifier}' (revision '{source.revision}')",
        functools.partial(_snapshot, source, kind, token),
        _hf_transient,
        retry,
    )
    # Blobs are content-addressed: the ones that appeared are exactly what came over the network.
    new = {name: size for name, size in _blobs(storage).items() if name not in before}
    path = Path(snapshot)
    return Fetched(
        path=str(path),
        source_type="huggingface",
        identifier=source.identifier,
        revision=path.name,  # the snapshot folder is named after the resolved commit
        content_hash=content_hash(path, cache_dir),
        downloaded_files=len(new),
        downloaded_bytes=sum(new.values()),
    )


def _blobs(storage: Path) -> dict[str, int]:
    blobs = storage / "blobs"
    if not blobs.is_dir():
        return {}
    return {p.name: p.stat().st_size for p in blobs.iterdir() if p.is_file() and not p.name.endswith(".incomplete")}


def _snapshot(source: HuggingFaceModelSource, kind: Kind, token: str | None) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # terminal bars in a worker's stdout; the step logs what it fetched
    try:
        return snapshot_download(source.identifier, repo_type=kind, revision=source.revision, token=token)
    except Exception as exc:
        if _hf_transient(exc):
            raise
        message = _hf_message(exc, source, kind)
        if message is None:
            raise
        raise DownloadError(message) from exc


def _hf_cause(exc: BaseException) -> BaseException | None:
    """The error behind a cache miss: snapshot_download falls back to the cache on any Hub
    failure and, when the files are not there, raises LocalEntryNotFoundError from it."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    return exc.__cause__ if isinstance(exc, LocalEntryNotFoundError) else exc


def _hf_transient(exc: Exception) -> bool:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    cause = _hf_cause(exc)
    if cause is None or isinstance(cause, OfflineModeIsEnabled):  # a ConnectionError, but no retry can help
        return False
    if isinstance(cause, HfHubHTTPError):
        status = cause.response.status_code
        return status in (408, 429) or status >= 500
    return isinstance(cause, httpx2.TransportError | ConnectionError | TimeoutError)


def _hf_message(exc: Exception, source: HuggingFaceModelSource, kind: Kind) -> str | None:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, revision = source.identifier, source.revision
    cause = _hf_cause(exc)
    if isinstance(exc, LocalEntryNotFoundError) and (cause is None or isinstance(cause, OfflineModeIsEnabled)):
        what = "only partly" if isinstance(exc, IncompleteSnapshotError) else "not"
        return (
            f"{kind} '{repo}' at revision '{revision}' is {what} in the local Hugging Face cache and HF_HUB_OFFLINE "
            "is set — download it once with network access into the same HF_HOME, or unset HF_HUB_OFFLINE"
        )
    if isinstance(cause, GatedRepoError):
        return (
            f"{kind} repo '{repo}' is gated — accept its terms on the Hub, and give a credentials_block "
            "with a token of that account"
        )
    if isinstance(cause, RevisionNotFoundError):
        return f"revision '{revision}' not found in {kind} repo '{repo}' — check the branch, tag or commit"
    if isinstance(cause, RepositoryNotFoundError):
        return (
            f"{kind} repo '{repo}' not found or private — check the id, or give a credentials_block "
            "with a token that can read it"
        )
    if isinstance(cause, HfHubHTTPError) and cause.response.status_code in (401, 403):
        return f"access to {kind} repo '{repo}' denied — give a credentials_block with a token that can read it"
    if isinstance(cause, EntryNotFoundError | HfHubHTTPError | LocalEntryNotFoundError):
        return f"could not download {kind} '{repo}' (revision '{revision}'): {type(cause).__name__}: {cause}"
    return None


def _credential(load: Callable[[str | None], T], block_name: str | None) -> T:
    try:
        return load(block_name)
    except CredentialsError as exc:
        raise DownloadError(str(exc)) from exc


# --- S3 ---------------------------------------------------------------------------------------

_S3_TRANSIENT_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling", "ThrottlingException", "503"}
)


@dataclass(frozen=True)
class _Object:
    key: str
    rel: str  # where it goes, relative to the mirror folder
    etag: str
    size: int


def _fetch_s3(source: S3Source, cache_dir: Path, retry: RetryPolicy) -> Fetched:
    client = _credential(s3_client, source.credentials_block)
    url = f"s3://{source.bucket}/{source.path}"
    objects, single = _with_retries(f"listing {url}", functools.partial(_list, client, source), _s3_transient, retry)
    target = cache_dir / "s3" / source.bucket / source.path
    folder = target.parent if single else target
    # Kept outside the mirror: loaders glob the mirror folder and would read the index as data.
    index_path = cache_dir / "s3-index" / source.bucket / f"{source.path}.json"
    index = _read_json(index_path)
    if not single:
        _prune(folder, {o.rel for o in objects}, index)
    downloaded_bytes = 0
    todo = [o for o in objects if not _is_current(folder / o.rel, index.get(o.rel), o)]
    try:
        for obj in todo:
            _with_retries(
                f"download of s3://{source.bucket}/{obj.key}",
                functools.partial(_download, client, source, obj, folder / obj.rel),
                _s3_transient,
                retry,
            )
            index[obj.rel] = {"etag": obj.etag, "size": obj.size}
            downloaded_bytes += obj.size
    finally:  # what did arrive is not fetched again by the next run
        _write_json(index_path, index)
    pairs = "".join(f"{o.key}\0{o.etag}\n" for o in sorted(objects, key=lambda o: o.key))
    return Fetched(
        path=str(target),
        source_type="s3",
        identifier=url,
        revision=hashlib.sha256(pairs.encode()).hexdigest(),
        content_hash=content_hash(target, cache_dir),
        downloaded_files=len(todo),
        downloaded_bytes=downloaded_bytes,
    )


def _list(client: S3Client, source: S3Source) -> tuple[list[_Object], bool]:
    """The objects under ``path/`` (a folder), else the object ``path`` itself (a file)."""
    from botocore.exceptions import ClientError

    prefix = f"{source.path}/"
    objects = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=source.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if not key.endswith("/"):  # folder markers made by consoles hold no data
                    objects.append(_Object(key, _relative(key, prefix, source), item["ETag"].strip('"'), item["Size"]))
        if objects:
            return objects, False
        head = client.head_object(Bucket=source.bucket, Key=source.path)
    except ClientError as exc:
        if _s3_transient(exc):
            raise
        if _s3_code(exc) in ("404", "NoSuchKey"):
            raise DownloadError(
                f"no objects under s3://{source.bucket}/{prefix} and no object with key '{source.path}' "
                f"in bucket '{source.bucket}' — check the path"
            ) from exc
        raise DownloadError(_s3_message(exc, source)) from exc
    except Exception as exc:
        _raise_if_no_credentials(exc, source)
        raise
    name = PurePosixPath(source.path).name
    return [_Object(source.path, name, head["ETag"].strip('"'), head["ContentLength"])], True


def _relative(key: str, prefix: str, source: S3Source) -> str:
    rel = key[len(prefix) :]
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or any(p in (".", "..") for p in parts):
        # such a key would land outside the mirror folder (or nowhere)
        raise DownloadError(f"s3://{source.bucket}/{key} cannot be stored as a file — rename the object")
    return PurePosixPath(*parts).as_posix()


def _is_current(file: Path, entry: dict[str, Any] | None, obj: _Object) -> bool:
    return (
        entry is not None
        and entry["etag"] == obj.etag
        and entry["size"] == obj.size
        and file.is_file()
        and file.stat().st_size == obj.size
    )


def _prune(folder: Path, wanted: set[str], index: dict[str, Any]) -> None:
    """Delete files whose objects are gone (or interrupted temp files), so loaders see the bucket as it is."""
    for rel, file in _files(folder) if folder.is_dir() else []:
        if rel not in wanted:
            file.unlink()
            index.pop(rel, None)
    for rel in [r for r in index if r not in wanted]:
        del index[rel]


def _download(client: S3Client, source: S3Source, obj: _Object, file: Path) -> None:
    from botocore.exceptions import ClientError

    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex}.part")
    try:
        client.download_file(source.bucket, obj.key, str(tmp))
        os.replace(tmp, file)  # a crash never leaves a half-written file under the real name
    except ClientError as exc:
        if _s3_transient(exc):
            raise
        raise DownloadError(_s3_message(exc, source, obj.key)) from exc
    except Exception as exc:
        _raise_if_no_credentials(exc, source)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _s3_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _s3_transient(exc: Exception) -> bool:
    from boto3.exceptions import RetriesExceededError
    from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return _s3_code(exc) in _S3_TRANSIENT_CODES or status == 429 or status >= 500
    return isinstance(exc, BotoConnectionError | HTTPClientError | IncompleteReadError | RetriesExceededError)


def _s3_message(exc: Any, source: S3Source, key: str | None = None) -> str:
    code = _s3_code(exc)
    where = f"s3://{source.bucket}/{key or source.path}"
    if code == "NoSuchBucket":
        return f"bucket '{source.bucket}' does not exist (reading {where}) — check the bucket name and the endpoint"
    if code in ("AccessDenied", "403", "AllAccessDisabled"):
        return (
            f"access denied to bucket '{source.bucket}' path '{key or source.path}' — check the credentials "
            "(credentials_block) and the bucket policy"
        )
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
        return f"the S3 credentials were rejected ({code}) reading {where} — check the credentials_block's keys"
    if code in ("404", "NoSuchKey"):
        return f"{where} disappeared while downloading — run again to fetch the bucket as it is now"
    return f"S3 error {code or type(exc).__name__} reading {where}"


def _raise_if_no_credentials(exc: Exception, source: S3Source) -> None:
    from botocore.exceptions import NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        raise DownloadError(
            f"no AWS credentials found to read s3://{source.bucket}/{source.path} — set credentials_block "
            "to an AwsCredentials block, or give the worker credentials (environment or instance role)"
        ) from exc
