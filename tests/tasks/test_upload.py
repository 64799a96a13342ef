"""Publishing results: what lands at the destination, atomically and idempotently.

Local and S3 run for real (S3 is moto's server spoken to over HTTP). The Hugging Face Hub
cannot be reached from tests, so there ``HfApi`` is replaced by a recording fake.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any, ClassVar

import pytest

import tasks.storage.s3 as s3_mod
from configs.models import HuggingFaceDestination, LocalDestination, S3Destination
from tasks.storage.retry import RetryPolicy
from tasks.upload import MANIFEST, UploadError, check_writable, upload

LINEAGE = {"task_hash": "3f2a", "base_model": {"id": "org/base", "revision": "c0ffee"}, "metrics": {"eval_loss": 1.25}}
FILES = {
    "adapter_weights/adapter_model.safetensors": b"\x00weights" * 100,
    "adapter_weights/adapter_config.json": b'{"r": 16}',
    "training_logs/log.jsonl": b'{"step": 1, "loss": 2.0}\n',
    "eval_results/eval.json": b'{"eval_loss": 1.25}',
    "README.md": b"# A model card\n",
}


def stage(root: Path, files: dict[str, bytes]) -> Path:
    staging = root / f"staging-{uuid.uuid4().hex[:8]}"
    for rel, data in files.items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(data)
    return staging


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def manifest_entries(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [
        {"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for rel, data in sorted(files.items())
    ]


# --- local -------------------------------------------------------------------------------------


def local(path: str) -> LocalDestination:
    return LocalDestination.model_validate({"type": "local", "path": path})


def test_local_publishes_exactly_the_staged_files_and_a_manifest(tmp_path: Path) -> None:
    result = upload(local("out/run-1"), stage(tmp_path, FILES), LINEAGE, base_dir=tmp_path)

    target = tmp_path / "out" / "run-1"
    published = tree(target)
    assert published.keys() == {*FILES, MANIFEST}
    assert all(published[rel] == data for rel, data in FILES.items())
    manifest = json.loads(published[MANIFEST])
    assert manifest["files"] == manifest_entries(FILES)
    assert manifest["metrics"] == LINEAGE["metrics"] and manifest["task_hash"] == "3f2a"
    assert result.uri == target.resolve().as_uri()
    assert result.files[-1] == MANIFEST and sorted(result.files[:-1]) == sorted(FILES)
    assert result.to_dict()["uri"] == result.uri


def test_local_upload_is_idempotent_and_replaces_the_previous_version(tmp_path: Path) -> None:
    staging = stage(tmp_path, FILES)
    target = tmp_path / "out"
    upload(local("out"), staging, LINEAGE, base_dir=tmp_path)
    first = tree(target)
    upload(local("out"), staging, LINEAGE, base_dir=tmp_path)
    assert tree(target) == first

    smaller = {k: v for k, v in FILES.items() if not k.startswith("training_logs/")}
    upload(local("out"), stage(tmp_path, smaller), LINEAGE, base_dir=tmp_path)
    assert tree(target).keys() == {*smaller, MANIFEST}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == ["out"]


def test_local_failure_mid_copy_keeps_the_published_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upload(local("out"), stage(tmp_path, FILES), LINEAGE, base_dir=tmp_path)
    before = tree(tmp_path / "out")
    real_copy = shutil.copy2
    copied: list[Any] = []

    def copy_then_fail(src: Any, dst: Any) -> Any:
        if len(copied) == 2:
            raise OSError(28, "No space left on device")
        copied.append(src)
        return real_copy(src, dst)

    monkeypatch.setattr(shutil, "copy2", copy_then_fail)
    changed = {rel: data + b"v2" for rel, data in FILES.items()}
    with pytest.raises(UploadError, match="No space left on device"):
        upload(local("out"), stage(tmp_path, changed), LINEAGE, base_dir=tmp_path)

    assert tree(tmp_path / "out") == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == ["out"]


def test_local_refuses_a_directory_it_did_not_write(tmp_path: Path) -> None:
    """Pointing the destination at, say, the task's own folder must not wipe it."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")

    with pytest.raises(UploadError, match=r"did not write.*notes\.txt"):
        check_writable(local("mine"), base_dir=tmp_path)
    with pytest.raises(UploadError, match="did not write"):
        upload(local("mine"), stage(tmp_path, FILES), LINEAGE, base_dir=tmp_path)
    assert tree(tmp_path / "mine") == {"notes.txt": b"keep me"}


