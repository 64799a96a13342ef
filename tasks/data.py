"""Turning a fetched dataset into training and held-out examples.

Train and evaluate run in separate processes; both call :func:`examples` so the
held-out rows are the same ones, and never trained on. How `spec.dataset.preprocessing`'s
templates turn a row into what the trainer reads is the type's own ``format_rows`` hook:
:func:`render` (sft: the whole text, or prompt/completion) or :func:`render_prompt` (the
types whose rows hold a prompt beside their own columns: chosen/rejected, solution, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs.checks import template_fields

if TYPE_CHECKING:
    from datasets import Dataset

    from configs import TrainingTask

SPLIT_SEED = 42
_LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class DataError(ValueError):
    """The dataset does not fit the task: missing columns, no rows, unknown file type."""


def load_rows(path: str, source_type: str, split: str = "train", subset: str | None = None) -> Dataset:
    """All rows of one split. Local and S3 datasets are JSON lines, JSON, CSV or Parquet files."""
    from datasets import disable_progress_bars, load_dataset

    # a terminal bar written to a flow run's (or a worker's) stdout is noise in its logs
    disable_progress_bars()
    if source_type == "huggingface":
        return load_dataset(str(Path(path)), name=subset, split=split)
    kind, files = data_files(path)
    return load_dataset(kind, data_files=[str(p) for p in files], split="train")


def data_files(path: str) -> tuple[str, list[Path]]:
    """(the loader, the files) of a local or S3 dataset; also what preflight reads, without `datasets`."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in _LOADERS)
    kinds = {_LOADERS.get(p.suffix) for p in files}
    if not files or None in kinds:
        raise DataError(f"{path}: no dataset files found — give .jsonl, .json, .csv or .parquet files")
    if len(kinds) > 1:
        raise DataError(f"{path}: mixes {', '.join(sorted(k for k in kinds if k))} files — keep one format")
    return str(kinds.pop()), files


def _check_template_columns(task: TrainingTask, rows: Dataset) -> None:
    prep = task.spec.dataset.preprocessing
    needed = [n for t in (prep.prompt_template, prep.completion_template) if t for n in template_fields(t)]
    missing = [n for n in dict.fromkeys(needed) if n not in rows.column_names]
    if missing:
        raise DataError(
            f"the dataset has no column(s) {', '.join(missing)} used in the templates — "
            f"its columns are: {', '.join(rows.column_names)}"
        )


def render(task: TrainingTask, rows: Dataset) -> Dataset:
    """sft's rows -> TRL's formats: prompt/completion (loss on the completion) or text."""
    _check_template_columns(task, rows)
    prep = task.spec.dataset.preprocessing
    if prep.prompt_template is None:
        return rows  # already in a format TRL reads ("text", "messages", "prompt"/"completion", ...)
    prompt, completion = prep.prompt_template, prep.completion_template

    def fmt(row: dict[str, Any]) -> dict[str, str]:
        if completion is None:
            return {"text": prompt.format(**row)}
        return {"prompt": prompt.format(**row), "completion": completion.format(**row)}

    return rows.map(fmt, remove_columns=rows.column_names)


def render_prompt(task: TrainingTask, rows: Dataset) -> Dataset:
    """Rows whose prompt is rendered by `prompt_template` (when given) into a `prompt` column,
    every other column kept as it is: the completions (chosen/rejected, completion/label) and
    what reward functions read (solution). A `completion_template` has nothing to render here."""
    prep = task.spec.dataset.preprocessing
    if prep.completion_template is not None:
        raise DataError(
            f"spec.dataset.preprocessing.completion_template renders sft's training target; taskType "
            f"'{task.spec.task_type}' reads its completions from the dataset's own columns — remove it"
        )
    _check_template_columns(task, rows)
    if prep.prompt_template is None:
        return rows
    prompt = prep.prompt_template
    return rows.map(lambda row: {"prompt": prompt.format(**row)})


def prompt_columns(task: TrainingTask) -> list[str]:
    """The columns :func:`render_prompt` reads the prompt from: the template's, else `prompt` itself."""
    template = task.spec.dataset.preprocessing.prompt_template
    return list(dict.fromkeys(template_fields(template))) if template else ["prompt"]


Formatter = Callable[["TrainingTask", "Dataset"], "Dataset"]


def examples(task: TrainingTask, path: str, source_type: str, format_rows: Formatter) -> tuple[Dataset, Dataset | None]:
    """(training examples, held-out examples or None when evaluation is off), each row formatted by
    the type's ``format_rows`` hook."""
    source = task.spec.dataset.source
    split = getattr(source, "split", "train")
    subset = getattr(source, "subset", None)
    rows = load_rows(path, source_type, split, subset)
    if len(rows) == 0:
        raise DataError(f"{path}: the dataset has no rows")
    evaluation = task.spec.evaluation
    if not evaluation.enabled:
        return format_rows(task, rows), None
    if evaluation.split:
        held_out = load_rows(path, source_type, evaluation.split, subset)
    else:
        if len(rows) < 2:
            raise DataError("one row cannot be split into training and held-out data — add rows")
        parts = rows.train_test_split(test_size=evaluation.held_out_fraction, seed=SPLIT_SEED, shuffle=True)
        rows, held_out = parts["train"], parts["test"]
    held_out = held_out.select(range(min(len(held_out), evaluation.max_samples)))
    return format_rows(task, rows), format_rows(task, held_out)
