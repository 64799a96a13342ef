"""tasks.download against real backends: local files, a real Hugging Face cache read by the
real snapshot_download, and a real S3 endpoint (moto's server) spoken to with boto3.

The Hub itself cannot be reached here. Offline tests fill the standard cache on disk; the
tests that need the Hub to answer (5xx, 404, a first download) use a small local HTTP
server that speaks the few Hub endpoints snapshot_download calls — a stand-in, said so where used.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from configs.models import HuggingFaceDatasetSource, HuggingFaceModelSource, LocalSource, S3Source
from tasks.download import DownloadError, Fetched, RetryPolicy, content_hash, describe, fetch
from tests.conftest import free_port

SHA = "0123456789abcdef0123456789abcdef01234567"
MODEL_FILES = {
    "config.json": b'{"model_type": "llama", "hidden_size": 16}\n',
    "tokenizer_config.json": b'{"model_max_length": 128}\n',
}
DATASET_FILES = {"data/train.jsonl": b'{"instruction": "hi", "response": "hello"}\n'}


class Sleeps(list[float]):
    """Records the sleeps of a RetryPolicy instead of sleeping; jitter off, so each sleep is its cap."""

    def policy(self, attempts: int = 5) -> RetryPolicy:
        return RetryPolicy(attempts=attempts, sleep=self.append, jitter=lambda ceiling: ceiling)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


# --- local ------------------------------------------------------------------------------------


def test_local_directory_is_used_in_place_and_hashed(tmp_path: Path) -> None:
    data = write_files(tmp_path / "data", {"a.jsonl": b"1\n", "sub/b.jsonl": b"2\n"})

    fetched = fetch(
        LocalSource(type="local", path=str(data)), kind="dataset", base_dir=tmp_path, cache_dir=tmp_path / "c"
    )

    assert (fetched.path, fetched.identifier, fetched.revision) == (str(data), str(data), "local")
    assert (fetched.source_type, fetched.downloaded_files, fetched.downloaded_bytes) == ("local", 0, 0)
    assert fetched.content_hash.startswith("sha256:") and len(fetched.content_hash) == 7 + 64
    assert Fetched(**fetched.to_dict()) == fetched


def test_local_relative_path_and_single_file(tmp_path: Path) -> None:
    task_dir = tmp_path / "task"
    write_files(task_dir, {"data/train.jsonl": b'{"x": 1}\n'})
    source = LocalSource(type="local", path="data/train.jsonl")

    fetched = fetch(source, kind="dataset", base_dir=task_dir, cache_dir=tmp_path / "c")

    assert fetched.path == str((task_dir / "data" / "train.jsonl").resolve())
    assert Path(fetched.path).read_bytes() == b'{"x": 1}\n'
    single = hashlib.sha256(b"train.jsonl\0" + hashlib.sha256(b'{"x": 1}\n').hexdigest().encode() + b"\n")
    assert fetched.content_hash == f"sha256:{single.hexdigest()}"


def test_local_content_hash_follows_the_bytes(tmp_path: Path) -> None:
    data = write_files(tmp_path / "data", {"a.jsonl": b"1\n", "b.jsonl": b"2\n"})
    source = LocalSource(type="local", path="data")

    def digest() -> str:
        return fetch(source, kind="dataset", base_dir=tmp_path, cache_dir=tmp_path / "c").content_hash

    first = digest()
    assert digest() == first
    (data / "b.jsonl").write_bytes(b"3\n")  # same size, rewritten within the same clock tick
    changed = digest()
    assert changed != first
    (data / "b.jsonl").rename(data / "c.jsonl")  # the names count, not only the bytes
    assert digest() not in (first, changed)


def test_local_hashes_are_cached_by_size_and_mtime(tmp_path: Path) -> None:
    data = write_files(tmp_path / "data", {"big.bin": b"a" * 1000})
    old = time.time_ns() - 3_600_000_000_000
    os.utime(data / "big.bin", ns=(old, old))
    first = content_hash(data, tmp_path / "c")

    # Same size and mtime: the cached hash is used, so the file was not read again.
    (data / "big.bin").write_bytes(b"b" * 1000)
    os.utime(data / "big.bin", ns=(old, old))
    assert content_hash(data, tmp_path / "c") == first

    # A new mtime invalidates the entry.
    os.utime(data / "big.bin", ns=(old + 1, old + 1))
    assert content_hash(data, tmp_path / "c") != first


def test_local_recent_files_are_not_trusted_to_the_cache(tmp_path: Path) -> None:
    # A file written twice in one timestamp tick keeps its (size, mtime): it must be re-read.
    data = write_files(tmp_path / "data", {"a.txt": b"one"})
    now = time.time_ns()
    os.utime(data / "a.txt", ns=(now, now))
    first = content_hash(data, tmp_path / "c")
    (data / "a.txt").write_bytes(b"two")
    os.utime(data / "a.txt", ns=(now, now))
    assert content_hash(data, tmp_path / "c") != first


def test_local_missing_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"'data/nope\.jsonl' does not exist"):
        fetch(LocalSource(type="local", path="data/nope.jsonl"), kind="dataset", base_dir=tmp_path, cache_dir=tmp_path)


# --- Hugging Face: the standard cache, offline -----------------------------------------------


@pytest.fixture
def hf_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty HF cache with offline mode on.

    huggingface_hub reads HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE once, at import, into
    ``huggingface_hub.constants``; snapshot_download reads those attributes at call time.
    """
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    hub = home / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub


