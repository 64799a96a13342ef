"""s3: a source mirrored under ``cache_dir/s3/<bucket>/<path>``; a result published under a prefix.

Fetching keeps an ETag index outside the mirror, so a second fetch of unchanged objects
downloads nothing. Publishing makes the manifest the commit marker: it is removed before
anything changes and written last, so a reader that finds it finds every file it lists.

Both directions retry the same errors (:func:`transient`) with the one policy of
``tasks.storage.retry``, on top of botocore's own retries.
"""

from __future__ import annotations

import functools
import hashlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from blocks.credentials import CredentialsError, s3_client
from configs.models import S3Destination, S3Source
from tasks.storage.base import (
    MANIFEST,
    PROBE_PREFIX,
    DownloadError,
    Fetched,
    Uploaded,
    UploadError,
    _credential,
    _files,
    _foreign,
    _read_json,
    _write_json,
    content_hash,
)
from tasks.storage.retry import RetryPolicy, _with_retries

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

#: boto3's default multipart threshold and part size, pinned so that the ETag of an
#: object we uploaded can be predicted from the local file (and unchanged files skipped).
S3_PART_SIZE = 8 * 1024 * 1024
#: The S3 error codes a later attempt may not meet: throttling, timeouts, the service's own
#: faults. Any answer with HTTP status 429 or 5xx is transient too, whatever its code.
S3_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "503",
    }
)
_DENIED_S3_CODES = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_CONTENT_TYPES = {".json": "application/json", ".md": "text/markdown; charset=utf-8", ".txt": "text/plain"}


# --- errors, both directions ------------------------------------------------------------------


def transient(exc: BaseException) -> bool:
    """Whether retrying the S3 call that raised ``exc`` may succeed (fetch and upload alike).

    Only botocore's and boto3's errors count. A ClientError (also one that boto3 wrapped, as
    ``upload_file`` does) is transient when its code is in ``S3_TRANSIENT_CODES`` or its
    status is 429 or 5xx; so are lost connections, HTTP-level failures (read timeouts
    included), truncated bodies and exhausted transfer retries.
    """
    from boto3.exceptions import Boto3Error, RetriesExceededError
    from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if not isinstance(exc, BotoCoreError | ClientError | Boto3Error):
        return False
    root = _root(exc)
    if isinstance(root, ClientError):
        status = root.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return _s3_code(root) in S3_TRANSIENT_CODES or status == 429 or status >= 500
    return isinstance(root, BotoConnectionError | HTTPClientError | IncompleteReadError | RetriesExceededError)


def _root(exc: BaseException) -> BaseException:
    """The botocore error under boto3's S3UploadFailedError, which keeps only its text."""
    from botocore.exceptions import ClientError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def _s3_code(exc: Any) -> str:
    """The error code of a ClientError, "" when it has none."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def _code(exc: BaseException) -> str:
    """What failed, in a word: the S3 error code (also under a wrapper), else the error's type."""
    from botocore.exceptions import ClientError

    root = _root(exc)
    if isinstance(root, ClientError):
        return str(root.response.get("Error", {}).get("Code", "Unknown"))
    return type(root).__name__


# --- fetch ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Object:
    key: str
    rel: str  # where it goes, relative to the mirror folder
    etag: str
    size: int


def _fetch_s3(source: S3Source, cache_dir: Path, retry: RetryPolicy) -> Fetched:
    client = _credential(s3_client, source.credentials_block)
    url = f"s3://{source.bucket}/{source.path}"
    objects, single = _with_retries(
        f"listing {url}", functools.partial(_list, client, source), transient, retry, label=_code
    )
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
                transient,
                retry,
                label=_code,
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
        if transient(exc):
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
        if transient(exc):
            raise
        raise DownloadError(_s3_message(exc, source, obj.key)) from exc
    except Exception as exc:
        _raise_if_no_credentials(exc, source)
        raise
    finally:
        tmp.unlink(missing_ok=True)


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


# --- upload -----------------------------------------------------------------------------------


class _S3:
    """One destination prefix; every call retried on transient errors and mapped to UploadError."""

    def __init__(self, destination: S3Destination, policy: RetryPolicy) -> None:
        self.bucket = destination.bucket
        self.prefix = destination.path
        self.uri = f"s3://{self.bucket}/{self.prefix}"
        self.block = destination.credentials_block
        self.policy = policy
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

        try:
            return _with_retries(
                f"S3 {what} at {self.uri}",
                op,
                transient,
                self.policy,
                give_up=lambda _what, exc, attempts: self.error(what, exc, attempts),
                label=_code,
            )
        except (BotoCoreError, ClientError, Boto3Error) as exc:  # not transient: the first attempt says it all
            raise self.error(what, exc, 1) from exc

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
        if transient(exc):
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


def _write_pointer(s3: _S3, name: str, body: bytes) -> str:
    """PUT ``<prefix>/name`` (one PUT: a reader sees the old object or the new one); returns its URI."""
    s3.call(
        f"write {name}",
        lambda: s3.client.put_object(Bucket=s3.bucket, Key=s3.key(name), Body=body, ContentType="application/json"),
    )
    return f"{s3.uri}/{name}"


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
