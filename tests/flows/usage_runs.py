"""Pipeline runs on a real Prefect server with chosen owners, GPUs and times, for the usage
tests (test_usage.py, test_api.py).

Runs get their start and end times the way real runs do: Prefect's own orchestration
sets ``start_time`` when a run enters RUNNING and ``end_time`` when it enters a terminal
state, from the state's timestamp. The REST API stamps every state with the server's
clock (its StateCreate has no timestamp field), so runs in the past are made through the
server's models against the harness's database, in this process: the same orchestration
rules, with timestamps we choose. That takes ~50 ms a run, so tests that need hundreds of
ended runs write the rows an ended run has (flow_run and its current flow_run_state) in
bulk instead (``insert_ended_runs``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

A100, H100, L40S = "nvidia-a100-80gb", "nvidia-h100-80gb", "nvidia-l40s"
SEP1, SEP2 = date(2025, 9, 1), date(2025, 9, 2)


def at(day: int, hour: float, month: int = 9) -> datetime:
    return datetime(2025, month, day, tzinfo=UTC) + timedelta(hours=hour)


@dataclass(frozen=True)
class Run:
    owner: str
    project: str
    state: str  # the last state; RUNNING stays running, PENDING never starts
    start: datetime | None = None
    end: datetime | None = None
    gpu: str | None = A100
    count: int = 1
    replicas: int = 1
    task_type: str = "sft"
    held: tuple[str, ...] = ()  # held tags: GPUs held off the run's worker

    def tags(self) -> list[str]:
        """What flows.pipeline.run_tags writes on a real run, and its held tags."""
        from flows.pipeline import run_tags

        gpu = SimpleNamespace(type=self.gpu, count=self.count if self.gpu else 0)
        spec = SimpleNamespace(
            task_type=self.task_type,
            resources=SimpleNamespace(replicas=self.replicas, hardware=SimpleNamespace(gpu=gpu)),
        )
        task_ = SimpleNamespace(spec=spec, metadata=SimpleNamespace(owner=self.owner, project=self.project))
        return run_tags(task_) + list(self.held)


def create_runs(runs: Iterable[Run], batch: int = 100) -> list[str]:
    """Flow runs of the pipeline flow 'mloc', taken through their states by Prefect's orchestration."""
    return asyncio.run(_create_runs(list(runs), batch))


def insert_ended_runs(runs: list[Run]) -> list[str]:
    """Ended runs as rows, in one transaction: what orchestration leaves in the database."""
    return asyncio.run(_insert_ended_runs(runs))


async def _insert_ended_runs(runs: list[Run]) -> list[str]:
    import sqlalchemy as sa
    from prefect.server import models, schemas
    from prefect.server.database import provide_database_interface

    db = provide_database_interface()
    flow_runs, states = [], []
    for run in runs:
        assert run.start is not None and run.end is not None, "only ended runs"
        run_id, state_id = uuid.uuid4(), uuid.uuid4()
        state = {"state_type": run.state, "state_name": run.state.title(), "state_timestamp": run.end}
        states.append({"id": state_id, "flow_run_id": run_id, "type": run.state, "name": run.state.title()})
        states[-1]["timestamp"] = run.end
        flow_runs.append(
            {"id": run_id, "name": f"usage-{run_id.hex[:8]}", "tags": run.tags(), "state_id": state_id, **state}
            | {"expected_start_time": run.start, "start_time": run.start, "end_time": run.end, "run_count": 1}
            | {"total_run_time": run.end - run.start}
        )
    async with db.session_context(begin_transaction=True) as session:
        flow = await models.flows.create_flow(session=session, flow=schemas.core.Flow(name="mloc"))
        await session.execute(sa.text("PRAGMA defer_foreign_keys = ON"))  # run and state point at each other
        await session.execute(sa.insert(db.FlowRun), [r | {"flow_id": flow.id} for r in flow_runs])
        await session.execute(sa.insert(db.FlowRunState), states)
    return [str(r["id"]) for r in flow_runs]


