"""The parameter schema of a task's deployment, shaped for the Prefect UI's Run form.

The pipeline's signature gives a schema the UIs cannot show as a form: the task is a
``oneOf`` (the V1 UI knows only ``anyOf`` and falls back to one JSON editor for the whole
task), and both UIs pick a union's branch for an existing value by how many of its keys a
branch has, ties to the first, never by the ``type`` discriminator (so a ``local`` source,
whose ``type`` and ``path`` an S3 source has too, shows as S3). ``base_dir`` and
``task_yaml_sha256`` are for MLOC, not for people: they stay deployment parameters (the
server merges them into every run, enforce_parameter_schema allows keys the schema does
not list) but are left out of the form.
"""

from __future__ import annotations

import copy
from typing import Any

Schema = dict[str, Any]

SHOWN = ("task",)  # the rest of the pipeline's parameters come from the deployment, unseen


def parameter_schema(kind: str) -> Schema:
    """The schema of the pipeline's parameters for a deployment of a task of this kind."""
    from prefect.utilities.callables import parameter_schema as signature_schema

    from flows.pipeline import pipeline

    return run_form(signature_schema(pipeline).model_dump_for_openapi(), kind)


def run_form(schema: Schema, kind: str) -> Schema:
    """The form-shaped copy of a pipeline parameter schema (see the module's docstring)."""
    schema = copy.deepcopy(schema)
    definitions: dict[str, Schema] = schema.get("definitions", {})
    if kind not in definitions:
        raise ValueError(f"the pipeline's parameter schema has no task kind '{kind}'")
    task = schema["properties"]["task"]
    # a deployment runs one kind; a kind switch in the form would only offer an empty other task
    schema["properties"] = {
        "task": {"$ref": f"#/definitions/{kind}", "title": "task", "position": task.get("position", 0)}
    }
    schema["required"] = [name for name in schema.get("required", []) if name in SHOWN]
    # branches are ordered by pydantic's own definitions, not by half-transformed ones
    originals = copy.deepcopy(definitions)
    for name, definition in definitions.items():
        definitions[name] = _node(definition, originals)
    _title_branches(definitions)
    schema["definitions"] = {name: definitions[name] for name in sorted(_reachable(schema, definitions))}
    return schema


def _node(node: Any, definitions: dict[str, Schema]) -> Any:
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if isinstance(node.get("properties"), dict):
        # the labels are the task.yaml's keys, not pydantic's "Apiversion" or "Lora Alpha"
        node["properties"] = {
            key: {**_node(prop, definitions), "title": key} for key, prop in node["properties"].items()
        }
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _node(node[key], definitions)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in node:
            node[key] = [_node(branch, definitions) for branch in node[key]]
    node.pop("discriminator", None)  # neither UI reads it: the branch order below does its job
    if "const" in node:
        # V1 shows a const as a disabled box with a warning, V2 as free text; a one-item
        # select says the same in both, and the default fills it in when a branch is picked
        value = node.pop("const")
        node["enum"] = [value]
        node["default"] = value
    if "allOf" in node and len(node["allOf"]) == 1 and set(node["allOf"][0]) == {"$ref"}:
        node = {**node.pop("allOf")[0], **node}
    branches = node.pop("oneOf", None) or node.pop("anyOf", None)
    if branches is not None:
        node["anyOf"] = _ordered(_flat(branches), definitions)
        for branch in node["anyOf"]:
            if len(branch.get("enum", [])) == 1 and "title" not in branch:
                branch["title"] = str(branch["enum"][0])  # the tab says 'all-linear', not 'str'
    return node


def _flat(branches: list[Any]) -> list[Any]:
    """``X | None`` of a union is an anyOf holding a oneOf: one flat list, which both UIs show as tabs."""
    flat: list[Any] = []
    for branch in branches:
        inner = branch.get("anyOf") if isinstance(branch, dict) and set(branch) == {"anyOf"} else None
        flat.extend(inner if inner is not None else [branch])
    return flat


def _ordered(branches: list[Any], definitions: dict[str, Schema]) -> list[Any]:
    """Objects first, fewest keys (then fewest defaulted keys) first.

    The UIs show the first branch with the most keys in common with the value. Every key of
    a dumped task is present, so a value has all its branch's keys and no others: a branch
    listed before it that shares as many keys has them all and more, which this order
    rules out. Right after a tab is picked the value holds only the defaulted keys (the V1
    UI picks again on every edit), which the second sort key keeps on the picked branch
    for MLOC's sources and destinations (``local``, ``s3``, ``huggingface``)."""

    def key(indexed: tuple[int, Any]) -> tuple[int, int, int]:
        index, branch = indexed
        target = _resolved(branch, definitions)
        properties = target.get("properties")
        if target.get("type") != "object" or not properties:
            return (1, index, 0)
        defaulted = sum("default" in prop for prop in properties.values())
        return (0, len(properties), defaulted)

    return [branch for _, branch in sorted(enumerate(branches), key=key)]


def _resolved(node: Any, definitions: dict[str, Schema]) -> Schema:
    if isinstance(node, dict) and "$ref" in node:
        return definitions[node["$ref"].rsplit("/", 1)[-1]]
    return node if isinstance(node, dict) else {}


def _title_branches(definitions: dict[str, Schema]) -> None:
    """A discriminated union's tabs say the ``type`` a task.yaml writes (``local``), not the class name."""
    for definition in definitions.values():
        for prop in definition.get("properties", {}).values():
            for branch in prop.get("anyOf", []):
                target = _resolved(branch, definitions)
                discriminator = target.get("properties", {}).get("type", {}).get("enum")
                if isinstance(branch, dict) and "$ref" in branch and discriminator and len(discriminator) == 1:
                    target["title"] = str(discriminator[0])


def _reachable(schema: Schema, definitions: dict[str, Schema]) -> set[str]:
    seen: set[str] = set()
    todo: list[Any] = [schema["properties"]]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                name = ref.rsplit("/", 1)[-1]
                if name not in seen:
                    seen.add(name)
                    todo.append(definitions[name])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return seen
