"""Evaluation on vLLM, run by the vLLM interpreter (see tasks/vllm_env.py), not by MLOC's.

    <vllm python> tasks/vllm_worker.py REQUEST.json RESULT.json

The vLLM environment has vllm and what it depends on, none of MLOC's packages: this file
imports the standard library and vllm only, and speaks JSON. One engine serves every job
of a request (the base model and an adapter, say), since starting one costs a minute on a CPU.

The request::

    {"model": "<folder>", "max_model_len": 80, "dtype": "auto", "gpu_memory_utilization": 0.9,
     "enforce_eager": false, "single_process": false, "max_lora_rank": 8,
     "jobs": [{"name": "before", "adapter_dir": null, "max_seq_length": 64,
               "rows": [["<prompt>", "<target>"], ...], "prompts": ["<prompt>", ...], "max_new_tokens": 16}]}

The result: ``{"vllm_version", "engine_start_s", "jobs": {name: {"total_nll", "tokens", "generations",
"generated_tokens", "generate_s"}}}``,
where the loss is ``total_nll / tokens``: the mean negative log-likelihood per target token,
tokenized as tasks/evaluate.py's ``_token_ids`` does (the two must stay the same).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

# vLLM accepts these LoRA ranks only; an adapter of rank r needs the smallest one >= r
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def token_ids(tokenizer: Any, prompt: str, target: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt+target (+eos) and how many leading ones are prompt: tasks/evaluate.py's ``_token_ids``."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    full = tokenizer(prompt + target, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        full = [*full, tokenizer.eos_token_id]
    return full[:max_length], min(len(prompt_ids), max_length)


def lora_rank(r: int) -> int:
    return next((rank for rank in _LORA_RANKS if rank >= r), r)


def run_job(llm: Any, job: dict[str, Any], lora: Any, enable_lora: bool) -> dict[str, Any]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    tokenizer = llm.get_tokenizer()
    encoded = [token_ids(tokenizer, prompt, target, job["max_seq_length"]) for prompt, target in job["rows"]]
    # rows with no target token left after truncation count for nothing, as in the transformers backend
    scored = [(ids, n) for ids, n in encoded if len(ids) - max(n, 1) > 0]
    total, count = 0.0, 0
    scoring = SamplingParams(max_tokens=1, prompt_logprobs=0)
    # With LoRA enabled, vLLM maps the logits of prompt tokens to adapters by request, not by
    # token, and fails (CPU: an einsum shape error) or mis-scores a batch of several prompts
    # (vllm-project/vllm#16668, #29955); one prompt per batch maps every token right.
    batch = 1 if enable_lora else max(len(scored), 1)
    for first in range(0, len(scored), batch):
        chunk = scored[first : first + batch]
        outputs = llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids, _ in chunk], scoring, lora_request=lora, use_tqdm=False
        )
        for (ids, n_prompt), out in zip(chunk, outputs, strict=True):
            logprobs = out.prompt_logprobs  # [None, {token id: Logprob}, ...]: position i given ids[:i]
            for position in range(max(n_prompt, 1), len(ids)):
                total -= logprobs[position][ids[position]].logprob
                count += 1
    generations: list[str] = []
    generated_tokens, start = 0, time.perf_counter()
    if job["prompts"]:
        greedy = SamplingParams(temperature=0.0, max_tokens=job["max_new_tokens"])
        prompts = [
            TokensPrompt(prompt_token_ids=tokenizer(p, add_special_tokens=False)["input_ids"]) for p in job["prompts"]
        ]
        outputs = llm.generate(prompts, greedy, lora_request=lora, use_tqdm=False)
        # decoded as the transformers backend decodes, not by vLLM's incremental detokenizer
        generations = [tokenizer.decode(list(o.outputs[0].token_ids), skip_special_tokens=True) for o in outputs]
        generated_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {
        "total_nll": total,
        "tokens": count,
        "generations": generations,
        "generated_tokens": generated_tokens,
        "generate_s": time.perf_counter() - start,
    }


def main(request_path: str, result_path: str) -> None:
    with open(request_path) as f:
        request = json.load(f)
    options: dict[str, Any] = {}
    if request.get("single_process"):
        # the engine core and its worker in this process: each process vLLM spawns imports vllm
        # again, which on a 2-core CPU made the engine's start 45-65 s instead of ~5 s
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        options["distributed_executor_backend"] = "uni"
    import vllm
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    jobs = request["jobs"]
    adapters = list(dict.fromkeys(j["adapter_dir"] for j in jobs if j.get("adapter_dir")))
    if adapters:
        options |= {"enable_lora": True, "max_lora_rank": lora_rank(request.get("max_lora_rank") or 16), "max_loras": 1}
    print(f"vllm {vllm.__version__}: starting the engine on {request['model']}", flush=True)
    start = time.perf_counter()
    llm = LLM(
        model=request["model"],
        dtype=request.get("dtype", "auto"),
        max_model_len=request["max_model_len"],
        gpu_memory_utilization=request["gpu_memory_utilization"],
        enforce_eager=request.get("enforce_eager", False),
        # every prompt token computed afresh and scored, whatever earlier requests left in the cache
        enable_prefix_caching=False,
        seed=0,
        **options,
    )
    engine_start_s = time.perf_counter() - start
    print(f"engine started in {engine_start_s:.1f} s", flush=True)
    results = {}
    for job in jobs:
        adapter = job.get("adapter_dir")
        lora = (
            LoRARequest(f"adapter-{adapters.index(adapter) + 1}", adapters.index(adapter) + 1, adapter)
            if adapter
            else None
        )
        start = time.perf_counter()
        results[job["name"]] = run_job(llm, job, lora, bool(adapters))
        print(
            f"{job['name']}: {len(job['rows'])} rows scored, {len(job['prompts'])} generations "
            f"in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
    with open(result_path, "w") as f:
        json.dump({"vllm_version": vllm.__version__, "engine_start_s": engine_start_s, "jobs": results}, f)


if __name__ == "__main__":  # vLLM starts its engine in processes that re-import this module
    if len(sys.argv) != 3:
        sys.exit("usage: vllm_worker.py REQUEST.json RESULT.json")
    main(sys.argv[1], sys.argv[2])
