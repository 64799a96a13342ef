"""huggingface: a source fetched into the standard Hugging Face cache; a result published as one Hub commit.

Fetching uses ``snapshot_download`` (HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE apply), so
transformers and datasets find the files again. Publishing makes one commit of every file and
the manifest; a commit is atomic. Both directions retry the same Hub errors
(:func:`_hf_transient`) with the one policy of ``tasks.storage.retry``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from blocks.credentials import CredentialsError, hf_token
from configs.models import HuggingFaceDestination, HuggingFaceModelSource
from tasks.storage.base import (
    MANIFEST,
    DownloadError,
    Fetched,
    Kind,
    Uploaded,
    UploadError,
    _credential,
    _foreign,
    content_hash,
)
from tasks.storage.retry import RetryPolicy, _with_retries

# --- errors, both directions ------------------------------------------------------------------


def _hf_cause(exc: BaseException) -> BaseException | None:
    """The error behind a cache miss: snapshot_download falls back to the cache on any Hub
    failure and, when the files are not there, raises LocalEntryNotFoundError from it."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    return exc.__cause__ if isinstance(exc, LocalEntryNotFoundError) else exc


def _hf_transient(exc: Exception) -> bool:
    """Whether retrying the Hub call may succeed: 408, 429 and 5xx answers, a lost or timed-out connection."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    cause = _hf_cause(exc)
    if cause is None or isinstance(cause, OfflineModeIsEnabled):  # a ConnectionError, but no retry can help
        return False
    if isinstance(cause, HfHubHTTPError):
        status = cause.response.status_code
        return status in (408, 429) or status >= 500
    return isinstance(cause, httpx2.TransportError | ConnectionError | TimeoutError)


# --- fetch ------------------------------------------------------------------------------------


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


# --- upload -----------------------------------------------------------------------------------


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


def _hub_error(destination: HuggingFaceDestination, exc: BaseException) -> UploadError:
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


def _check_hub(destination: HuggingFaceDestination, policy: RetryPolicy) -> None:
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=_hub_token(destination))
    try:
        info = _with_retries(
            f"token check for hf://{destination.identifier}",
            api.whoami,
            _hf_transient,
            policy,
            give_up=lambda _what, exc, _attempts: _hub_error(destination, exc),
        )
    except (HfHubHTTPError, httpx2.TransportError) as exc:
        raise _hub_error(destination, exc) from exc
    if ((info.get("auth") or {}).get("accessToken") or {}).get("role") == "read":
        raise UploadError(
            f"the Hugging Face token is read-only — hf://{destination.identifier} needs a token with write access"
        )


def _upload_hub(
    destination: HuggingFaceDestination, staging_dir: Path, files: list[str], manifest_bytes: bytes, policy: RetryPolicy
) -> Uploaded:
    import httpx2
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    repo = destination.identifier
    api = HfApi(token=_hub_token(destination))

    def publish() -> str:
        api.create_repo(repo, private=destination.private, exist_ok=True)
        existing = set(api.list_repo_files(repo)) - {".gitattributes"}  # the Hub's own file
        stale = _foreign(existing, files, MANIFEST in existing, f"hf://{repo}")
        operations: list[CommitOperationAdd | CommitOperationDelete] = [
            CommitOperationAdd(path_in_repo=rel, path_or_fileobj=staging_dir / rel) for rel in files
        ]
        operations.append(CommitOperationAdd(path_in_repo=MANIFEST, path_or_fileobj=manifest_bytes))
        operations += [CommitOperationDelete(path_in_repo=rel) for rel in stale]
        # one commit: the Hub applies all of it or none of it, and skips files that did not change
        # (so a retry after an answer that was lost makes no second change)
        return api.create_commit(repo, operations, commit_message=f"MLOC: publish {len(files)} file(s)").oid

    try:
        oid = _with_retries(
            f"upload to hf://{repo}",
            publish,
            _hf_transient,
            policy,
            give_up=lambda _what, exc, _attempts: _hub_error(destination, exc),
        )
    except (HfHubHTTPError, httpx2.TransportError) as exc:
        raise _hub_error(destination, exc) from exc
    return Uploaded(uri=f"hf://{repo}@{oid}", files=[*files, MANIFEST], transferred=list(files))
