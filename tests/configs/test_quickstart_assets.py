"""The quickstart's shipped assets (configs/quickstart/) load offline and are the generator's output.

`scripts/make_quickstart_assets.py` writes them; after changing it, or after upgrading torch,
transformers or tokenizers, run it again and commit the result.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "configs" / "quickstart"
MODEL_DIR = ASSETS / "tiny-model"
DATASET = ASSETS / "qa.jsonl"
SCRIPT = ROOT / "scripts" / "make_quickstart_assets.py"
EXPECTED_ROWS = 459


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dataset_has_question_and_answer_columns() -> None:
    lines = DATASET.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == EXPECTED_ROWS
    assert all(list(row) == ["question", "answer"] for row in rows)
    assert all(row["question"].strip() and 1 <= len(row["answer"].split()) <= 3 for row in rows)
    assert len({row["question"] for row in rows}) == len(rows), "duplicate questions"
    assert DATASET.stat().st_size < 60_000


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
    shipped, regenerated = _files(ASSETS), _files(tmp_path)
    assert sorted(regenerated) == sorted(shipped)
    differing = [name for name in shipped if shipped[name] != regenerated[name]]
    assert not differing, (
        f"regenerated files differ from configs/quickstart/: {differing}; "
        "run `python scripts/make_quickstart_assets.py` and commit the result"
    )