async def _create_runs(runs: list[Run], batch: int) -> list[str]:
    from prefect.client.schemas.objects import StateType
    from prefect.server import models, schemas
    from prefect.server.database import provide_database_interface

    db = provide_database_interface()
    ids = []
    for first in range(0, len(runs), batch):  # short transactions: the server shares the database file
        async with db.session_context(begin_transaction=True) as session:
            flow = await models.flows.create_flow(session=session, flow=schemas.core.Flow(name="mloc"))
            for run in runs[first : first + batch]:
                made = await models.flow_runs.create_flow_run(
                    session=session,
                    flow_run=schemas.core.FlowRun(
                        flow_id=flow.id, name=f"usage-{uuid.uuid4().hex[:8]}", tags=run.tags()
                    ),
                )
                ids.append(str(made.id))
                created = (run.start or datetime(2025, 8, 1, tzinfo=UTC)) - timedelta(minutes=1)
                states = [(StateType.PENDING, created)]
                if run.state != "PENDING":
                    states.append((StateType.RUNNING, run.start))
                if run.state not in ("PENDING", "RUNNING"):
                    states.append((StateType(run.state), run.end))
                for state_type, stamp in states:
                    result = await models.flow_runs.set_flow_run_state(
                        session=session,
                        flow_run_id=made.id,
                        state=schemas.states.State(type=state_type, timestamp=stamp),
                        force=True,
                    )
                    assert result.status.value == "ACCEPT", result.details
    return ids


def server_runs(tag: str) -> list[Run]:
    """The hand-computed scenario, in project usage-test-<tag>, owners alice-<tag> and bob-<tag>."""
    alice, bob, project = f"alice-{tag}", f"bob-{tag}", f"usage-test-{tag}"
    return [
        Run(alice, project, "COMPLETED", at(31, 22, month=8), at(1, 2), count=4),  # 2 h x 4 in SEP1..SEP2
        Run(alice, project, "COMPLETED", at(2, 23), at(3, 3), gpu=H100, count=2, replicas=2),  # 1 h x 4, then 3 h x 4
        Run(bob, project, "FAILED", at(1, 10), at(1, 12.5)),  # 2.5
        Run(bob, project, "CRASHED", at(2, 0), at(2, 0.25), gpu=L40S, count=8),  # 2
        Run(alice, project, "CANCELLED", at(1, 5), at(1, 6), count=2),  # 2
        Run(bob, project, "RUNNING", at(2, 20), gpu=H100, count=2, replicas=3),  # 4 h x 6 to midnight, 24 h x 6 a day
        Run(alice, project, "COMPLETED", at(1, 8), at(1, 9), gpu=None, task_type="rag_inference"),  # 0, completed
        Run(alice, project, "COMPLETED", at(1, 12), at(1, 13.5)),  # 1.5
        Run(bob, project, "PENDING", count=8),  # nothing
        Run(alice, project, "COMPLETED", at(30, 0, month=8), at(31, 0, month=8), count=8),  # before
        Run(bob, project, "COMPLETED", at(3, 1), at(3, 2), count=4),  # after SEP2; 1 h x 4 on the 3rd
        Run(alice, f"other-{tag}", "COMPLETED", at(1, 0), at(1, 10)),  # alice's, another project: 10
    ]


def project_report(tag: str) -> dict[str, Any]:
    """The report of project usage-test-<tag> over SEP1..SEP2, computed by hand from
    ``server_runs`` (hours to 1e-6)."""
    alice, bob, project = f"alice-{tag}", f"bob-{tag}", f"usage-test-{tag}"
    return {
        "query_parameters": {"project": project, "start_date": "2025-09-01", "end_date": "2025-09-02"},
        "total_gpu_hours": pytest.approx(8 + 4 + 2.5 + 2 + 2 + 24 + 1.5, abs=1e-6),
        "total_tasks_completed": 3,
        "breakdown_by_gpu": {
            A100: pytest.approx(8 + 2.5 + 2 + 1.5, abs=1e-6),
            H100: pytest.approx(4 + 24, abs=1e-6),
            L40S: pytest.approx(2, abs=1e-6),
        },
        "breakdown_by_user": {alice: pytest.approx(15.5, abs=1e-6), bob: pytest.approx(28.5, abs=1e-6)},
        "breakdown_by_project": {project: pytest.approx(44, abs=1e-6)},
        "breakdown_by_task_type": {"sft": pytest.approx(44, abs=1e-6)},
    }