def fill_hf_cache(hub: Path, repo_type: str, repo_id: str, files: dict[str, bytes], sha: str = SHA) -> Path:
    """Lay a repo out as huggingface_hub does: refs/main -> sha, snapshot files linking into blobs/."""
    storage = hub / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(sha)
    snapshot = storage / "snapshots" / sha
    for rel, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def test_hf_model_from_the_cache(hf_hub: Path, tmp_path: Path, sleeps: Sleeps) -> None:
    snapshot = fill_hf_cache(hf_hub, "model", "mloc-test/tiny-model", MODEL_FILES)
    source = HuggingFaceModelSource(type="huggingface", identifier="mloc-test/tiny-model")

    fetched = fetch(source, kind="model", base_dir=tmp_path, cache_dir=tmp_path / "c", retry=sleeps.policy())

    assert fetched.path == str(snapshot)
    assert (fetched.revision, fetched.identifier, fetched.source_type) == (SHA, "mloc-test/tiny-model", "huggingface")
    assert (fetched.downloaded_files, fetched.downloaded_bytes) == (0, 0)
    assert tree(Path(fetched.path)) == MODEL_FILES
    assert describe(fetched).startswith(f"huggingface mloc-test/tiny-model @ {SHA[:12]} ")
    # The hash is over content, not links: a plain copy of the same files hashes the same.
    assert fetched.content_hash == content_hash(write_files(tmp_path / "copy", MODEL_FILES), tmp_path / "c")
    assert sleeps == []


def test_hf_pinned_commit_from_the_cache(hf_hub: Path, tmp_path: Path) -> None:
    snapshot = fill_hf_cache(hf_hub, "model", "mloc-test/tiny-model", MODEL_FILES)
    source = HuggingFaceModelSource(type="huggingface", identifier="mloc-test/tiny-model", revision=SHA)

    fetched = fetch(source, kind="model", base_dir=tmp_path, cache_dir=tmp_path / "c")

    assert (fetched.path, fetched.revision) == (str(snapshot), SHA)


def test_hf_dataset_from_the_cache(hf_hub: Path, tmp_path: Path, sleeps: Sleeps) -> None:
    snapshot = fill_hf_cache(hf_hub, "dataset", "mloc-test/tiny-data", DATASET_FILES)
    source = HuggingFaceDatasetSource(type="huggingface", identifier="mloc-test/tiny-data")

    fetched = fetch(source, kind="dataset", base_dir=tmp_path, cache_dir=tmp_path / "c", retry=sleeps.policy())

    assert (fetched.path, fetched.revision, fetched.downloaded_files) == (str(snapshot), SHA, 0)
    assert tree(snapshot) == DATASET_FILES
    # Model and dataset repos live apart in the cache: the same id as a model is not there.
    with pytest.raises(DownloadError, match="not in the local Hugging Face cache"):
        fetch(source, kind="model", base_dir=tmp_path, cache_dir=tmp_path / "c", retry=sleeps.policy())
    assert sleeps == []


