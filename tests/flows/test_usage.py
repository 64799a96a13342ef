"""Usage accounting: the rules on hand-computed figures, then the same figures read from a
real Prefect server through its API (keyset paging included) and from its database, the
usage-report flow and `mloc usage`. How the server's runs are made: usage_runs.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import functools
import io
import json
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.usage_compute import RunRecord, compute, gpu_hours, window
from tests.flows.usage_runs import (
    A100,
    H100,
    L40S,
    SEP1,
    SEP2,
    Run,
    at,
    create_runs,
    held_report,
    held_runs,
    insert_ended_runs,
    project_report,
    server_runs,
)

# --- the rules, on records --------------------------------------------------------------------


def record(
    state: str,
    start: datetime | None,
    end: datetime | None,
    gpu: str | None = A100,
    count: int = 1,
    replicas: int = 1,
    owner: str = "alice",
    project: str = "llm",
    task_type: str = "sft",
) -> RunRecord:
    return RunRecord(
        id=str(uuid.uuid4()),
        owner=owner,
        project=project,
        task_type=task_type,
        gpu_type=gpu,
        gpu_count=count if gpu else 0,
        replicas=replicas,
        state_type=state,
        start_time=start,
        end_time=end,
    )


NOW = at(2, 21.5)  # 2025-09-02 21:30 UTC, inside the window SEP1..SEP2
RUNS = [
    # crosses the window's start: 22:00 the day before to 02:00, 4 GPUs -> 2 h x 4 = 8
    record("COMPLETED", at(31, 22, month=8), at(1, 2), count=4),
    # crosses its end: 23:00 to 03:00 the day after, 2 GPUs x 2 replicas -> 1 h x 4 = 4, not completed in it
    record("COMPLETED", at(2, 23), at(3, 3), gpu=H100, count=2, replicas=2, owner="bob"),
    # failed 2.5 h on 1 GPU; crashed 15 min on 8; cancelled 1 h on 2: hours count, no completion
    record("FAILED", at(1, 10), at(1, 12.5), owner="bob", task_type="dpo"),
    record("CRASHED", at(2, 0), at(2, 0.25), gpu=L40S, count=8, project="rag"),
    record("CANCELLED", at(1, 5), at(1, 6), count=2),
    # running since 20:00 on 2 GPUs x 3 replicas: to NOW (21:30) -> 1.5 h x 6 = 9
    record("RUNNING", at(2, 20), None, gpu=H100, count=2, replicas=3, owner="bob"),
    # a CPU task: no GPU-hours, but a completed task
    record("COMPLETED", at(1, 8), at(1, 9), gpu=None, task_type="rag_inference"),
    # inside: 1.5 h on 1 GPU, completed
    record("COMPLETED", at(1, 12), at(1, 13.5)),
    # scheduled / pending: no start, nothing
    record("PENDING", None, None, count=8),
    record("SCHEDULED", None, None, count=8),
    # before the window, and after it
    record("COMPLETED", at(30, 0, month=8), at(31, 0, month=8), count=8),
    record("COMPLETED", at(3, 1), at(3, 2), count=4),
    # cancelled before it ran: Prefect sets start_time == end_time
    record("CANCELLED", at(1, 7), at(1, 7), count=8),
]


def test_compute_on_hand_computed_figures() -> None:
    report = compute(RUNS, start_date=SEP1, end_date=SEP2, now=NOW)
    assert report == {
        "query_parameters": {"start_date": "2025-09-01", "end_date": "2025-09-02"},
        # 8 + 4 + 2.5 + 2 + 2 + 9 + 1.5
        "total_gpu_hours": pytest.approx(29.0, abs=1e-6),
        "total_tasks_completed": 3,
        "breakdown_by_gpu": {
            A100: pytest.approx(8 + 2.5 + 2 + 1.5, abs=1e-6),
            H100: pytest.approx(4 + 9, abs=1e-6),
            L40S: pytest.approx(2, abs=1e-6),
        },
        "breakdown_by_user": {"alice": pytest.approx(8 + 2 + 2 + 1.5, abs=1e-6), "bob": pytest.approx(15.5, abs=1e-6)},
        "breakdown_by_project": {"llm": pytest.approx(27, abs=1e-6), "rag": pytest.approx(2, abs=1e-6)},
        "breakdown_by_task_type": {"dpo": pytest.approx(2.5, abs=1e-6), "sft": pytest.approx(26.5, abs=1e-6)},
    }
    assert list(report) == [
        "query_parameters",
        "total_gpu_hours",
        "total_tasks_completed",
        "breakdown_by_gpu",
        "breakdown_by_user",
        "breakdown_by_project",
        "breakdown_by_task_type",
    ]


def test_a_running_run_counts_to_now_but_not_past_the_window() -> None:
    running = record("RUNNING", at(2, 20), None, count=2)
    assert compute([running], start_date=SEP1, end_date=SEP2, now=at(2, 23))["total_gpu_hours"] == pytest.approx(6)
    # once the window is over, it counts to the window's end (midnight), however late "now" is
    later = at(10, 0)
    assert compute([running], start_date=SEP1, end_date=SEP2, now=later)["total_gpu_hours"] == pytest.approx(8)
    assert compute([running], start_date=SEP1, end_date=SEP2, now=later)["total_tasks_completed"] == 0


def test_a_completed_run_ending_after_the_window_is_clipped_and_completes_in_the_next() -> None:
    crossing = record("COMPLETED", at(2, 22), at(3, 1), count=2)
    this = compute([crossing], start_date=SEP1, end_date=SEP2, now=NOW)
    after = compute([crossing], start_date=date(2025, 9, 3), end_date=date(2025, 9, 3), now=NOW)
    assert (this["total_gpu_hours"], this["total_tasks_completed"]) == (pytest.approx(4), 0)
    assert (after["total_gpu_hours"], after["total_tasks_completed"]) == (pytest.approx(2), 1)
    # the window is whole days: an end at exactly midnight belongs to the next day
    at_midnight = record("COMPLETED", at(2, 23), at(3, 0))
    assert compute([at_midnight], start_date=SEP1, end_date=SEP2, now=NOW)["total_tasks_completed"] == 0


def test_cpu_runs_add_no_gpu_hours_and_no_breakdown_keys() -> None:
    cpu = record("COMPLETED", at(1, 1), at(1, 9), gpu=None, owner="carol")
    report = compute([cpu], start_date=SEP1, end_date=SEP1, now=NOW)
    assert report["total_gpu_hours"] == 0 and report["total_tasks_completed"] == 1
    assert json.dumps(report["total_gpu_hours"]) == "0.0"  # a number of hours, the same type with or without runs
    assert report["breakdown_by_gpu"] == report["breakdown_by_user"] == {}


def test_replicas_times_gpu_count() -> None:
    run = record("COMPLETED", at(1, 0), at(1, 0.5), gpu=H100, count=8, replicas=4)
    assert gpu_hours(run, *window(SEP1, SEP1), NOW) == pytest.approx(0.5 * 8 * 4)


def test_user_and_project_filters() -> None:
    by_bob = compute(RUNS, user="bob", start_date=SEP1, end_date=SEP2, now=NOW)
    assert by_bob["query_parameters"] == {"user": "bob", "start_date": "2025-09-01", "end_date": "2025-09-02"}
    assert by_bob["total_gpu_hours"] == pytest.approx(4 + 2.5 + 9)
    assert by_bob["breakdown_by_user"] == {"bob": pytest.approx(15.5)}
    assert by_bob["total_tasks_completed"] == 0
    rag = compute(RUNS, project="rag", start_date=SEP1, end_date=SEP2, now=NOW)
    assert rag["breakdown_by_gpu"] == {L40S: pytest.approx(2)}
    both = compute(RUNS, user="alice", project="rag", start_date=SEP1, end_date=SEP2, now=NOW)
    assert list(both["query_parameters"]) == ["user", "project", "start_date", "end_date"]
    assert both["total_gpu_hours"] == pytest.approx(2)
    assert compute(RUNS, user="nobody", start_date=SEP1, end_date=SEP2, now=NOW)["total_gpu_hours"] == 0


def test_rate_card_cost() -> None:
    rates = {A100: 2.5, H100: 4.0, L40S: 1.25, "nvidia-t4": 0.3}
    report = compute(RUNS, start_date=SEP1, end_date=SEP2, now=NOW, rate_card=rates)
    assert report["cost"] == {
        "total": pytest.approx(14 * 2.5 + 13 * 4.0 + 2 * 1.25),
        "by_gpu": {A100: pytest.approx(35.0), H100: pytest.approx(52.0), L40S: pytest.approx(2.5)},
        "currency_per_gpu_hour": rates,
        "currency": "USD",
    }
    in_euro = compute(RUNS, start_date=SEP1, end_date=SEP2, now=NOW, rate_card=rates, currency="EUR")
    assert in_euro["cost"]["currency"] == "EUR" and in_euro["cost"]["total"] == report["cost"]["total"]
    with pytest.raises(ValueError, match=f"no rate for GPU type.*{L40S}"):
        compute(RUNS, start_date=SEP1, end_date=SEP2, now=NOW, rate_card={A100: 1.0, H100: 1.0})
    with pytest.raises(ValueError, match=r"non-negative number per GPU type; wrong: 'nvidia-t4': -0\.3"):
        compute(RUNS, start_date=SEP1, end_date=SEP2, now=NOW, rate_card=rates | {"nvidia-t4": -0.3})


def test_hours_are_rounded_only_in_the_output() -> None:
    # three runs of 20 minutes: 1/3 h each; rounding each first would give 0.999999
    runs = [record("COMPLETED", at(1, h), at(1, h + 1 / 3)) for h in (1, 2, 3)]
    assert compute(runs, start_date=SEP1, end_date=SEP1, now=NOW)["total_gpu_hours"] == 1.0
    assert compute(runs[:1], start_date=SEP1, end_date=SEP1, now=NOW)["total_gpu_hours"] == 0.333333


def test_bad_queries_are_refused() -> None:
    with pytest.raises(ValueError, match="before start_date"):
        compute([], start_date=SEP2, end_date=SEP1, now=NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        compute([], start_date=SEP1, end_date=SEP1, now=datetime(2025, 9, 1))


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["owner:a", "project:p", "task-type:sft", "gpu:none", "gpu-count:0", "replicas:1", "other"], (None, 0)),
        (["owner:a", "project:p", "task-type:sft", "gpu:nvidia-t4", "gpu-count:2", "replicas:3"], ("nvidia-t4", 2)),
        (["owner:a", "project:p", "task-type:sft", "gpu:nvidia-t4", "gpu-count:2"], None),  # replicas missing
        (["owner:a", "project:p", "task-type:sft", "gpu:x", "gpu-count:two", "replicas:1"], None),
        # a UI run with edited parameters keeps the deployment's tags too: which GPUs it held is unknown
        (["owner:a", "project:p", "task-type:sft", "gpu:x", "gpu-count:2", "gpu-count:8", "replicas:1"], None),
    ],
)
def test_records_from_tags(tags: list[str], expected: tuple[str | None, int] | None) -> None:
    made = RunRecord.from_tags("id", tags, "COMPLETED", None, None)
    assert (made if made is None else (made.gpu_type, made.gpu_count)) == expected


# --- on a real Prefect server -----------------------------------------------------------------


@pytest.fixture(scope="module")
def scenario(prefect_server: None) -> tuple[str, list[str]]:
    tag = uuid.uuid4().hex[:8]
    return tag, create_runs(server_runs(tag) + held_runs(tag))  # held_runs last: tests index server_runs' ids


@pytest.mark.slow
def test_server_computes_start_and_end_from_the_state_timestamps(scenario: tuple[str, list[str]]) -> None:
    from prefect import get_client

    _, ids = scenario
    with get_client(sync_client=True) as client:
        crossing, running, pending = (client.read_flow_run(ids[i]) for i in (0, 5, 8))
    assert (crossing.start_time, crossing.end_time, crossing.state_type.value) == (
        at(31, 22, month=8),
        at(1, 2),
        "COMPLETED",
    )
    assert (running.start_time, running.end_time, running.state_type.value) == (at(2, 20), None, "RUNNING")
    assert (pending.start_time, pending.end_time) == (None, None)


SOURCES = pytest.mark.parametrize("source", ["api", "database"])


@pytest.mark.slow
@SOURCES
def test_usage_report_on_the_server_matches_the_hand_computed_figures(
    scenario: tuple[str, list[str]], source: str, caplog: pytest.LogCaptureFixture
) -> None:
    from flows import usage

    usage_report = functools.partial(usage.usage_report, source=source)
    tag, _ = scenario
    alice, bob, project = f"alice-{tag}", f"bob-{tag}", f"usage-test-{tag}"
    assert usage_report(project=project, start_date=SEP1, end_date=SEP2) == project_report(tag)
    # GPUs held off the worker (held tags), read the same from either source; the run
    # whose held tag does not parse is left out and counted
    with caplog.at_level("WARNING", logger="flows.usage"):
        assert usage_report(project=f"held-{tag}", start_date=SEP1, end_date=SEP2) == held_report(tag)
    assert "1 run(s) of flow 'mloc' left out" in caplog.text
    by_alice = usage_report(alice, start_date=SEP1, end_date=SEP2)
    assert by_alice["total_gpu_hours"] == pytest.approx(25.5, abs=1e-6)
    assert by_alice["total_tasks_completed"] == 4
    assert by_alice["breakdown_by_project"] == {
        f"other-{tag}": pytest.approx(10, abs=1e-6),
        project: pytest.approx(15.5, abs=1e-6),
    }
    alice_in_project = usage_report(alice, project, start_date=SEP1, end_date=SEP2)
    assert (alice_in_project["total_gpu_hours"], alice_in_project["total_tasks_completed"]) == (15.5, 3)
    # the next day: the crossing run's last 3 h, a whole day of the running one, the late run
    third = usage_report(project=project, start_date=date(2025, 9, 3), end_date=date(2025, 9, 3))
    assert third["total_gpu_hours"] == pytest.approx(3 * 4 + 24 * 6 + 4, abs=1e-6)
    assert third["total_tasks_completed"] == 2
    assert third["breakdown_by_user"] == {alice: pytest.approx(12, abs=1e-6), bob: pytest.approx(148, abs=1e-6)}


@pytest.mark.slow
@SOURCES
def test_a_running_run_counts_up_to_now_on_the_server(scenario: tuple[str, list[str]], source: str) -> None:
    from flows.usage import usage_report

    tag, _ = scenario
    today = datetime.now(UTC).date()
    before = datetime.now(UTC)
    report = usage_report(f"bob-{tag}", start_date=SEP2, end_date=today, source=source)
    after = datetime.now(UTC)
    # crashed 2 + late 4 + running since 2025-09-02 20:00 on 6 GPUs
    hours = [2 + 4 + 6 * (t - at(2, 20)).total_seconds() / 3600 for t in (before, after)]
    assert hours[0] - 1e-6 <= report["total_gpu_hours"] <= hours[1] + 1e-6
    # dave's open held interval: 4 A100 since 2025-09-02 20:30 (his other run ended on the 1st)
    before = datetime.now(UTC)
    held = usage_report(f"dave-{tag}", start_date=SEP2, end_date=today, source=source)["breakdown_by_gpu"]
    after = datetime.now(UTC)
    hours = [4 * (t - at(2, 20.5)).total_seconds() / 3600 for t in (before, after)]
    assert held.keys() == {A100} and hours[0] - 1e-6 <= held[A100] <= hours[1] + 1e-6


@pytest.mark.slow
def test_the_database_source_refuses_a_database_that_is_not_the_servers(
    scenario: tuple[str, list[str]], tmp_path: Path
) -> None:
    """A mistyped or stale connection string must not give a report of another database."""
    from prefect.server.database import provide_database_interface
    from prefect.server.database.configurations import AioSqliteConfiguration
    from prefect.server.database.dependencies import temporary_database_config

    from flows.usage import usage_report
    from flows.usage_db import DatabaseMismatch

    other = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
    with temporary_database_config(other):
        asyncio.run(provide_database_interface().create_db())  # a Prefect database, but not the server's
        with pytest.raises(DatabaseMismatch, match="not the one behind PREFECT_API_URL"):
            usage_report(start_date=SEP1, end_date=SEP2, source="database")


def test_choose_source(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.usage import choose_source

    monkeypatch.delenv("MLOC_USAGE_SOURCE", raising=False)
    with temporary_settings({PREFECT_API_URL: "http://prefect.example:4200/api"}):
        assert choose_source() == "api"
        assert choose_source("database") == "database"
        monkeypatch.setenv("MLOC_USAGE_SOURCE", "database")
        assert choose_source() == "database"
        assert choose_source("api") == "api"
        monkeypatch.setenv("MLOC_USAGE_SOURCE", "db")
        with pytest.raises(ValueError, match="MLOC_USAGE_SOURCE 'db' is not one of api, database"):
            choose_source()
    monkeypatch.delenv("MLOC_USAGE_SOURCE")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        # no server to ask: the embedded one would read this machine's database anyway
        assert choose_source() == "database"


@pytest.mark.slow
def test_paging_counts_every_run_exactly_once(prefect_server: None) -> None:
    """More runs than a page, many ending at the same instant (Prefect's sort has no tie-breaker)."""
    from prefect import get_client

    from flows import usage_db
    from flows.usage import PAGE_SIZE, read_runs, usage_report

    tag = uuid.uuid4().hex[:8]
    project = f"usage-test-{tag}"
    # 450 runs: 250 end at the same instant (more than a page of ties), the rest in groups of 5
    ends = [at(1, 12)] * 250 + [at(1, 13 + i // 5 / 60) for i in range(200)]
    runs = [
        Run(f"u{i % 7}-{tag}", project, "COMPLETED", end - timedelta(minutes=1 + i % 30), end)
        for i, end in enumerate(ends)
    ]
    ids = insert_ended_runs(runs)
    assert len(ids) > 2 * PAGE_SIZE
    with get_client(sync_client=True) as client:
        read = [r.id for r in read_runs(client, project=project, start_date=SEP1, end_date=SEP1)]
    assert Counter(read) == Counter(ids)
    assert Counter(r.id for r in usage_db.read_runs(project=project, start_date=SEP1, end_date=SEP1)) == Counter(ids)
    report = usage_report(project=project, start_date=SEP1, end_date=SEP1)
    assert report["total_tasks_completed"] == len(runs)
    assert report["total_gpu_hours"] == pytest.approx(sum((1 + i % 30) / 60 for i in range(len(runs))), abs=1e-6)
    assert usage_report(project=project, start_date=SEP1, end_date=SEP1, source="database") == report


@pytest.mark.slow
def test_paging_under_concurrent_inserts(prefect_server: None) -> None:
    """Runs added while the report reads, before and after the cursor: none of those there
    from the start is missed or read twice, none of the new ones is read twice."""
    from prefect import get_client

    from flows.usage import read_runs

    tag = uuid.uuid4().hex[:8]
    project = f"usage-test-{tag}"

    def batch(n: int, hour: float) -> list[Run]:
        return [
            Run(f"u-{tag}", project, "COMPLETED", at(1, hour) - timedelta(minutes=30), at(1, hour)) for _ in range(n)
        ]

    original = insert_ended_runs(batch(60, 20) + batch(60, 10) + batch(60, 2))
    added: list[str] = []
    read: list[str] = []
    with get_client(sync_client=True) as client:
        for i, run in enumerate(read_runs(client, project=project, start_date=SEP1, end_date=SEP1, page_size=25)):
            read.append(run.id)
            if i % 25 == 0:  # between pages: one run in the part already read, one in the part ahead
                added += insert_ended_runs(batch(1, 22) + batch(1, 1))
    counts = Counter(read)
    assert all(counts[i] == 1 for i in original)
    assert max(counts.values()) == 1
    assert set(read) <= set(original) | set(added)


@pytest.mark.slow
def test_a_run_ending_between_the_two_reads_is_counted_once(prefect_server: None) -> None:
    from prefect import get_client

    from flows.usage import read_runs

    tag = uuid.uuid4().hex[:8]
    project = f"usage-test-{tag}"
    [run_id] = create_runs([Run(f"u-{tag}", project, "RUNNING", at(1, 1))])

    class EndsItAfterTheFirstRead:
        """The real client; the run completes right after the in-progress runs were read."""

        def __init__(self, client: Any) -> None:
            self.client, self.calls = client, 0

        def request(self, *args: Any, **kwargs: Any) -> Any:
            response = self.client.request(*args, **kwargs)
            self.calls += 1
            if self.calls == 1:
                asyncio.run(_complete(run_id, at(1, 3)))
            return response

    with get_client(sync_client=True) as client:
        read = list(read_runs(EndsItAfterTheFirstRead(client), project=project, start_date=SEP1, end_date=SEP1))
    assert [(r.id, r.state_type, r.end_time) for r in read] == [(run_id, "COMPLETED", at(1, 3))]


async def _complete(run_id: str, stamp: datetime) -> None:
    from prefect.server import models, schemas
    from prefect.server.database import provide_database_interface

    async with provide_database_interface().session_context(begin_transaction=True) as session:
        await models.flow_runs.set_flow_run_state(
            session=session,
            flow_run_id=uuid.UUID(run_id),
            state=schemas.states.Completed(timestamp=stamp),
            force=True,
        )


@pytest.mark.slow
def test_usage_report_flow_publishes_artifacts(scenario: tuple[str, list[str]]) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.usage import usage_report_flow

    tag, _ = scenario
    rates = {A100: 2.0, H100: 3.0, L40S: 1.0}
    report = usage_report_flow(project=f"usage-test-{tag}", start_date=SEP1, end_date=SEP2, rate_card=rates)
    assert report["total_gpu_hours"] == pytest.approx(44)
    assert report["cost"]["total"] == pytest.approx(14 * 2.0 + 28 * 3.0 + 2 * 1.0)
    key = f"mloc-usage-2025-09-01-2025-09-02-usage-test-{tag}"
    with get_client(sync_client=True) as client:
        [table] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{key}-by-gpu"])))
        [text] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert rows == [
        {"gpu": A100, "gpu_hours": 14.0, "cost": 28.0, "currency": "USD"},
        {"gpu": H100, "gpu_hours": 28.0, "cost": 84.0, "currency": "USD"},
        {"gpu": L40S, "gpu_hours": 2.0, "cost": 2.0, "currency": "USD"},
    ]
    assert "44 GPU-hours, 3 task(s) completed" in text.data


@pytest.mark.slow
def test_schedule_daily_is_idempotent(prefect_server: None) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    from flows.usage import schedule_daily

    pool = f"usage-test-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        with contextlib.suppress(ObjectNotFound):  # the server is shared: start from no deployment
            client.delete_deployment(client.read_deployment_by_name("mloc-usage-report/daily").id)
        assert schedule_daily(client, pool=pool) == "created"
        assert schedule_daily(client, pool=pool) == "unchanged"
        assert schedule_daily(client, cron="30 2 * * *", timezone="Europe/Berlin", pool=pool) == "updated"
        deployment = client.read_deployment_by_name("mloc-usage-report/daily")
    assert deployment.entrypoint == "flows.usage.usage_report_flow"
    assert deployment.work_pool_name == pool
    assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == [("30 2 * * *", "Europe/Berlin")]


# --- mloc usage -------------------------------------------------------------------------------


def mloc(*args: str) -> Any:
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, ["usage", *args])


@pytest.mark.slow
def test_cli_json_and_csv(scenario: tuple[str, list[str]], tmp_path: Path) -> None:
    from flows.usage import usage_report

    tag, _ = scenario
    query = ["--project", f"usage-test-{tag}", "--start", "2025-09-01", "--end", "2025-09-02"]
    as_json = mloc(*query, "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == usage_report(project=f"usage-test-{tag}", start_date=SEP1, end_date=SEP2)
    from_db = mloc(*query, "--json", "--source", "database")
    assert from_db.exit_code == 0, from_db.output
    assert json.loads(from_db.stdout) == json.loads(as_json.stdout)
    card = tmp_path / "rates.json"
    card.write_text(json.dumps({A100: 2.0, H100: 3.0, L40S: 1.0}))
    as_csv = mloc(*query, "--csv", "--rate-card", str(card), "--currency", "eur")
    assert as_csv.exit_code == 0, as_csv.output
    assert list(csv.DictReader(io.StringIO(as_csv.stdout))) == [
        {"gpu_type": A100, "gpu_hours": "14.0", "cost": "28.0", "currency": "EUR"},
        {"gpu_type": H100, "gpu_hours": "28.0", "cost": "84.0", "currency": "EUR"},
        {"gpu_type": L40S, "gpu_hours": "2.0", "cost": "2.0", "currency": "EUR"},
    ]
    # a cost is never shown without its currency
    priced = mloc(*query, "--rate-card", str(card))
    assert priced.exit_code == 0, priced.output
    assert "44 GPU-hours, 3 task(s) completed, cost 114.00 USD" in priced.stdout
    assert "cost (USD)" in priced.stdout
    wrong = mloc(*query, "--rate-card", str(card), "--currency", "dollars")
    assert wrong.exit_code == 1 and "currency 'dollars' is not a three-letter code" in wrong.stderr
    table = mloc(*query)
    assert table.exit_code == 0, table.output
    assert "44 GPU-hours, 3 task(s) completed" in table.stdout
    assert f"bob-{tag}" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "2025-13-01"], "--start '2025-13-01' is not a date: use YYYY-MM-DD"),
        (["--start", "2025-09-02", "--end", "2025-09-01"], "--end 2025-09-01 is before --start 2025-09-02"),
        (["--json", "--csv"], "--json and --csv exclude each other"),
        (["--start", "2025-09-01", "--source", "db"], "source 'db' is not one of api, database"),
        (["--start", "2025-09-01", "--rate-card", "/nonexistent/rates.json"], "rate card /nonexistent/rates.json"),
        (["--start", "9999-12-31"], "end_date 9999-12-31 is past the last day a report can cover"),
    ],
)
def test_cli_refuses_bad_input(args: list[str], message: str) -> None:
    result = mloc(*args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def test_cli_rejects_a_rate_card_with_bad_rates(tmp_path: Path) -> None:
    card = tmp_path / "rates.json"
    card.write_text(json.dumps({A100: -1, H100: "cheap"}))
    result = mloc("--start", "2025-09-01", "--rate-card", str(card))
    assert result.exit_code == 1
    assert f"rate card {card}: a rate card needs a non-negative number per GPU type" in result.stderr
    assert f"'{A100}': -1, '{H100}': 'cheap'" in result.stderr


def test_cli_says_when_the_api_cannot_be_read(port_picker: Any) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port_picker()}/api"}):  # nothing listens there
        result = mloc("--start", "2025-09-01")
    assert result.exit_code == 1
    assert "mloc usage: cannot read runs from the Prefect API" in result.stderr


def test_the_database_is_named_without_its_password() -> None:
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, temporary_settings

    from flows.usage_db import database_shown

    url = "postgresql+asyncpg://prefect:s3cret@db.example:5432/prefect"
    with temporary_settings({PREFECT_API_DATABASE_CONNECTION_URL: url}):
        shown = database_shown()
    assert "s3cret" not in shown and shown == "postgresql+asyncpg://prefect:***@db.example:5432/prefect"
