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

# Ranges transformers.TrainingArguments.__post_init__ (every TRL config's base) or the
# training loop would reject minutes later, checked here without importing either:
# name -> (lowest, whether the lowest itself is allowed, highest or None, what it means)
RANGES: dict[str, tuple[float, bool, float | None, str]] = {
    "learning_rate": (0, True, None, "a step size"),
    "num_train_epochs": (0, False, None, "passes over the data"),
    "per_device_train_batch_size": (1, True, None, "examples per device and step"),
    "per_device_eval_batch_size": (1, True, None, "examples per device and step"),
    "gradient_accumulation_steps": (1, True, None, "steps whose gradients are summed"),
    "logging_steps": (0, False, None, "steps between logs (a fraction of the run when below 1)"),
    "save_steps": (0, False, None, "steps between checkpoints (a fraction of the run when below 1)"),
    "eval_steps": (0, False, None, "steps between evaluations (a fraction of the run when below 1)"),
    "warmup_ratio": (0, True, 1, "a fraction of the run"),
    "warmup_steps": (0, True, None, "steps"),
    "weight_decay": (0, True, None, "a decay factor"),
    "max_grad_norm": (0, True, None, "a gradient norm"),
    "save_total_limit": (1, True, None, "checkpoints kept"),
    "seed": (0, True, 2**32 - 1, "a random seed"),
    "beta": (0, True, None, "a strength"),
}
# steps given as more than 1 must be whole (TrainingArguments: "must be an integer if bigger than 1")
_WHOLE_ABOVE_ONE = ("logging_steps", "save_steps", "eval_steps")
# no hyperparameter is counted past this; beyond it values overflow torch's and numpy's int64
_LARGEST = 2**53

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
        if isinstance(value, float) and not math.isfinite(value):
            problems.append((name, f"is {value} — a hyperparameter is a finite number"))
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > _LARGEST:
            problems.append((name, f"is {value:.3g} — far beyond any sensible value (at most 2**53)"))
            continue
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
        wrong = _out_of_range(name, normalised[0], trainer)
        if wrong:
            problems.append((name, wrong))
            continue
        out[name] = normalised[0]
    return out, problems


def _out_of_range(name: str, value: Any, trainer: str) -> str | None:
    if name == "max_steps" and isinstance(value, int) and not isinstance(value, bool) and (value == 0 or value < -1):
        return f"is {value} — {trainer}.max_steps is a positive number of steps, or -1 to train num_train_epochs"
    if name not in RANGES or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    low, inclusive, high, meaning = RANGES[name]
    too_low = value < low if inclusive else value <= low
    if too_low or (high is not None and value > high):
        bound = f"at least {low:g}" if inclusive else f"more than {low:g}"
        if high is not None:
            bound += f" and at most {high:g}"
        return f"is {value:g}, but {trainer}.{name} ({meaning}) must be {bound}"
    if name in _WHOLE_ABOVE_ONE and value > 1 and value != int(value):
        return (
            f"is {value:g} — above 1 it counts steps and must be a whole number (below 1 it is a fraction of the run)"
        )
    return None
