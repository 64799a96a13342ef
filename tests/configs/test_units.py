"""Small parts of the validator: quantities, YAML positions, secrets."""

from __future__ import annotations

from decimal import Decimal

import pytest

from configs.quantities import cpu_quantity, memory_quantity, parse_quantity
from configs.secrets import find_secrets
from configs.yamlsource import YamlSyntaxError, parse


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("8", Decimal(8)),
        ("500m", Decimal("0.5")),
        ("64Gi", Decimal(64 * 2**30)),
        ("1G", Decimal(10**9)),
        ("1e3", Decimal(1000)),
        (2, Decimal(2)),
        ("0.5", Decimal("0.5")),
    ],
)
def test_parse_quantity(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


def test_cpu_and_memory_reject_the_other_units() -> None:
    assert cpu_quantity(8) == "8" and memory_quantity("512Mi") == "512Mi"
    for bad in ("2Gi", "1k"):
        with pytest.raises(ValueError):
            cpu_quantity(bad)
    for bad in ("512", "64m", "64GB"):
        with pytest.raises(ValueError):
            memory_quantity(bad)


def test_positions_follow_keys_values_and_merge_keys() -> None:
    doc = parse("base: &b\n  x: 1\nspec:\n  <<: *b\n  y: [a, b]\n")
    assert doc.data == {"base": {"x": 1}, "spec": {"x": 1, "y": ["a", "b"]}}
    assert doc.positions.of_key(("spec", "y")) == (5, 3)
    assert doc.positions.of_value(("spec", "y", 1)) == (5, 10)
    assert doc.positions.of_key(("spec", "missing")) == (3, 1)


def test_keys_are_kept_as_written() -> None:
    """YAML 1.1 would turn the key `on` into True."""
    assert parse("on: 1\n").data == {"on": 1}


def test_syntax_error_has_a_position() -> None:
    with pytest.raises(YamlSyntaxError) as info:
        parse("a: 1\nb: [1\nc: 2\n")
    assert info.value.line == 3


def test_secret_scan_names_the_kind_and_skips_block_references() -> None:
    doc = parse(
        "a:\n  credentials_block: my-block\n  password: hunter2\n  url: postgres://u:p@db/x\n"
        "  note: ghp_" + "a" * 36 + "\n"
    )
    found = dict(find_secrets(doc.strings))
    assert set(found) == {("a", "password"), ("a", "url"), ("a", "note")}
    assert found[("a", "note")] == "a GitHub token"
