"""The ``mloc`` command: a thin layer over configs, tasks, flows and work pools.

Heavy imports (Prefect, torch) happen inside the commands that need them, so
``mloc --help`` and ``mloc validate`` answer in well under a second.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:  # imported for real inside the commands that need them: start-up stays fast
    from prefect.client.schemas.objects import State

    from configs import InferenceTask, ServingTask, TrainingTask
    from flows.local_server import EmbeddedServer

app = typer.Typer(
    name="mloc",
    help="MLOC turns a task.yaml into a Prefect flow that trains, evaluates and uploads LLMs on GPU work pools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_VALID, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"mloc {version('mloc')}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print MLOC's version and exit."),
    ] = False,
) -> None:
    """MLOC turns a task.yaml into a Prefect flow that trains, evaluates and uploads LLMs on GPU work pools."""


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="task.yaml files, or folders to search for *.yaml / *.yml.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Check task.yaml files and report every error: file:line:col: field: what is wrong — how to fix it.

    Exit code 0: all valid; 1: some file is invalid; 2: some file is unreadable or not YAML.
    """
    from configs import expand_paths, validate_file
    from tasks.registry import TASK_TYPES

    files = expand_paths(paths)
    results = [validate_file(f, TASK_TYPES) for f in files]
    code = EXIT_VALID
    if any(r.unreadable for r in results):
        code = EXIT_UNREADABLE
    elif not results or any(not r.valid for r in results):
        code = EXIT_INVALID
    if as_json:
        payload = {"valid": code == EXIT_VALID, "files": [r.to_dict() for r in results]}
        typer.echo(json.dumps(payload, indent=2))
        raise typer.Exit(code)
    if not results:
        typer.echo("no task.yaml files found in: " + " ".join(map(str, paths)), err=True)
    for result in results:
        if result.valid and result.task is not None:
            spec = result.task.spec
            typer.echo(f"ok    {result.file}  ({result.task.kind}, taskType {spec.task_type})")
        else:
            typer.echo(f"FAIL  {result.file}: {len(result.issues)} error(s)")
            for issue in result.issues:
                typer.echo(f"  {issue.format()}")
    invalid = sum(not r.valid for r in results)
    if invalid:
        typer.echo(f"{invalid} of {len(results)} file(s) invalid.")
    raise typer.Exit(code)


def _load_or_exit(path: Path, exit_now: bool = True) -> TrainingTask | InferenceTask | ServingTask | None:
    from configs import validate_file
    from tasks.registry import TASK_TYPES

    result = validate_file(path, TASK_TYPES)
    if result.task is None:
        typer.echo(f"FAIL  {result.file}: {len(result.issues)} error(s)", err=True)
        for issue in result.issues:
            typer.echo(f"  {issue.format()}", err=True)
        if exit_now:
            raise typer.Exit(EXIT_UNREADABLE if result.unreadable else EXIT_INVALID)
    return result.task


@app.command()
def run(
    path: Annotated[Path, typer.Argument(help="The task.yaml to run.")],
) -> None:
    """Run a task now, in this process: against PREFECT_API_URL when it is set, else on the local
    server `mloc server start` started when it is up, else on an embedded local Prefect server.
    Prints where the outputs went and a summary."""
    from flows import local_server

    api = _prefect_for_this_command()
    long_lived = None if api else local_server.running()
    # the embedded server boots while this process validates the task and imports the pipeline
    embedded = local_server.start_embedded() if api is None and long_lived is None else None
    # in the environment before Prefect is first imported: Prefect reads it then, for every
    # thread (the relay's threads too), not only for the one a settings context is entered in
    if embedded is not None:
        os.environ["PREFECT_API_URL"] = embedded.api_url
    elif long_lived is not None:
        os.environ["PREFECT_API_URL"] = str(long_lived["api_url"])
    if embedded is not None:
        import atexit

        # at exit, and registered before Prefect is imported: Prefect's own exit handlers, which
        # send the run's last logs and events to this server, run first (atexit runs in reverse)
        atexit.register(embedded.stop)
    _run(path, api, long_lived, embedded)


