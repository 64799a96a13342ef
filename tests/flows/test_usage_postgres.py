"""The usage report's database source on a real PostgreSQL, the database Prefect's server
runs on in a cluster (infra/helm/prefect-server-values.yaml) and that `mloc api` reads
/stats from there (infra/k8s/40-mloc-api.yaml).

The other usage tests run on the harness's SQLite; Prefect's SQL differs per dialect
(tags are JSON in SQLite and JSONB in PostgreSQL, timestamps are text in one and
timestamptz in the other), so the same hand-computed scenario is read here from a
PostgreSQL server started for the session (tests/conftest.py), after Prefect's own
migrations built its schema.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from flows.usage_compute import compute
from tests.conftest import ROOT
from tests.flows import prefect_server
from tests.flows.api_server import september_stats, subprocess_env
from tests.flows.usage_runs import SEP1, SEP2, create_runs, held_report, held_runs, project_report, server_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres(postgres_url: str) -> Iterator[str]:
    """Prefect's database on the PostgreSQL server, its schema made by Prefect's migrations."""
    from prefect.server.database import provide_database_interface
    from prefect.server.database.dependencies import temporary_database_interface
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_DATABASE_CONNECTION_URL: postgres_url}),
        temporary_database_interface(),  # every part inferred again: the PostgreSQL dialect's
    ):
        asyncio.run(provide_database_interface().create_db())
        yield postgres_url


def test_the_database_source_reads_postgresql(postgres: str) -> None:
    from prefect.server.database import provide_database_interface

    from flows import usage_db

    assert provide_database_interface().database_config.connection_url == postgres
    tag = "pg"
    create_runs(server_runs(tag))  # through Prefect's orchestration, into PostgreSQL
    create_runs(held_runs(tag))  # and runs whose GPUs were held elsewhere (a TrainJob's nodes)
    now = datetime.now(UTC)

    def report(user: str | None = None, project: str | None = None, first: date = SEP1, last: date = SEP2) -> dict:
        runs = usage_db.read_runs(user=user, project=project, start_date=first, end_date=last)
        return compute(runs, user=user, project=project, start_date=first, end_date=last, now=now)

    assert report(project=f"usage-test-{tag}") == project_report(tag)
    assert report(project=f"held-{tag}") == held_report(tag)
    # the tag filters (JSONB containment here), alone and together
    assert report(f"alice-{tag}")["total_gpu_hours"] == pytest.approx(25.5, abs=1e-6)
    assert report(f"alice-{tag}", f"usage-test-{tag}")["total_gpu_hours"] == pytest.approx(15.5, abs=1e-6)
    assert report("nobody")["total_gpu_hours"] == 0
    # the window's edges on timestamptz: the next day alone
    third = report(project=f"usage-test-{tag}", first=date(2025, 9, 3), last=date(2025, 9, 3))
    assert third["total_gpu_hours"] == pytest.approx(3 * 4 + 24 * 6 + 4, abs=1e-6)


@pytest.fixture(scope="module")
def prefect_on_postgres(
    postgres: str, port_picker: Callable[[], int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`prefect server start` on the PostgreSQL database, as infra/helm runs it; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-pg")
    port = port_picker()
    url = f"http://127.0.0.1:{port}/api"
    env = subprocess_env(url, home, PREFECT_SERVER_DATABASE_CONNECTION_URL=postgres)
    del env["PREFECT_API_URL"]  # the server's own process needs none
    with prefect_server.running(env, port, home / "server.log"):
        yield url


@pytest.fixture(scope="module")
def usage_role(postgres: str) -> str:
    """The read-only role infra/README.md has the facade read with, made by the runbook's own
    SQL; yields its connection URL."""
    import asyncpg
    from sqlalchemy.engine import make_url

    runbook = (ROOT / "infra" / "README.md").read_text()
    sql = runbook.split("<<'SQL'\n", 1)[1].split("\nSQL\n", 1)[0]
    assert "GRANT SELECT ON flow, flow_run TO mloc_usage" in sql
    password = "usage-test-password"
    url = make_url(postgres)
    statements = [
        s.strip().replace(":'pw'", f"'{password}'").replace("DATABASE prefect", f"DATABASE {url.database}")
        for s in sql.split(";")
        if s.strip()
    ]

    async def run() -> None:
        conn = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database=url.database)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())
    return url.set(username="mloc_usage", password=password).render_as_string(hide_password=False)


def test_the_usage_role_reads_only_what_the_report_needs(usage_role: str) -> None:
    """It can run the report's SELECT, and nothing else of Prefect's: no other table, no write."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(usage_role)

    async def run() -> list[str]:
        conn = await asyncpg.connect(
            host=url.host, port=url.port, user=url.username, password=url.password, database=url.database
        )
        refused = []
        try:
            await conn.fetch("SELECT id, tags, state_type, start_time, end_time FROM flow_run LIMIT 1")
            for statement in ("SELECT * FROM block_document LIMIT 1", "DELETE FROM flow_run", "DROP TABLE flow"):
                try:
                    await conn.execute(statement)
                except asyncpg.InsufficientPrivilegeError:
                    refused.append(statement)
        finally:
            await conn.close()
        return refused

    assert len(asyncio.run(run())) == 3


@pytest.mark.parametrize("source", ["api", "database"])
def test_stats_as_deployed_server_and_facade_on_postgresql(
    source: str, prefect_on_postgres: str, usage_role: str, port_picker: Callable[[], int], tmp_path: Path
) -> None:
    """The cluster's topology (infra/): Prefect's server on PostgreSQL, `mloc api` answering
    /stats through the server's API or straight from its database as the runbook's
    read-only role — the same hand-computed figures either way, and the check that the
    database is the server's passes."""
    tag = f"pg-{source}"
    create_runs(server_runs(tag))
    env = {"MLOC_USAGE_SOURCE": source}
    if source == "database":
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = usage_role
    stats = september_stats(prefect_on_postgres, port_picker(), tmp_path, f"usage-test-{tag}", **env)
    assert stats == project_report(tag)
