"""Literal credentials in a task.yaml are refused wherever they are, and never repeated.

Each case plants one secret in the quickstart task; `mloc validate` (text and --json) must
refuse the file, name where the secret is, and print no part of it beyond a short prefix.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from configs.secrets import find_secrets
from flows.cli import app

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BASE = (CONFIGS / "quickstart.yaml").read_text()
HF = "hf_" + "Zq7" * 12
PASSWORD = "Xy9-not-a-real-pass"
runner = CliRunner()


def annotated(key: str, value: str) -> str:
    """The quickstart with ``key: value`` among metadata.annotations, a free-form mapping."""
    assert "  project: mloc-quickstart\n" in BASE
    return BASE.replace(
        "  project: mloc-quickstart\n", f"  project: mloc-quickstart\n  annotations:\n    {key}: {value}\n"
    )


CASES = {
    # key names that only ever hold a credential, however they are spelled
    "camel-case-password": (annotated("dbPassword", PASSWORD), PASSWORD),
    "camel-case-token": (annotated("apiToken", PASSWORD), PASSWORD),
    "camel-case-secret-key": (annotated("secretAccessKey", PASSWORD), PASSWORD),
    "pwd": (annotated("pwd", PASSWORD), PASSWORD),
    "password-prefix": (annotated("password_value", PASSWORD), PASSWORD),
    "api-key-suffix": (annotated("api_key_v2", PASSWORD), PASSWORD),
    "credentials": (annotated("credentials", PASSWORD), PASSWORD),
    # values that are credentials whatever key holds them
    "url-password-upper-case-scheme": (annotated("endpoint", f"HTTPS://user:{PASSWORD}@example.test/x"), PASSWORD),
    "url-password-no-user": (annotated("cache", f"redis://:{PASSWORD}@cache.test:6379"), PASSWORD),
    "token-split-by-folding": (annotated("note", f">-\n      {HF[:20]}\n      {HF[20:]}"), HF[4:20]),
    "token-as-a-key": (annotated(HF, "x"), HF[4:]),
    # an unknown field whose name is a token: refused, and its path is masked too
    "token-as-a-hyperparameter": (BASE.replace("  hyperparameters:\n", f"  hyperparameters:\n    {HF}: 1\n"), HF[4:]),
}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_planted_secret_is_refused_and_never_printed(case: str, tmp_path: Path) -> None:
    text, secret = CASES[case]
    path = tmp_path / "task.yaml"
    path.write_text(text)
    for args in (["validate", str(path)], ["validate", "--json", str(path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        assert secret not in result.output, f"the secret was printed:\n{result.output}"
    assert "credentials_block" in result.output, result.output  # the refusal says where credentials go


def test_look_alikes_are_not_secrets() -> None:
    strings = [
        (("spec", "hyperparameters", "pad_token"), "<pad>", False),
        (("spec", "hyperparameters", "eos_token"), "</s>", False),
        (("spec", "output", "destination", "credentials_block"), "my-aws", False),
        (("metadata", "annotations", "author"), "jane", False),
        (("metadata", "annotations", "url"), "http://host.test:8080/path", False),
        (("metadata", "annotations", "bucket"), "s3://bucket/key", False),
    ]
    assert find_secrets(strings) == []


def test_long_strings_do_not_stall_the_scanner() -> None:
    """A guard against patterns that backtrack: the 600 kB strings that took minutes before
    are scanned in a fraction of a second (benchmarks/ measures; this only catches a hang)."""
    for unit in ("a:", "a://b:", "sk-!", "hf_", "hf_a ", "AKIA ", "x"):
        text = unit * (600_000 // len(unit))
        start = time.perf_counter()
        assert find_secrets([(("a",), text, False), (("a",), text, True)]) == []
        assert time.perf_counter() - start < 5.0, unit
