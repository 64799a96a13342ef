"""Evaluation: loss and perplexity on held-out examples, and a few generations.

Two backends give results of the same shape: vLLM when it is installed and a GPU is
present, transformers otherwise. The loss is the mean negative log-likelihood per
token of what the model is trained to produce: the completion for prompt/completion
data, the whole text otherwise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.jobs import EvaluateJob
from tasks.runner import emit

if TYPE_CHECKING:
    from configs import TrainingTask


class BackendError(RuntimeError):
    """The evaluation backend the task asks for cannot run here."""


@dataclass
class EvalResult:
    label: str  # "before" or "after" training
    backend: str
    eval_loss: float
    perplexity: float
    samples: int
    tokens: int
    generations: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_backend(requested: str) -> str:
    """'auto' -> vllm when importable with a GPU, else transformers; an explicit vllm never falls back."""
    from importlib.util import find_spec

    from tasks.modeling import cuda_available

    has_vllm = find_spec("vllm") is not None and cuda_available()
    if requested == "vllm" and not has_vllm:
        raise BackendError(
            "evaluation.backend is 'vllm' but this worker has no vLLM with a CUDA GPU — "
            "install the 'vllm' extra on a GPU worker, or set backend: auto"
        )
    if requested == "auto":
        return "vllm" if has_vllm else "transformers"
    return requested


def _pieces(example: dict[str, str]) -> tuple[str, str]:
    """(prompt, target): the loss is taken on the target."""
    if "completion" in example:
        return example["prompt"], example["completion"]
    return "", example["text"]


def _token_ids(tokenizer: Any, prompt: str, target: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt+target (+eos) and how many leading ones are prompt, as TRL tokenizes them."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    full = tokenizer(prompt + target, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        full = [*full, tokenizer.eos_token_id]
    return full[:max_length], min(len(prompt_ids), max_length)


def _transformers_scores(model: Any, tokenizer: Any, held_out: Any, max_length: int) -> tuple[float, int]:
    import torch

    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for example in held_out:
            ids, n_prompt = _token_ids(tokenizer, *_pieces(example), max_length)
            if len(ids) - max(n_prompt, 1) <= 0:
                continue
            input_ids = torch.tensor([ids], device=device)
            logits = model(input_ids=input_ids).logits[0, :-1].float()
            targets = input_ids[0, 1:]
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            first = max(n_prompt - 1, 0)  # logits at position i predict token i + 1
            total += float(losses[first:].sum())
            count += int(losses[first:].numel())
    return total, count


def _transformers_generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    import torch

    outputs = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for prompt in prompts:
            encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
            generated = model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            new_tokens = generated[0, encoded["input_ids"].shape[1] :]
            outputs.append(tokenizer.decode(new_tokens, skip_special_tokens=True))
    return outputs


def _vllm_run(task: TrainingTask, job: EvaluateJob, held_out: Any, prompts: list[str]) -> tuple[float, int, list[str]]:
    """Loss from vLLM's prompt log-probabilities, generations from greedy decoding."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    adapter = task.spec.model.adapter
    adapter_dir = job.adapter_dir
    llm = LLM(
        model=job.model_path,
        enable_lora=adapter_dir is not None,
        max_lora_rank=adapter.r if adapter else 16,
        max_model_len=task.spec.dataset.preprocessing.max_seq_length + task.spec.evaluation.max_new_tokens,
    )
    lora = LoRARequest("trained", 1, adapter_dir) if adapter_dir else None
    tokenizer = llm.get_tokenizer()
    encoded = [_token_ids(tokenizer, *_pieces(e), task.spec.dataset.preprocessing.max_seq_length) for e in held_out]
    scoring = SamplingParams(max_tokens=1, prompt_logprobs=0)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids, _ in encoded], scoring, lora_request=lora)
    total, count = 0.0, 0
    for (ids, n_prompt), out in zip(encoded, outputs, strict=True):
        logprobs = out.prompt_logprobs or []
        for position in range(max(n_prompt, 1), len(ids)):
            total -= logprobs[position][ids[position]].logprob
            count += 1
    greedy = SamplingParams(temperature=0.0, max_tokens=task.spec.evaluation.max_new_tokens)
    generated = llm.generate(prompts, greedy, lora_request=lora)
    return total, count, [g.outputs[0].text for g in generated]


def evaluate_in_child(task: TrainingTask, job: EvaluateJob, format_rows: Callable[[Any, Any], Any]) -> None:
    """Child side: score the base model (label 'before') or the trained one ('after') on the
    held-out rows, formatted by the type's ``format_rows`` hook."""
    from tasks.data import examples

    _, held_out = examples(task, job.dataset_path, job.dataset_source_type, format_rows)
    if held_out is None or len(held_out) == 0:
        raise BackendError("no held-out examples to evaluate on — enable evaluation or lower max_samples")
    evaluation = task.spec.evaluation
    backend = choose_backend(evaluation.backend)
    n = min(evaluation.generation_prompts, len(held_out))
    chosen = [_pieces(held_out[i]) for i in range(n)]
    prompts = [p for p, _ in chosen]
    print(f"evaluating ({job.label}) on {len(held_out)} held-out examples with {backend}", flush=True)
    if backend == "vllm":
        total, count, outputs = _vllm_run(task, job, held_out, prompts)
    else:
        from tasks.modeling import load_causal_lm, load_tokenizer

        tokenizer = load_tokenizer(job.model_path)
        model = load_causal_lm(job.model_path, task.spec.model.adapter, job.adapter_dir)
        total, count = _transformers_scores(model, tokenizer, held_out, task.spec.dataset.preprocessing.max_seq_length)
        outputs = _transformers_generate(model, tokenizer, prompts, evaluation.max_new_tokens)
    if count == 0:
        raise BackendError("the held-out examples have no target tokens — check the completion template")
    loss = total / count
    result = EvalResult(
        label=job.label,
        backend=backend,
        eval_loss=loss,
        perplexity=math.exp(min(loss, 50.0)),
        samples=len(held_out),
        tokens=count,
        generations=[
            {"prompt": p, "reference": ref, "output": out} for (p, ref), out in zip(chosen, outputs, strict=True)
        ],
    )
    Path(job.result_path).write_text(json.dumps(result.to_dict(), indent=1))
    emit("metrics", label=job.label, eval_loss=loss, perplexity=result.perplexity)
    print(f"{job.label}: eval_loss {loss:.4f}, perplexity {result.perplexity:.2f} over {count} tokens", flush=True)


def language_model_metrics(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, float]:
    """Flat metrics of a language-model evaluation; eval_loss_reduction = before - after."""
    out: dict[str, float] = {}
    if after is not None:
        out["eval_loss"] = after["eval_loss"]
        out["perplexity"] = after["perplexity"]
    if before is not None:
        out["eval_loss_before"] = before["eval_loss"]
        out["perplexity_before"] = before["perplexity"]
    if before is not None and after is not None:
        out["eval_loss_reduction"] = before["eval_loss"] - after["eval_loss"]
    return out
