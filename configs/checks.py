"""Checks of single values: names, templates, cron and time zones.

Each raises ValueError("what is wrong — how to fix it"); the models attach them to fields.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache

from configs.errors import did_you_mean

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_BLOCK_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_JINJA = re.compile(r"\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}")


def task_name(value: str) -> str:
    """A Prefect deployment name that is also a Kubernetes DNS-1123 label."""
    if len(value) > 63:
        raise ValueError(f"is {len(value)} characters long — use at most 63")
    if not _DNS_LABEL.match(value):
        fix = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-") or "my-task"
        raise ValueError(
            f"'{value}' is not a valid name — use lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit, e.g. '{fix[:63]}'"
        )
    return value


def label_value(value: str) -> str:
    """Owner and project become Kubernetes label values and Prefect tags."""
    if len(value) > 63:
        raise ValueError(f"is {len(value)} characters long — use at most 63")
    if not _LABEL_VALUE.match(value):
        raise ValueError(
            f"'{value}' is not a valid id — use letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return value


def block_name(value: str) -> str:
    """A Prefect block document name."""
    if not _BLOCK_NAME.match(value):
        raise ValueError(f"'{value}' is not a Prefect block name — block names use lowercase letters, digits and '-'")
    return value


def http_url(value: str) -> str:
    """An http(s) URL with a host, and no credentials in it (those go in a block)."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"'{value}' is not an http(s) URL — write e.g. 'http://my-server:8000/v1'")
    if parts.username or parts.password:
        raise ValueError("holds credentials — put the key in a Prefect Secret block and name it in credentials_block")
    return value


def repo_id(value: str) -> str:
    if len(value) > 96 or not _REPO_ID.match(value) or "--" in value or ".." in value:
        raise ValueError(
            f"'{value}' is not a Hugging Face repo id — write 'namespace/name', e.g. 'databricks/dolly-15k'"
        )
    return value


def bucket_name(value: str) -> str:
    if value.startswith("s3://"):
        raise ValueError(f"'{value}' is a URL — give the bucket name alone and the key prefix in 'path'")
    if not _BUCKET.match(value) or ".." in value:
        raise ValueError(f"'{value}' is not an S3 bucket name — use 3 to 63 lowercase letters, digits, '.' and '-'")
    return value


def local_path(value: str) -> str:
    """A path on the worker: no control characters (a NUL ends the path the OS sees)."""
    bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(f"holds the control character U+{ord(bad):04X} — a path is printable text: remove it")
    if len(value) > 4096:
        raise ValueError(f"is {len(value)} characters long — a path has at most 4096 (PATH_MAX)")
    return value


def object_path(value: str) -> str:
    """An S3 key prefix or a path inside a repo: relative, no '..', printable."""
    local_path(value)
    parts = value.strip("/").split("/")
    if not value.strip("/") or ".." in parts:
        raise ValueError(f"'{value}' is not a usable path — give a relative path such as 'checkpoints/run-1'")
    return value.strip("/")


def template_fields(template: str) -> list[str]:
    """The placeholder names of a prompt template, in order, each once.

    Templates use Python's ``{column}`` syntax; ``{{`` and ``}}`` are literal braces.
    """
    if _JINJA.search(template):
        raise ValueError(
            "uses '{{ name }}' placeholders — MLOC templates write one brace, '{name}' (and '{{' for a literal brace)"
        )
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"is not a valid template ({exc}) — write '{{{{' and '}}}}' for literal braces") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ValueError("has a positional '{}' placeholder — name the dataset column, e.g. '{instruction}'")
        if not name.isidentifier():
            raise ValueError(f"placeholder '{{{name}}}' is not a column name — use '{{column}}' only")
        if spec or conversion:
            raise ValueError(f"placeholder '{{{name}}}' has a format spec or conversion — use '{{{name}}}' alone")
        if name not in names:
            names.append(name)
    return names


def prompt_template(value: str) -> str:
    template_fields(value)
    return value


def cron(value: str) -> str:
    from croniter import croniter  # Prefect's scheduler parses cron with croniter too

    fields = value.split()
    if len(fields) != 5:
        raise ValueError(
            f"'{value}' has {len(fields)} fields — a cron expression has 5: minute hour day-of-month month "
            "day-of-week, e.g. '0 3 * * 1' for Mondays at 03:00"
        )
    # croniter also takes Jenkins-style hashed/random fields ('H', 'R'), which Prefect does not
    hashed = any(re.fullmatch(r"[HR](\(.*\))?(/\d+)?", f) for f in fields)
    if hashed or not croniter.is_valid(value):
        raise ValueError(f"'{value}' is not a valid cron expression — e.g. '0 3 * * 1' for Mondays at 03:00")
    return value


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    import zoneinfo

    return frozenset(zoneinfo.available_timezones())


def timezone(value: str) -> str:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
        guess = did_you_mean(value[:64], sorted(_zones()))
        hint = f"did you mean '{guess}'?" if guess else "use an IANA time zone such as 'Europe/Berlin' or 'UTC'"
        shown = value if len(value) <= 64 else value[:60] + "…"
        raise ValueError(f"'{shown}' is not a known time zone — {hint}") from None
    return value
