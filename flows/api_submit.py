"""From a submitted task.yaml to its deployment: the checks ``POST /api/v1/tasks`` makes and the deploy.

The same validation and the same deploy as ``mloc validate`` and ``mloc deploy``; what is
new here is only what a request lacks compared to a file: a folder. A task.yaml's relative
local paths mean "next to the file", and a request has no such place, so they are refused.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from configs import ConfigIssue, InferenceTask, ServingTask, TrainingTask, validate_text
from configs.errors import Loc, dotted
from configs.models import LocalDestination, LocalSource, ServiceModelSource
from configs.yamlsource import parse
from flows.deploy import Plan, apply, plan
from flows.pipeline import FLOW_NAME
from tasks.registry import TASK_TYPES
from work_pools import PoolError, pool_named

SOURCE_NAME = "<request>"  # the "file" of every issue, as `mloc validate` names a file
MAX_BODY_BYTES = 1024 * 1024  # a task.yaml is a few KiB; anything near this is not one
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")
JSON_TYPE = "application/json"


class ApiError(Exception):
    """A request the API answers with ``status`` and ``{"detail": ..., "errors": [...]}``."""

    def __init__(self, status: int, detail: str, errors: list[ConfigIssue] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"detail": self.detail}
        if self.errors is not None:
            out["errors"] = [issue.to_dict() for issue in self.errors]
        return out


class TaskSubmission(BaseModel):
    """The JSON form of a submission, for clients that only speak JSON."""

    model_config = ConfigDict(extra="forbid")
    task_yaml: str = Field(description="The task.yaml, as text.")


def task_text(content_type: str | None, body: bytes) -> str:
    """The task.yaml text of a request body: YAML or plain text as is, or JSON ``{"task_yaml": ...}``."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media == JSON_TYPE:
        try:
            return TaskSubmission.model_validate_json(body).task_yaml
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "body"
            raise ApiError(
                422, f'the JSON body must be {{"task_yaml": "<the task.yaml text>"}} — {where}: {first["msg"]}'
            ) from None
    if media not in YAML_TYPES:
        raise ApiError(
            415, f'send the task.yaml as one of {", ".join(YAML_TYPES)}, or {JSON_TYPE} as {{"task_yaml": ...}}'
        )
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(422, "the body is not UTF-8 text") from None


def prepare(text: str, *, local: bool | None) -> Plan:
    """Validate a submitted task.yaml and plan its deployment; raises :class:`ApiError` (422) with every issue.

    ``local=None`` keeps an existing deployment on its side (the local process pool or the
    cluster's pools) and puts a new one on the cluster pool of its GPU type.
    """
    result = validate_text(text, SOURCE_NAME, TASK_TYPES)
    if result.task is None:
        raise ApiError(422, f"the task.yaml is not valid: {len(result.issues)} error(s)", result.issues)
    task = result.task
    if isinstance(task, ServingTask):
        raise ApiError(
            422,
            f"'{task.metadata.name}' is a ServingTask: it is served, not run as a task — serve it with "
            "`mloc serve up FILE`, and read its status at GET /api/v1/services/{name}",
        )
    misplaced = local_path_issues(task, text, local_roots())
    if misplaced:
        raise ApiError(
            422, f"local paths in a submitted task.yaml must be absolute and under {LOCAL_ROOTS_ENV}", misplaced
        )
    if local is None:
        local = deployed_locally(task.metadata.name) is True
    with tempfile.TemporaryDirectory(prefix="mloc-api-") as folder:
        path = Path(folder) / "task.yaml"
        path.write_bytes(text.encode("utf-8"))  # plan() hashes the file's bytes, as `mloc deploy` does
        try:
            planned = plan(task, path, local=local)
        except PoolError as exc:
            raise ApiError(422, str(exc)) from None
    # Every local path is absolute (checked above), so base_dir is never read; a fixed "/" keeps
    # the deployment identical for identical text, where the temporary folder would make every
    # submission an update (deploy() keeps the base_dir of an existing deployment, for the same reason).
    return dataclasses.replace(planned, parameters={**planned.parameters, "base_dir": "/"})


LOCAL_ROOTS_ENV = "MLOC_API_LOCAL_ROOTS"


def local_roots() -> list[str]:
    """The folders submitted tasks may read and write on the workers: ``MLOC_API_LOCAL_ROOTS``,
    absolute paths separated by ':'. Unset or empty: none, so a submission can name no local
    path at all (S3 and the Hub only) — a request must not reach /etc or a worker's ~/.ssh.
    Raises ValueError for a root that is not absolute."""
    import os

    roots = [r for r in os.environ.get(LOCAL_ROOTS_ENV, "").split(":") if r]
    wrong = [r for r in roots if not r.startswith("/")]
    if wrong:
        raise ValueError(f"{LOCAL_ROOTS_ENV}: {', '.join(wrong)} is not an absolute path")
    return [os.path.normpath(r) for r in roots]


def local_path_issues(task: TrainingTask | InferenceTask, text: str, roots: list[str]) -> list[ConfigIssue]:
    """An issue, at its line, for each local path of the task (sources, destination,
    hyperparameters.output_dir) that is relative or outside every root.

    The check is on the text of the path ('..' resolved): the API cannot see the workers'
    disks, so a symbolic link under a root is the operator's to avoid."""
    import os

    positions = parse(text).positions  # the text is valid YAML: validate_text accepted it
    found = list(_local_paths(task, ()))
    if isinstance(task, TrainingTask) and isinstance(task.spec.hyperparameters.get("output_dir"), str):
        found.append((("spec", "hyperparameters", "output_dir"), task.spec.hyperparameters["output_dir"]))
    issues = []
    for loc, value in found:
        if not value.startswith("/"):
            problem = f"'{value}' is relative, and a task submitted over the API has no folder it could be relative to"
            fix = "write the absolute path it has on the worker"
        elif not any(_under(os.path.normpath(value), root) for root in roots):
            allowed = ", ".join(roots) if roots else "none: this API is set up for S3 and Hub paths only"
            problem = f"'{value}' is outside the folders this API lets tasks use ({LOCAL_ROOTS_ENV}: {allowed})"
            fix = "use a path under one of them, or an S3 or Hugging Face source or destination"
        else:
            continue
        line, column = positions.of_value(loc)
        issues.append(ConfigIssue(SOURCE_NAME, line, column, dotted(loc), problem, fix))
    return issues


