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
the upload instead of being deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from blocks.credentials import CredentialsError, hf_token, s3_client
from configs.models import HuggingFaceDestination, LocalDestination, S3Destination

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MANIFEST = "mloc-manifest.json"
PROBE_PREFIX = ".mloc-write-probe-"

#: boto3's default multipart threshold and part size, pinned so that the ETag of an
#: object we uploaded can be predicted from the local file (and unchanged files skipped).
S3_PART_SIZE = 8 * 1024 * 1024
#: Attempts per S3 call for transient errors, on top of botocore's own retries.
S3_ATTEMPTS = 4
S3_BACKOFF_SECONDS = 1.0
S3_BACKOFF_MAX_SECONDS = 20.0
_TRANSIENT_S3_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
}
_DENIED_S3_CODES = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_CONTENT_TYPES = {".json": "application/json", ".md": "text/markdown; charset=utf-8", ".txt": "text/plain"}

Destination = S3Destination | HuggingFaceDestination | LocalDestination
Sleep = Callable[[float], None]
T = TypeVar("T")

logger = logging.getLogger(__name__)


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


# --- entry points ------------------------------------------------------------------------------


def check_writable(destination: Destination, *, base_dir: Path, sleep: Sleep = time.sleep) -> None:
    """Fail in seconds, before any GPU time is spent, if ``upload`` could not write here.

    ``sleep`` is the pause between S3 retries (tests pass a fake one).
    """
    if isinstance(destination, LocalDestination):
        _check_local(_local_target(destination, base_dir))
    elif isinstance(destination, S3Destination):
        _check_s3(_S3(destination, sleep))
    else:
        _check_hub(destination)


def upload(
    destination: Destination,
    staging_dir: Path,
    manifest: dict[str, Any],
    *,
    base_dir: Path,
    sleep: Sleep = time.sleep,
) -> Uploaded:
    """Publish every file under ``staging_dir`` plus the manifest, atomically and idempotently.

    ``manifest`` is the caller's JSON-able lineage; a ``files`` list (path, bytes, sha256 of
    each staged file) is added to it. Relative local paths are relative to ``base_dir``.
    """
    files = staged_files(staging_dir)
    manifest_bytes = manifest_json(manifest, staging_dir, files)
    if isinstance(destination, LocalDestination):
        result = _upload_local(_local_target(destination, base_dir), staging_dir, files, manifest_bytes)
    elif isinstance(destination, S3Destination):
        result = _upload_s3(_S3(destination, sleep), staging_dir, files, manifest_bytes)
    else:
        result = _upload_hub(destination, staging_dir, files, manifest_bytes)
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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


# --- local -------------------------------------------------------------------------------------


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


# --- s3 ----------------------------------------------------------------------------------------


class _S3:
    """One destination prefix; every call retried on transient errors and mapped to UploadError."""

    def __init__(self, destination: S3Destination, sleep: Sleep) -> None:
        self.bucket = destination.bucket
        self.prefix = destination.path
        self.uri = f"s3://{self.bucket}/{self.prefix}"
        self.block = destination.credentials_block
        self.sleep = sleep
        self._client: S3Client | None = None

    @property
    def client(self) -> S3Client:
        if self._client is None:
            try:
                self._client = s3_client(self.block)
            except CredentialsError as exc:
                raise UploadError(f"cannot upload to {self.uri}: {exc}") from exc
        return self._client

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    def call(self, what: str, op: Callable[[], T]) -> T:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        attempt = 1
        while True:
            try:
                return op()
            except (BotoCoreError, ClientError, Boto3Error) as exc:
                if attempt == S3_ATTEMPTS or not _transient(exc):
                    raise self.error(what, exc, attempt) from exc
                delay = _backoff(attempt)
                logger.warning("S3 %s at %s failed (%s); retry %d in %.1fs", what, self.uri, _code(exc), attempt, delay)
                self.sleep(delay)
                attempt += 1

    def error(self, what: str, exc: BaseException, attempts: int) -> UploadError:
        from botocore.exceptions import NoCredentialsError

        code = _code(exc)
        creds = f"AwsCredentials block '{self.block}'" if self.block else "the worker's default AWS credentials"
        if isinstance(_root(exc), NoCredentialsError):
            return UploadError(
                f"no AWS credentials to write {self.uri} — set output.destination.credentials_block to an "
                "AwsCredentials block, or give the worker credentials"
            )
        if code in {"NoSuchBucket", "404", "NotFound"}:
            return UploadError(f"bucket '{self.bucket}' does not exist — create it, or fix output.destination.bucket")
        if code in _DENIED_S3_CODES:
            return UploadError(
                f"access denied to {self.uri} ({code}) with {creds} — allow s3:ListBucket, s3:PutObject and "
                "s3:DeleteObject on it, or use other credentials"
            )
        if _transient(exc):
            return UploadError(
                f"S3 {what} at {self.uri} kept failing ({code}) after {attempts} attempts — check the endpoint "
                "and network, then retry the run"
            )
        return UploadError(f"S3 {what} at {self.uri} failed: {code}: {_root(exc)}")

    def listing(self) -> dict[str, tuple[int, str]]:
        """Relative path -> (size, ETag without quotes) of every object under the prefix."""

        def op() -> dict[str, tuple[int, str]]:
            found = {}
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + "/")
            for page in pages:
                for obj in page.get("Contents", []):
                    found[obj["Key"][len(self.prefix) + 1 :]] = (obj["Size"], obj["ETag"].strip('"'))
            return found

        return self.call("listing", op)

    def put_file(self, rel: str, path: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=S3_PART_SIZE, multipart_chunksize=S3_PART_SIZE, preferred_transfer_client="classic"
        )
        extra = {"ContentType": _CONTENT_TYPES[path.suffix]} if path.suffix in _CONTENT_TYPES else {}
        key = self.key(rel)
        self.call(
            "upload", lambda: self.client.upload_file(str(path), self.bucket, key, ExtraArgs=extra, Config=config)
        )

    def put_bytes(self, rel: str, body: bytes) -> None:
        key, kind = self.key(rel), _CONTENT_TYPES[".json"]
        self.call("upload", lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=kind))

    def delete(self, rel: str) -> None:
        key = self.key(rel)
        self.call("delete", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))


