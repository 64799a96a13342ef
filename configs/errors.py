"""Config errors: one record per problem, printed as ``file:line:col: field: message — hint``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

Loc = tuple[str | int, ...]


def dotted(loc: Loc) -> str:
    """``("spec", "output", "artifacts", 1)`` -> ``spec.output.artifacts[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


def yaml_type(value: object) -> str:
    """How a YAML reader would name the type of a parsed value."""
    if value is None:
        return "empty (null)"
    names = {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }
    return names.get(type(value), type(value).__name__)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest valid name to ``word``, or None when nothing is close.

    Case and ``_``/``-`` differences count as close (``task_type`` -> ``taskType``).
    """
    choices = list(choices)
    if len(word) > 100:  # no typo is that long, and difflib's time grows with the square of it
        return None

    def norm(s: str) -> str:
        return s.lower().replace("_", "").replace("-", "")

    for choice in choices:
        if norm(choice) == norm(word):
            return choice
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return match[0] if match else None


def choice_hint(word: str, choices: Sequence[str], noun: str = "one of") -> str:
    suggestion = did_you_mean(word, choices)
    listed = ", ".join(choices)
    if suggestion:
        return f"did you mean '{suggestion}'? ({noun}: {listed})"
    return f"use {noun}: {listed}"


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a task.yaml."""

    file: str
    line: int
    column: int
    field: str
    message: str
    hint: str = ""

    def format(self) -> str:
        text = f"{self.file}:{self.line}:{self.column}: {self.field}: {self.message}"
        return f"{text} — {self.hint}" if self.hint else text

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class TaskError(ValueError):
    """Raised by :func:`configs.load_task` when a file is not a valid task.

    ``unreadable`` is True when the file could not be read or is not YAML at all.
    """

    def __init__(self, issues: Sequence[ConfigIssue], unreadable: bool = False) -> None:
        self.issues = list(issues)
        self.unreadable = unreadable
        head = "Config is not well-formed, found the following errors:"
        super().__init__("\n".join([head, *(f"  {i.format()}" for i in self.issues)]))
