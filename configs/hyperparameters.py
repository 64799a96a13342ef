"""Checking ``spec.hyperparameters`` against the fields of the trainer's own config class.

The fields come from a snapshot of the class (``TaskTypeInfo.hyperparameter_fields``),
so this check runs in milliseconds without importing torch; a test keeps the snapshot
equal to the installed library's class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from configs.errors import did_you_mean, yaml_type

#: hyperparameters that MLOC sets from other parts of the task.yaml
OWNED_ELSEWHERE = {
    "max_length": "set it once, in spec.dataset.preprocessing.max_seq_length",
    "max_seq_length": "set it once, in spec.dataset.preprocessing.max_seq_length",
}

_TYPE_WORDS = {
    "boolean": "true/false",
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def _matches(value: Any, kind: str, spec: Mapping[str, Any]) -> tuple[bool, Any]:
    """(does value fit this JSON type, value normalised)."""
    if kind == "null":
        return value is None, value
    if kind == "boolean":
        return isinstance(value, bool), value
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind == "number":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads 2e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                return False, value
            return math.isfinite(number), number
        return False, value
    if kind == "string":
        return isinstance(value, str), value
    if kind == "array":
        if not isinstance(value, list):
            return False, value
        item = spec.get("items")
        return all(_matches(v, item, {})[0] for v in value) if item else True, value
    if kind == "object":
        return isinstance(value, dict), value
    return True, value  # a type the snapshot could not describe: the trainer checks it at run time


def check(
    values: Mapping[str, Any], fields: Mapping[str, Mapping[str, Any]], trainer: str
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Returns (normalised values, [(field name, "message — hint"), ...])."""
    out: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for name, value in values.items():
        if name in OWNED_ELSEWHERE:
            problems.append((name, f"is not set here — {OWNED_ELSEWHERE[name]}"))
            continue
        spec = fields.get(name)
        if spec is None:
            guess = did_you_mean(name, fields)
            hint = f"did you mean '{guess}'?" if guess else f"see the fields of {trainer}"
            problems.append((name, f"is not a field of {trainer} — {hint}"))
            continue
        normalised = None
        for kind in spec["types"]:
            ok, candidate = _matches(value, kind, spec)
            if ok:
                normalised = (candidate,)
                break
        if normalised is None:
            wanted = " or ".join(_TYPE_WORDS.get(t, t) for t in spec["types"])
            problems.append(
                (
                    name,
                    f"must be {wanted}, not {yaml_type(value)} — {trainer}.{name} defaults to {spec.get('default')!r}",
                )
            )
            continue
        choices = spec.get("choices")
        if choices and isinstance(value, str) and value not in choices:
            guess = did_you_mean(value, choices)
            hint = f"did you mean '{guess}'?" if guess else "use one of: " + ", ".join(choices)
            problems.append((name, f"'{value}' is not a valid value — {hint}"))
            continue
        out[name] = normalised[0]
    return out, problems
