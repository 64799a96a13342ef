"""The MLOC REST facade, served by ``mloc api``: submit a task.yaml, read a run's state, read usage.

A thin layer over the Prefect API; everything it knows lives there (deployments, flow runs,
artifacts), so it keeps no state and any number of copies can serve side by side.

- ``POST /api/v1/tasks[?local=true]`` validates the task.yaml as ``mloc validate`` does,
  registers it as ``mloc deploy`` does (by default on the pool of its GPU type; ``local=true``
  on the local process pool, like ``mloc deploy --local``) and creates one flow run of it.
- ``GET /api/v1/tasks/{id}`` is that run: state, times, tags and its artifacts. The flow's
  return value is not persisted (Prefect's default), so the artifacts the run publishes
  (progress, evaluation table, report) are what the API can show of its outputs; the
  uploaded results themselves are where ``spec.output.destination`` says.
- ``GET /api/v1/stats`` is :func:`flows.usage.usage_report`.

Every ``/api/v1`` endpoint needs ``Authorization: Bearer <token>``. The check is a router
dependency, which FastAPI runs before an endpoint's own parameters; the submit endpoint
reads its body itself, so nothing of a request is parsed, let alone acted on, before it.
``/docs``, ``/redoc`` and ``/openapi.json`` stay open: they describe the endpoints and hold
no data, and Swagger's page must fetch the schema before its "Authorize" button can add
the token to the calls it makes.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
from datetime import date, datetime
from typing import Annotated, Any
from uuid import UUID

import anyio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from flows.api_submit import MAX_BODY_BYTES, ApiError, deploy, openapi_request_body, prepare, task_text
from flows.pipeline import FLOW_NAME

_bearer = HTTPBearer(
    auto_error=False,  # our own 401, with WWW-Authenticate, for a missing and a wrong token alike
    description="The token `mloc api` was started with (MLOC_API_TOKEN, or the Secret block in MLOC_API_TOKEN_BLOCK).",
)

router = APIRouter(prefix="/api/v1")


class SubmittedTask(BaseModel):
    id: UUID = Field(description="The flow run's id: GET /api/v1/tasks/{id}.")
    name: str = Field(description="The run's name: the task's metadata.name.")
    deployment: str = Field(description="The deployment it is a run of: mloc/<metadata.name>.")
    deployment_action: str = Field(
        description="What the submission did to the deployment: created, updated or unchanged."
    )
    work_pool: str = Field(description="The work pool whose workers will run it.")
    state: str | None = Field(description="The run's state type: SCHEDULED until a worker picks it up.")


class RunState(BaseModel):
    type: str = Field(description="SCHEDULED, PENDING, RUNNING, COMPLETED, FAILED, CRASHED, CANCELLED, ...")
    name: str
    message: str | None = None
    timestamp: datetime | None = None


class RunArtifact(BaseModel):
    key: str | None = Field(description="Stable per task: <name>-progress, <name>-eval, <name>-report.")
    type: str | None = Field(description="progress, table, markdown, ...")
    description: str | None = None
    created: datetime | None = None


class TaskStatus(BaseModel):
    id: UUID
    name: str
    deployment: str | None = Field(description="mloc/<name>; null when the deployment was deleted since.")
    state: RunState | None
    tags: list[str]
    work_pool: str | None
    created: datetime | None
    expected_start_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    total_run_time_seconds: float
    artifacts: list[RunArtifact] = Field(
        description="What the run published so far; the flow's return value itself is not persisted."
    )


@router.post(
    "/tasks",
    status_code=201,
    openapi_extra={"requestBody": openapi_request_body()},
    responses={
        409: {"description": "The task's work pool does not exist on the Prefect server."},
        413: {"description": f"The body is over {MAX_BODY_BYTES} bytes."},
        415: {"description": "Not YAML, plain text or JSON."},
        422: {"description": "Not a valid task: every issue, as `mloc validate --json` lists them."},
    },
)
async def submit_task(
    request: Request,
    response: Response,
    local: Annotated[
        bool, Query(description="Deploy on the local process pool instead of the pool of the task's GPU type.")
    ] = False,
) -> SubmittedTask:
    """Validate a task.yaml, create or update its deployment mloc/<name>, and start one run of it."""
    from prefect import get_client

    text = task_text(request.headers.get("content-type"), await _read_body(request))
    # validating, planning and deploying block (a temporary file, Prefect's sync client): off the event loop
    p = await anyio.to_thread.run_sync(functools.partial(prepare, text, local=local))
    action, deployment_id = await anyio.to_thread.run_sync(deploy, p)
    async with get_client() as client:
        # The parameters of this submission, not only the deployment's defaults: another submission
        # of the same name landing in between cannot change what this run runs.
        run = await client.create_flow_run_from_deployment(
            deployment_id, name=p.name, parameters=p.parameters, job_variables=p.job_variables
        )
    response.headers["Location"] = f"{request.url.path}/{run.id}"
    return SubmittedTask(
        id=run.id,
        name=run.name,
        deployment=f"{FLOW_NAME}/{p.name}",
        deployment_action=action,
        work_pool=p.pool.name,
        state=run.state.type.value if run.state else None,
    )


async def _read_body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes; a task.yaml is a few KiB")
        chunks.append(chunk)
    return b"".join(chunks)


@router.get("/tasks/{run_id}", responses={404: {"description": "No MLOC run has this id."}})
async def read_task(run_id: UUID) -> TaskStatus:
    """The state of a run created by POST /api/v1/tasks (or any run of an MLOC deployment)."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.exceptions import ObjectNotFound

    unknown = ApiError(404, f"no MLOC task run has the id {run_id}")
    async with get_client() as client:
        try:
            run = await client.read_flow_run(run_id)
        except ObjectNotFound:
            raise unknown from None
        if (await client.read_flow(run.flow_id)).name != FLOW_NAME:
            raise unknown  # some other flow's run: not this API's to show
        deployment = None
        if run.deployment_id is not None:
            with contextlib.suppress(ObjectNotFound):  # deleted since the run was created; the run still stands
                deployment = f"{FLOW_NAME}/{(await client.read_deployment(run.deployment_id)).name}"
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])),
            sort=ArtifactSort.CREATED_DESC,
        )
    state = run.state
    return TaskStatus(
        id=run.id,
        name=run.name,
        deployment=deployment,
        state=RunState(type=state.type.value, name=state.name, message=state.message, timestamp=state.timestamp)
        if state
        else None,
        tags=sorted(run.tags),
        work_pool=run.work_pool_name,
        created=run.created,
        expected_start_time=run.expected_start_time,
        start_time=run.start_time,
        end_time=run.end_time,
        total_run_time_seconds=run.total_run_time.total_seconds(),
        artifacts=[
            RunArtifact(key=a.key, type=a.type, description=a.description, created=a.created) for a in artifacts
        ],
    )