@pytest.mark.parametrize(
    ("identifier", "revision"),
    [("mloc-test/not-cached", "main"), ("mloc-test/tiny-model", "v2"), ("mloc-test/tiny-model", "f" * 40)],
    ids=["repo-not-cached", "branch-not-cached", "commit-not-cached"],
)
def test_hf_offline_and_not_cached_fails_at_once(
    hf_hub: Path, tmp_path: Path, sleeps: Sleeps, identifier: str, revision: str
) -> None:
    fill_hf_cache(hf_hub, "model", "mloc-test/tiny-model", MODEL_FILES)
    source = HuggingFaceModelSource(type="huggingface", identifier=identifier, revision=revision)

    started = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch(source, kind="model", base_dir=tmp_path, cache_dir=tmp_path / "c", retry=sleeps.policy())

    message = str(info.value)
    assert f"'{identifier}' at revision '{revision}' is not in the local Hugging Face cache" in message
    assert "HF_HUB_OFFLINE is set" in message
    assert sleeps == []
    assert time.monotonic() - started < 5


def test_hf_offline_incomplete_snapshot(hf_hub: Path, tmp_path: Path, sleeps: Sleeps) -> None:
    fill_hf_cache(hf_hub, "model", "mloc-test/tiny-model", MODEL_FILES)
    # The tree listing snapshot_download keeps per commit names a file the snapshot lacks.
    listing = {name: {"size": len(data), "blob_id": "0" * 40} for name, data in MODEL_FILES.items()}
    listing["model.safetensors"] = {"size": 10, "blob_id": "1" * 40}
    trees = hf_hub / "models--mloc-test--tiny-model" / "trees"
    trees.mkdir()
    (trees / f"{SHA}.json").write_text(json.dumps({"format_version": 1, "files": listing}))
    source = HuggingFaceModelSource(type="huggingface", identifier="mloc-test/tiny-model")

    with pytest.raises(DownloadError, match="is only partly in the local Hugging Face cache"):
        fetch(source, kind="model", base_dir=tmp_path, cache_dir=tmp_path / "c", retry=sleeps.policy())
    assert sleeps == []


# --- Hugging Face: a stand-in Hub on loopback -------------------------------------------------


class FakeHub(BaseHTTPRequestHandler):
    """Answers the requests snapshot_download makes for one public model repo (a stand-in:
    the real Hub cannot be reached from here). ``failures`` lists statuses to answer first."""

    repo: ClassVar[str] = "mloc-test/tiny-model"
    files: ClassVar[dict[str, bytes]] = MODEL_FILES
    failures: ClassVar[list[tuple[int, dict[str, str]]]] = []
    requests: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        type(self).requests.append(f"{self.command} {self.path}")
        if self.failures:
            status, headers = self.failures.pop(0)
            self._send(status, b"", headers, body)
        elif self.path.startswith(f"/api/models/{self.repo}/revision/"):
            self._json({"id": self.repo, "sha": SHA, "siblings": [{"rfilename": f} for f in self.files]})
        elif self.path.startswith(f"/api/models/{self.repo}/tree/{SHA}"):
            self._json([{"type": "file", "path": f, "size": len(d), "oid": _git_oid(d)} for f, d in self.files.items()])
        elif self.path.startswith(f"/{self.repo}/resolve/{SHA}/"):
            data = self.files[self.path.rsplit("/", 1)[1]]
            headers = {"X-Repo-Commit": SHA, "ETag": f'"{_git_oid(data)}"'}
            self._send(200, data, headers, body)
        else:
            self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, body)

    def _json(self, value: object) -> None:
        self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"}, True)

    def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def fake_hub(hf_hub: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeHub]]:
    """The stand-in Hub as HF_ENDPOINT, with offline mode off (both read at import, see hf_hub)."""
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(FakeHub, "failures", [])
    monkeypatch.setattr(FakeHub, "requests", [])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield FakeHub
    finally:
        server.shutdown()
        server.server_close()


