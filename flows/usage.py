"""Usage accounting: GPU-hours per user, project, GPU type and task type, from the tags
and start/end times of the pipeline's flow runs (``flows.pipeline.run_tags``).

GPU-hours count what a run held, not what its task asked for. A run's ``gpu``,
``gpu-count`` and ``replicas`` tags say what the flow run's own worker holds: GPU type,
GPUs per node, and the nodes it runs itself (local multi-node runs start ``replicas``
torchrun nodes on one machine); a worker without GPUs is tagged ``gpu:none``,
``gpu-count:0``. GPUs held elsewhere during the run, such as a Kubeflow TrainJob's nodes,
are one tag per interval, ``held:<gpu-type>:<gpus>:<start>:<end>`` (``gpus`` = nodes ×
GPUs per node; start and end in whole Unix seconds, UTC; end ``open`` while held), made
by ``flows.usage_compute.held_tag``; closing an interval replaces its open tag
(``with_held``).

The rules, applied by ``flows.usage_compute.compute``:

- The window is whole UTC days: ``[start_date 00:00 UTC, end_date + 1 day 00:00 UTC)``.
- GPU-hours of a run = its own, hours of ``[start_time, end_time or now]`` inside the
  window × GPU count × replicas, plus, per held interval, hours of ``[start, end or now]``
  inside both the window and the run's own span × its GPUs; a run crossing an edge of
  the window counts its part inside. An interval counts only while the run ran: one left
  open by a run that ended stops at the run's end (nobody recorded past it).
- ``breakdown_by_gpu`` attributes the run's own hours to its worker's GPU type and each
  held interval's to its GPU type; the user, project and task-type breakdowns add up
  all of a run's hours. A run with only held hours (a CPU orchestrator) appears under
  the held GPU types.
- FAILED, CRASHED and CANCELLED runs count their GPU-hours (the GPUs were held) but are
  not completed tasks. A started run without an end time (running, paused, awaiting a
  retry) counts up to now. SCHEDULED and PENDING runs (no start time) count nothing.
- ``total_tasks_completed``: runs in state COMPLETED that ended inside the window, CPU
  tasks included.
- Runs that held no GPUs (GPU count 0 and no held interval, e.g. a GPU task that ran on
  a worker without GPUs) add no GPU-hours and appear in no breakdown; every breakdown
  lists only keys with GPU-hours above zero.
- Hours are rounded to 6 decimals only in the output. With a rate card (currency per
  GPU-hour by GPU type) the report adds ``cost``, by ``breakdown_by_gpu``; a GPU type
  without a rate is an error.
- Runs whose MLOC tags are missing, contradict each other or are malformed (a held tag
  that does not parse, ends before it starts, or disagrees with another tag of the same
  GPU type and start) are left out and counted in a warning: what they held cannot be
  known, and counting none of it would bill it as free. Of an interval's open and closed
  tags, were a run to carry both, the closed one counts.

Runs are read from the Prefect API (keyset-paged, ``read_runs``) or, by a process that
holds the server's database connection string, straight from Prefect's database
(``flows.usage_db``: ~30x faster, for reports over many runs; ``choose_source``). Both
read the same runs and give the same report.

The report is ``GET /api/v1/stats``'s shape from the product brief (``query_parameters``,
``total_gpu_hours``, ``total_tasks_completed``, ``breakdown_by_gpu``) plus
``breakdown_by_user``, ``breakdown_by_project``, ``breakdown_by_task_type`` and, with a
rate card, ``cost``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger

from flows import usage_output
from flows.deploy import deployment_fields
from flows.pipeline import FLOW_NAME
from flows.usage_compute import (
    BILLED_FLOWS,
    DEFAULT_CURRENCY,
    RunRecord,
    check_currency,
    check_rate_card,
    compute,
    records,
    window,
)
from flows.worker import LOCAL_POOL, queue_for

__all__ = [
    "RunRecord",
    "choose_source",
    "compute",
    "read_runs",
    "schedule_daily",
    "usage_report",
    "usage_report_flow",
]

SOURCES = ("api", "database")
Source = Literal["api", "database"]
SOURCE_ENV = "MLOC_USAGE_SOURCE"
REPORT_FLOW_NAME = "mloc-usage-report"
DEPLOYMENT_NAME = "daily"
ENTRYPOINT = "flows.usage.usage_report_flow"  # a module path: workers import the installed package
# Prefect's server refuses a page bigger than PREFECT_SERVER_API_DEFAULT_LIMIT (200 by default)
PAGE_SIZE = 200

log = logging.getLogger(__name__)


def read_runs(
    client: Any,
    *,
    user: str | None = None,
    project: str | None = None,
    start_date: date,
    end_date: date,
    page_size: int = PAGE_SIZE,
    skipped: list[str] | None = None,
) -> Iterator[RunRecord]:
    """The pipeline's flow runs that may overlap the window, each exactly once.

    Two server-side queries, because a filter cannot say "ended after the window's start
    OR has not ended": first the runs in progress (kept in memory: at most as many as the
    cluster runs at once), then the ended ones, streamed. A run that ends between the two
    reads is in both, and its ended version wins. Ids of runs of the pipeline flow whose
    MLOC tags are missing or contradictory are appended to ``skipped``.
    """
    from prefect.client.schemas.filters import FlowRunFilterEndTime, FlowRunFilterStartTime, FlowRunFilterTags

    start, end = window(start_date, end_date)
    tags = [f"owner:{user}"] * (user is not None) + [f"project:{project}"] * (project is not None)
    scope: dict[str, Any] = {
        "tags": FlowRunFilterTags(all_=tags) if tags else None,
        # is_null_=False: before_/after_ compare coalesce(start_time, expected_start_time)
        "start_time": FlowRunFilterStartTime(before_=end, is_null_=False),
    }
    in_progress = {
        r.id: r
        for r in _records(
            _pages(client, scope | {"end_time": FlowRunFilterEndTime(is_null_=True)}, "start_time", page_size), skipped
        )
    }
    ended = _pages(client, scope | {"end_time": FlowRunFilterEndTime(after_=start)}, "end_time", page_size)
    for record in _records(ended, skipped):
        in_progress.pop(record.id, None)
        yield record
    yield from in_progress.values()


def _records(runs: Iterator[dict[str, Any]], skipped: list[str] | None) -> Iterator[RunRecord]:
    rows = (
        (run["id"], run["tags"], run["state_type"] or "UNKNOWN", _time(run["start_time"]), _time(run["end_time"]))
        for run in runs
    )
    return records(rows, skipped)


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _pages(client: Any, scope: dict[str, Any], key: Literal["start_time", "end_time"], page_size: int) -> Iterator[Any]:
    """Keyset pagination, so runs added or changed while we read shift nothing.

    Offset paging would skip or repeat runs whenever one is inserted before the offset.
    Here the cursor is the last page's ``key``; the next page asks for runs at or past
    it, minus the ids already read at exactly that time (Prefect's sorts have no
    tie-breaker and its filters no ``id >``, so ties are excluded by id). Both keys are
    written once: start_time when a run first enters RUNNING, end_time when it enters a
    terminal state, so a run never moves behind the cursor.

    Ended runs are paged newest end first (END_TIME_DESC) with the cursor as an upper
    bound on end_time: the database then walks its end_time index from the cursor and
    stops after a page. Paging them by start time made it sort every run of the window
    again for each page, quadratic in the window's runs.

    Pages are read as JSON, not as ``client.read_flow_runs``'s FlowRun models: we need 5
    of their 40 fields, and validating the rest took a fifth of the report's time.
    """
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    sort, bound = (
        (FlowRunSort.START_TIME_ASC, "after_") if key == "start_time" else (FlowRunSort.END_TIME_DESC, "before_")
    )
    cursor: datetime | None = None
    at_cursor: list[Any] = []
    while True:
        keyed = scope[key] if cursor is None else scope[key].model_copy(update={bound: cursor})
        runs = FlowRunFilter(**(scope | {key: keyed}), id=FlowRunFilterId(not_any_=at_cursor) if at_cursor else None)
        body = {  # what client.read_flow_runs sends
            "flows": FlowFilter(name=FlowFilterName(any_=list(BILLED_FLOWS))).model_dump(mode="json"),
            "flow_runs": runs.model_dump(mode="json", exclude_unset=True),
            "sort": sort.value,
            "limit": page_size,
        }
        response = client.request("POST", "/flow_runs/filter", json=body)
        response.raise_for_status()
        page: list[dict[str, Any]] = response.json()
        yield from page
        if len(page) < page_size:
            return
        last = _time(page[-1][key])
        if last != cursor:
            cursor, at_cursor = last, []
        at_cursor += [run["id"] for run in page if _time(run[key]) == last]


def choose_source(source: str | None = None) -> Source:
    """Where the report reads runs: ``source``, else MLOC_USAGE_SOURCE, else "database"
    when no PREFECT_API_URL is set (the embedded server's database is on this machine,
    so reading it is the same as asking that server, only faster), else "api"."""
    from prefect.settings import get_current_settings

    chosen = source or os.environ.get(SOURCE_ENV) or ("api" if get_current_settings().api.url else "database")
    if chosen not in SOURCES:
        where = "source" if source else SOURCE_ENV
        raise ValueError(f"{where} {chosen!r} is not one of {', '.join(SOURCES)}")
    return chosen  # type: ignore[return-value]  # checked against SOURCES just above


def usage_report(
    user: str | None = None,
    project: str | None = None,
    *,
    start_date: date,
    end_date: date,
    rate_card: Mapping[str, float] | None = None,
    currency: str = DEFAULT_CURRENCY,
    source: str | None = None,
    logger: logging.Logger | logging.LoggerAdapter[Any] = log,
) -> dict[str, Any]:
    """The usage report, by the module's rules, from the runs in the Prefect API
    (PREFECT_API_URL) or, with source "database", in its database (flows.usage_db);
    ``choose_source`` says which when ``source`` is None. Both give the same report."""
    from prefect import get_client
    from prefect.settings import get_current_settings

    from flows import usage_db

    now = datetime.now(UTC)
    skipped: list[str] = []
    query: dict[str, Any] = {"user": user, "project": project, "start_date": start_date, "end_date": end_date}
    if choose_source(source) == "database":
        if get_current_settings().api.url:
            with get_client(sync_client=True) as client:
                usage_db.check_same_server(client)
        runs: Iterable[RunRecord] = usage_db.read_runs(**query, skipped=skipped)
        report = compute(runs, **query, now=now, rate_card=rate_card, currency=currency)
    else:
        with get_client(sync_client=True) as client:
            runs = read_runs(client, **query, skipped=skipped)
            report = compute(runs, **query, now=now, rate_card=rate_card, currency=currency)
    if skipped:
        logger.warning(
            "%d run(s) of flow %r left out: MLOC tags missing or contradictory (e.g. %s)",
            len(skipped),
            FLOW_NAME,
            skipped[0],
        )
    return report


# --- the flow ---------------------------------------------------------------------------------


def yesterday_utc() -> date:
    return datetime.now(UTC).date() - timedelta(days=1)


def load_rate_card(path: Path) -> dict[str, float]:
    """A JSON object of GPU type -> cost per GPU-hour; ValueError says what is wrong with it."""
    try:
        card = json.loads(path.read_text())
        if not isinstance(card, dict):
            raise ValueError("not a JSON object of GPU type -> cost per GPU-hour")
        return check_rate_card(card)
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"rate card {path}: {exc}") from exc


@flow(name=REPORT_FLOW_NAME)
def usage_report_flow(
    user: str | None = None,
    project: str | None = None,
    start_date: date | None = None,
    end_date: date | None = None,
    group_by: Literal["gpu", "user", "project", "task_type"] = "gpu",
    rate_card: dict[str, float] | None = None,
    currency: str = DEFAULT_CURRENCY,
) -> dict[str, Any]:
    """GPU-hours of MLOC runs over whole UTC days, published as a table and a markdown artifact;
    with a rate card (cost per GPU-hour by GPU type, in ``currency``), their cost.

    Without dates it reports yesterday (UTC), so a daily cron run reports the previous day;
    without an end date it reports the start date alone.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    start_date = start_date or yesterday_utc()
    end_date = end_date or start_date
    logger = get_run_logger()
    report = usage_report(
        user,
        project,
        start_date=start_date,
        end_date=end_date,
        rate_card=rate_card,
        currency=check_currency(currency),
        logger=logger,
    )
    key = usage_output.artifact_key(report)
    create_table_artifact(
        table=usage_output.rows(report, group_by),
        key=f"{key}-by-{group_by.replace('_', '-')}",
        description=f"GPU-hours by {group_by}, {start_date} to {end_date} (UTC)",
    )
    create_markdown_artifact(markdown=usage_output.markdown(report), key=key, description="MLOC GPU usage report")
    logger.info("%s GPU-hours, %d task(s) completed", report["total_gpu_hours"], report["total_tasks_completed"])
    return report


