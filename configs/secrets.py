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

# (what it is, pattern) for values that are secrets whatever key holds them. Every pattern
# runs in linear time: a fixed prefix, then one character class up to a delimiter.
_VALUE_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("a Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{30,}")),
    ("an AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})")),
    ("an API key", re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}")),
    ("a Slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----")),
    # scheme://user:password@ or scheme://:password@, any case; the user part cannot hold ':',
    # so each '://' is scanned once, up to the next '/', space or '@'
    ("a password inside a URL", re.compile(r"://[^/\s:@]*:[^/\s@]+@")),
]

# words of a key name that only ever name a credential ...
_SECRET_WORDS = {"token", "secret", "password", "passwd", "pwd", "passphrase", "credential", "credentials", "auth"}
# ... and pairs of words that do
_SECRET_PAIRS = {("api", "key"), ("apikey",), ("access", "key"), ("secret", "key"), ("private", "key")}
# tokenizer settings: their values are tokens of a vocabulary, not credentials
_VOCABULARY_TOKENS = {"pad", "eos", "bos", "unk", "sep", "cls", "mask"}
_SPACE = re.compile(r"\s")
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

HINT = (
    "store it in a Prefect Secret (or AwsCredentials) block and give the block's name in "
    "'credentials_block'; credentials never go into a task.yaml"
)


def _words(key: str) -> list[str]:
    """'dbPassword' -> ['db', 'password']; 'api_key_v2' -> ['api', 'key', 'v', '2']."""
    return [w.lower() for w in _WORD.findall(key)]


def is_secret_key(key: str) -> bool:
    """Whether a key's name says its value is a credential (a block's name is not)."""
    words = _words(key)
    if not words or words[-1] == "block" or (words[-2:-1] and words[-2] == "block" and words[-1] in {"name"}):
        return False
    for index, word in enumerate(words):
        if word in _SECRET_WORDS and not (word == "token" and index > 0 and words[index - 1] in _VOCABULARY_TOKENS):
            return True
        if (word,) in _SECRET_PAIRS or tuple(words[index : index + 2]) in _SECRET_PAIRS:
            return True
    return False


def _value_secret(text: str) -> str | None:
    # a folded or multi-line scalar can split a token over lines: look at it joined up too
    joined = "".join(text.split()) if _SPACE.search(text) else None
    for what, pattern in _VALUE_PATTERNS:
        if pattern.search(text) or (joined is not None and what != "a private key" and pattern.search(joined)):
            return what
    return None


def find_secrets(strings: Iterable[tuple[Loc, str, bool]]) -> list[tuple[Loc, str]]:
    """[(path, what was found)] for each literal secret among the document's keys and values."""
    found: dict[Loc, str] = {}
    for loc, text, is_key in strings:
        what = _value_secret(text)
        if what is not None:
            found.setdefault(loc, f"{what} in a key" if is_key else what)
            continue
        if is_key:
            continue
        key = loc[-1] if loc else ""
        if isinstance(key, str) and is_secret_key(key) and text:
            found.setdefault(loc, f"a literal value for '{key}'")
    return sorted(found.items(), key=lambda item: str(item[0]))


def mask(text: str) -> str:
    """``text`` with everything that looks like a secret cut to its first characters."""
    for _, pattern in _VALUE_PATTERNS:
        text = pattern.sub(lambda m: m.group(0)[:4] + "…(masked)", text)
    return text
