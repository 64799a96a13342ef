"""Kubernetes resource quantities (``"8"``, ``"500m"``, ``"64Gi"``), parsed as the API server does."""

from __future__ import annotations

import re
from decimal import Decimal

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
# Far above the biggest nodes (a few hundred cores, a few TiB), far below what overflows a
# Kubernetes quantity or an integer conversion later (`mloc deploy` renders them)
MAX_CPUS = 4096
MAX_MEMORY = 64 * 2**40
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>[a-zA-Z]*|[eE][-+]?[0-9]+)$")
# What people write by habit, and what Kubernetes spells instead.
_HABITS = {
    "KB": "k",
    "MB": "M",
    "GB": "G",
    "TB": "T",
    "KIB": "Ki",
    "MIB": "Mi",
    "GIB": "Gi",
    "TIB": "Ti",
    "K": "k",
    "g": "G",
    "gi": "Gi",
    "mi": "Mi",
    "ki": "Ki",
}


def parse_quantity(text: str | int | float) -> Decimal:
    """The quantity's value in base units. Raises ValueError with the fix in its message."""
    if isinstance(text, bool):
        raise ValueError("a quantity must be a number or a string — write e.g. '8', '500m' or '64Gi'")
    raw = str(text).strip()
    match = _QUANTITY.match(raw)
    if not match:
        raise ValueError(f"'{raw}' is not a Kubernetes quantity — write e.g. '8', '500m' or '64Gi'")
    shown = raw if len(raw) <= 40 else raw[:36] + "…"
    if len(match["number"]) > 40:
        raise ValueError(f"'{shown}' has {len(match['number'])} digits — no resource needs more than a few")
    number, suffix = Decimal(match["number"]), match["suffix"]
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    if suffix[:1] in "eE" and suffix[1:].lstrip("+-").isdigit():
        exponent = suffix[1:].lstrip("+-").lstrip("0") or "0"
        if len(exponent) > 2:  # beyond 1e99 a quantity means nothing (and 1e1000000 overflows)
            raise ValueError(f"'{shown}' is out of range — write e.g. '8', '500m' or '64Gi'")
        return number * Decimal(10) ** int(suffix[1:])
    fix = _HABITS.get(suffix) or _HABITS.get(suffix.upper())
    hint = f" — write '{match['number']}{fix}'" if fix else ""
    raise ValueError(f"'{raw}' has an unknown unit suffix '{suffix}'{hint}")


def cpu_quantity(value: str | int | float) -> str:
    """Validate a CPU request; returns it as the string Kubernetes is given."""
    raw = str(value).strip()
    amount = parse_quantity(value)
    if not re.fullmatch(r"[0-9.]+m?", raw):
        raise ValueError(f"'{raw}' is not a CPU amount — count cores ('8', '0.5') or millicores ('500m')")
    if amount < Decimal("0.001"):
        raise ValueError(f"'{raw}' is less than one millicore — ask for at least '1m'")
    if amount > MAX_CPUS:
        raise ValueError(
            f"'{raw}' is more cores than any node has (at most {MAX_CPUS}) — ask for what one replica uses"
        )
    return raw


def memory_quantity(value: str | int | float) -> str:
    """Validate a memory request; returns it as the string Kubernetes is given."""
    raw = str(value).strip()
    amount = parse_quantity(value)
    if raw.endswith("m") and not raw.endswith("Mi"):
        raise ValueError(
            f"'{raw}' means milli-bytes in Kubernetes — for megabytes write '{raw[:-1]}Mi' or '{raw[:-1]}M'"
        )
    if amount < 2**20:
        raise ValueError(f"'{raw}' is less than 1 MiB — add a unit, e.g. '{raw}Gi'")
    if amount > MAX_MEMORY:
        raise ValueError(f"'{raw}' is more memory than any node has (at most 64Ti) — ask for what one replica uses")
    return raw
