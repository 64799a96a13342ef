"""The ``mloc`` command: a thin layer over configs, tasks, flows and work pools.

Heavy imports (Prefect, torch) happen inside the commands that need them, so
``mloc --help`` and ``mloc validate`` answer in well under a second.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:  # imported for real inside the commands that need them: start-up stays fast
    from prefect.client.schemas.objects import State

    from configs import InferenceTask, TrainingTask

app = typer.Typer(
    name="mloc",
    help="MLOC turns a task.yaml into a Prefect flow that trains, evaluates and uploads LLMs on GPU work pools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_VALID, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2


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


def _load_or_exit(path: Path) -> TrainingTask | InferenceTask:
    from configs import validate_file
    from tasks.registry import TASK_TYPES

    result = validate_file(path, TASK_TYPES)
    if result.task is None:
        typer.echo(f"FAIL  {result.file}: {len(result.issues)} error(s)", err=True)
        for issue in result.issues:
            typer.echo(f"  {issue.format()}", err=True)
        raise typer.Exit(EXIT_UNREADABLE if result.unreadable else EXIT_INVALID)
    return result.task


@app.command()
def run(
    path: Annotated[Path, typer.Argument(help="The task.yaml to run.")],
) -> None:
    """Run a task now, in this process: against PREFECT_API_URL when it is set, else on an
    embedded local Prefect server. Prints where the outputs went and a summary."""
    import hashlib
    import os

    from tasks.registry import runnable

    task = _load_or_exit(path)
    if not runnable(task.spec.task_type):
        typer.echo(f"taskType '{task.spec.task_type}' cannot be run by this MLOC version yet", err=True)
        raise typer.Exit(EXIT_INVALID)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # an embedded server stays offline
    # its first start migrates a new database, which takes longer than Prefect's 20 s default on a busy laptop
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks")  # the steps' own loggers, into the run's logs
    api = os.environ.get("PREFECT_API_URL")
    typer.echo(f"mloc: running {task.metadata.name} on {api or 'an embedded local Prefect server'}")

    import prefect

    from flows.pipeline import pipeline, run_tags

    execution = task.spec.execution
    flow = pipeline.with_options(
        retries=execution.retries,
        retry_delay_seconds=execution.retry_delay_seconds,
        timeout_seconds=execution.timeout_seconds,
    )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with prefect.tags(*run_tags(task)):
        state = flow(task=task, base_dir=str(path.resolve().parent), task_yaml_sha256=digest, return_state=True)
    _summary(state)
    raise typer.Exit(0 if state.is_completed() else 1)


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
    trained = out["training"]
    typer.echo(f"  training:  {trained['global_step']} steps, train loss {trained['train_loss']}")
    if "eval_loss" in metrics:
        typer.echo(
            f"  eval loss: {metrics.get('eval_loss_before', float('nan')):.4f} before -> {metrics['eval_loss']:.4f} after"
        )
        typer.echo(
            f"  perplexity: {metrics.get('perplexity_before', float('nan')):.2f} before -> {metrics['perplexity']:.2f} after"
        )


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
