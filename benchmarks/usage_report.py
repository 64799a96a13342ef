"""The usage report over many runs, from each of its sources (flows.usage: the Prefect API;
flows.usage_db: Prefect's database), against reading the same rows straight from the
database file.

Synthetic pipeline runs (tags as flows.pipeline.run_tags writes them, every state type,
runs crossing the window's edges) are inserted in bulk into a fresh Prefect database
(a temporary PREFECT_HOME, SQLite), through the server's own ORM tables — 100,000 API
calls would measure the inserts, not the report. Then, side by side:

- ``usage_report``, source api: a real Prefect server (a subprocess), keyset-paged reads
  over HTTP;
- ``usage_report``, source database: what `mloc api` and `mloc usage --source database`
  run — a check against the server that the database is its own, then one SELECT
  through Prefect's server models;
- direct DB read: one SELECT of the same columns with sqlite3, then the same ``compute``:
  the floor, the ratios' denominator.

All must give the same report; the table shows how long each took, plus, on the
largest size, a one-day window and API pages of 1000 (the server's limit raised).

What bounds the API path is the server's work per run (loading the ORM row and its
state, validating and serialising the whole FlowRunResponse, ~2 KB of task parameters
included), not the paging: pages of 1000 instead of 200 change little, and the time
grows linearly with the runs overlapping the window, not with the runs in the database.

    .venv/bin/python benchmarks/usage_report.py [--sizes 10000 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HOME = tempfile.mkdtemp(prefix="mloc-usage-bench-")
DB_PATH = Path(HOME) / "prefect.db"
# before Prefect is imported: its settings are read from the environment once
for name in [k for k in os.environ if k.startswith("PREFECT_")]:
    del os.environ[name]
os.environ.update(
    PREFECT_HOME=HOME,
    PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{DB_PATH}",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_LOGGING_LEVEL="WARNING",
    # lets the server answer pages of 1000 too, for the page-size row; MLOC asks for 200
    PREFECT_SERVER_API_DEFAULT_LIMIT="1000",
)

START, END = date(2025, 9, 1), date(2025, 9, 30)
GPUS = [("nvidia-a100-80gb", 8), ("nvidia-h100-80gb", 8), ("nvidia-l40s", 4), ("nvidia-t4", 1), (None, 0)]
STATES = ["COMPLETED"] * 70 + ["FAILED"] * 10 + ["CRASHED"] * 3 + ["CANCELLED"] * 5 + ["RUNNING"] * 5 + ["PENDING"] * 7


def task_parameters() -> dict:
    """A deployed task's parameters, as flows.deploy.plan writes them: every run carries them."""
    from configs import validate_file
    from tasks.registry import TASK_TYPES

    task = validate_file(ROOT / "configs" / "sft_mistral_7b.yaml", TASK_TYPES).task
    assert task is not None
    return {"task": task.model_dump(mode="json", by_alias=True), "base_dir": str(ROOT / "configs")} | {
        "task_yaml_sha256": "0" * 64
    }


def synthetic(n: int, rng: random.Random) -> list[dict]:
    """n runs starting from a day before the window to its last day, 5 min to 2 days long."""
    t0 = datetime(2025, 8, 31, tzinfo=UTC)
    runs = []
    for _ in range(n):
        gpu, most = rng.choice(GPUS)
        state = rng.choice(STATES)
        start = t0 + timedelta(seconds=rng.uniform(0, 31 * 86400))
        end = start + timedelta(seconds=rng.uniform(300, 2 * 86400))
        runs.append(
            {
                "id": uuid.uuid4(),
                "state": state,
                "start": None if state == "PENDING" else start,
                "end": None if state in ("PENDING", "RUNNING") else end,
                "tags": [
                    f"owner:user-{rng.randrange(40)}",
                    f"project:project-{rng.randrange(12)}",
                    f"task-type:{rng.choice(['sft', 'dpo', 'grpo', 'rm'])}",
                    f"gpu:{gpu or 'none'}",
                    f"gpu-count:{rng.randint(1, most) if most else 0}",
                    f"replicas:{rng.choice([1, 1, 1, 2, 4])}",
                ],
            }
        )
    return runs


async def insert(runs: list[dict]) -> None:
    """Rows as the server writes them: a flow_run, its current flow_run_state, the state cached on the run."""
    import sqlalchemy as sa
    from prefect.server import models, schemas
    from prefect.server.database import provide_database_interface

    db = provide_database_interface()
    parameters = task_parameters()
    async with db.session_context(begin_transaction=True) as session:
        flow = await models.flows.create_flow(session=session, flow=schemas.core.Flow(name="mloc"))  # type: ignore[attr-defined]  # db_injector
    # one transaction per batch: the running server's own services write to the file too
    for i in range(0, len(runs), 5000):
        states, flow_runs = [], []
        for run in runs[i : i + 5000]:
            state_id = uuid.uuid4()
            stamp = run["end"] or run["start"] or datetime(2025, 8, 30, tzinfo=UTC)
            states.append(
                {"id": state_id, "flow_run_id": run["id"], "type": run["state"], "name": run["state"].title()}
                | {"timestamp": stamp}
            )
            flow_runs.append(
                {
                    "id": run["id"],
                    "name": f"run-{run['id'].hex[:12]}",
                    "flow_id": flow.id,
                    "tags": run["tags"],
                    "parameters": parameters,
                    "state_id": state_id,
                    "state_type": run["state"],
                    "state_name": run["state"].title(),
                    "state_timestamp": stamp,
                    "expected_start_time": run["start"] or datetime(2025, 8, 30, tzinfo=UTC),
                    "start_time": run["start"],
                    "end_time": run["end"],
                    "total_run_time": (run["end"] - run["start"]) if run["end"] else timedelta(0),
                }
            )
        async with db.session_context(begin_transaction=True) as session:
            # flow_run.state_id and flow_run_state.flow_run_id point at each other
            await session.execute(sa.text("PRAGMA defer_foreign_keys = ON"))
            await session.execute(sa.insert(db.FlowRun), flow_runs)
            await session.execute(sa.insert(db.FlowRunState), states)


