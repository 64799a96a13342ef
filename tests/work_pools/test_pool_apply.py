"""Applying the pools to a real Prefect API (Prefect's own test harness: a temporary server)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound

import work_pools.registration
from work_pools import PoolDefinition, PoolError, apply, base_job_template, pool_named, pools

pytestmark = pytest.mark.slow


class CountingClient:
    """The real client, counting the calls that write."""

    def __init__(self, client: SyncPrefectClient) -> None:
        self.client = client
        self.writes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if name in ("create_work_pool", "update_work_pool", "delete_work_pool"):
            self.writes.append(name)
        return attribute


@pytest.fixture
def client(prefect_server: None) -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as client:
        for pool in pools():  # a clean slate: the session's server may hold pools from other tests
            with contextlib.suppress(ObjectNotFound):
                client.delete_work_pool(pool.name)
        yield client


def as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def test_apply_creates_then_changes_nothing_then_updates(
    client: SyncPrefectClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert apply(client) == [f"created   {p.name} ({p.kind})" for p in pools()]
    for pool in pools():
        stored = client.read_work_pool(pool.name)
        assert (stored.type, stored.description, stored.concurrency_limit) == (
            pool.kind,
            pool.description,
            pool.concurrency_limit,
        )
        assert stored.base_job_template == as_json(base_job_template(pool))
    updated_at = {p.name: client.read_work_pool(p.name).updated for p in pools()}

    counting = CountingClient(client)
    assert apply(counting) == [f"unchanged {p.name} ({p.kind})" for p in pools()]
    assert counting.writes == []
    assert {p.name: client.read_work_pool(p.name).updated for p in pools()} == updated_at

    bigger = pool_named("nvidia-t4").model_copy(update={"concurrency_limit": 2, "image": "example.com/w:2"})
    changed = [bigger if p.name == bigger.name else p for p in pools()]
    monkeypatch.setattr(work_pools.registration, "pools", lambda: changed)
    lines = apply(counting)
    assert [line for line in lines if not line.startswith("unchanged")] == ["updated   nvidia-t4 (kubernetes)"]
    assert counting.writes == ["update_work_pool"]
    stored = client.read_work_pool("nvidia-t4")
    assert stored.concurrency_limit == 2
    assert stored.base_job_template["variables"]["properties"]["image"]["default"] == "example.com/w:2"

    monkeypatch.undo()  # and back to what MLOC ships, through the client apply() opens itself
    assert "updated   nvidia-t4 (kubernetes)" in apply()
    assert client.read_work_pool("nvidia-t4").concurrency_limit == pool_named("nvidia-t4").concurrency_limit


def test_a_pool_of_another_type_stops_the_apply_before_any_write(
    client: SyncPrefectClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    clash = PoolDefinition(**{**pool_named("cpu").model_dump(), "name": "clash-test"})
    monkeypatch.setattr(work_pools.registration, "pools", lambda: [*pools(), clash])
    client.create_work_pool(WorkPoolCreate(name="clash-test", type="process"))
    try:
        with pytest.raises(PoolError, match="'clash-test' exists with type 'process' but is defined as 'kubernetes'"):
            apply(client)
        with pytest.raises(ObjectNotFound):
            client.read_work_pool("any-gpu")  # first in order, yet not created
    finally:
        client.delete_work_pool("clash-test")


def test_cli_apply_also_schedules_the_daily_usage_report(client: SyncPrefectClient) -> None:
    """`mloc pools apply` is the one command that sets a server up: the pools and the daily
    usage report (issue: usage accounting, §3), both idempotent."""
    from typer.testing import CliRunner

    from flows.cli import app

    with contextlib.suppress(ObjectNotFound):  # the session's server is shared: start from no deployment
        client.delete_deployment(client.read_deployment_by_name("mloc-usage-report/daily").id)

    def pools_apply(*args: str) -> list[str]:
        result = CliRunner().invoke(app, ["pools", "apply", *args])
        assert result.exit_code == 0, result.output
        return result.stdout.splitlines()

    first = pools_apply()
    assert first[-1] == "created   mloc-usage-report/daily -> work pool cpu, schedule 0 1 * * * (UTC)"
    assert first[:-1] == [f"created   {p.name} ({p.kind})" for p in pools()]
    daily = client.read_deployment_by_name("mloc-usage-report/daily")
    assert (daily.work_pool_name, daily.entrypoint) == ("cpu", "flows.usage.usage_report_flow")
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in daily.schedules] == [("0 1 * * *", "UTC", True)]

    again = pools_apply()
    assert all(line.startswith("unchanged ") for line in again), again
    assert client.read_deployment_by_name("mloc-usage-report/daily").updated == daily.updated

    moved = pools_apply("--local", "--usage-cron", "30 2 * * *", "--usage-timezone", "Europe/Berlin")
    assert moved[-1] == "updated   mloc-usage-report/daily -> work pool local, schedule 30 2 * * * (Europe/Berlin)"
    daily = client.read_deployment_by_name("mloc-usage-report/daily")
    assert (daily.work_pool_name, daily.work_queue_name) == ("local", "cpu")  # every `mloc worker` serves cpu
    assert [(s.schedule.cron, s.schedule.timezone) for s in daily.schedules] == [("30 2 * * *", "Europe/Berlin")]
