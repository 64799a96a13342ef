"""The MLOC REST facade, served by ``mloc api``: submit a task.yaml, read a run's state, read usage.

A thin layer over the Prefect API; everything it knows lives there (deployments, flow runs,
artifacts), so it keeps no state and any number of copies can serve side by side.

- ``POST /api/v1/tasks[?local=true|false]`` validates the task.yaml as ``mloc validate`` does,
  registers it as ``mloc deploy`` does and creates one flow run of it. Where: ``local``
  (:data:`LOCAL_QUERY`) picks the local process pool or the cluster pool of the task's GPU
  type; left out, an existing deployment stays on its side and a new one goes to the
  cluster. The API never moves a deployment between the two (a 409, see
  :func:`flows.api_submit.deploy`).
- ``GET /api/v1/tasks/{id}`` is that run: state, times, tags, its artifacts and, once
  COMPLETED, its outputs. The flow's return value is not persisted (Prefect's default) and a
  flow-run pod's disk is not the API's to read, so the outputs come from the artifact the
  run publishes last, after its upload (:func:`flows.report.publish_outputs`).
- ``GET /api/v1/stats`` is :func:`flows.usage.usage_report`.
- ``GET /api/v1/services/{name}`` is how a local service stands (:func:`tasks.serving.local.status`).

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
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from flows.api_submit import MAX_BODY_BYTES, ApiError, deploy, openapi_request_body, prepare, task_text
from flows.pipeline import FLOW_NAME
from flows.report import OUTPUTS_SUFFIX, outputs_of

_bearer = HTTPBearer(
    auto_error=False,  # our own 401, with WWW-Authenticate, for a missing and a wrong token alike
    description="The token `mloc api` was started with (MLOC_API_TOKEN, or the Secret block in MLOC_API_TOKEN_BLOCK).",
)

router = APIRouter(prefix="/api/v1")


class Issue(BaseModel):
    """One problem of a submitted task.yaml, as `mloc validate --json` lists it."""

    file: str = Field(description="Always <request>.")
    line: int
    column: int
    field: str = Field(description="The dotted path of the field, e.g. spec.hyperparameters.learning_rate.")
    message: str = Field(description="What is wrong.")
    hint: str = Field(description="How to fix it.")


class ErrorBody(BaseModel):
    """Every error answer of the API: what went wrong and, for a refused task.yaml, each issue."""

    detail: str = Field(description="What went wrong, and what to do.")
    errors: list[Issue] | None = Field(None, description="The task.yaml's issues, for a 422 on a submission.")


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "model": ErrorBody}


LOCAL_QUERY = (
    "Which side of MLOC's work pools the task's deployment mloc/<name> is on. "
    "`true`: the local process pool, in the queue of the task's GPU type, served by `mloc worker` on a plain "
    "machine (as `mloc deploy --local`). `false`: the cluster (Kubernetes) pool of the task's GPU type "
    "(as `mloc deploy`). Left out: an existing deployment stays on the side it is on, and a new one goes "
    "to the cluster. The API never moves an existing deployment from one side to the other: a value that "
    "contradicts it is a 409 that changes nothing and creates no run. Within a side, a changed GPU type "
    "moves it to that type's pool or queue, and the response says so (previous_work_pool, previous_work_queue)."
)


class SubmittedTask(BaseModel):
    id: UUID = Field(description="The flow run's id: GET /api/v1/tasks/{id}.")
    name: str = Field(description="The run's name: the task's metadata.name.")
    deployment: str = Field(description="The deployment it is a run of: mloc/<metadata.name>.")
    deployment_action: str = Field(
        description="What the submission did to the deployment: created, updated or unchanged."
    )
    work_pool: str = Field(description="The work pool whose workers will run it.")
    work_queue: str = Field(
        description="The pool's queue: on the local pool the task's GPU type, any-gpu or cpu; 'default' on the cluster."
    )
    previous_work_pool: str | None = Field(
        description="The pool the deployment was on when this submission moved it to another (its GPU type "
        "changed); null when it is new or stayed on its pool."
    )
    previous_work_queue: str | None = Field(
        description="Likewise the queue it was in, when this submission changed it; null otherwise."
    )
    state: str | None = Field(description="The run's state type: SCHEDULED until a worker picks it up.")


class RunState(BaseModel):
    type: str = Field(description="SCHEDULED, PENDING, RUNNING, COMPLETED, FAILED, CRASHED, CANCELLED, ...")
    name: str
    message: str | None = None
    timestamp: datetime | None = None


class RunArtifact(BaseModel):
    key: str | None = Field(description="Stable per task: <name>-progress, <name>-eval, <name>-report, <name>-outputs.")
    type: str | None = Field(description="progress, table, markdown, ...")
    description: str | None = None
    created: datetime | None = None


class InputLineage(BaseModel):
    source_type: str = Field(description="local, s3 or huggingface.")
    identifier: str = Field(description="The model or dataset: a Hub repo id, an s3:// URL or a local path.")
    revision: str = Field(
        description="What was downloaded: the Hub commit; for S3 a sha256 over its objects' keys and ETags; 'local'."
    )
    content_hash: str = Field(description="sha256:<hex> over the files used (their paths and sha256s).")


class RunOutputs(BaseModel):
    """What a completed run produced, as its mloc-manifest.json records it."""

    uri: str = Field(
        description="Where the outputs were uploaded: spec.output.destination (for a task with a schedule, its "
        "version's folder) as file://, s3:// or hf://<repo>@<commit>."
    )
    manifest: str = Field(description="The mloc-manifest.json beside them: this lineage plus every file's sha256.")
    version: str | None = Field(description="The version this run wrote, for a task with a schedule; else null.")
    metrics: dict[str, float | None] = Field(
        description="eval_loss, perplexity, their _before values and eval_loss_reduction, unrounded, as measured "
        "(those of an evaluation that was disabled are left out)."
    )
    base_model: InputLineage | None = Field(description="The model trained from.")
    dataset: InputLineage | None = Field(description="The dataset trained on.")
    reward_model: InputLineage | None = Field(description="The reward model, for the tasks that use one.")
    task_sha256: str = Field(description="sha256 of the validated task as the run ran it.")
    task_yaml_sha256: str | None = Field(
        description="sha256 of the task.yaml text it was deployed or submitted from; null when the flow was "
        "started without one."
    )


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
    outputs: RunOutputs | None = Field(
        description="Once the run is COMPLETED: where its outputs were uploaded, its metrics and lineage. "
        "Null before, and for a run that failed or was cancelled (nothing was uploaded, or not all of it)."
    )


@router.post(
    "/tasks",
    status_code=201,
    openapi_extra={"requestBody": openapi_request_body()},
    responses={
        409: _error(
            "Nothing was changed and no run was created: the task's work pool does not exist on "
            "the Prefect server (run `mloc pools apply`), or `local` contradicts where the existing deployment "
            "is (the local process pool or a cluster pool). The detail names the deployment, its pool, how it "
            "was deployed and what to do: resubmit with the `local` it has (or without `local`), or move it "
            "deliberately with `mloc deploy [--local]`."
        ),
        413: _error(f"The body is over {MAX_BODY_BYTES} bytes."),
        415: _error("Not YAML, plain text or JSON."),
        422: _error("Not a valid task: every issue, as `mloc validate --json` lists them, in `errors`."),
    },
)
async def submit_task(
    request: Request,
    response: Response,
    local: Annotated[bool | None, Query(description=LOCAL_QUERY)] = None,
) -> SubmittedTask:
    """Validate a task.yaml, create or update its deployment mloc/<name>, and start one run of it.

    An existing deployment is never moved between the local process pool and the cluster's
    pools: see the `local` parameter."""
    from prefect import get_client

    text = task_text(request.headers.get("content-type"), await _read_body(request))
    # validating, planning and deploying block (a temporary file, Prefect's sync client): off the event loop
    planned = await anyio.to_thread.run_sync(functools.partial(prepare, text, local=local))
    deployed = await anyio.to_thread.run_sync(deploy, planned)
    p = deployed.plan
    async with get_client() as client:
        # The parameters of this submission, not only the deployment's defaults: another submission
        # of the same name landing in between cannot change what this run runs.
        run = await client.create_flow_run_from_deployment(
            deployed.deployment_id, name=p.name, parameters=p.parameters, job_variables=p.job_variables
        )
    response.headers["Location"] = f"{request.url.path}/{run.id}"
    return SubmittedTask(
        id=run.id,
        name=run.name,
        deployment=f"{FLOW_NAME}/{p.name}",
        deployment_action=deployed.action,
        work_pool=p.pool.name,
        work_queue=p.work_queue or "default",
        previous_work_pool=deployed.previous_work_pool,
        previous_work_queue=deployed.previous_work_queue,
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


@router.get(
    "/tasks/{run_id}",
    responses={404: _error("No MLOC run has this id."), 422: _error("The id is not a UUID.")},
)
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
    outputs = None
    if state is not None and state.is_completed():
        # newest first: a run has one, but a retried flow run could publish it again
        published = [a for a in artifacts if a.type == "table" and (a.key or "").endswith(OUTPUTS_SUFFIX)]
        if published:
            outputs = RunOutputs.model_validate(outputs_of(published[0].data))
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
        outputs=outputs,
    )


@router.get(
    "/stats",
    responses={
        422: _error("A date is not YYYY-MM-DD, the start is after the end, or the window is past the calendar.")
    },
)
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
    try:
        result: dict[str, Any] = await anyio.to_thread.run_sync(report)
    except ValueError as exc:  # a window the calendar cannot hold
        raise ApiError(422, str(exc)) from None
    return result


class ServiceState(BaseModel):
    """How a service stands, from real probes of its endpoint (`mloc serve status --json`)."""

    name: str = Field(description="The ServingTask's metadata.name.")
    phase: str = Field(description="Pending (starting), Running (every model answers) or Failed.")
    reason: str | None = Field(
        description="Why it Failed: ConfigurationError, ModelNotFound, Unschedulable, Crashing or "
        "EndpointUnreachable; null otherwise."
    )
    message: str = Field(description="What was seen, and for a failure what to do.")
    backend: str = Field(description="Where it runs: local (a server process on the API's machine) or kubernetes.")
    engine: str | None = Field(description="vllm or transformers.")
    base_url: str | None = Field(description="The OpenAI-compatible API root, ending in /v1.")
    models: list[str] = Field(description="The model names it answers for: the base model's and each adapter's.")
    replicas_wanted: int
    replicas_ready: int
    since: str | None = Field(description="When it entered this phase (UTC, ISO 8601).")


@router.get("/services/{name}", responses={404: _error("No service of that name is served here.")})
async def read_service(name: str) -> ServiceState:
    """The status of a service brought up with `mloc serve up --local` on the API's machine."""
    from tasks.serving import local

    try:
        status = await anyio.to_thread.run_sync(local.status, name)  # probes block: off the event loop
    except local.NoSuchService as exc:
        raise ApiError(404, f"{exc} — bring it up with `mloc serve up TASK.yaml --local`") from None
    return ServiceState.model_validate(status.to_dict())


async def _api_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ApiError):  # registered for ApiError only; Starlette's signature is wider
        raise exc
    return JSONResponse(exc.body(), status_code=exc.status)


async def _request_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own 422 (a query parameter that is not a date, an id that is not a UUID) in the
    same ErrorBody shape as every other error."""
    if not isinstance(exc, RequestValidationError):
        raise exc
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("query", "path"))
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return JSONResponse({"detail": "invalid request — " + "; ".join(parts)}, status_code=422)


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
        responses={401: _error("Missing or wrong bearer token.")},
    )
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _request_error)
    return app