def held_runs(tag: str) -> list[Run]:
    """Runs that hold GPUs off their worker (held tags), in project held-<tag>, owners
    carol-, dave- and erin-<tag>: what ``held_report`` computes by hand."""
    from flows.usage_compute import held_tag

    carol, dave, erin, project = f"carol-{tag}", f"dave-{tag}", f"erin-{tag}", f"held-{tag}"
    return [
        # multi-node on Kubernetes: the flow pod is a CPU orchestrator; its TrainJob held
        # 2 nodes x 4 A100 from 10:15 to 11:45 of a 2 h run -> 1.5 h x 8 = 12
        Run(
            carol,
            project,
            "COMPLETED",
            at(1, 10),
            at(1, 12),
            gpu=None,
            held=(held_tag(A100, 8, at(1, 10.25), at(1, 11.75)),),
        ),
        # an A100 task that ran on a worker without GPUs: 0, but a completed task
        Run(carol, project, "COMPLETED", at(1, 13), at(1, 15), gpu=None),
        # local, one node, 1 GPU for 1.5 h -> 1.5
        Run(dave, project, "COMPLETED", at(1, 16), at(1, 17.5), gpu=L40S),
        # held across the window's start: 2 nodes x 8 H100 from 22:00 the day before to 03:00
        # -> 3 h x 16 = 48 inside; a failed run: hours, no completion
        Run(
            erin,
            project,
            "FAILED",
            at(31, 20, month=8),
            at(1, 4),
            gpu=None,
            task_type="dpo",
            held=(held_tag(H100, 16, at(31, 22, month=8), at(1, 3)),),
        ),
        # still running, its TrainJob of 1 node x 4 A100 held since 20:30 (open): up to now,
        # which for a window already over is its end -> 3.5 h x 4 = 14
        Run(dave, project, "RUNNING", at(2, 20), gpu=None, held=(held_tag(A100, 4, at(2, 20.5)),)),
        # a held tag that does not parse: left out, so not a completed task either
        Run(carol, project, "COMPLETED", at(1, 1), at(1, 2), gpu=None, held=(f"held:{A100}:8:soon:open",)),
    ]


def held_report(tag: str) -> dict[str, Any]:
    """The report of project held-<tag> over SEP1..SEP2 once the window is over (its open
    interval counted to the window's end), computed by hand from ``held_runs``."""
    carol, dave, erin, project = f"carol-{tag}", f"dave-{tag}", f"erin-{tag}", f"held-{tag}"
    return {
        "query_parameters": {"project": project, "start_date": "2025-09-01", "end_date": "2025-09-02"},
        "total_gpu_hours": pytest.approx(12 + 0 + 1.5 + 48 + 14, abs=1e-6),
        "total_tasks_completed": 3,  # the orchestrated run, the CPU fallback, the local run
        "breakdown_by_gpu": {
            A100: pytest.approx(12 + 14, abs=1e-6),
            H100: pytest.approx(48, abs=1e-6),
            L40S: pytest.approx(1.5, abs=1e-6),
        },
        "breakdown_by_user": {
            carol: pytest.approx(12, abs=1e-6),
            dave: pytest.approx(1.5 + 14, abs=1e-6),
            erin: pytest.approx(48, abs=1e-6),
        },
        "breakdown_by_project": {project: pytest.approx(75.5, abs=1e-6)},
        "breakdown_by_task_type": {"dpo": pytest.approx(48, abs=1e-6), "sft": pytest.approx(12 + 1.5 + 14, abs=1e-6)},
    }
