"""Snapshots of the trainer config classes' fields, one JSON file per taskType.

``spec.hyperparameters`` is checked against these at validate time, in milliseconds and
without importing torch. They are generated from the installed libraries:

    python -m tasks.trainer_fields          # rewrite the snapshots
    python -m tasks.trainer_fields --check  # exit 1 if one differs from the installed class

and a test fails when a snapshot no longer matches the installed TRL / transformers.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).parent


def fields_file(task_type: str) -> Path:
    return HERE / f"{task_type}.json"


def _json_types(tp: Any) -> tuple[list[str], str | None, list[Any] | None]:
    """(JSON types, array item type, allowed values) of a dataclass field's annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        kinds: list[str] = []
        item = None
        members = typing.get_args(tp)
        for member in members:
            member_kinds, member_item, _ = _json_types(member)
            kinds += [k for k in member_kinds if k not in kinds]
            item = item or member_item
        enums = [m for m in members if isinstance(m, type) and issubclass(m, enum.Enum)]
        rest = {m for m in members if m not in enums and m is not type(None)}
        # `SchedulerType | str`: the class converts the string with SchedulerType(value), so only its values pass
        choices = [e.value for e in enums[0]] if len(enums) == 1 and rest <= {str} else None
        return kinds, item, choices
    if origin is typing.Literal:
        values = list(typing.get_args(tp))
        return sorted({_json_types(type(v))[0][0] for v in values}), None, values
    if origin in (list, tuple, typing.List, typing.Tuple):  # noqa: UP006
        args = typing.get_args(tp)
        return ["array"], (_json_types(args[0])[0][0] if args and args[0] is not Ellipsis else None), None
    if origin in (dict, typing.Dict):  # noqa: UP006
        return ["object"], None, None
    if tp is type(None):
        return ["null"], None, None
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return ["string"], None, [e.value for e in tp]
        for py, name in (
            (bool, "boolean"),
            (int, "integer"),
            (float, "number"),
            (str, "string"),
            (list, "array"),
            (tuple, "array"),
            (dict, "object"),
        ):
            if issubclass(tp, py):
                return [name], None, None
    return ["any"], None, None


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    try:
        json.dumps(value)
    except TypeError:
        return repr(value)
    return value


def describe(cls: type) -> dict[str, Any]:
    """The snapshot of one dataclass config class."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        kinds, item, choices = _json_types(hints.get(f.name, Any))
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        entry: dict[str, Any] = {"types": kinds, "default": _jsonable(default)}
        if item:
            entry["items"] = item
        if choices:
            entry["choices"] = [_jsonable(c) for c in choices]
        help_text = " ".join(str(f.metadata.get("help", "")).split())
        if help_text:
            entry["help"] = help_text[:400]
        fields[f.name] = entry
    return {"trainer_config": f"{cls.__module__.split('.')[0]}.{cls.__name__}", "fields": fields}


def snapshots(modules: Iterable[ModuleType]) -> dict[str, str]:
    """taskType -> the JSON text its snapshot file should hold, from the installed libraries,
    for each trainer among ``modules`` (the registry's, which this package must not import:
    every trainer module imports it)."""
    out = {}
    for module in modules:
        loader = getattr(module, "trainer_config_class", None)
        if loader is not None:
            out[module.TASK_TYPE.name] = json.dumps(describe(loader()), indent=1, sort_keys=True) + "\n"
    return out


def main(argv: list[str], modules: Iterable[ModuleType]) -> int:
    stale = []
    for name, text in snapshots(modules).items():
        path = fields_file(name)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.name)
        if "--check" not in argv:
            path.write_text(text)
    verb = "differ from the installed libraries" if "--check" in argv else "rewritten"
    print(f"{len(stale)} snapshot(s) {verb}: {', '.join(stale) or '-'}")
    return 1 if stale and "--check" in argv else 0