def _run(
    path: Path,
    api: str | None,
    long_lived: dict[str, str | int] | None,
    embedded: EmbeddedServer | None,
) -> None:
    import hashlib

    task = _load_or_exit(path)  # a taskType this version cannot run is refused here, by validation
    assert task is not None  # _load_or_exit exits otherwise
    from configs import ServingTask

    if isinstance(task, ServingTask):
        typer.echo(
            f"mloc run: {path} is a ServingTask: it is served, not run — `mloc serve up {path} --local` serves it "
            "on this machine",
            err=True,
        )
        raise typer.Exit(EXIT_INVALID)
    if api:
        where = api
    elif long_lived is not None:
        where = f"the local MLOC server at {long_lived['api_url']} (mloc server start)"
    else:
        where = "an embedded local Prefect server"
    typer.echo(f"mloc: running {task.metadata.name} on {where}")

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.local_server import ServerError
    from flows.pipeline import pipeline

    execution = task.spec.execution
    flow = pipeline.with_options(
        retries=execution.retries,
        retry_delay_seconds=execution.retry_delay_seconds,
        timeout_seconds=execution.timeout_seconds,
    )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if api:
        url = api
    elif long_lived is not None:
        url = str(long_lived["api_url"])
    else:
        assert embedded is not None
        try:
            url = embedded.wait(float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
        except ServerError as exc:
            typer.echo(f"mloc run: {exc}", err=True)
            raise typer.Exit(1) from None
    # no `prefect.tags(...)` around it: the flow tags its own run (what the usage report reads),
    # and tags in this context would also land on every task run, each of which then asks the
    # server for tag-concurrency slots before it starts
    with temporary_settings(updates={PREFECT_API_URL: url}):
        state = flow(task=task, base_dir=str(path.resolve().parent), task_yaml_sha256=digest, return_state=True)
    _summary(state)
    raise typer.Exit(0 if state.is_completed() else 1)


def _prefect_for_this_command() -> str | None:
    """PREFECT_API_URL, or None: this command's flow then runs on a local Prefect server."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # an embedded server stays offline
    # its first start migrates a new database, which takes longer than Prefect's 20 s default on a busy laptop
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks")  # the steps' own loggers, into the run's logs
    return os.environ.get("PREFECT_API_URL")


def _summary(state: State[Any]) -> None:
    typer.echo("")
    typer.echo(f"run {state.state_details.flow_run_id}: {state.name}")
    if not state.is_completed():
        typer.echo(f"  {state.message}")
        return
    out = state.result()
    metrics = out["metrics"]
    typer.echo(f"  outputs:   {out['output']}")
    typer.echo(f"  work dir:  {out['workdir']}")
    for role, got in out["inputs"].items():
        typer.echo(
            f"  {role + ':':10} {got['identifier']} @ {got['revision'][:12]} ({got['downloaded_files']} file(s) downloaded)"
        )
    if "inference" in out:  # an InferenceTask: its questions, tokens and metrics
        usage = out["inference"]
        typer.echo(
            f"  answered:  {usage['questions']} question(s), {usage['input_tokens']} prompt and "
            f"{usage['output_tokens']} answer token(s), {usage['tool_calls']} tool call(s)"
        )
        if out["index"] is not None:
            how = "reused" if out["index"]["reused"] else "embedded"
            typer.echo(f"  index:     {out['index']['chunks']} chunk(s), {how}")
        for name, value in metrics.items():
            typer.echo(f"  {name + ':':16} {value:.4g}")
        return
    trained = out["training"]
    loss = trained["train_loss"]
    shown = f", train loss {loss:.4g}" if loss is not None else ""
    typer.echo(f"  training:  {trained['global_step']} steps{shown}")
    from tasks.registry import TASK_TYPES

    # the metrics the task's type declares, as its evaluation measured them before and after
    for name in TASK_TYPES[out["task_type"]].metric_names:
        if name in metrics and f"{name}_before" in metrics:
            typer.echo(f"  {name + ':':16} {metrics[f'{name}_before']:.4g} before -> {metrics[name]:.4g} after")


@app.command()
def deploy(
    paths: Annotated[list[Path], typer.Argument(help="task.yaml files, or folders of them.")],
    local: Annotated[
        bool, typer.Option("--local", help="Target the local process pool instead of the GPU pools.")
    ] = False,
) -> None:
    """Register each task as the Prefect deployment mloc/<name> on the work pool of its GPU type.

    Every file is validated, checked to be of a taskType this version runs, and matched to a
    pool first: if any fails, nothing is registered.
    Re-deploying an unchanged task changes nothing, so its scheduled runs stay as they were.
    """
    from configs import ServingTask, expand_paths
    from work_pools import PoolError

    files = expand_paths(paths)
    plans = []
    failed = False
    for file in files:
        task = _load_or_exit(file, exit_now=False)
        if task is None:
            failed = True
            continue
        if isinstance(task, ServingTask):
            typer.echo(
                f"FAIL  {file}: a ServingTask is served, not deployed as a pipeline run — `mloc serve up {file} "
                "--local` serves it on this machine",
                err=True,
            )
            failed = True
            continue
        from flows.deploy import plan

        try:
            plans.append(plan(task, file, local=local))
        except PoolError as exc:
            typer.echo(f"FAIL  {file}: {exc}", err=True)
            failed = True
    if failed or not plans:
        typer.echo("nothing was deployed.", err=True)
        raise typer.Exit(EXIT_INVALID)
    import httpx
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.deploy import apply
    from flows.pipeline import FLOW_NAME

    api_url = _server_or_exit("mloc deploy")
    try:
        with get_client(sync_client=True) as client:
            missing = []
            for pool in sorted({p.pool.name for p in plans}):
                try:
                    client.read_work_pool(pool)
                except ObjectNotFound:
                    missing.append(pool)
            if missing:
                typer.echo(
                    f"mloc deploy: work pool(s) {', '.join(missing)} do not exist on the Prefect server at {api_url}"
                    " — run `mloc pools apply` first; nothing was deployed.",
                    err=True,
                )
                raise typer.Exit(EXIT_INVALID)
            for p in plans:
                action = apply(p, client)
                when = f", schedule {p.schedules[0][0]} ({p.schedules[0][1]})" if p.schedules else ""
                queue = f" (queue {p.work_queue})" if p.work_queue else ""
                typer.echo(f"{action:9} {FLOW_NAME}/{p.name} -> work pool {p.pool.name}{queue}{when}")
    except httpx.HTTPError as exc:
        typer.echo(f"mloc deploy: cannot reach the Prefect server at {api_url}: {exc} — is it running?", err=True)
        raise typer.Exit(EXIT_UNREADABLE) from None
    for p in plans:
        typer.echo(f"run it with: prefect deployment run '{FLOW_NAME}/{p.name}'")
    for pool in sorted({p.pool.name for p in plans}):
        typer.echo(f"its runs wait until a worker polls work pool '{pool}': {_worker_hint(pool)}")


def _server_or_exit(command: str) -> str:
    """PREFECT_API_URL, shown without credentials; without one, a clear exit instead of a throwaway server."""
    from urllib.parse import urlsplit

    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        # Prefect would start a temporary server for this one command: what it registers there no worker sees
        typer.echo(
            f"{command}: PREFECT_API_URL is not set — point it at the Prefect server your workers poll, e.g. "
            "`prefect server start` and `export PREFECT_API_URL=http://127.0.0.1:4200/api`; nothing was changed.",
            err=True,
        )
        raise typer.Exit(EXIT_UNREADABLE)
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _worker_hint(pool: str) -> str:
    from flows.worker import LOCAL_POOL

    if pool == LOCAL_POOL:
        return "start one with `mloc worker` on the machine that should run them"
    return f"on a cluster, the Helm release prefect-worker-{pool} (infra/README.md, step 7)"


serve_app = typer.Typer(
    help="Serve a ServingTask as an OpenAI-compatible endpoint: `mloc serve up TASK.yaml --local`, "
    "`mloc serve status NAME`, `mloc serve delete NAME`.",
    no_args_is_help=True,
)
app.add_typer(serve_app, name="serve")


@serve_app.command("up")
def serve_up(
    path: Annotated[Path, typer.Argument(help="The ServingTask's task.yaml.")],
    local: Annotated[
        bool, typer.Option("--local", help="Serve on this machine: vLLM when its environment exists, on 127.0.0.1.")
    ] = False,
) -> None:
    """Bring a service up, or in line with its task.yaml: converge its goals (engine, model present,
    server running, available, serving every model) with the serve flow, against PREFECT_API_URL
    when it is set, else on an embedded local Prefect server. Idempotent: a service that already
    runs this spec is left as it is; a changed spec restarts its server.

    Prints the base URL once every model answers. Exit code 1 when it cannot be served, with the
    reason; 2 without --local (Kubernetes serving runs as the serve flow on a pool, not from here).
    """
    from configs import ServingTask

    task = _load_or_exit(path)
    assert task is not None  # _load_or_exit exits otherwise
    if not isinstance(task, ServingTask):
        typer.echo(
            f"mloc serve up: {path} is a {task.kind}, not a ServingTask — run it with `mloc run {path}`", err=True
        )
        raise typer.Exit(EXIT_INVALID)
    if not local:
        typer.echo(
            "mloc serve up: serving on Kubernetes is applied by the serve flow (mloc-serve) on a work pool and is "
            "not wired to this command yet — pass --local to serve on this machine",
            err=True,
        )
        raise typer.Exit(EXIT_UNREADABLE)
    api = _prefect_for_this_command()
    typer.echo(f"mloc: serving {task.metadata.name} locally, converged on {api or 'an embedded local Prefect server'}")

    from flows.serve import serve

    state = serve(task=task, base_dir=str(path.resolve().parent), backend="local", return_state=True)
    out = state.result(raise_on_failure=False)  # a Failed service is a Failed run holding its status
    if not isinstance(out, dict) or "status" not in out:
        typer.echo(f"mloc serve up: the serve flow ended {state.name}: {state.message}", err=True)
        raise typer.Exit(EXIT_INVALID)
    typer.echo("")
    for goal in out["converged"]["goals"]:
        first = (goal["detail"].splitlines() or [""])[0]
        typer.echo(f"  {goal['name']:17} {goal['outcome']:8} {first}")
    status = out["status"]
    if status["phase"] != "Running":
        typer.echo(
            f"mloc serve up: {task.metadata.name} is {status['phase']} ({status['reason']}): {status['message']}",
            err=True,
        )
        raise typer.Exit(EXIT_INVALID)
    typer.echo(f"serving {', '.join(status['models'])} at {status['base_url']}")


@serve_app.command("status")
def serve_status(
    name: Annotated[str, typer.Argument(help="The service's metadata.name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """How a local service stands, from real probes: Pending, Running or Failed with a reason
    (ConfigurationError, ModelNotFound, Crashing, EndpointUnreachable), its base URL and models.

    Exit code 0: Running or Pending; 1: Failed, or no such service.
    """
    from tasks.serving import local

    try:
        status = local.status(name)
    except local.NoSuchService as exc:
        typer.echo(f"mloc serve status: {exc} — start it with `mloc serve up TASK.yaml --local`", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    if as_json:
        typer.echo(json.dumps(status.to_dict(), indent=2))
    else:
        typer.echo(f"{name}: {status.line()}")
        typer.echo(f"  since:     {status.since}")
        typer.echo(f"  engine:    {status.engine} ({status.backend})")
        typer.echo(f"  base URL:  {status.base_url}")
        typer.echo(f"  models:    {', '.join(status.models) or '-'}")
        typer.echo(f"  replicas:  {status.replicas_ready} of {status.replicas_wanted} ready")
    raise typer.Exit(EXIT_INVALID if status.phase == "Failed" else EXIT_VALID)


@serve_app.command("delete")
def serve_delete(name: Annotated[str, typer.Argument(help="The service's metadata.name.")]) -> None:
    """Stop a local service's server and forget it; its model and adapters stay in the cache."""
    from tasks.serving import local

    try:
        done = local.delete(name)
    except local.NoSuchService as exc:
        typer.echo(f"mloc serve delete: {exc}", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    for line in done:
        typer.echo(line)


server_app = typer.Typer(
    help="A long-lived local Prefect server (the UI included) that `mloc run` uses instead of starting one per run.",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server")


@server_app.command("start")
def server_start(
    port: Annotated[int, typer.Option(help="The loopback port it listens on.")] = 4200,
) -> None:
    """Start `prefect server start` in the background, on PREFECT_HOME's database; `mloc run`
    runs on it while it is up (and says so), instead of booting an embedded server each time."""
    from flows import local_server

    already = local_server.running()
    try:
        state = local_server.start_long_lived(port)
    except local_server.ServerError as exc:
        typer.echo(f"mloc server start: {exc}", err=True)
        raise typer.Exit(1) from None
    verb = "is already running" if already else "started"
    typer.echo(f"the local MLOC server {verb} at {state['api_url']} (log: {state['log']})")
    typer.echo(f"  UI: {str(state['api_url']).removesuffix('/api')}")
    typer.echo(f"  for Prefect's own commands: export PREFECT_API_URL={state['api_url']}")
    typer.echo("  stop it with: mloc server stop")


@server_app.command("stop")
def server_stop() -> None:
    """Stop the server `mloc server start` started; `mloc run` boots an embedded one again."""
    from flows import local_server

    if local_server.stop_long_lived():
        typer.echo("the local MLOC server is stopped")
    else:
        typer.echo("no local MLOC server was running")


@server_app.command("status")
def server_status() -> None:
    """Whether the local MLOC server is up, and where (exit 1 when it is not)."""
    from flows import local_server

    state = local_server.running()
    if state is None:
        typer.echo("no local MLOC server is running: `mloc run` boots an embedded one for each run")
        raise typer.Exit(1)
    typer.echo(f"the local MLOC server is running at {state['api_url']} (log: {state['log']})")


pools_app = typer.Typer(help="The work pools: one per GPU type, plus cpu, any-gpu and local.", no_args_is_help=True)
app.add_typer(pools_app, name="pools")


@pools_app.command("apply")
def pools_apply(
    local: Annotated[
        bool,
        typer.Option("--local", help="Run the daily usage report on the local pool (`mloc worker`) instead of 'cpu'."),
    ] = False,
    usage_cron: Annotated[
        str, typer.Option(help="When the daily usage report runs; it reports the previous UTC day.")
    ] = "0 1 * * *",
    usage_timezone: Annotated[str, typer.Option(help="The time zone of --usage-cron.")] = "UTC",
) -> None:
    """Create or update every work pool on the Prefect server, and the daily usage-report
    deployment mloc-usage-report/daily; idempotent: what already says the same is left alone."""
    from prefect import get_client

    from flows.usage import DEPLOYMENT_NAME, REPORT_FLOW_NAME, schedule_daily
    from flows.worker import LOCAL_POOL
    from work_pools import apply, cpu_pool

    pool = LOCAL_POOL if local else cpu_pool().name
    _server_or_exit("mloc pools apply")
    with get_client(sync_client=True) as client:
        for line in apply(client):
            typer.echo(line)
        action = schedule_daily(client, cron=usage_cron, timezone=usage_timezone, pool=pool)
    typer.echo(
        f"{action:9} {REPORT_FLOW_NAME}/{DEPLOYMENT_NAME} -> work pool {pool}, schedule {usage_cron} ({usage_timezone})"
    )


@pools_app.command("list")
def pools_list() -> None:
    """The pool definitions this MLOC version ships."""
    from work_pools import pools

    for pool in pools():
        gpus = f"{pool.gpu_type or 'no GPU'}, up to {pool.gpus_per_node}/node" if pool.gpu_type else "no GPU"
        typer.echo(f"{pool.name:18} {pool.kind:10} {gpus:40} {pool.description}")


@app.command()
def worker(
    pool: Annotated[str, typer.Option(help="The process pool to join.")] = "local",
) -> None:
    """Start a Prefect process worker on this machine for the tasks its hardware can run.

    The local pool has one queue per GPU type (plus 'any-gpu' and 'cpu'); `mloc deploy --local`
    puts each task in the queue of its GPU type. This machine's GPU is detected with nvidia-smi
    (else torch) and the worker serves that queue, 'any-gpu' and 'cpu' — or only 'cpu' without a GPU.
    """
    from flows.worker import detect_gpu_type, local_queues

    gpu = detect_gpu_type()
    queues = local_queues(gpu)
    typer.echo(f"mloc: this machine has {gpu or 'no NVIDIA GPU'}; serving queues {', '.join(queues)} of pool '{pool}'")
    # this interpreter's own Prefect: a `prefect` on PATH may be missing, or another install's
    args = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    for queue in queues:
        args += ["--work-queue", queue]
    os.execv(args[0], args)


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print the JSON Schema of task.yaml.

    Editors with yaml-language-server check files as they are typed when a task.yaml
    starts with:  # yaml-language-server: $schema=<path or URL of the schema>
    """
    from configs.schema import task_schema
    from tasks.registry import TASK_TYPES

    text = json.dumps(task_schema(TASK_TYPES), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}", err=True)


@app.command("task-types")
def task_types() -> None:
    """List the task types and what each runs."""
    from tasks.registry import TASK_TYPES

    for name, info in TASK_TYPES.items():
        trainer = f" [{info.trainer_config}]" if info.trainer_config else ""
        typer.echo(f"{name:14} {info.kind:14} {info.summary}{trainer}")
        if info.unavailable:
            typer.echo(f"{'':30}cannot run in this version yet: {info.unavailable}")
        elif info.metrics:
            shown = ", ".join(f"{metric} ({way} is better)" for metric, way in info.metrics)
            typer.echo(f"{'':30}gates may check: {shown}")


@app.command("api")
def api(
    host: Annotated[str, typer.Option(help="The address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The port to listen on.")] = 8080,
) -> None:
    """Serve the REST facade: POST /api/v1/tasks, GET /api/v1/tasks/{id}, GET /api/v1/stats,
    GET /api/v1/services/{name}.

    Every request needs 'Authorization: Bearer <token>'.
    The token: MLOC_API_TOKEN, else the Prefect Secret block named in MLOC_API_TOKEN_BLOCK; with neither it does not start.

    Deployments and runs go to the Prefect API of PREFECT_API_URL. /stats reads runs through
    it too, or, with MLOC_USAGE_SOURCE=database, straight from the server's database
    (PREFECT_SERVER_DATABASE_CONNECTION_URL): much faster over many runs.
    /docs lists the endpoints (open: no data).

    Put it behind TLS: a bearer token sent over plain HTTP can be read on the way.
    """
    from flows.api_token import TokenError, resolve_token

    shown = _server_or_exit("mloc api")
    from flows.api_submit import LOCAL_ROOTS_ENV, local_roots
    from flows.usage import choose_source

    try:
        token, source = resolve_token()
        usage_source = choose_source()
        roots = local_roots()
    except (TokenError, ValueError) as exc:
        typer.echo(f"mloc api: {exc}", err=True)
        raise typer.Exit(2) from None
    import uvicorn

    from flows.api import create_app

    stats_from: str = usage_source
    if usage_source == "database":
        from flows.usage_db import database_shown

        stats_from = f"database {database_shown()}"
    typer.echo(
        f"mloc api: http://{host}:{port}/api/v1 (docs: /docs), Prefect API {shown}, token from {source}, "
        f"/stats from the {stats_from}, local paths under {', '.join(roots) or f'none ({LOCAL_ROOTS_ENV} is unset)'}"
    )
    uvicorn.run(create_app(token), host=host, port=port)


@app.command()
def usage(
    user: Annotated[str | None, typer.Option(help="Only runs of this owner (metadata.owner).")] = None,
    project: Annotated[str | None, typer.Option(help="Only runs of this project (metadata.project).")] = None,
    start: Annotated[str | None, typer.Option(help="First day, YYYY-MM-DD (UTC). Default: yesterday.")] = None,
    end: Annotated[
        str | None, typer.Option(help="Last day, inclusive, YYYY-MM-DD (UTC). Default: the start day.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print one CSV row per GPU type: hours and cost.")] = False,
    rate_card: Annotated[
        Path | None, typer.Option("--rate-card", help='A JSON file of cost per GPU-hour: {"nvidia-a100-80gb": 2.5}.')
    ] = None,
    currency: Annotated[
        str, typer.Option(help="The currency of the rate card's numbers, a code such as USD or EUR.")
    ] = "USD",
    source: Annotated[
        str | None,
        typer.Option(
            help="Read runs through the Prefect 'api', or straight from its 'database' "
            "(PREFECT_SERVER_DATABASE_CONNECTION_URL; ~30x faster over many runs). "
            "Default: MLOC_USAGE_SOURCE, else 'api' when PREFECT_API_URL is set, else 'database'."
        ),
    ] = None,
) -> None:
    """GPU-hours of MLOC runs over whole UTC days, by GPU type, user, project and task type.

    Read from the Prefect API (PREFECT_API_URL) or its database (--source).
    Failed, crashed and cancelled runs count their GPU-hours; running ones count up to now.
    Exit code 1 on bad input or when the runs cannot be read.
    """
    from datetime import datetime
    from typing import NoReturn

    from flows import usage_output
    from flows.usage import choose_source, load_rate_card, usage_report, yesterday_utc
    from flows.usage_compute import check_currency
    from flows.usage_db import DatabaseMismatch

    def fail(message: str) -> NoReturn:
        typer.echo(f"mloc usage: {message}", err=True)
        raise typer.Exit(EXIT_INVALID)

    if as_json and as_csv:
        fail("--json and --csv exclude each other")
    days = {}
    for option, value in (("--start", start), ("--end", end)):
        try:
            days[option] = datetime.strptime(value, "%Y-%m-%d").date() if value else None
        except ValueError:
            fail(f"{option} '{value}' is not a date: use YYYY-MM-DD")
    start_date = days["--start"] or yesterday_utc()
    end_date = days["--end"] or start_date
    if end_date < start_date:
        fail(f"--end {end_date} is before --start {start_date}")
    rates = None
    try:
        rates = load_rate_card(rate_card) if rate_card else None
        currency = check_currency(currency)
        chosen = choose_source(source)
    except ValueError as exc:
        fail(str(exc))
    import httpx
    import sqlalchemy.exc

    try:
        report = usage_report(
            user, project, start_date=start_date, end_date=end_date, rate_card=rates, currency=currency, source=chosen
        )
    except ValueError as exc:  # a GPU type with hours but no rate
        fail(str(exc))
    except httpx.HTTPError as exc:
        fail(f"cannot read runs from the Prefect API: {exc}")
    except DatabaseMismatch as exc:
        fail(str(exc))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        from flows.usage_db import database_shown

        hint = " (no Prefect server has used it yet: nothing has run here)" if "no such table" in str(exc) else ""
        fail(f"cannot read runs from Prefect's database {database_shown()}: {str(exc).splitlines()[0]}{hint}")
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    elif as_csv:
        sys.stdout.write(usage_output.csv_text(report))
    else:
        typer.echo(usage_output.table(report))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
