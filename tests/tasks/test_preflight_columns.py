"""Preflight reads a dataset's columns without `datasets`, and reads them as `datasets` would."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tasks.columns import Glance, glance
from tasks.data import DataError, load_rows, render, render_prompt
from tasks.preflight import PreflightError, preflight
from tests.quickstart_task import quickstart_task

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
MODEL = {"path": str(CONFIGS / "quickstart" / "tiny-model"), "source_type": "local"}
INPUT = {"path": str(CONFIGS / "quickstart" / "qa.jsonl"), "source_type": "local"}
ROWS = [
    {"question": "What is 2 plus 2?", "answer": "4", "score": 1.5},
    {"question": "Which city is the capital of Peru?", "answer": "Lima", "score": 2},
    {"question": "What colour is a carrot?", "answer": "orange", "score": 0.25},
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_json_array(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps(rows, indent=2))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [",".join(rows[0])] + [
        ",".join(f'"{v}"' if isinstance(v, str) else str(v) for v in r.values()) for r in rows
    ]
    path.write_text("\n".join(lines) + "\n")


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)


WRITERS: dict[str, tuple[str, Callable[[Path, list[dict[str, Any]]], None]]] = {
    "jsonl": (".jsonl", write_jsonl),
    "json lines": (".json", write_jsonl),
    "json array": (".json", write_json_array),
    "csv": (".csv", write_csv),
    "parquet": (".parquet", write_parquet),
}


def as_datasets_reads_it(path: Path) -> Glance:
    rows = load_rows(str(path), "local")
    return Glance(rows.column_names, len(rows), rows[0] if len(rows) else None)


def sft_task(tmp_path: Path, **preprocessing: str | None) -> Any:
    edits: dict[str, Any] = {"spec.output.destination": {"type": "local", "path": str(tmp_path / "out")}}
    return quickstart_task(edits | {f"spec.dataset.preprocessing.{k}": v for k, v in preprocessing.items()})


def test_preflight_of_the_quickstart_imports_no_datasets(tmp_path: Path) -> None:
    """In a fresh interpreter, as the flow runs it: `datasets` (and pyarrow) stay unimported."""
    (tmp_path / "pairs.csv").write_text("question,answer\nWhat is 1 plus 1?,2\n")
    write_json_array(tmp_path / "array.json", ROWS)
    probe = f"""
import sys
from pathlib import Path
from tasks.columns import glance
from tasks.preflight import preflight
from tests.quickstart_task import quickstart_task

task = quickstart_task({{"spec.output.destination": {{"type": "local", "path": {str(tmp_path / "out")!r}}}}})
inputs = {{"model": {{"path": "configs/quickstart/tiny-model"}},
          "dataset": {{"path": "configs/quickstart/qa.jsonl", "source_type": "local"}}}}
