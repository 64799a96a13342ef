"""A dataset's columns, row count and first row, read without Hugging Face `datasets`.

Preflight runs in the orchestrating process (the Prefect flow), which never trains: importing
`datasets` there (and pyarrow with it) costs it a second, and loading the whole dataset into
an Arrow cache only to name its columns costs more. The files that `tasks.data.load_rows`
accepts are read here with the standard library (pyarrow.parquet for Parquet, which has no
other reader); what this module does not read as `datasets` would — Hub datasets, JSON that
is neither lines nor an array, empty files, files whose columns differ — goes to
`load_rows` itself, so the answer is never a guess.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.data import data_files

if TYPE_CHECKING:
    from datasets import Dataset


class _Unread(Exception):
    """A file whose reading is `datasets`' own business (see the module's docstring)."""


@dataclass(frozen=True)
class Glance:
    columns: list[str]
    rows: int
    first: dict[str, Any] | None  # None when the dataset has no rows

    def head(self) -> PlainRows:
        """The first row (none for an empty dataset), to go through a type's ``format_rows`` hook."""
        return PlainRows([self.first] if self.first is not None else [], self.columns)


class PlainRows:
    """As much of `datasets.Dataset` as the built-in ``format_rows`` hooks (`tasks.data.render`,
    `render_prompt`) use, over plain dicts: preflight runs the type's very own hook on the first
    row rather than a copy of its logic. ``map`` follows `Dataset.map`: the function's output
    updates the row, after ``remove_columns`` are dropped."""

    def __init__(self, rows: list[dict[str, Any]], column_names: list[str]) -> None:
        self._rows = rows
        self.column_names = column_names

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._rows[index]

    def select(self, indices: Iterable[int]) -> PlainRows:
        return PlainRows([self._rows[i] for i in indices], self.column_names)

    def map(
        self,
        function: Callable[[dict[str, Any]], dict[str, Any] | None],
        remove_columns: list[str] | None = None,
    ) -> PlainRows:
        dropped = set(remove_columns or [])
        rows = []
        for row in self._rows:
            out = function(dict(row)) or {}
            rows.append({k: v for k, v in row.items() if k not in dropped} | out)
        kept = [c for c in self.column_names if c not in dropped]
        return PlainRows(rows, kept + [c for c in (rows[0] if rows else {}) if c not in kept])


def glance(path: str, source_type: str, split: str = "train", subset: str | None = None) -> Glance:
    """What preflight checks of the rows `tasks.data.load_rows` would return for the same arguments.

    Raises `tasks.data.DataError` as `load_rows` does for a path with no (or mixed) dataset files.
    """
    if source_type == "huggingface":
        # a Hub snapshot's splits and configs are resolved by `datasets` (README `configs`, file
        # name patterns, other formats); a copy of that logic here would drift from it
        return _loaded(path, source_type, split, subset)
    kind, files = data_files(path)
    try:
        read = {"parquet": _parquet, "csv": _csv}.get(kind, _json)
        parts = [read(f) for f in files]
    except _Unread:
        return _loaded(path, source_type, split, subset)
    columns = parts[0].columns
    if any(p.columns != columns for p in parts):  # whether `datasets` unites or refuses them is its call
        return _loaded(path, source_type, split, subset)
    first = next((p.first for p in parts if p.first is not None), None)
    return Glance(columns, sum(p.rows for p in parts), first)


def _loaded(path: str, source_type: str, split: str, subset: str | None) -> Glance:
    from tasks.data import load_rows

    rows: Dataset = load_rows(path, source_type, split, subset)
    return Glance(rows.column_names, len(rows), rows[0] if len(rows) else None)


def _from_records(records: Iterable[Any]) -> Glance:
    """JSON records as `datasets` reads them: a column for every key any record has, in the
    order they first appear, and None where a record lacks one."""
    keys: dict[str, None] = {}
    first: dict[str, Any] | None = None
    count = 0
    for record in records:
        if not isinstance(record, dict):
            raise _Unread
        keys.update(dict.fromkeys(record))
        first = record if first is None else first
        count += 1
    if first is None:
        raise _Unread
    return Glance(list(keys), count, {k: first.get(k) for k in keys})


def _json(file: Path) -> Glance:
    """JSON lines, or one JSON array of objects (or of strings, a `text` column, as `datasets` does)."""
    try:
        with file.open(encoding="utf-8-sig") as handle:
            start = handle.read(1)
            while start.isspace():
                start = handle.read(1)
            if start == "[":
                handle.seek(0)
                array = json.load(handle)
                if isinstance(array, list) and array and all(isinstance(x, str) for x in array):
                    array = [{"text": x} for x in array]
                return _from_records(array)
            handle.seek(0)
            return _from_records(json.loads(line) for line in handle if line.strip())
    except (ValueError, UnicodeDecodeError) as exc:  # not JSON we know how `datasets` reads
        raise _Unread from exc


_BOOLS = {"True": True, "TRUE": True, "true": True, "False": False, "FALSE": False, "false": False}


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


_KINDS: dict[str, Callable[[str], bool]] = {"int": _is_int, "float": _is_float, "bool": _BOOLS.__contains__}


class _ColumnKind:
    """A CSV column's type as pandas (which `datasets` reads CSV with) infers it from all its
    values, so the first row a type's hook sees holds what training's rows will: 2.0 in a
    column of numbers with gaps, and "4" in a column of "4", "Lima"."""

    def __init__(self) -> None:
        self.kinds = list(_KINDS)
        self.empty = False

    def see(self, value: str) -> None:
        if value == "":
            self.empty = True
        elif self.kinds:
            self.kinds = [k for k in self.kinds if _KINDS[k](value)]

    def value(self, cell: str) -> Any:
        if cell == "":
            return None  # pandas' NaN, which reaches a row as None
        kind = self.kinds[0] if self.kinds else "str"
        if kind == "int":
            return float(cell) if self.empty else int(cell)  # a column with gaps is float64
        return float(cell) if kind == "float" else _BOOLS[cell] if kind == "bool" else cell


def _csv(file: Path) -> Glance:
    try:
        with file.open(encoding="utf-8-sig", newline="") as handle:
            records = (r for r in csv.reader(handle) if r)  # pandas skips blank lines too
            header = next(records, None)
            if header is None or "" in header or len(set(header)) < len(header):
                raise _Unread  # pandas names such columns itself ("Unnamed: 0", "a.1")
            kinds = [_ColumnKind() for _ in header]
            first: list[str] | None = None
            count = 0
            for record in records:
                if len(record) != len(header):
                    raise _Unread  # ragged rows: what pandas fills in or refuses is its own
                for kind, cell in zip(kinds, record, strict=True):
                    kind.see(cell)
                first = record if first is None else first
                count += 1
    except (csv.Error, UnicodeDecodeError) as exc:
        raise _Unread from exc
    row = None if first is None else {c: k.value(v) for c, k, v in zip(header, kinds, first, strict=True)}
    return Glance(header, count, row)


def _parquet(file: Path) -> Glance:
    """The schema and row count from the footer, and one row: nothing else of the file is read."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file)
    batch = next(parquet.iter_batches(batch_size=1), None)
    first = batch.to_pylist()[0] if batch is not None and batch.num_rows else None
    return Glance(list(parquet.schema_arrow.names), parquet.metadata.num_rows, first)
