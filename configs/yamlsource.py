"""Reading a task.yaml into plain Python data while remembering where each value came from.

PyYAML's ``safe_load`` forgets positions and silently keeps the last of two duplicate
keys; both matter to a user reading an error list, so the node tree is walked here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from configs.errors import Loc


class YamlSyntaxError(Exception):
    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line, self.column, self.message = line, column, message


@dataclass
class Positions:
    """1-based (line, column) of each key and value in the document, by path."""

    keys: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    values: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def of_key(self, loc: Loc) -> tuple[int, int]:
        """Where the key of ``loc`` is written, else the nearest enclosing one."""
        for end in range(len(loc), 0, -1):
            if loc[:end] in self.keys:
                return self.keys[loc[:end]]
        return self.values.get((), (1, 1))

    def of_value(self, loc: Loc) -> tuple[int, int]:
        """Where the value at ``loc`` is written, else the nearest enclosing key."""
        if loc in self.values:
            return self.values[loc]
        return self.of_key(loc)


@dataclass
class Document:
    data: Any
    positions: Positions
    duplicates: list[Loc]
    #: raw scalar strings, by path, for keys and values alike (secret scanning)
    strings: list[tuple[Loc, str, bool]]


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def parse(text: str) -> Document:
    """Parse one YAML document. Raises :class:`YamlSyntaxError` for anything not YAML."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            problem = exc.problem or str(exc)
            if exc.context and exc.context_mark and exc.context_mark.line + 1 != line:
                problem += f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
            if "expected a single document" in str(exc):
                problem = "more than one YAML document in the file"
            raise YamlSyntaxError(line, col, problem) from None
        doc = Document(None, Positions(), [], [])
        if root is None:
            return doc
        doc.data = _walk(loader, root, (), doc)
        return doc
    finally:
        loader.dispose()


def _walk(loader: yaml.SafeLoader, node: yaml.Node, loc: Loc, doc: Document) -> Any:
    doc.positions.values[loc] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        try:
            loader.flatten_mapping(node)  # resolves YAML merge keys (<<: *anchor)
        except yaml.MarkedYAMLError as exc:
            raise YamlSyntaxError(*_mark(node), exc.problem or str(exc)) from None
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or not key_node.value:
                raise YamlSyntaxError(*_mark(key_node), "a key must be a plain name")
            # the key as written: YAML 1.1 would read `on:` as True and `1:` as 1
            key = key_node.value
            child = (*loc, key)
            doc.strings.append((child, key, True))
            if key in out:
                doc.duplicates.append(child)
            doc.positions.keys[child] = _mark(key_node)
            out[key] = _walk(loader, value_node, child, doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            doc.positions.keys[(*loc, index)] = _mark(item)
            items.append(_walk(loader, item, (*loc, index), doc))
        return items
    value = _scalar(loader, node)
    if isinstance(value, str):
        doc.strings.append((loc, value, False))
    return value


def _scalar(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    try:
        return loader.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as exc:
        raise YamlSyntaxError(*_mark(node), exc.problem or str(exc)) from None
