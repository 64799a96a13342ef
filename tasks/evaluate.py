"""Evaluation: loss and perplexity on held-out examples, and a few generations.

Two backends give results of the same shape. transformers runs in this process. vLLM
cannot be installed beside Prefect (their fastapi pins clash), so it lives in a virtual
environment of its own (tasks/vllm_env.py names the interpreter: ``$MLOC_VLLM_PYTHON``, or
the repository's ``.venv-vllm`` that ``make vllm-env`` creates), and runs
tasks/vllm_worker.py there as a child process that speaks JSON. ``backend: auto`` takes vLLM
when that environment exists and a CUDA GPU is present, transformers otherwise (on a CPU,
transformers is the faster of the two for small models); ``backend: vllm`` runs vLLM
wherever its environment is, a CPU included. The loss is the mean negative log-likelihood
per token of what the model is trained to produce: the completion for prompt/completion
data, the whole text otherwise, tokenized alike by both backends (``_token_ids``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.jobs import EvaluateJob
from tasks.runner import emit
from tasks.vllm_env import ENV_VAR, MAKE_TARGET, vllm_python, vllm_unavailable_reason

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
    """'auto' -> vllm when its environment exists and a CUDA GPU is present, else transformers;
    an explicit 'vllm' runs wherever its environment is (a CPU included) and never falls back."""
    if requested == "transformers":
        return requested
    from tasks.modeling import cuda_available

    if requested == "vllm":
        if vllm_python() is None:
            raise BackendError(
                f"evaluation.backend is 'vllm' but this worker has no vLLM: {vllm_unavailable_reason()} — "
                f"set ${ENV_VAR} to a Python that imports vllm, run `{MAKE_TARGET}`, or set backend: auto"
            )
        return requested
    # a GPU first: on a CPU worker the answer is transformers without asking the vLLM interpreter
    return "vllm" if cuda_available() and vllm_python() is not None else "transformers"


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


class VllmJob(BaseModel):
    """One model (the base, or the base with an adapter) for tasks/vllm_worker.py to score and sample."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The key of this job's scores in the worker's result.")
    adapter_dir: str | None = Field(description="The LoRA adapter applied on the base model; None for the base.")
    rows: list[tuple[str, str]] = Field(description="The held-out (prompt, target) pairs; the loss is on the target.")
    max_seq_length: int = Field(description="Where prompt+target is cut, as in training.")
    prompts: list[str] = Field(description="The prompts to answer greedily.")
    max_new_tokens: int = Field(description="How many tokens each answer may have.")


class VllmRequest(BaseModel):
    """What tasks/vllm_worker.py reads: one engine on ``model``, serving every job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="The base model's folder.")
    max_model_len: int = Field(description="The longest sequence the engine holds: prompt plus answer.")
    dtype: str = Field(description="vLLM's dtype: auto on a GPU (bfloat16 for float32 checkpoints), float32 on a CPU.")
    gpu_memory_utilization: float = Field(description="The share of GPU memory (on a CPU: of RAM) vLLM reserves.")
    enforce_eager: bool = Field(False, description="Skip CUDA graphs, compilation and kernel warm-up.")
    single_process: bool = Field(
        False, description="Run vLLM's engine core and worker in the worker's process instead of two more."
    )
    max_lora_rank: int | None = Field(None, description="The adapters' LoRA rank.")
    jobs: list[VllmJob] = Field(description="The models to score, in order.")


@dataclass
class VllmScores:
    """One job's result: the loss is ``total_nll / tokens``."""

    total_nll: float
    tokens: int
    generations: list[str]
    generated_tokens: int = 0  # in all the generations, as the engine returned them
    generate_s: float = 0.0  # the time the generations took


@dataclass
class VllmResult:
    vllm_version: str
    engine_start_s: float  # LLM(...) alone: loading the model, profiling, compiling
    jobs: dict[str, VllmScores]