TINY = HuggingFaceModelSource(type="huggingface", identifier="mloc-test/tiny-model")


def test_hf_downloads_then_reuses_the_cache(
    fake_hub: type[FakeHub], hf_hub: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    first = fetch(TINY, kind="model", base_dir=tmp_path, cache_dir=tmp_path / "c")
    printed = capfd.readouterr()
    assert "Fetching" not in printed.err + printed.out, "a progress bar in the worker's output"

    assert (first.revision, first.downloaded_files) == (SHA, 2)
    assert first.downloaded_bytes == sum(len(d) for d in MODEL_FILES.values())
    assert tree(Path(first.path)) == MODEL_FILES

    second = fetch(TINY, kind="model", base_dir=tmp_path, cache_dir=tmp_path / "c")
    assert (second.path, second.revision, second.content_hash) == (first.path, SHA, first.content_hash)
    assert (second.downloaded_files, second.downloaded_bytes) == (0, 0)


def test_hf_transient_errors_are_retried(fake_hub: type[FakeHub], tmp_path: Path, sleeps: Sleeps) -> None:
    fake_hub.failures[:] = [(503, {}), (429, {})]

    fetched = fetch(TINY, kind="model", base_dir=tmp_path, cache_dir=tmp_path / "c", retry=sleeps.policy())

    assert (fetched.revision, fetched.downloaded_files) == (SHA, 2)
    assert sleeps == [1.0, 2.0]


def test_hf_gives_up_after_the_last_attempt(fake_hub: type[FakeHub], tmp_path: Path, sleeps: Sleeps) -> None:
    fake_hub.failures[:] = [(503, {})] * 3

    with pytest.raises(DownloadError, match="gave up after 3 attempts"):
        fetch(TINY, kind="model", base_dir=tmp_path, cache_dir=tmp_path / "c", retry=sleeps.policy(attempts=3))
    assert sleeps == [1.0, 2.0]


def test_hf_unreachable_endpoint_is_transient(
    hf_hub: Path, tmp_path: Path, sleeps: Sleeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there

    with pytest.raises(DownloadError, match="gave up after 2 attempts — last error: LocalEntryNotFoundError"):
        fetch(TINY, kind="model", base_dir=tmp_path, cache_dir=tmp_path / "c", retry=sleeps.policy(attempts=2))
    assert sleeps == [1.0]


@pytest.mark.parametrize(
    ("status", "headers", "message"),
    [
        (404, {"X-Error-Code": "RepoNotFound"}, "not found or private — check the id"),
        (401, {}, "denied — give a credentials_block with a token that can read it"),
        (404, {"X-Error-Code": "RevisionNotFound"}, "revision 'main' not found in model repo"),
        (403, {"X-Error-Code": "GatedRepo"}, "is gated — accept its terms"),
    ],
    ids=["repo-not-found", "unauthorized", "revision-not-found", "gated"],
)
def test_hf_permanent_errors_are_not_retried(
    fake_hub: type[FakeHub], tmp_path: Path, sleeps: Sleeps, status: int, headers: dict[str, str], message: str
) -> None:
    fake_hub.failures[:] = [(status, headers)]

    with pytest.raises(DownloadError, match=message):
        fetch(TINY, kind="model", base_dir=tmp_path, cache_dir=tmp_path / "c", retry=sleeps.policy())
    assert sleeps == []
    assert len(fake_hub.requests) == 1


# --- S3 on moto's server ----------------------------------------------------------------------


@pytest.fixture
def bucket(s3_env: str) -> str:
    import boto3

    name = f"mloc-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def put(bucket: str, objects: dict[str, bytes]) -> None:
    import boto3

    client = boto3.client("s3")
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)


def s3_source(bucket: str, path: str, credentials_block: str | None = None) -> S3Source:
    return S3Source.model_validate(
        {"type": "s3", "bucket": bucket, "path": path, "credentials_block": credentials_block}
    )


def test_s3_prefix_is_mirrored_and_refetched_only_when_changed(bucket: str, tmp_path: Path, sleeps: Sleeps) -> None:
    put(bucket, {"data/a.jsonl": b"a\n", "data/sub/b.jsonl": b"bb\n", "data/": b"", "other/c.jsonl": b"c\n"})
    source = s3_source(bucket, "data")

    def run() -> Fetched:
        return fetch(source, kind="dataset", base_dir=tmp_path, cache_dir=tmp_path / "c", retry=sleeps.policy())

    first = run()
    assert (first.identifier, first.source_type) == (f"s3://{bucket}/data", "s3")
    assert Path(first.path) == tmp_path / "c" / "s3" / bucket / "data"
    assert tree(Path(first.path)) == {"a.jsonl": b"a\n", "sub/b.jsonl": b"bb\n"}  # no index, no temp files
    assert (first.downloaded_files, first.downloaded_bytes) == (2, 5)

    second = run()
    assert (second.downloaded_files, second.downloaded_bytes) == (0, 0)
    assert (second.revision, second.content_hash) == (first.revision, first.content_hash)

    put(bucket, {"data/sub/b.jsonl": b"changed\n"})
    third = run()
    assert (third.downloaded_files, third.downloaded_bytes) == (1, 8)
    assert third.revision != first.revision and third.content_hash != first.content_hash
    assert tree(Path(third.path)) == {"a.jsonl": b"a\n", "sub/b.jsonl": b"changed\n"}

    import boto3

    boto3.client("s3").delete_object(Bucket=bucket, Key="data/a.jsonl")
    fourth = run()
    assert tree(Path(fourth.path)) == {"sub/b.jsonl": b"changed\n"}  # deleted objects leave the mirror too
    assert fourth.downloaded_files == 0 and fourth.revision != third.revision
    assert sleeps == []


def test_s3_single_key(bucket: str, tmp_path: Path) -> None:
    put(bucket, {"data/train.jsonl": b'{"x": 1}\n', "data/train.jsonl.bak": b"old"})

    fetched = fetch(s3_source(bucket, "data/train.jsonl"), kind="dataset", base_dir=tmp_path, cache_dir=tmp_path)

    assert Path(fetched.path).read_bytes() == b'{"x": 1}\n'
    assert fetched.path.endswith("/train.jsonl") and fetched.downloaded_files == 1
    again = fetch(s3_source(bucket, "data/train.jsonl"), kind="dataset", base_dir=tmp_path, cache_dir=tmp_path)
    assert (again.downloaded_files, again.revision) == (0, fetched.revision)


def test_s3_locally_damaged_file_is_fetched_again(bucket: str, tmp_path: Path) -> None:
    put(bucket, {"data/a.jsonl": b"abc\n"})
    first = fetch(s3_source(bucket, "data"), kind="dataset", base_dir=tmp_path, cache_dir=tmp_path)
    (Path(first.path) / "a.jsonl").write_bytes(b"truncated")

    again = fetch(s3_source(bucket, "data"), kind="dataset", base_dir=tmp_path, cache_dir=tmp_path)

    assert again.downloaded_files == 1 and (Path(again.path) / "a.jsonl").read_bytes() == b"abc\n"


def test_s3_missing_bucket_and_empty_prefix(bucket: str, tmp_path: Path, sleeps: Sleeps) -> None:
    put(bucket, {"other/a.jsonl": b"a\n"})

    with pytest.raises(DownloadError, match=r"bucket 'no-such-bucket-mloc' does not exist"):
        fetch(
            s3_source("no-such-bucket-mloc", "data"),
            kind="dataset",
            base_dir=tmp_path,
            cache_dir=tmp_path,
            retry=sleeps.policy(),
        )
    with pytest.raises(DownloadError, match=rf"no objects under s3://{bucket}/data/ .*in bucket '{bucket}'"):
        fetch(s3_source(bucket, "data"), kind="dataset", base_dir=tmp_path, cache_dir=tmp_path, retry=sleeps.policy())
    assert sleeps == []


class Flaky:
    """A real S3 client whose first calls of one method fail as S3 does under load."""

    def __init__(self, client: Any, method: str, errors: list[Exception]) -> None:
        self._client, self._method, self.errors = client, method, errors

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name != self._method:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.errors:
                raise self.errors.pop(0)
            return real(*args, **kwargs)

        return call


def client_error(code: str, status: int, operation: str) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def flaky_client(monkeypatch: pytest.MonkeyPatch, method: str, errors: list[Exception]) -> None:
    import boto3

    from tasks.storage import s3

    monkeypatch.setattr(s3, "s3_client", lambda block: Flaky(boto3.client("s3"), method, errors))


def test_s3_transient_errors_are_retried_with_growing_waits(
    bucket: str, tmp_path: Path, sleeps: Sleeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import EndpointConnectionError

    put(bucket, {"data/a.jsonl": b"a\n"})
    errors = [client_error("SlowDown", 503, "GetObject"), EndpointConnectionError(endpoint_url="http://s3")]
    flaky_client(monkeypatch, "download_file", errors)

    fetched = fetch(
        s3_source(bucket, "data"), kind="dataset", base_dir=tmp_path, cache_dir=tmp_path, retry=sleeps.policy()
    )

    assert tree(Path(fetched.path)) == {"a.jsonl": b"a\n"} and fetched.downloaded_files == 1
    assert sleeps == [1.0, 2.0]


def test_s3_permanent_errors_are_not_retried(
    bucket: str, tmp_path: Path, sleeps: Sleeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(bucket, {"data/a.jsonl": b"a\n"})
    flaky_client(monkeypatch, "get_paginator", [client_error("AccessDenied", 403, "ListObjectsV2")])

    with pytest.raises(DownloadError, match=rf"access denied to bucket '{bucket}' path 'data'"):
        fetch(s3_source(bucket, "data"), kind="dataset", base_dir=tmp_path, cache_dir=tmp_path, retry=sleeps.policy())
    assert sleeps == []


def test_retry_waits_are_capped(tmp_path: Path, sleeps: Sleeps, monkeypatch: pytest.MonkeyPatch, bucket: str) -> None:
    flaky_client(monkeypatch, "get_paginator", [client_error("InternalError", 500, "ListObjectsV2")] * 6)
    policy = RetryPolicy(attempts=6, base_s=1.0, cap_s=5.0, sleep=sleeps.append, jitter=lambda ceiling: ceiling)

    with pytest.raises(DownloadError, match=rf"listing s3://{bucket}/data: gave up after 6 attempts"):
        fetch(s3_source(bucket, "data"), kind="dataset", base_dir=tmp_path, cache_dir=tmp_path, retry=policy)
    assert sleeps == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_full_jitter_stays_under_the_cap() -> None:
    waits: list[float] = []
    policy = RetryPolicy(sleep=waits.append)
    draws = [policy.jitter(policy.ceiling(n)) for n in range(8) for _ in range(50)]
    assert all(0 <= d <= 30 for d in draws) and max(draws) > 16  # later retries reach past 2^4 but stay under 30


@pytest.mark.slow
def test_s3_with_an_aws_credentials_block(s3_block: tuple[str, Any], tmp_path: Path) -> None:
    name, client = s3_block
    client.put_object(Bucket=name, Key="m/config.json", Body=b"{}")

    fetched = fetch(s3_source(name, "m", credentials_block=name), kind="model", base_dir=tmp_path, cache_dir=tmp_path)

    assert tree(Path(fetched.path)) == {"config.json": b"{}"}
    with pytest.raises(DownloadError, match="no AwsCredentials block named 'not-saved'"):
        fetch(s3_source(name, "m", credentials_block="not-saved"), kind="model", base_dir=tmp_path, cache_dir=tmp_path)
