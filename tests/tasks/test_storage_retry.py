"""The one retry policy of tasks.storage, met from both directions: fetching (tasks.download)
and publishing (tasks.upload) retry exactly the same errors, with the same waits, and give up
after the same number of attempts.

S3 is moto's server spoken to with boto3; faults are injected by a wrapper around the real
client whose first calls of one method raise what S3 raises under load, the way boto3 hands
it over (``upload_file`` wraps a ClientError in S3UploadFailedError). The Hub cannot be
reached from tests, so there ``HfApi`` is a fake that fails its first commits.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from configs.models import HuggingFaceDestination, S3Destination, S3Source
from tasks.download import DownloadError, RetryPolicy, fetch
from tasks.storage import s3 as s3_mod
from tasks.storage.s3 import S3_TRANSIENT_CODES, transient
from tasks.upload import MANIFEST, UploadError, upload

Error = Callable[[], Exception]


def client_error(code: str, status: int) -> Error:
    from botocore.exceptions import ClientError

    def make() -> Exception:
        return ClientError(
            {"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
        )

    return make


def connection_lost() -> Exception:
    from botocore.exceptions import EndpointConnectionError

    return EndpointConnectionError(endpoint_url="http://s3")


def read_timeout() -> Exception:
    from botocore.exceptions import ReadTimeoutError

    return ReadTimeoutError(endpoint_url="http://s3")


def truncated_body() -> Exception:
    from botocore.exceptions import IncompleteReadError

    return IncompleteReadError(actual_bytes=1, expected_bytes=2)


def transfer_retries_exceeded() -> Exception:
    from boto3.exceptions import RetriesExceededError

    return RetriesExceededError(last_exception=read_timeout())


def no_credentials() -> Exception:
    from botocore.exceptions import NoCredentialsError

    return NoCredentialsError()


def not_boto() -> Exception:
    return ValueError("a bug, not the network")


#: (label, error, retried): every transient code, status-only transients, and the permanent ones
CASES: list[tuple[str, Error, bool]] = [
    *[(code, client_error(code, 400 if code != "503" else 503), True) for code in sorted(S3_TRANSIENT_CODES)],
    ("any-429", client_error("SomethingNew", 429), True),
    ("any-5xx", client_error("BadGateway", 502), True),
    ("connection-lost", connection_lost, True),
    ("read-timeout", read_timeout, True),
    ("truncated-body", truncated_body, True),
    ("transfer-retries-exceeded", transfer_retries_exceeded, True),
    ("AccessDenied", client_error("AccessDenied", 403), False),
    ("InvalidAccessKeyId", client_error("InvalidAccessKeyId", 403), False),
    ("SignatureDoesNotMatch", client_error("SignatureDoesNotMatch", 403), False),
    ("NoSuchBucket", client_error("NoSuchBucket", 404), False),
    ("BadDigest", client_error("BadDigest", 400), False),
    ("no-credentials", no_credentials, False),
    ("not-boto", not_boto, False),
]


class Flaky:
    """The real S3 client; the first ``failures`` calls of ``method`` raise ``error()`` instead."""

    def __init__(self, client: Any, method: str, error: Error, failures: int) -> None:
        self._client, self._method, self._error, self.left = client, method, error, failures
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name != self._method:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.left > 0:
                self.left -= 1
                raise self._wrapped()
            return real(*args, **kwargs)

        return call

    def _wrapped(self) -> Exception:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import ClientError

        error = self._error()
        if self._method != "upload_file" or not isinstance(error, ClientError):
            return error
        try:  # as boto3's upload_file does: only the text survives, the ClientError is the context
            raise error
        except ClientError as exc:
            try:
                raise S3UploadFailedError(f"Failed to upload: {exc}")
            except S3UploadFailedError as wrapped:
                return wrapped


class Sleeps(list[float]):
    def policy(self, attempts: int = 5, **kwargs: Any) -> RetryPolicy:
        kwargs.setdefault("jitter", lambda ceiling: ceiling)  # each pause is its ceiling
        return RetryPolicy(attempts=attempts, sleep=self.append, **kwargs)


@pytest.fixture
def bucket(s3_env: str) -> str:
    import boto3

    name = f"mloc-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=name)
    client.put_object(Bucket=name, Key="data/a.jsonl", Body=b"a\n")
    return name


@pytest.fixture
def inject(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Error, int], Flaky]:
    """Every S3 client tasks.storage makes from now on fails like this; returns the wrapper."""

    def install(method: str, error: Error, failures: int) -> Flaky:
        import boto3

        flaky = Flaky(boto3.client("s3"), method, error, failures)
        monkeypatch.setattr(s3_mod, "s3_client", lambda block: flaky)
        return flaky

    return install


def fetch_s3(bucket: str, tmp_path: Path, policy: RetryPolicy) -> Any:
    source = S3Source.model_validate({"type": "s3", "bucket": bucket, "path": "data"})
    return fetch(
        source, kind="dataset", base_dir=tmp_path, cache_dir=tmp_path / f"cache-{uuid.uuid4().hex[:6]}", retry=policy
    )


def upload_s3(bucket: str, tmp_path: Path, policy: RetryPolicy) -> Any:
    staging = tmp_path / f"staging-{uuid.uuid4().hex[:6]}"
    staging.mkdir()
    (staging / "README.md").write_bytes(b"# card\n")
    destination = S3Destination.model_validate({"type": "s3", "bucket": bucket, "path": f"out-{uuid.uuid4().hex[:6]}"})
    return upload(destination, staging, {"task_hash": "3f2a"}, base_dir=tmp_path, retry=policy)


@pytest.mark.parametrize(("label", "error", "retried"), CASES, ids=[c[0] for c in CASES])
def test_download_and_upload_retry_the_same_errors(
    bucket: str, tmp_path: Path, inject: Callable[[str, Error, int], Flaky], label: str, error: Error, retried: bool
) -> None:
    assert transient(error()) is retried

    down_sleeps, down = Sleeps(), inject("download_file", error, 2)
    if retried:
        fetched = fetch_s3(bucket, tmp_path, down_sleeps.policy())
        assert (Path(fetched.path) / "a.jsonl").read_bytes() == b"a\n"
    else:
        with pytest.raises((DownloadError, type(error()))):
            fetch_s3(bucket, tmp_path, down_sleeps.policy())

    up_sleeps, up = Sleeps(), inject("upload_file", error, 2)
    if retried:
        assert upload_s3(bucket, tmp_path, up_sleeps.policy()).files == ["README.md", MANIFEST]
    else:
        with pytest.raises((UploadError, type(error()))):
            upload_s3(bucket, tmp_path, up_sleeps.policy())

    # the same decision, the same waits, the same number of calls on either side
    assert down_sleeps == up_sleeps == ([1.0, 2.0] if retried else [])
    assert down.calls == up.calls == (3 if retried else 1)


def test_both_directions_give_up_after_the_last_attempt(
    bucket: str, tmp_path: Path, inject: Callable[[str, Error, int], Flaky]
) -> None:
    slow_down = client_error("SlowDown", 503)

    down_sleeps, down = Sleeps(), inject("download_file", slow_down, 99)
    with pytest.raises(DownloadError, match=r"download of s3://.*/data/a\.jsonl: gave up after 3 attempts"):
        fetch_s3(bucket, tmp_path, down_sleeps.policy(attempts=3))

    up_sleeps, up = Sleeps(), inject("upload_file", slow_down, 99)
    with pytest.raises(UploadError, match=r"kept failing \(SlowDown\) after 3 attempts"):
        upload_s3(bucket, tmp_path, up_sleeps.policy(attempts=3))

    assert down.calls == up.calls == 3
    assert down_sleeps == up_sleeps == [1.0, 2.0]


def test_one_attempt_means_no_retry(bucket: str, tmp_path: Path, inject: Callable[[str, Error, int], Flaky]) -> None:
    sleeps, flaky = Sleeps(), inject("upload_file", client_error("SlowDown", 503), 1)
    with pytest.raises(UploadError, match="after 1 attempts"):
        upload_s3(bucket, tmp_path, sleeps.policy(attempts=1))
    assert (flaky.calls, sleeps) == (1, [])
    with pytest.raises(ValueError, match="at least 1 attempt"):
        RetryPolicy(attempts=0)


def test_backoff_is_full_jitter_under_a_capped_ceiling(
    bucket: str, tmp_path: Path, inject: Callable[[str, Error, int], Flaky]
) -> None:
    """Real jitter (no stand-in): every pause lies in [0, min(cap, base·2ⁿ)], on both sides."""
    ceilings = [min(3.0, 0.5 * 2**n) for n in range(7)]  # 0.5, 1, 2, 3, 3, 3, 3
    for method, run, failure in (
        ("download_file", fetch_s3, DownloadError),
        ("upload_file", upload_s3, UploadError),
    ):
        sleeps = Sleeps()
        inject(method, client_error("InternalError", 500), 99)
        policy = RetryPolicy(attempts=8, base_s=0.5, cap_s=3.0, sleep=sleeps.append)
        with pytest.raises(failure):
            run(bucket, tmp_path, policy)
        assert len(sleeps) == 7
        assert all(0 <= pause <= ceiling for pause, ceiling in zip(sleeps, ceilings, strict=True)), sleeps
    draws = [RetryPolicy().jitter(RetryPolicy().ceiling(n)) for n in range(10) for _ in range(50)]
    assert all(0 <= d <= 30 for d in draws) and max(draws) > 16  # the default caps at 30 s


def test_each_retry_is_logged_with_the_s3_code(
    bucket: str, tmp_path: Path, inject: Callable[[str, Error, int], Flaky], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tasks.storage.retry")
    inject("download_file", client_error("SlowDown", 503), 1)
    fetch_s3(bucket, tmp_path, Sleeps().policy())
    inject("upload_file", client_error("SlowDown", 503), 1)
    upload_s3(bucket, tmp_path, Sleeps().policy())

    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"download of s3://{bucket}/data/a.jsonl failed (SlowDown); retry 1 in 1.0 s")
    assert lines[1].startswith(f"S3 upload at s3://{bucket}/out-") and "failed (SlowDown); retry 1 in 1.0 s" in lines[1]


def test_the_sleep_keyword_of_upload_replaces_only_the_pause(
    bucket: str, tmp_path: Path, inject: Callable[[str, Error, int], Flaky]
) -> None:
    pauses: list[float] = []
    inject("upload_file", client_error("SlowDown", 503), 2)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "README.md").write_bytes(b"# card\n")
    destination = S3Destination.model_validate({"type": "s3", "bucket": bucket, "path": "out"})

    upload(destination, staging, {}, base_dir=tmp_path, sleep=pauses.append)

    assert len(pauses) == 2 and 0 <= pauses[0] <= 1.0 and 0 <= pauses[1] <= 2.0  # the default policy's ceilings


# --- the Hub: the same policy for its transient answers -----------------------------------------


class FailingHub:
    """Stands in for ``huggingface_hub.HfApi``; its first commits fail with ``statuses``."""

    statuses: ClassVar[list[int]] = []
    commits: ClassVar[int] = 0

    def __init__(self, token: str | None = None, **_: Any) -> None:
        self.token = token

    def create_repo(self, repo_id: str, **_: Any) -> None:
        pass

    def list_repo_files(self, repo_id: str, **_: Any) -> list[str]:
        return [".gitattributes"]

    def create_commit(self, repo_id: str, operations: list[Any], **_: Any) -> Any:
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError

        type(self).commits += 1
        if self.statuses:
            status = self.statuses.pop(0)
            request = httpx2.Request("POST", f"https://huggingface.co/api/models/{repo_id}/commit/main")
            raise HfHubHTTPError(f"{status} answer", response=httpx2.Response(status, request=request))
        return type("CommitInfo", (), {"oid": "0123abcd" * 5})()


@pytest.mark.parametrize(
    ("statuses", "outcome", "pauses"),
    [
        ([503, 429], None, [1.0, 2.0]),
        ([503] * 3, r"refused the upload to hf://my-org/tuned \(HTTP 503\)", [1.0, 2.0]),
        ([403], "may not write", []),
    ],
    ids=["transient-then-ok", "gives-up", "permanent"],
)
def test_hub_upload_retries_transient_answers_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, statuses: list[int], outcome: str | None, pauses: list[float]
) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(huggingface_hub, "HfApi", FailingHub)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_worker_login")
    monkeypatch.setattr(FailingHub, "statuses", list(statuses))
    monkeypatch.setattr(FailingHub, "commits", 0)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "README.md").write_bytes(b"# card\n")
    destination = HuggingFaceDestination.model_validate({"type": "huggingface", "identifier": "my-org/tuned"})
    sleeps = Sleeps()

    if outcome is None:
        assert upload(destination, staging, {}, base_dir=tmp_path, retry=sleeps.policy(attempts=3)).uri.startswith(
            "hf://my-org/tuned@"
        )
    else:
        with pytest.raises(UploadError, match=outcome):
            upload(destination, staging, {}, base_dir=tmp_path, retry=sleeps.policy(attempts=3))
    assert sleeps == pauses
    assert FailingHub.commits == len(pauses) + 1
