"""The ``mloc`` command: a thin layer over configs, tasks, flows and work pools.

Heavy imports (Prefect, torch) happen inside the commands that need them, so
``mloc --help`` and ``mloc validate`` answer in well under a second.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

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
