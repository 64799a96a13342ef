"""Shared fixtures: a real Prefect server, a real S3 endpoint (moto's server), offline HF."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

# No test reaches the Hugging Face Hub: this machine has no network, and CI must not depend on one.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def port_picker() -> Callable[[], int]:
    """A free loopback port each call, for servers a test starts itself."""
    return free_port


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A real Prefect API (Prefect's own test harness: a temporary database and server)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server on a loopback port, started from the system's PostgreSQL
    binaries (.ci/run installs Debian's postgresql when they are missing) in a fresh data
    directory, with trust auth and nothing in it; yields an asyncpg URL of its database."""
    import glob
    import shutil
    import subprocess
    import tempfile

    found = shutil.which("initdb") or max(glob.glob("/usr/lib/postgresql/*/bin/initdb"), default=None)
    if found is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine; .ci/run installs them")
    bin_dir = Path(found).resolve().parent
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="mloc-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(data, "postgres", "postgres")
    port = free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    pg(str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-o", options, "-l", str(data / "log"), "-w", "start")
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        pg(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop")
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint on loopback: moto's server, spoken to over HTTP with boto3."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_block(prefect_server: None, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    """A bucket on the moto server and a saved AwsCredentials block reaching it, both named
    the returned name, plus a boto3 client of the bucket's own. The worker's own chain is
    emptied: only the block knows where the store is (boto3 would otherwise try real AWS)."""
    import uuid

    import boto3
    from prefect_aws import AwsCredentials

    for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    name = f"mloc-s3-{uuid.uuid4().hex[:8]}"
    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    AwsCredentials(**keys, aws_client_parameters={"endpoint_url": s3_endpoint}).save(name)
    client = boto3.client("s3", endpoint_url=s3_endpoint, **keys)
    client.create_bucket(Bucket=name)
    return name, client


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """boto3's default chain pointed at the moto server (tasks without a credentials_block)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_endpoint
