"""Fuzzing `mloc validate` with mutations of the shipped examples: seeded, bounded in time.

Every mutation, whatever it breaks, must get what a user is promised: no traceback, exit
code 1 (invalid) or 2 (unreadable, not YAML), an answer in under 2 s, and, for a file that
parses, every error at a line and a field. A mutation that happens to leave the file valid
(exit 0) is fine; it is counted, not failed.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EXAMPLES = sorted(CONFIGS.glob("*.yaml"))
SEED = 20261201
MUTATIONS = 2_400
# A guard against hangs and blow-ups, not a speed measurement: the slowest mutations, a 300,000-character
# string of URL-like text ("a://b:" repeated) where a short name belongs, take about 2 s on a loaded
# 2-core machine (the same before ServingTask existed); a blow-up would take minutes.
BUDGET_S = 5.0

Mutation = Callable[[random.Random, str, Any], str | bytes]


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in the document."""
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            out += _paths(value, (*prefix, index))
    return out


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    node = data
    for part in path[:-1]:
        node = node[part]
    return node


def _dump(data: Any) -> str:
    # libyaml's emitter where PyYAML has it: the pure-Python one spends more time writing the
    # mutated files than the validator spends reading them
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=True)


def delete(rng: random.Random, text: str, data: Any) -> str:
    path = rng.choice(_paths(data))
    parent = _parent(data, path)
    del parent[path[-1]]
    return _dump(data)


def rename(rng: random.Random, text: str, data: Any) -> str:
    keys = [p for p in _paths(data) if isinstance(p[-1], str)]
    path = rng.choice(keys)
    parent = _parent(data, path)
    key = path[-1]
    typo = key[:-1] if len(key) > 1 and rng.random() < 0.5 else key + rng.choice("sx_")
    parent[typo] = parent.pop(key)
    return _dump(data)


SWAPS: list[Any] = [
    None,
    True,
    0,
    -1,
    1.5,
    "text",
    [],
    {},
    [1, 2],
    {"a": 1},
    "",
    10**30,
    -(10**30),
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    "1e1000000",
    "5e999999",
    "NaN",
    "x" * 5_000,
]


def swap(rng: random.Random, text: str, data: Any) -> str:
    path = rng.choice(_paths(data))
    _parent(data, path)[path[-1]] = rng.choice(SWAPS)
    return _dump(data)


def number(rng: random.Random, text: str, data: Any) -> str:
    numeric = [p for p in _paths(data) if isinstance(_parent(data, p)[p[-1]], (int, float, str))]
    path = rng.choice(numeric)
    _parent(data, path)[path[-1]] = rng.choice(
        [float("nan"), float("inf"), -1, 0, 10**30, 2**63, -(2**63), 1e-320, "1e4400", 0.5]
    )
    return _dump(data)


def control(rng: random.Random, text: str, data: Any) -> str:
    at = rng.randrange(len(text))
    return text[:at] + chr(rng.choice([0, 1, 7, 8, 11, 12, 27, 127, 0xFFFE])) + text[at:]


def escape(rng: random.Random, text: str, data: Any) -> str:
    """A control character written as a YAML escape: valid YAML, a NUL in a value."""
    strings = [p for p in _paths(data) if isinstance(_parent(data, p)[p[-1]], str)]
    path = rng.choice(strings)
    parent = _parent(data, path)
    parent[path[-1]] = parent[path[-1]] + rng.choice(["\0", "\x1b[31m", "\r\n", "\u2028", "\ufeff"])
    return _dump(data)


def nest(rng: random.Random, text: str, data: Any) -> str:
    depth = rng.choice([70, 500, 1_000, 5_000])
    if rng.random() < 0.5:
        return f"deep: {'[' * depth}{']' * depth}\n" + text
    return "".join(f"{' ' * i}k{i}:\n" for i in range(min(depth, 200))) + text


def tag(rng: random.Random, text: str, data: Any) -> str:
    lines = text.splitlines()
    candidates = [i for i, line in enumerate(lines) if ": " in line and not line.rstrip().endswith(":")]
    index = rng.choice(candidates)
    key, _, value = lines[index].partition(": ")
    tag_ = rng.choice(["!!int", "!!float", "!!bool", "!!timestamp", "!!binary", "!!python/object", "!custom", "!!set"])
    lines[index] = f"{key}: {tag_} {value}"
    return "\n".join(lines) + "\n"