WORKER = Path(__file__).with_name("vllm_worker.py")


def vllm_request(
    task: TrainingTask, model_path: str, adapters: Mapping[str, str | None], held_out: Iterable[Any], prompts: list[str]
) -> VllmRequest:
    """A request scoring ``held_out`` and answering ``prompts`` with each of ``adapters`` (job name ->
    adapter folder, None for the base model) on one engine."""
    from tasks.modeling import cuda_available

    on_gpu = cuda_available()
    max_seq_length = task.spec.dataset.preprocessing.max_seq_length
    max_new_tokens = task.spec.evaluation.max_new_tokens
    rows = [_pieces(example) for example in held_out]
    adapter = task.spec.model.adapter
    return VllmRequest(
        model=model_path,
        max_model_len=max_seq_length + max_new_tokens,
        # vLLM downcasts float32 checkpoints to 16 bits; on a CPU that is slower, and less like transformers
        dtype="auto" if on_gpu else "float32",
        # on a CPU, vLLM reserves this share of RAM for its KV cache: a tenth is ample for evaluation
        gpu_memory_utilization=0.9 if on_gpu else 0.1,
        # on a CPU, CUDA graphs do not exist and the engine process would only add a start of
        # its own (measured on 2 cores: ~5 s to start instead of 45-65 s); on a GPU the engine
        # process schedules while the GPU computes
        enforce_eager=not on_gpu,
        single_process=not on_gpu,
        max_lora_rank=adapter.r if adapter is not None else None,
        jobs=[
            VllmJob(
                name=name,
                adapter_dir=adapter_dir,
                rows=rows,
                max_seq_length=max_seq_length,
                prompts=prompts,
                max_new_tokens=max_new_tokens,
            )
            for name, adapter_dir in adapters.items()
        ],
    )


def _echo(stream: Any, keep: deque[str] | None = None) -> None:
    for line in stream:
        print(line, end="", flush=True)
        if keep is not None:
            keep.append(line)


def run_vllm_worker(request: VllmRequest, python: str | None = None) -> VllmResult:
    """Run tasks/vllm_worker.py on ``request`` in the vLLM interpreter, its output streamed to ours."""
    python = python or vllm_python()
    if python is None:
        raise BackendError(f"no vLLM to evaluate with: {vllm_unavailable_reason()}")
    with tempfile.TemporaryDirectory(prefix="mloc-vllm-") as scratch:
        request_path, result_path = Path(scratch) / "request.json", Path(scratch) / "result.json"
        request_path.write_text(request.model_dump_json())
        # PYTHONSAFEPATH: the worker's folder (tasks/, with its data.py, storage/, ...) stays off sys.path
        env = {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONUNBUFFERED": "1"}
        child = subprocess.Popen(
            [python, str(WORKER), str(request_path), str(result_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        stderr_tail: deque[str] = deque(maxlen=30)
        reader = threading.Thread(target=_echo, args=(child.stderr, stderr_tail), daemon=True)
        reader.start()
        _echo(child.stdout)
        code = child.wait()
        reader.join()
        if code != 0:
            raise BackendError(
                f"the vLLM worker ({python}) exited with status {code}; the end of its stderr:\n"
                + "".join(stderr_tail).rstrip()
            )
        result = json.loads(result_path.read_text())
    jobs = {name: VllmScores(**scores) for name, scores in result["jobs"].items()}
    return VllmResult(result["vllm_version"], result["engine_start_s"], jobs)


def _vllm_run(task: TrainingTask, job: EvaluateJob, held_out: Any, prompts: list[str]) -> tuple[float, int, list[str]]:
    """Loss from vLLM's prompt log-probabilities, generations from greedy decoding, in the vLLM interpreter."""
    request = vllm_request(task, job.model_path, {job.label: job.adapter_dir}, held_out, prompts)
    scores = run_vllm_worker(request).jobs[job.label]
    return scores.total_nll, scores.tokens, scores.generations


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
