"""Reading a task.yaml into plain Python data while remembering where each value came from.

PyYAML's ``safe_load`` forgets positions and silently keeps the last of two duplicate
keys; both matter to a user reading an error list, so the node tree is walked here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from configs.errors import Loc

# A task.yaml holds a few hundred values, nests a handful of levels and rarely aliases. The
# bounds sit far above that and far below what hangs or exhausts a process: aliases make the
# document a graph, and one that expands to billions of values ("billion laughs", merge-key
# bombs) is refused before anything walks it.
MAX_DEPTH = 64
MAX_ALIASES = 1_000
MAX_EXPANDED_VALUES = 10_000
MAX_EXPANDED_CHARS = 2_000_000

# libyaml's parser where PyYAML was built with it (its wheels are): the same events and marks,
# some 10-30x faster than the pure-Python one on big files
Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_SYNTAX_HINT = "fix the syntax at this line (indentation, a missing ':' or an unclosed quote)"


class YamlSyntaxError(Exception):
    def __init__(self, line: int, column: int, message: str, hint: str = _SYNTAX_HINT) -> None:
        super().__init__(message)
        self.line, self.column, self.message, self.hint = line, column, message, hint


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


def _mark(node: yaml.Node | yaml.Event) -> tuple[int, int]:
    mark = node.start_mark
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _syntax_error(exc: yaml.YAMLError, text: str) -> YamlSyntaxError:
    if isinstance(exc, yaml.reader.ReaderError):  # a control character, NUL or invalid code point
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return YamlSyntaxError(
            line,
            column,
            f"the character U+{code:04X} (a control character) cannot appear in YAML",
            'delete it, or write it as an escape inside a double-quoted string ("\\t")',
        )
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or str(exc)
        if exc.context and exc.context_mark and exc.context_mark.line + 1 != line:
            problem += f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
        if "expected a single document" in str(exc):
            problem = "more than one YAML document in the file"
        return YamlSyntaxError(line, col, problem)
    return YamlSyntaxError(1, 1, str(exc))


def _flow_depth(text: str) -> tuple[int, int] | None:
    """Where ``[``/``{`` brackets first nest deeper than MAX_DEPTH, counted in one pass over the
    text (PyYAML's scanner takes quadratic time over deep flow collections, before any event).
    Quoted strings and comments are skipped; brackets inside a block scalar still count, which
    only matters for text nesting 64 brackets deep."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return None  # too few brackets to nest that deep: skip the character-by-character pass
    depth, quote, line, line_start = 0, "", 1, 0
    for index, char in enumerate(text):
        if char == "\n":
            line, line_start = line + 1, index + 1
            if quote == "#":
                quote = ""
        elif quote:
            if char == quote and quote != "#" and (quote == "'" or text[index - 1] != "\\"):
                quote = ""
        elif char in "\"'" and (index == 0 or text[index - 1] in " \t[{,:-\n"):
            quote = char
        elif char == "#" and (index == 0 or text[index - 1] in " \t\n"):
            quote = "#"
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line, index - line_start + 1
        elif char in "]}":
            depth = max(depth - 1, 0)
    return None


def _check_shape(text: str) -> tuple[int, int] | None:
    """Bound nesting depth and alias count from the event stream (the composer that follows
    recurses once per level); returns where the first alias is, if any."""
    too_deep = _flow_depth(text)
    if too_deep is not None:
        raise YamlSyntaxError(
            *too_deep,
            f"the document nests deeper than {MAX_DEPTH} levels",
            "a task.yaml nests a handful of levels: flatten this part",
        )
    depth, aliases, first_alias = 0, 0, None
    for event in yaml.parse(text, Loader=Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise YamlSyntaxError(
                    *_mark(event),
                    f"the document nests deeper than {MAX_DEPTH} levels",
                    "a task.yaml nests a handful of levels: flatten this part",
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            first_alias = first_alias or _mark(event)
            if aliases > MAX_ALIASES:
                raise YamlSyntaxError(
                    *_mark(event),
                    f"more than {MAX_ALIASES} aliases (*name)",
                    "write the values out instead of aliasing them",
                )
    return first_alias


def _expanded(node: yaml.Node, sizes: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(values, characters) the node stands for once every alias and merge key is expanded;
    shared nodes are counted once each time they are used, computed once each."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    values, chars = 1, 0
    if isinstance(node, yaml.ScalarNode):
        chars = len(node.value)
    else:
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                children += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        for child in children:
            v, c = _expanded(child, sizes)
            values, chars = values + v, chars + c
    sizes[id(node)] = (values, chars)
    return values, chars


def parse(text: str) -> Document:
    """Parse one YAML document. Raises :class:`YamlSyntaxError` for anything not YAML, and for
    YAML nested or aliased far beyond any task.yaml."""
    try:
        first_alias = _check_shape(text)
        loader = Loader(text)
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, text) from None
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise _syntax_error(exc, text) from None
        doc = Document(None, Positions(), [], [])
        if root is None:
            return doc
        values, chars = _expanded(root, {})
        if values > MAX_EXPANDED_VALUES or chars > MAX_EXPANDED_CHARS:
            line, column = first_alias or (1, 1)
            raise YamlSyntaxError(
                line,
                column,
                f"with its aliases (*name) and merge keys (<<) expanded the document holds over "
                f"{min(values, 10**9):,} values and {min(chars, 10**12):,} characters, far beyond a task.yaml "
                f"(at most {MAX_EXPANDED_VALUES:,} values, {MAX_EXPANDED_CHARS:,} characters)",
                "write the repeated part out once instead of aliasing it",
            )
        doc.data = _walk(loader, root, (), doc)
        return doc
    finally:
        loader.dispose()


def _walk(loader: Any, node: yaml.Node, loc: Loc, doc: Document) -> Any:
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


# the types a task.yaml is written in; any other tag (!!binary, !!set, !!python/..., !custom)
# builds something no field takes
_SCALAR_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "timestamp")}


def _scalar(loader: Any, node: yaml.Node) -> Any:
    tag = node.tag.removeprefix("tag:yaml.org,2002:")
    shown = f"!!{tag}" if node.tag.startswith("tag:yaml.org,2002:") else node.tag
    if node.tag not in _SCALAR_TAGS:
        raise YamlSyntaxError(
            *_mark(node),
            f"the tag {shown[:40]} is not one a task.yaml uses",
            "drop the tag: write the value as plain text, a number, true/false or null",
        )
    try:
        return loader.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as exc:
        raise YamlSyntaxError(*_mark(node), exc.problem or str(exc)) from None
    except Exception:  # PyYAML's constructors raise whatever their parsing does (!!int abc: ValueError)
        raise YamlSyntaxError(
            *_mark(node),
            f"the value tagged {shown} is not a valid {tag}",
            f"drop the {shown} tag, or write a valid {tag}",
        ) from None