def _root(exc: BaseException) -> BaseException:
    """The botocore error under boto3's S3UploadFailedError, which keeps only its text."""
    from botocore.exceptions import ClientError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def _code(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    root = _root(exc)
    if isinstance(root, ClientError):
        return str(root.response.get("Error", {}).get("Code", "Unknown"))
    return type(root).__name__


def _transient(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    root = _root(exc)
    if isinstance(root, ClientError):
        status = root.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return _code(root) in _TRANSIENT_S3_CODES or status >= 500
    return isinstance(root, ConnectionError | HTTPClientError)


def _backoff(attempt: int) -> float:
    # jitter spreads the retries of many workers hitting the same throttled bucket
    ceiling = min(S3_BACKOFF_MAX_SECONDS, S3_BACKOFF_SECONDS * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def _check_s3(s3: _S3) -> None:
    s3.call("bucket check", lambda: s3.client.head_bucket(Bucket=s3.bucket))
    probe = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    s3.put_bytes(probe, b"")
    s3.delete(probe)


def _upload_s3(s3: _S3, staging_dir: Path, files: list[str], manifest_bytes: bytes) -> Uploaded:
    existing = s3.listing()
    stale = _foreign(set(existing), files, MANIFEST in existing, s3.uri)
    changed = [rel for rel in files if not _same_object(staging_dir / rel, existing.get(rel))]
    if changed or stale:
        if MANIFEST in existing:
            s3.delete(MANIFEST)  # from here on readers see no result rather than a mixed one
        # stale objects go before the new ones arrive: a retry after a crash then finds only
        # objects of the new set and is not mistaken for foreign data
        for rel in stale:
            s3.delete(rel)
        for rel in changed:
            s3.put_file(rel, staging_dir / rel)
    # with nothing else changed an in-place PUT is atomic; skip even that when the bytes match
    if not _same_bytes(manifest_bytes, existing.get(MANIFEST)) or changed or stale:
        s3.put_bytes(MANIFEST, manifest_bytes)
    return Uploaded(uri=s3.uri, files=[*files, MANIFEST], transferred=changed)


def _same_object(path: Path, remote: tuple[int, str] | None) -> bool:
    size = path.stat().st_size
    return remote is not None and remote[0] == size and remote[1] == _etag(path, size)


def _same_bytes(body: bytes, remote: tuple[int, str] | None) -> bool:
    return remote is not None and remote == (len(body), hashlib.md5(body, usedforsecurity=False).hexdigest())


def _etag(path: Path, size: int) -> str:
    """The ETag S3 gives this file uploaded with ``put_file``: the MD5, or for multipart the MD5 of part MD5s."""
    if size < S3_PART_SIZE:
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()
    from s3transfer.utils import ChunksizeAdjuster

    part_size = ChunksizeAdjuster().adjust_chunksize(S3_PART_SIZE, size)
    parts = []
    with path.open("rb") as f:
        while block := f.read(part_size):
            parts.append(hashlib.md5(block, usedforsecurity=False).digest())
    return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


# --- huggingface -------------------------------------------------------------------------------


def _hub_token(destination: HuggingFaceDestination) -> str:
    from huggingface_hub import constants, get_token

    where = f"hf://{destination.identifier}"
    if constants.is_offline_mode():
        raise UploadError(
            f"cannot upload to {where}: uploads to the Hugging Face Hub need network, and HF_HUB_OFFLINE is "
            "set on this worker — unset it, or choose an s3 or local destination"
        )
    try:
        token = hf_token(destination.credentials_block) or get_token()
    except CredentialsError as exc:
        raise UploadError(f"cannot upload to {where}: {exc}") from exc
    if not token:
        raise UploadError(
            f"no Hugging Face token to upload to {where} — set output.destination.credentials_block to a "
            "Secret block holding a write token, or log the worker in (HF_TOKEN)"
        )
    return token


def _hub_error(destination: HuggingFaceDestination, exc: Exception) -> UploadError:
    from huggingface_hub.errors import HfHubHTTPError

    where = f"hf://{destination.identifier}"
    if not isinstance(exc, HfHubHTTPError):
        return UploadError(
            f"could not reach the Hugging Face Hub for {where} ({type(exc).__name__}) — check the network"
        )
    status = exc.response.status_code
    if status == 401:
        return UploadError(f"the Hub rejected the token for {where} — replace it with a valid write token")
    if status == 403:
        return UploadError(
            f"the token may not write to {where} — use a write token of a user or org that owns the namespace"
        )
    return UploadError(f"the Hub refused the upload to {where} (HTTP {status}) — {exc}")


def _check_hub(destination: HuggingFaceDestination) -> None:
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    token = _hub_token(destination)
    try:
        info = HfApi(token=token).whoami()
    except (HfHubHTTPError, httpx2.TransportError) as exc:
        raise _hub_error(destination, exc) from exc
    if ((info.get("auth") or {}).get("accessToken") or {}).get("role") == "read":
        raise UploadError(
            f"the Hugging Face token is read-only — hf://{destination.identifier} needs a token with write access"
        )


def _upload_hub(
    destination: HuggingFaceDestination, staging_dir: Path, files: list[str], manifest_bytes: bytes
) -> Uploaded:
    import httpx2
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    repo = destination.identifier
    api = HfApi(token=_hub_token(destination))
    try:
        api.create_repo(repo, private=destination.private, exist_ok=True)
        existing = set(api.list_repo_files(repo)) - {".gitattributes"}  # the Hub's own file
        stale = _foreign(existing, files, MANIFEST in existing, f"hf://{repo}")
        operations: list[CommitOperationAdd | CommitOperationDelete] = [
            CommitOperationAdd(path_in_repo=rel, path_or_fileobj=staging_dir / rel) for rel in files
        ]
        operations.append(CommitOperationAdd(path_in_repo=MANIFEST, path_or_fileobj=manifest_bytes))
        operations += [CommitOperationDelete(path_in_repo=rel) for rel in stale]
        # one commit: the Hub applies all of it or none of it, and skips files that did not change
        commit = api.create_commit(repo, operations, commit_message=f"MLOC: publish {len(files)} file(s)")
    except (HfHubHTTPError, httpx2.TransportError) as exc:
        raise _hub_error(destination, exc) from exc
    return Uploaded(uri=f"hf://{repo}@{commit.oid}", files=[*files, MANIFEST], transferred=list(files))


# --- versions and the latest pointer (scheduled retraining) ------------------------------------

LATEST = "latest.json"


def versioned(destination: Destination, version: str) -> Destination:
    """Where one run of a versioned task writes: ``<path>/versions/<version>``.

    The Hub keeps versions itself (every upload is a commit, and main is the latest).
    """
    if isinstance(destination, (LocalDestination, S3Destination)):
        return destination.model_copy(update={"path": f"{destination.path.rstrip('/')}/versions/{version}"})
    return destination


def publish_latest(destination: Destination, version: str, uploaded: Uploaded, *, base_dir: Path) -> str | None:
    """Point ``<path>/latest.json`` at a completed upload; call it only after :func:`upload` returned.

    Written in one step (a rename, a single PUT), so a reader sees the old pointer or the new one.
    Returns where the pointer is, or None for the Hub, whose main branch is the latest.
    """
    pointer = json.dumps(
        {"version": version, "uri": uploaded.uri, "manifest": f"{uploaded.uri}/{MANIFEST}"}, indent=1, sort_keys=True
    ).encode()
    if isinstance(destination, LocalDestination):
        target = _local_target(destination, base_dir) / LATEST
        temp = target.with_name(f".{LATEST}.{uuid.uuid4().hex}")
        temp.write_bytes(pointer)
        temp.replace(target)
        return target.as_uri()
    if isinstance(destination, S3Destination):
        s3 = _S3(destination, time.sleep)
        s3.call(
            f"write {LATEST}",
            lambda: s3.client.put_object(
                Bucket=s3.bucket, Key=s3.key(LATEST), Body=pointer, ContentType="application/json"
            ),
        )
        return f"{s3.uri}/{LATEST}"
    return None