# --- the daily deployment ---------------------------------------------------------------------


def daily_deployment(cron: str, timezone: str, pool: str) -> dict[str, Any]:
    """What mloc-usage-report/daily should say, in deploy.deployment_fields' shape."""
    return {
        "work_pool_name": pool,
        # on the local process pool every `mloc worker` serves the cpu queue
        "work_queue_name": queue_for(None) if pool == LOCAL_POOL else "default",
        "entrypoint": ENTRYPOINT,
        "parameters": {},
        "job_variables": {},
        "tags": [],
        "schedules": [(cron, timezone, True)],
        "description": "MLOC GPU usage of the previous UTC day, as table and markdown artifacts.",
    }


def schedule_daily(client: Any, cron: str = "0 1 * * *", timezone: str = "UTC", pool: str = LOCAL_POOL) -> str:
    """Create or update the deployment mloc-usage-report/daily; returns "created", "updated"
    or "unchanged". Nothing is written when it already says this, so its scheduled runs stay."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.callables import parameter_schema

    wanted = daily_deployment(cron, timezone, pool)
    try:
        existing = client.read_deployment_by_name(f"{REPORT_FLOW_NAME}/{DEPLOYMENT_NAME}")
    except ObjectNotFound:
        existing = None
    if existing is not None and deployment_fields(existing) == wanted:
        return "unchanged"
    client.create_deployment(
        flow_id=client.create_flow_from_name(REPORT_FLOW_NAME),
        name=DEPLOYMENT_NAME,
        entrypoint=ENTRYPOINT,
        work_pool_name=pool,
        work_queue_name=wanted["work_queue_name"],
        parameters=wanted["parameters"],
        description=wanted["description"],
        schedules=[DeploymentScheduleCreate(schedule=CronSchedule(cron=cron, timezone=timezone), active=True)],
        parameter_openapi_schema=parameter_schema(usage_report_flow).model_dump_for_openapi(),
        enforce_parameter_schema=True,
    )
    return "updated" if existing is not None else "created"