def _under(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


def _local_paths(value: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    # walks the whole model, so a local source added to the format later is checked too
    if isinstance(value, (LocalSource, LocalDestination)):
        yield (*loc, "path"), value.path
    elif isinstance(value, ServiceModelSource):  # the ServingTask's task.yaml, read on the worker
        yield (*loc, "task"), value.task
    elif isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            yield from _local_paths(getattr(value, name), (*loc, info.alias or name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _local_paths(item, (*loc, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _local_paths(item, (*loc, str(key)))


@dataclasses.dataclass(frozen=True)
class Deployed:
    """What :func:`deploy` did: the action, the deployment, the plan it applied, and where it was before."""

    action: str
    deployment_id: UUID
    plan: Plan
    previous_work_pool: str | None  # None: new, or still on the same pool
    previous_work_queue: str | None


def deployed_locally(name: str) -> bool | None:
    """Whether ``mloc/<name>`` is on a process pool (True), a cluster pool (False), or nowhere known (None)."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        existing = _existing(client, name)
        return None if existing is None else _on_process_pool(client, existing.work_pool_name)


def _existing(client: Any, name: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
    except ObjectNotFound:
        return None


def _on_process_pool(client: Any, pool_name: str | None) -> bool | None:
    from prefect.exceptions import ObjectNotFound

    if pool_name is None:
        return None
    try:
        return bool(client.read_work_pool(pool_name).type == "process")
    except ObjectNotFound:  # deleted since; MLOC's definition still says what it was
        try:
            return pool_named(pool_name).kind == "process"
        except KeyError:
            return None


def deploy(p: Plan) -> Deployed:
    """Create or update ``mloc/<name>``; never moves it between a process pool and the cluster's pools.

    A deployment on the local process pool has a worker on some machine serving it, one on
    a cluster pool the cluster's workers: moved to the other side, its runs would wait, Late,
    for a worker that may not exist. So that move is a 409 and changes nothing; `mloc deploy`
    makes it deliberately. Within a side, the pool or queue follows the task's GPU type, and
    :class:`Deployed` says where it was before.

    Blocking: it reuses :func:`flows.deploy.apply`, the one deploy path `mloc deploy` takes,
    with Prefect's sync client, so the API calls it in a worker thread.
    """
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(p.pool.name)
        except ObjectNotFound:
            raise ApiError(
                409, f"work pool '{p.pool.name}' does not exist on the Prefect server — run `mloc pools apply` first"
            ) from None
        existing = _existing(client, p.name)
        previous_pool = previous_queue = None
        if existing is not None:
            on_process = _on_process_pool(client, existing.work_pool_name)
            if on_process is not None and on_process != (p.pool.kind == "process"):
                raise ApiError(409, _move_refused(p, existing.work_pool_name, on_process))
            base_dir = existing.parameters.get("base_dir")
            if isinstance(base_dir, str):
                # every local path of a submission is absolute, so base_dir is never read; keeping the one
                # there (`mloc deploy` writes the file's folder) leaves an unchanged task's deployment, and
                # the runs its schedule has made, as they are
                p = dataclasses.replace(p, parameters={**p.parameters, "base_dir": base_dir})
            if existing.work_pool_name != p.pool.name:
                previous_pool = existing.work_pool_name
            if existing.work_queue_name != (p.work_queue or "default"):
                previous_queue = existing.work_queue_name
        action = apply(p, client)
        deployment = client.read_deployment_by_name(f"{FLOW_NAME}/{p.name}")
    return Deployed(action, deployment.id, p, previous_pool, previous_queue)


def _move_refused(p: Plan, pool: str, on_process: bool) -> str:
    name = f"{FLOW_NAME}/{p.name}"
    if on_process:
        where = f"the local process pool '{pool}', as `mloc deploy --local` (or ?local=true) deploys it"
        keep, move = "true", "`mloc deploy <task.yaml>`"
    else:
        where = f"the cluster pool '{pool}', as `mloc deploy` (or ?local=false) deploys it"
        keep, move = "false", "`mloc deploy --local <task.yaml>`"
    return (
        f"deployment {name} is on {where}; this submission would move it to work pool '{p.pool.name}', "
        "whose workers are not the ones serving it now, so its runs could wait there with none to pick them up. "
        f"Nothing was changed and no run was created. Resubmit with ?local={keep} (or without local) to run it "
        f"where it is, or move it deliberately with {move} (or delete it: `prefect deployment delete {name}`) "
        "and submit again."
    )


def openapi_request_body() -> dict[str, Any]:
    """The request body of ``POST /api/v1/tasks`` for the OpenAPI schema: FastAPI cannot infer
    one, since the endpoint reads the body itself (after the token check)."""
    text = {"schema": {"type": "string", "description": "The task.yaml."}}
    return {
        "required": True,
        "content": {
            **{media: text for media in YAML_TYPES},
            JSON_TYPE: {"schema": TaskSubmission.model_json_schema()},
        },
    }