def bomb(rng: random.Random, text: str, data: Any) -> str:
    kind = rng.choice(["laughs", "merge", "string"])
    if kind == "laughs":
        levels = rng.choice([5, 8, 9])
        head = 'l0: &l0 ["lol"]\n' + "".join(
            f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, levels + 1)
        )
    elif kind == "merge":
        head = "m0: &m0 {k0: v}\n" + "".join(
            f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: v}}\n" for i in range(1, 21)
        )
    else:
        head = f's: &s "{"x" * 100_000}"\nl: [{", ".join(["*s"] * rng.choice([50, 2_000]))}]\n'
    return head + text


def long_string(rng: random.Random, text: str, data: Any) -> str:
    strings = [p for p in _paths(data) if isinstance(_parent(data, p)[p[-1]], str)]
    path = rng.choice(strings)
    unit = rng.choice(["a", "a:", "a://b:", "hf_", "{", "{x}", "é", "\\"])
    _parent(data, path)[path[-1]] = unit * rng.choice([1_000, 50_000, 300_000])
    return _dump(data)


def binary(rng: random.Random, text: str, data: Any) -> bytes:
    raw = text.encode()
    if rng.random() < 0.5:
        return bytes(rng.randrange(256) for _ in range(rng.choice([16, 4_096])))
    at = rng.randrange(len(raw))
    return raw[:at] + bytes([rng.choice([0x80, 0xC3, 0xFF, 0xFE])]) + raw[at:]


def truncate(rng: random.Random, text: str, data: Any) -> str:
    return text[: rng.randrange(len(text))]


MUTATORS: list[Mutation] = [
    delete,
    rename,
    swap,
    number,
    control,
    escape,
    nest,
    tag,
    bomb,
    long_string,
    binary,
    truncate,
]


def _problems(result: Any, took: float) -> list[str]:
    """What is wrong with one answer of `mloc validate --json`, if anything."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return [f"raised {result.exception!r}"]
    problems = []
    if "Traceback" in result.output:
        problems.append("printed a traceback")
    if result.exit_code not in (0, 1, 2):
        problems.append(f"exit {result.exit_code}")
    if took >= BUDGET_S:
        problems.append(f"took {took:.2f} s")
    try:
        [file] = json.loads(result.stdout)["files"]
    except (ValueError, KeyError) as exc:
        return [*problems, f"--json printed no report ({exc})"]
    for issue in file["errors"]:
        if issue["line"] < 1 or issue["column"] < 1 or not issue["field"] or not issue["message"]:
            problems.append(f"an error without line and field: {issue}")
    return problems


def test_fuzzed_examples_get_clear_errors_fast(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    texts = {path.name: path.read_text() for path in EXAMPLES}
    parsed = {name: yaml.safe_load(text) for name, text in texts.items()}
    runner = CliRunner()
    seen: dict[str, int] = {}
    failures: list[str] = []
    slowest = (0.0, "")
    for number_ in range(MUTATIONS):
        name = rng.choice(sorted(texts))
        mutator = MUTATORS[number_ % len(MUTATORS)]
        text = texts[name]
        try:
            mutated = mutator(rng, text, copy.deepcopy(parsed[name]))
        except (IndexError, ValueError, TypeError, KeyError):
            continue  # the mutation found nothing to act on in this file
        path = tmp_path / f"{number_}-{name}"
        path.write_bytes(mutated if isinstance(mutated, bytes) else mutated.encode("utf-8", "surrogatepass"))
        where = f"mutation {number_} ({mutator.__name__} of {name}, seed {SEED}): {path}"
        start = time.perf_counter()
        result = runner.invoke(app, ["validate", "--json", str(path)])
        took = time.perf_counter() - start
        slowest = max(slowest, (took, where))
        failures += [f"{where}: {problem}" for problem in _problems(result, took)]
        seen[f"{mutator.__name__}:{result.exit_code}"] = seen.get(f"{mutator.__name__}:{result.exit_code}", 0) + 1
        path.unlink()
    tried = sum(seen.values())
    assert not failures, f"{len(failures)} of {tried} mutations failed; the first ones:\n" + "\n".join(failures[:15])
    assert tried >= 2_000, seen
    # the fuzzer really reached both kinds of refusal, and most mutations are refused
    assert sum(v for k, v in seen.items() if k.endswith(":2")) > 100, seen
    assert sum(v for k, v in seen.items() if k.endswith(":1")) > 1_000, seen
    print(
        f"{tried} mutations; slowest {slowest[0]:.3f} s ({slowest[1]}); by outcome: {json.dumps(seen, sort_keys=True)}"
    )