@router.get("/stats")
async def read_stats(
    start_date: Annotated[date, Query(description="The first day counted, YYYY-MM-DD.")],
    end_date: Annotated[date, Query(description="The last day counted, YYYY-MM-DD.")],
    user: Annotated[str | None, Query(description="Only the runs of this owner (metadata.owner).")] = None,
    project: Annotated[str | None, Query(description="Only the runs of this project (metadata.project).")] = None,
) -> dict[str, Any]:
    """GPU-hours and completed tasks over a period: query_parameters, total_gpu_hours,
    total_tasks_completed, breakdown_by_gpu."""
    if start_date > end_date:
        raise ApiError(422, f"start_date {start_date} is after end_date {end_date}")
    from flows.usage import usage_report  # its own module and owner; only this endpoint needs it

    report = functools.partial(usage_report, user=user, project=project, start_date=start_date, end_date=end_date)
    result: dict[str, Any] = await anyio.to_thread.run_sync(report)
    return result


async def _api_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ApiError):  # registered for ApiError only; Starlette's signature is wider
        raise exc
    return JSONResponse(exc.body(), status_code=exc.status)


def create_app(token: str) -> FastAPI:
    """The app, accepting exactly ``token``; the token is held here only, never logged."""
    expected = token.encode()

    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        given = credentials.credentials.encode() if credentials is not None else b""
        # constant time: how long a refusal takes says nothing about how much of a guess was right
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(
        title="MLOC",
        version="v1",
        summary="Submit task.yaml files as Prefect flow runs; read their state and GPU usage.",
    )
    app.include_router(
        router,
        dependencies=[Depends(require_token)],
        responses={401: {"description": "Missing or wrong bearer token."}},
    )
    app.add_exception_handler(ApiError, _api_error)
    return app
