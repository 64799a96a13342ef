"""Greedy generation in tokens/s: the vLLM backend (tasks/vllm_worker.py, in the vLLM
interpreter) against transformers' ``generate``, on the same model and prompts, side by side.

Both backends as MLOC's evaluation runs them: vLLM gets every prompt in one batch (the
worker's one ``llm.generate`` call), transformers answers them one at a time (as
tasks/evaluate.py's ``_transformers_generate`` does). The engine's start (loading, profiling,
compiling) is printed apart and left out of vLLM's tokens/s, as is transformers' loading.

The model is a random Llama, deterministic (seed 0), bigger than the quickstart's so the
work is more than the per-call overhead: 4 layers, hidden 512, 8 heads of 64 (vLLM's CPU
attention needs head_dim >= 64), the quickstart's tokenizer. The quickstart model itself
answers its questions with "." and stops, two tokens, too few to time. ``--model DIR``
measures another.

    .venv/bin/python benchmarks/vllm_tokens.py [--model DIR] [--prompts 16] [--max-new-tokens 64]

Threads: OMP_NUM_THREADS=1 unless set (the project's habit, for stable timings). vLLM's CPU
backend binds its OpenMP threads itself (VLLM_CPU_OMP_THREADS_BIND=auto: on 2 cores, one
compute thread on core 0 and core 1 kept for the engine's other work); its log prints the binding.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.evaluate import VllmJob, VllmRequest, run_vllm_worker  # noqa: E402
from tasks.vllm_env import vllm_python, vllm_unavailable_reason  # noqa: E402

QUICKSTART_MODEL = ROOT / "configs" / "quickstart" / "tiny-model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def random_llama(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    quickstart = json.loads((QUICKSTART_MODEL / "config.json").read_text())
    config = LlamaConfig(
        vocab_size=quickstart["vocab_size"],
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=quickstart["bos_token_id"],
        eos_token_id=quickstart["eos_token_id"],
        pad_token_id=quickstart["pad_token_id"],
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(QUICKSTART_MODEL / name, folder / name)
    return folder


def questions(n: int) -> list[str]:
    rows = [json.loads(line) for line in (ROOT / "configs" / "quickstart" / "qa.jsonl").read_text().splitlines()]
    return [f"Question: {row['question']}\nAnswer:" for row in rows[:n]]


def transformers_generate(model_dir: Path, prompts: list[str], max_new_tokens: int) -> tuple[float, int, list[str]]:
    """(seconds, generated tokens, answers) of ``generate``, one prompt at a time, after one warm-up call."""
    import torch

    from tasks.modeling import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir))
    encoded = [tokenizer(p, return_tensors="pt", add_special_tokens=False) for p in prompts]
    settings = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    answers, tokens = [], 0
    with torch.no_grad():
        model.generate(**encoded[0], **settings)
        start = time.perf_counter()
        for inputs in encoded:
            new = model.generate(**inputs, **settings)[0, inputs["input_ids"].shape[1] :]
            tokens += int(new.numel())
            answers.append(tokenizer.decode(new, skip_special_tokens=True))
    return time.perf_counter() - start, tokens, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model folder (default: a random 4-layer Llama)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    if vllm_python() is None:
        sys.exit(f"no vLLM to benchmark: {vllm_unavailable_reason()}")
    prompts = questions(args.prompts)
    with tempfile.TemporaryDirectory(prefix="mloc-bench-") as scratch:
        model_dir = args.model or random_llama(Path(scratch))
        request = VllmRequest(
            model=str(model_dir),
            max_model_len=64 + args.max_new_tokens,
            dtype="float32",  # what transformers runs on a CPU; vLLM's auto would take 16 bits
            gpu_memory_utilization=0.1,
            enforce_eager=True,
            single_process=True,  # as tasks/evaluate.py's vllm_request runs it on a CPU
            jobs=[
                VllmJob(
                    name="generate",
                    adapter_dir=None,
                    rows=[],
                    max_seq_length=64,
                    prompts=prompts,
                    max_new_tokens=args.max_new_tokens,
                )
            ],
        )
        start = time.perf_counter()
        result = run_vllm_worker(request)
        worker_s = time.perf_counter() - start
        vllm = result.jobs["generate"]
        hf_s, hf_tokens, hf_answers = transformers_generate(model_dir, prompts, args.max_new_tokens)
    vllm_rate, hf_rate = vllm.generated_tokens / vllm.generate_s, hf_tokens / hf_s
    print()
    print(f"model: {args.model or 'random Llama, 4 layers, hidden 512, 8 heads of 64'}, float32")
    print(
        f"{len(prompts)} prompts, greedy, max_new_tokens {args.max_new_tokens}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    )
    print(f"vLLM {result.vllm_version}: engine start {result.engine_start_s:.1f} s (worker in all {worker_s:.1f} s)")
    print(f"{'backend':28} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
    print(f"{'vllm (one batch)':28} {vllm.generated_tokens:7d} {vllm.generate_s:8.2f} {vllm_rate:9.1f}")
    print(f"{'transformers (one by one)':28} {hf_tokens:7d} {hf_s:8.2f} {hf_rate:9.1f}")
    print(f"vllm / transformers: {vllm_rate / hf_rate:.2f}x tokens/s")
    same = sum(a == b for a, b in zip(vllm.generations, hf_answers, strict=True))
    print(f"identical greedy answers: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
