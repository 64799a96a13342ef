"""The usage report's runs read straight from Prefect's database, for reports over many runs.

Through the API every run costs the server a whole FlowRun (its ORM row and state loaded,
~40 fields validated and serialised, the task's parameters included) and the client the
JSON of it: about 1,000 runs a second on two cores. Here one SELECT of the five columns
the report needs, through Prefect's own server models and filters (SQLite and PostgreSQL
alike), reads some 30,000 a second. ``benchmarks/usage_report.py`` measures both.

Who may use it: a process that holds the server's database connection string
(``PREFECT_SERVER_DATABASE_CONNECTION_URL``), such as `mloc api` deployed next to the
server (infra/k8s/40-mloc-api.yaml) or `mloc usage` on the machine of an embedded server.
Never the flow-run pods: they run users' code, which must not reach Prefect's database.

Consistency: it is one statement, so it reads one snapshot of the table (PostgreSQL
gives every statement its own; SQLite every read transaction), and no run is missed or
counted twice while runs are being added — the guarantee the API path needs keyset
paging for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Coroutine
from datetime import date
from typing import Any, TypeVar

from flows.pipeline import FLOW_NAME
from flows.usage_compute import BILLED_FLOWS, RunRecord, records, window

T = TypeVar("T")


class DatabaseMismatch(RuntimeError):
    """The database configured here is not the one behind PREFECT_API_URL."""


def read_runs(
    *,
    user: str | None = None,
    project: str | None = None,
    start_date: date,
    end_date: date,
    skipped: list[str] | None = None,
) -> list[RunRecord]:
    """The pipeline's flow runs that may overlap the window, each once: the same runs as
    ``flows.usage.read_runs`` reads through the API. Ids of runs whose MLOC tags are
    missing or contradictory are appended to ``skipped``."""
    rows = _sync(_select(user, project, start_date, end_date))
    return list(records(((str(i), tags, state.value, start, end) for i, tags, state, start, end in rows), skipped))


def check_same_server(client: Any) -> None:
    """Raise DatabaseMismatch unless this database holds the flow the API at ``client``
    knows as the pipeline's (the same id), or neither holds it. A report read from
    another database would be wrong without looking wrong; this catches a stale or
    mistyped connection string in one request."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    found = client.read_flows(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])))
    api_flow: uuid.UUID | None = found[0].id if found else None
    db_flow = _sync(_flow_id())
    if api_flow != db_flow:
        raise DatabaseMismatch(
            f"the database in PREFECT_SERVER_DATABASE_CONNECTION_URL is not the one behind PREFECT_API_URL "
            f"(flow {FLOW_NAME!r}: id {db_flow} there, {api_flow} through the API) — set it to the server's "
            "connection string, or read through the API with --source api"
        )


async def _select(user: str | None, project: str | None, start_date: date, end_date: date) -> list[Any]:
    import sqlalchemy as sa
    from prefect.server.database import provide_database_interface
    from prefect.server.schemas.filters import FlowRunFilterTags

    db = provide_database_interface()
    start, end = window(start_date, end_date)
    run = db.FlowRun
    # the same bounds as the API path: started before the window's end, not ended before its start
    query = (
        sa.select(run.id, run.tags, run.state_type, run.start_time, run.end_time)
        .join(db.Flow, db.Flow.id == run.flow_id)
        .where(
            db.Flow.name.in_(BILLED_FLOWS),
            run.start_time.is_not(None),
            run.start_time <= end,
            sa.or_(run.end_time.is_(None), run.end_time >= start),
        )
    )
    tags = [f"owner:{user}"] * (user is not None) + [f"project:{project}"] * (project is not None)
    if tags:
        query = query.where(FlowRunFilterTags(all_=tags).as_sql_filter())  # Prefect's own tag test, per dialect
    async with db.session_context() as session:
        return list((await session.execute(query)).all())


async def _flow_id() -> uuid.UUID | None:
    import sqlalchemy as sa
    from prefect.server.database import provide_database_interface

    db = provide_database_interface()
    async with db.session_context() as session:
        found: uuid.UUID | None = (
            await session.execute(sa.select(db.Flow.id).where(db.Flow.name == FLOW_NAME))
        ).scalar_one_or_none()
        return found


def database_shown() -> str:
    """The configured database's URL without its password, for messages."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL
    from sqlalchemy.engine import make_url

    return make_url(PREFECT_API_DATABASE_CONNECTION_URL.value()).render_as_string(hide_password=True)


def _sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end from sync code, also when this thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
