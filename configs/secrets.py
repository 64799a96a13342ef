"""Finding literal credentials in a task.yaml.

Credentials live in Prefect blocks (or Kubernetes secrets) and a task.yaml names the
block. A secret pasted into the file would travel into flow-run parameters, logs and
manifests, so any key or value that looks like one is refused. Messages never repeat
the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from configs.errors import Loc

# (what it is, pattern) for values that are secrets whatever key holds them
_VALUE_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("a Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
    ("an AWS access key id", re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a GitHub token", re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})\b")),
    ("an API key", re.compile(r"\bsk-(proj-|ant-)?[A-Za-z0-9_-]{20,}\b")),
    ("a Slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a password inside a URL", re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@")),
]

# keys that only ever hold a credential
_SECRET_KEY = re.compile(
    r"(^|[_-])(token|secret|password|passwd|passphrase|api[_-]?key|access[_-]?key(_id)?|secret[_-]?key"
    r"|private[_-]?key|aws_secret_access_key|hf_token|auth)$",
    re.IGNORECASE,
)
# ... except where the value names a block, which is the point
_REFERENCE_KEY = re.compile(r"_block$")

HINT = (
    "store it in a Prefect Secret (or AwsCredentials) block and give the block's name in "
    "'credentials_block'; credentials never go into a task.yaml"
)


def find_secrets(strings: Iterable[tuple[Loc, str, bool]]) -> list[tuple[Loc, str]]:
    """[(path, what was found)] for each literal secret among the document's keys and values."""
    found: dict[Loc, str] = {}
    for loc, text, is_key in strings:
        if is_key:
            continue
        for what, pattern in _VALUE_PATTERNS:
            if pattern.search(text):
                found.setdefault(loc, what)
                break
        else:
            key = loc[-1] if loc else ""
            if isinstance(key, str) and _SECRET_KEY.search(key) and not _REFERENCE_KEY.search(key) and text:
                found.setdefault(loc, f"a literal value for '{key}'")
    return sorted(found.items(), key=lambda item: str(item[0]))
