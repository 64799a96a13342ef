"""Compiling a validated task into a Prefect deployment of the pipeline flow.

Deployment ``mloc/<metadata.name>``: the generic pipeline flow (imported from the
installed package on the worker, no code is shipped per task), the work pool of the
task's GPU type, job variables from ``spec.resources``, the validated task as its
parameters (so the UI's run form edits it), the run tags, and the cron schedule.

Deploying is idempotent: when the deployment already says exactly this, nothing is
written, so its scheduled runs stay as they were.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs import InferenceTask, TrainingTask
from flows.pipeline import FLOW_NAME, run_tags
from flows.run_form import parameter_schema
from flows.worker import queue_for
from work_pools import PoolDefinition, job_variables, pool_for_task

ENTRYPOINT = "flows.pipeline.pipeline"  # a module path: workers import the installed package


@dataclass(frozen=True)
class Plan:
    """What the deployment of one task should say."""

    name: str
    pool: PoolDefinition
    parameters: dict[str, Any]
    job_variables: dict[str, Any]
    tags: list[str]
    schedules: list[tuple[str, str, bool]]  # (cron, timezone, active)
    work_queue: str | None  # on the local process pool: the queue of the task's GPU type
    description: str


def plan(task: TrainingTask | InferenceTask, path: Path, *, local: bool = False) -> Plan:
    """Raises work_pools.PoolError when no pool can run the task."""
    pool = pool_for_task(task, local=local)
    schedule = task.spec.schedule
    return Plan(
        name=task.metadata.name,
        pool=pool,
        parameters={
            "task": task.model_dump(mode="json", by_alias=True),
            # relative local paths in the task.yaml are relative to its folder
            "base_dir": str(path.resolve().parent),
            "task_yaml_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        },
        job_variables=job_variables(task, pool),
        tags=sorted(run_tags(task)),
        schedules=[(schedule.cron, schedule.timezone, schedule.active)] if schedule else [],
        work_queue=queue_for(task.spec.resources.hardware.gpu.type) if pool.kind == "process" else None,
        description=task.metadata.annotations.get("description", f"MLOC {task.spec.task_type} task"),
    )


def deployment_fields(existing: Any) -> dict[str, Any]:
    """What an existing deployment says, in the shape a wanted one is compared with."""
    return {
        "work_pool_name": existing.work_pool_name,
        "work_queue_name": existing.work_queue_name,
        "entrypoint": existing.entrypoint,
        "parameters": existing.parameters,
        "job_variables": existing.job_variables or {},
        "tags": sorted(existing.tags),
        "schedules": [(s.schedule.cron, s.schedule.timezone, s.active) for s in existing.schedules],
        "description": existing.description,
    }


def _wanted(p: Plan) -> dict[str, Any]:
    return {
        "work_pool_name": p.pool.name,
        "work_queue_name": p.work_queue or "default",
        "entrypoint": ENTRYPOINT,
        "parameters": p.parameters,
        "job_variables": p.job_variables,
        "tags": p.tags,
        "schedules": p.schedules,
        "description": p.description,
    }


def apply(p: Plan, client: Any) -> str:
    """Create or update the deployment; returns "created", "updated" or "unchanged"."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.exceptions import ObjectNotFound

    try:
        existing = client.read_deployment_by_name(f"{FLOW_NAME}/{p.name}")
    except ObjectNotFound:
        existing = None
    schema = parameter_schema(p.parameters["task"]["kind"])
    # the schema is compared too: a deployment made before an MLOC upgrade gets the upgrade's Run form
    if (
        existing is not None
        and deployment_fields(existing) == _wanted(p)
        and existing.parameter_openapi_schema == schema
    ):
        return "unchanged"
    flow_id = client.create_flow_from_name(FLOW_NAME)
    client.create_deployment(
        flow_id=flow_id,
        name=p.name,
        entrypoint=ENTRYPOINT,
        work_pool_name=p.pool.name,
        work_queue_name=p.work_queue,
        parameters=p.parameters,
        job_variables=p.job_variables,
        tags=p.tags,
        description=p.description,
        schedules=[
            DeploymentScheduleCreate(schedule=CronSchedule(cron=cron, timezone=tz), active=active)
            for cron, tz, active in p.schedules
        ],
        parameter_openapi_schema=schema,
        enforce_parameter_schema=True,
    )
    return "updated" if existing is not None else "created"