def test_local_check_writable(tmp_path: Path) -> None:
    check_writable(local("a/b/out"), base_dir=tmp_path)
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe is gone

    (tmp_path / "blocked").write_text("a file where a folder should be")
    with pytest.raises(UploadError, match=r"blocked/out is not writable"):
        check_writable(local("blocked/out"), base_dir=tmp_path)


# --- s3 ----------------------------------------------------------------------------------------


class Recorder:
    """The real S3 client, with every write it completes recorded in order."""

    def __init__(self, client: Any, writes: list[tuple[str, str]]) -> None:
        self._client, self.writes = client, writes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def upload_file(self, filename: str, bucket: str, key: str, **kwargs: Any) -> None:
        self._client.upload_file(filename, bucket, key, **kwargs)
        self.writes.append(("put", key))

    def put_object(self, **kwargs: Any) -> Any:
        response = self._client.put_object(**kwargs)
        self.writes.append(("put", kwargs["Key"]))
        return response

    def delete_object(self, **kwargs: Any) -> Any:
        response = self._client.delete_object(**kwargs)
        self.writes.append(("delete", kwargs["Key"]))
        return response


@pytest.fixture
def writes(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    recorded: list[tuple[str, str]] = []
    real = s3_mod.s3_client
    monkeypatch.setattr(s3_mod, "s3_client", lambda block: Recorder(real(block), recorded))
    return recorded


@pytest.fixture
def bucket(s3_env: str) -> str:
    import boto3

    name = f"mloc-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def s3(bucket: str, path: str = "runs/run-1") -> S3Destination:
    return S3Destination.model_validate({"type": "s3", "bucket": bucket, "path": path})


def objects(bucket: str, prefix: str = "") -> dict[str, bytes]:
    import boto3

    client = boto3.client("s3")
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_s3_publishes_every_file_then_the_manifest(tmp_path: Path, bucket: str, writes: list) -> None:
    import boto3

    result = upload(s3(bucket), stage(tmp_path, FILES), LINEAGE, base_dir=tmp_path)

    stored = objects(bucket)
    assert stored.keys() == {f"runs/run-1/{rel}" for rel in [*FILES, MANIFEST]}
    assert all(stored[f"runs/run-1/{rel}"] == data for rel, data in FILES.items())
    assert json.loads(stored[f"runs/run-1/{MANIFEST}"])["files"] == manifest_entries(FILES)
    assert writes[-1] == ("put", f"runs/run-1/{MANIFEST}") and len(writes) == len(FILES) + 1
    assert result.uri == f"s3://{bucket}/runs/run-1" and sorted(result.transferred) == sorted(FILES)
    head = boto3.client("s3").head_object(Bucket=bucket, Key=f"runs/run-1/{MANIFEST}")
    assert head["ContentType"] == "application/json"


def test_s3_second_identical_upload_transfers_nothing(tmp_path: Path, bucket: str, writes: list) -> None:
    # above the multipart threshold: its ETag is not a plain MD5 and must still be recognised
    big = {**FILES, "full_model/model.safetensors": bytes(range(256)) * (9 * 4096)}
    staging = stage(tmp_path, big)
    upload(s3(bucket), staging, LINEAGE, base_dir=tmp_path)
    first = objects(bucket)
    writes.clear()

    again = upload(s3(bucket), staging, LINEAGE, base_dir=tmp_path)

    assert again.transferred == [] and writes == []
    assert objects(bucket) == first


def test_s3_changed_file_is_the_only_transfer_and_dropped_files_go(tmp_path: Path, bucket: str, writes: list) -> None:
    upload(s3(bucket), stage(tmp_path, FILES), LINEAGE, base_dir=tmp_path)
    writes.clear()
    changed = {k: v for k, v in FILES.items() if not k.startswith("training_logs/")}
    changed["README.md"] = b"# A better model card\n"

    result = upload(s3(bucket), stage(tmp_path, changed), LINEAGE, base_dir=tmp_path)

    assert result.transferred == ["README.md"]
    assert objects(bucket).keys() == {f"runs/run-1/{rel}" for rel in [*changed, MANIFEST]}
    # the old manifest goes first, the new one comes last: no reader sees a mixed result
    assert writes == [
        ("delete", f"runs/run-1/{MANIFEST}"),
        ("delete", "runs/run-1/training_logs/log.jsonl"),
        ("put", "runs/run-1/README.md"),
        ("put", f"runs/run-1/{MANIFEST}"),
    ]


def test_s3_missing_bucket_is_named(tmp_path: Path, s3_env: str) -> None:
    with pytest.raises(UploadError, match="bucket 'no-such-bucket-mloc' does not exist"):
        upload(s3("no-such-bucket-mloc"), stage(tmp_path, FILES), LINEAGE, base_dir=tmp_path)
    with pytest.raises(UploadError, match="bucket 'no-such-bucket-mloc' does not exist"):
        check_writable(s3("no-such-bucket-mloc"), base_dir=tmp_path)


def test_s3_check_writable_leaves_no_probe(tmp_path: Path, bucket: str, writes: list) -> None:
    check_writable(s3(bucket), base_dir=tmp_path)

    assert [op for op, _ in writes] == ["put", "delete"] and writes[0][1].startswith("runs/run-1/.mloc-write-probe-")
    assert objects(bucket) == {}


def test_s3_refuses_a_prefix_holding_foreign_objects(tmp_path: Path, bucket: str) -> None:
    import boto3

    boto3.client("s3").put_object(Bucket=bucket, Key="runs/run-1/someone-elses.bin", Body=b"x")

    with pytest.raises(UploadError, match=r"did not write.*someone-elses\.bin"):
        upload(s3(bucket), stage(tmp_path, FILES), LINEAGE, base_dir=tmp_path)
    assert objects(bucket).keys() == {"runs/run-1/someone-elses.bin"}


class Failing(Recorder):
    """Raises the given S3 error code on the first ``times`` uploads, the way boto3 wraps it."""

    def __init__(self, client: Any, code: str, status: int, times: int) -> None:
        super().__init__(client, [])
        self.code, self.status, self.left = code, status, times

    def upload_file(self, filename: str, bucket: str, key: str, **kwargs: Any) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import ClientError

        if self.left > 0:
            self.left -= 1
            error = {"Error": {"Code": self.code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": self.status}}
            try:
                raise ClientError(error, "PutObject")
            except ClientError as exc:
                raise S3UploadFailedError(f"Failed to upload {filename} to {bucket}/{key}: {exc}")  # noqa: B904
        super().upload_file(filename, bucket, key, **kwargs)


@pytest.mark.parametrize(
    ("code", "status", "times", "outcome"),
    [
        ("SlowDown", 503, 2, None),
        ("SlowDown", 503, 99, "kept failing \\(SlowDown\\) after 5 attempts"),
        ("AccessDenied", 403, 1, "access denied .* with the worker's default AWS credentials"),
    ],
)
def test_s3_retries_transient_errors_only(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch, code: str, status: int, times: int, outcome: str
) -> None:
    real = s3_mod.s3_client
    monkeypatch.setattr(s3_mod, "s3_client", lambda block: Failing(real(block), code, status, times))
    pauses: list[float] = []
    # the one policy of downloads too (5 attempts), jitter off so that each pause is its ceiling
    policy = RetryPolicy(sleep=pauses.append, jitter=lambda ceiling: ceiling)
    run = lambda: upload(s3(bucket), stage(tmp_path, FILES), LINEAGE, base_dir=tmp_path, retry=policy)  # noqa: E731

    if outcome is None:
        assert run().files[-1] == MANIFEST
        assert pauses == [1.0, 2.0]
    else:
        with pytest.raises(UploadError, match=outcome):
            run()
        assert pauses == ([1.0, 2.0, 4.0, 8.0] if code == "SlowDown" else [])
        assert f"runs/run-1/{MANIFEST}" not in objects(bucket)


@pytest.mark.slow
def test_s3_with_an_aws_credentials_block(tmp_path: Path, s3_block: tuple[str, Any]) -> None:
    """The block's keys and endpoint are used; the worker's own chain would reach no S3 at all."""
    name, direct = s3_block
    destination = S3Destination.model_validate({"type": "s3", "bucket": name, "path": "out", "credentials_block": name})

    check_writable(destination, base_dir=tmp_path)
    result = upload(destination, stage(tmp_path, FILES), LINEAGE, base_dir=tmp_path)

    keys = {o["Key"] for o in direct.list_objects_v2(Bucket=name)["Contents"]}
    assert keys == {f"out/{rel}" for rel in [*FILES, MANIFEST]} and result.uri == f"s3://{name}/out"


# --- huggingface -------------------------------------------------------------------------------


class FakeHub:
    """Stands in for ``huggingface_hub.HfApi``: the Hub cannot be reached from tests."""

    instances: ClassVar[list[FakeHub]] = []
    remote_files: ClassVar[list[str]] = [".gitattributes"]
    role: ClassVar[str] = "write"

    def __init__(self, token: str | None = None, **_: Any) -> None:
        self.token = token
        self.calls: list[tuple[str, str, Any]] = []
        FakeHub.instances.append(self)

    def create_repo(self, repo_id: str, **kwargs: Any) -> None:
        self.calls.append(("create_repo", repo_id, kwargs))

    def list_repo_files(self, repo_id: str, **_: Any) -> list[str]:
        return list(self.remote_files)

    def create_commit(self, repo_id: str, operations: list[Any], **kwargs: Any) -> Any:
        self.calls.append(("create_commit", repo_id, operations))
        return type("CommitInfo", (), {"oid": "0123abcd" * 5})()

    def whoami(self) -> dict[str, Any]:
        return {"name": "someone", "auth": {"accessToken": {"role": self.role}}}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> type[FakeHub]:
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the fake needs no network
    monkeypatch.setattr(FakeHub, "instances", [])
    return FakeHub


def hf(**fields: Any) -> HuggingFaceDestination:
    return HuggingFaceDestination.model_validate({"type": "huggingface", "identifier": "my-org/tuned", **fields})


def commit_of(hub: type[FakeHub]) -> tuple[dict[str, Any], list[str]]:
    """The single commit made: added path -> content, and deleted paths."""
    from huggingface_hub import CommitOperationAdd

    commits = [call for api in hub.instances for call in api.calls if call[0] == "create_commit"]
    assert len(commits) == 1
    operations = commits[0][2]
    added = {op.path_in_repo: op.path_or_fileobj for op in operations if isinstance(op, CommitOperationAdd)}
    deleted = [op.path_in_repo for op in operations if not isinstance(op, CommitOperationAdd)]
    return added, deleted


@pytest.mark.slow
def test_hub_one_commit_with_the_secret_blocks_token(
    tmp_path: Path, prefect_server: None, hub: type[FakeHub], caplog: pytest.LogCaptureFixture
) -> None:
    from prefect.blocks.system import Secret

    token, name = f"hf_{uuid.uuid4().hex}", f"mloc-hf-{uuid.uuid4().hex[:8]}"
    Secret(value=token).save(name)
    caplog.set_level(logging.DEBUG)

    result = upload(hf(private=False, credentials_block=name), stage(tmp_path, FILES), LINEAGE, base_dir=tmp_path)

    assert [api.token for api in hub.instances] == [token]
    assert hub.instances[0].calls[0] == ("create_repo", "my-org/tuned", {"private": False, "exist_ok": True})
    added, deleted = commit_of(hub)
    assert added.keys() == {*FILES, MANIFEST} and deleted == []
    assert Path(str(added["README.md"])).read_bytes() == FILES["README.md"]
    manifest = added[MANIFEST]
    assert isinstance(manifest, bytes) and json.loads(manifest)["files"] == manifest_entries(FILES)
    assert token not in manifest.decode()
    assert not [r for r in caplog.records if token in r.getMessage()]
    assert result.uri == f"hf://my-org/tuned@{'0123abcd' * 5}"


def test_hub_removes_files_of_the_previous_upload(
    tmp_path: Path, hub: type[FakeHub], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_worker_login")
    monkeypatch.setattr(FakeHub, "remote_files", [".gitattributes", MANIFEST, "README.md", "full_model/old.bin"])

    upload(hf(), stage(tmp_path, FILES), LINEAGE, base_dir=tmp_path)

    assert hub.instances[0].token == "hf_worker_login"
    assert hub.instances[0].calls[0][2] == {"private": True, "exist_ok": True}
    added, deleted = commit_of(hub)
    assert added.keys() == {*FILES, MANIFEST} and deleted == ["full_model/old.bin"]


def test_hub_check_writable_offline_says_it_needs_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UploadError, match=r"hf://my-org/tuned.*need network.*HF_HUB_OFFLINE"):
        check_writable(hf(), base_dir=tmp_path)


def test_hub_check_writable_wants_a_write_token(
    tmp_path: Path, hub: type[FakeHub], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(UploadError, match=r"no Hugging Face token .*hf://my-org/tuned — .*credentials_block"):
        check_writable(hf(), base_dir=tmp_path)

    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_worker_login")
    check_writable(hf(), base_dir=tmp_path)
    monkeypatch.setattr(FakeHub, "role", "read")
    with pytest.raises(UploadError, match="read-only"):
        check_writable(hf(), base_dir=tmp_path)


@pytest.mark.slow
def test_s3_a_stalled_store_fails_in_bounded_time_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An endpoint that accepts connections and then never answers (a frozen object store):
    each call gives up after the read timeout, the stall is logged, and the upload fails with
    a clear error instead of waiting forever."""
    import logging
    import socket
    import threading
    import time

    import blocks.credentials

    held: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept_and_hold() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # read nothing, answer nothing
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setattr(blocks.credentials, "S3_READ_TIMEOUT_S", 1)
    pauses: list[float] = []
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(UploadError, match=r"kept failing .* after 2 attempts"):
            upload(
                s3("frozen-bucket"),
                stage(tmp_path, FILES),
                LINEAGE,
                base_dir=tmp_path,
                sleep=pauses.append,
                retry=RetryPolicy(attempts=2),
            )
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()
    # 2 attempts of botocore's 3 tries of 1 s each, and no sleeping: bounded, not forever
    assert time.monotonic() - started < 30
    assert len(pauses) == 1 and all(0 <= p <= 30 for p in pauses)
    assert any("failed" in r.getMessage() and "retry 1" in r.getMessage() for r in caplog.records), caplog.text


# --- versions and the latest pointer -----------------------------------------------------------


def test_latest_pointer_names_the_versioned_upload(tmp_path: Path, bucket: str) -> None:
    from tasks.upload import LATEST, publish_latest, versioned

    for destination in (local("out"), s3(bucket, "runs")):
        run = versioned(destination, "v7")
        uploaded = upload(run, stage(tmp_path, FILES), LINEAGE, base_dir=tmp_path)
        where = publish_latest(destination, "v7", uploaded, base_dir=tmp_path)

        if isinstance(destination, LocalDestination):
            assert where == (tmp_path / "out" / LATEST).resolve().as_uri()
            pointer = json.loads((tmp_path / "out" / LATEST).read_bytes())
            assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LATEST, "versions"]  # no temp file left
        else:
            assert where == f"s3://{bucket}/runs/{LATEST}"
            pointer = json.loads(objects(bucket, f"runs/{LATEST}")[f"runs/{LATEST}"])
        assert pointer == {"version": "v7", "uri": uploaded.uri, "manifest": f"{uploaded.uri}/{MANIFEST}"}
        assert uploaded.uri.endswith("/versions/v7")
    assert publish_latest(hf(), "v7", uploaded, base_dir=tmp_path) is None