def direct_report(first: date, last: date) -> dict:
    """The report from one SELECT on the database file, computed by the same rules."""
    from flows.usage_compute import RunRecord, compute, window

    start, end = window(first, last)

    def stamp(text: str | None) -> datetime | None:
        return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)

    fmt = "%Y-%m-%d %H:%M:%S.%f"  # how Prefect's Timestamp type stores datetimes in SQLite
    with sqlite3.connect(DB_PATH) as conn:
        rows = conn.execute(
            "SELECT r.id, r.tags, r.state_type, r.start_time, r.end_time FROM flow_run r"
            " JOIN flow f ON f.id = r.flow_id WHERE f.name = 'mloc' AND r.start_time IS NOT NULL"
            " AND r.start_time <= ? AND (r.end_time IS NULL OR r.end_time >= ?)",
            (end.strftime(fmt), start.strftime(fmt)),
        ).fetchall()
    records = (
        RunRecord.from_tags(run_id, json.loads(tags), state, stamp(started), stamp(ended))
        for run_id, tags, state, started, ended in rows
    )
    return compute((r for r in records if r is not None), start_date=first, end_date=last, now=datetime.now(UTC))


def timed(what: object, *args: object, **kwargs: object) -> tuple[dict, float]:
    started = time.perf_counter()
    result = what(*args, **kwargs)  # type: ignore[operator]
    return result, time.perf_counter() - started


def api_report(first: date, last: date, page_size: int) -> dict:
    """usage_report's path, with a page size of choice."""
    from prefect import get_client

    from flows.usage import read_runs
    from flows.usage_compute import compute

    with get_client(sync_client=True) as client:
        runs = read_runs(client, start_date=first, end_date=last, page_size=page_size)
        return compute(runs, start_date=first, end_date=last, now=datetime.now(UTC))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    sizes = sorted(parser.parse_args().sizes)

    from prefect.server.database import provide_database_interface
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.testing.utilities import SubprocessASGIServer

    from flows.usage import PAGE_SIZE, usage_report

    asyncio.run(provide_database_interface().create_db())
    rng = random.Random(20250901)
    server = SubprocessASGIServer()
    server.start(timeout=180)
    rows = []
    day = date(2025, 9, 15)
    try:
        in_db = 0
        for size in sizes:
            started = time.perf_counter()
            asyncio.run(insert(synthetic(size - in_db, rng)))
            in_db = size
            print(f"{size:,} runs in the database ({time.perf_counter() - started:.1f} s to insert)", file=sys.stderr)
            cases: list[tuple[str, date, date, int | None]] = [("whole month", START, END, None)]
            if size == sizes[-1]:
                cases += [("one day", day, day, None), ("whole month", START, END, 1000)]
            for label, first, last, page in cases:
                direct, direct_s = timed(direct_report, first, last)
                window = {"start_date": first, "end_date": last}
                with temporary_settings({PREFECT_API_URL: server.api_url}):
                    if page is None:
                        measured = [
                            ("usage_report, database", *timed(usage_report, **window, source="database")),
                            (f"usage_report, api p{PAGE_SIZE}", *timed(usage_report, **window, source="api")),
                        ]
                    else:
                        measured = [(f"usage_report, api p{page}", *timed(api_report, first, last, page))]
                for path, report, seconds in measured:
                    # the window is in the past, so running runs count to its end in all: equal, not close
                    if report != direct:
                        sys.exit(f"{path} and the direct read disagree:\n{report}\n{direct}")
                    rows.append((size, label, path, seconds, seconds / direct_s))
                rows.append((size, label, "direct DB read", direct_s, 1.0))
    finally:
        server.stop()
        shutil.rmtree(HOME, ignore_errors=True)  # the 100,000-run database is ~0.5 GB
    print(f"{'runs':>8}  {'window':12} {'path':24} {'seconds':>8} {'runs/s':>9} {'ratio':>6}")
    for size, label, path, seconds, ratio in rows:
        print(f"{size:8,}  {label:12} {path:24} {seconds:8.2f} {size / seconds:9,.0f} {ratio:6.1f}")
    print("runs/s: runs in the database per second of report; ratio: seconds / the direct DB read's")
    slowest = max(
        (seconds for size, _, path, seconds, _ in rows if size == sizes[-1] and "database" in path), default=0
    )
    print(f"the {sizes[-1]:,}-run report from the database: {slowest:.1f} s (target: within 30 s)")


if __name__ == "__main__":
    main()
