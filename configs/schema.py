"""The JSON Schema of task.yaml, for editors (yaml-language-server) and other tools."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter

from configs.models import Task
from configs.tasktypes import TaskTypeInfo

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _field_schema(spec: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kinds = [k for k in spec["types"] if k != "any"]
    if kinds and len(kinds) == len(spec["types"]):
        out["type"] = kinds[0] if len(kinds) == 1 else kinds
    if spec.get("choices"):
        out["enum"] = list(spec["choices"]) + ([None] if "null" in kinds else [])
    if spec.get("items"):
        out["items"] = {"type": spec["items"]}
    if spec.get("help"):
        out["description"] = spec["help"]
    out["default"] = spec.get("default")
    return out


def task_schema(task_types: Mapping[str, TaskTypeInfo]) -> dict[str, Any]:
    """JSON Schema of a task.yaml: the models', plus taskType names and each trainer's hyperparameters."""
    schema = TypeAdapter(Task).json_schema(by_alias=True)
    defs = schema["$defs"]
    for spec_name, kind in (("TrainingSpec", "TrainingTask"), ("InferenceSpec", "InferenceTask")):
        names = sorted(n for n, t in task_types.items() if t.kind == kind)
        prop = defs[spec_name]["properties"]["taskType"]
        prop["enum"] = names
        prop["description"] += " " + "; ".join(
            f"{n}: {task_types[n].summary}"
            + (f" (cannot run yet: {task_types[n].unavailable})" if task_types[n].unavailable else "")
            for n in names
        )
    conditions = []
    for name, info in sorted(task_types.items()):
        if info.fields_file is None:
            continue
        properties = {k: _field_schema(v) for k, v in sorted(info.hyperparameter_fields.items())}
        conditions.append(
            {
                "if": {"properties": {"taskType": {"const": name}}, "required": ["taskType"]},
                "then": {
                    "properties": {
                        "hyperparameters": {
                            "type": "object",
                            "description": f"Fields of {info.trainer_config}.",
                            "properties": properties,
                            "additionalProperties": False,
                        }
                    }
                },
            }
        )
    defs["TrainingSpec"]["allOf"] = conditions
    return {"$schema": SCHEMA_DIALECT, "title": "MLOC task.yaml (apiVersion mloc/v1)", **schema}
