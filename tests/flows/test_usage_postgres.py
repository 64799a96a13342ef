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
from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest

from flows.usage_compute import compute
from tests.flows.usage_runs import SEP1, SEP2, create_runs, project_report, server_runs

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
    now = datetime.now(UTC)

    def report(user: str | None = None, project: str | None = None, first: date = SEP1, last: date = SEP2) -> dict:
        runs = usage_db.read_runs(user=user, project=project, start_date=first, end_date=last)
        return compute(runs, user=user, project=project, start_date=first, end_date=last, now=now)

    assert report(project=f"usage-test-{tag}") == project_report(tag)
    # the tag filters (JSONB containment here), alone and together
    assert report(f"alice-{tag}")["total_gpu_hours"] == pytest.approx(25.5, abs=1e-6)
    assert report(f"alice-{tag}", f"usage-test-{tag}")["total_gpu_hours"] == pytest.approx(15.5, abs=1e-6)
    assert report("nobody")["total_gpu_hours"] == 0
    # the window's edges on timestamptz: the next day alone
    third = report(project=f"usage-test-{tag}", first=date(2025, 9, 3), last=date(2025, 9, 3))
    assert third["total_gpu_hours"] == pytest.approx(3 * 4 + 24 * 6 + 4, abs=1e-6)