print(preflight(task, inputs, Path("configs")))
print(glance({str(tmp_path / "pairs.csv")!r}, "local").rows, glance({str(tmp_path / "array.json")!r}, "local").rows)
print(sorted(m for m in ("datasets", "pyarrow") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    notes, counts, imported = out.stdout.strip().splitlines()
    assert "dataset: 459 rows, columns question, answer" in notes
    assert counts == "1 3"
    assert imported == "[]", f"preflight imported {imported}"


@pytest.mark.parametrize("kind", list(WRITERS))
def test_columns_rows_and_first_row_are_read_as_datasets_reads_them(tmp_path: Path, kind: str) -> None:
    suffix, write = WRITERS[kind]
    file = tmp_path / f"rows{suffix}"
    write(file, ROWS)
    got = glance(str(file), "local")
    assert got.columns == ["question", "answer", "score"]
    assert got.rows == 3
    assert got.first == {"question": "What is 2 plus 2?", "answer": "4", "score": 1.5}
    assert got == as_datasets_reads_it(file)


def test_json_records_with_differing_keys_get_every_column(tmp_path: Path) -> None:
    file = tmp_path / "rows.jsonl"
    file.write_text('{"question": "q1", "answer": "a1"}\n\n{"question": "q2", "topic": "t"}\n')
    got = glance(str(file), "local")
    assert got == Glance(["question", "answer", "topic"], 2, {"question": "q1", "answer": "a1", "topic": None})
    assert got == as_datasets_reads_it(file)


def test_a_directory_of_files_is_read_as_one_dataset(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", ROWS[:1])
    (tmp_path / "nested").mkdir()
    write_jsonl(tmp_path / "nested" / "b.jsonl", ROWS[1:])
    got = glance(str(tmp_path), "local")
    assert (got.columns, got.rows, got.first) == (["question", "answer", "score"], 3, ROWS[0])
    assert got == as_datasets_reads_it(tmp_path)


def test_what_it_cannot_read_itself_is_left_to_datasets(tmp_path: Path) -> None:
    """One pretty-printed JSON object is a row to `datasets`; not JSON lines, so not guessed at here."""
    file = tmp_path / "one.json"
    file.write_text(json.dumps({"question": ["q1", "q2"], "answer": ["a1", "a2"]}, indent=2))
    assert glance(str(file), "local") == as_datasets_reads_it(file)


def test_no_or_mixed_dataset_files_are_refused_as_load_rows_refuses_them(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    write_csv(tmp_path / "b.csv", ROWS)
    with pytest.raises(DataError, match="mixes csv, json files — keep one format"):
        glance(str(tmp_path), "local")
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(DataError, match="no dataset files found"):
        glance(str(tmp_path / "notes.txt"), "local")


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_a_missing_column_is_refused_with_the_template_that_uses_it(tmp_path: Path, kind: str) -> None:
    suffix, write = WRITERS[kind]
    file = tmp_path / f"rows{suffix}"
    write(file, [{"question": r["question"], "topic": "maths"} for r in ROWS])
    inputs = {"model": MODEL, "dataset": {"path": str(file), "source_type": "local"}}
    with pytest.raises(PreflightError) as info:
        preflight(sft_task(tmp_path), inputs, CONFIGS)
    assert info.value.problems == [
        "spec.dataset.preprocessing.completion_template uses {answer}, but the dataset's columns are: question, topic"
    ]


@pytest.mark.parametrize(
    ("formatter", "preprocessing"),
    [
        (render, {"prompt_template": "Q: {question} ({score})", "completion_template": " {answer}"}),
        (render, {"prompt_template": "Q: {question} A: {answer}"}),
        (render_prompt, {"prompt_template": "Q: {question}"}),
    ],
)
def test_the_first_row_goes_through_the_hook_as_a_dataset_would(
    tmp_path: Path, formatter: Callable[[Any, Any], Any], preprocessing: dict[str, str]
) -> None:
    """PlainRows stands in for `datasets.Dataset` in the built-in hooks: same columns, same row."""
    file = tmp_path / "rows.csv"
    write_csv(file, ROWS)
    task = sft_task(tmp_path, **({"completion_template": None} | preprocessing))
    plain = formatter(task, glance(str(file), "local").head())
    real = formatter(task, load_rows(str(file), "local").select(range(1)))
    assert plain.column_names == real.column_names
    assert list(plain) == list(real)


def test_the_types_own_hook_formats_the_first_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.train_sft

    seen: list[Any] = []
    monkeypatch.setattr(tasks.train_sft, "format_rows", lambda task, rows: seen.append(rows))
    preflight(sft_task(tmp_path), {"model": MODEL, "dataset": INPUT}, CONFIGS)
    [rows] = seen
    assert list(rows) == [{"question": "Which city is the capital of Denmark?", "answer": "Copenhagen"}]


def test_a_hook_that_needs_more_of_a_dataset_gets_a_real_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A type of one's own may call what only `datasets.Dataset` has (here ``filter``)."""
    import tasks.train_sft

    def format_rows(task: Any, rows: Any) -> Any:
        if not rows.filter(lambda row: row["answer"]):
            raise DataError("no row has an answer")
        return rows

    monkeypatch.setattr(tasks.train_sft, "format_rows", format_rows)
    preflight(sft_task(tmp_path), {"model": MODEL, "dataset": INPUT}, CONFIGS)
    monkeypatch.setattr(tasks.train_sft, "format_rows", lambda task, rows: format_rows(task, rows.select([])))
    with pytest.raises(PreflightError, match="no row has an answer"):
        preflight(sft_task(tmp_path), {"model": MODEL, "dataset": INPUT}, CONFIGS)


def test_csv_values_are_typed_by_their_whole_column(tmp_path: Path) -> None:
    """pandas types a column from all its values: numbers with a gap are floats, "4" beside "Lima" is text."""
    file = tmp_path / "rows.csv"
    file.write_text("n,answer,ok\n1,4,true\n,Lima,false\n3,orange,True\n")
    got = glance(str(file), "local")
    assert got.first == {"n": 1.0, "answer": "4", "ok": True}
    assert got == as_datasets_reads_it(file)
