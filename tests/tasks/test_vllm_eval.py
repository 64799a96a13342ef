"""The vLLM evaluation backend (tasks/vllm_worker.py in the vLLM interpreter) agrees with the
transformers one on the quickstart model and data, for the base model and with a LoRA adapter.

One vLLM engine serves the whole module: starting one takes a minute on a small CPU, so a single
worker request carries both jobs, base and adapter, as the worker allows. Skipped, with the reason
tasks/vllm_env.py gives, where there is no vLLM interpreter (``make vllm-env`` makes one).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from configs import TrainingTask
from tasks.data import examples, render
from tasks.evaluate import (
    BackendError,
    VllmScores,
    _pieces,
    _transformers_generate,
    _transformers_scores,
    choose_backend,
    run_vllm_worker,
    vllm_request,
)
from tasks.vllm_env import ENV_VAR, vllm_unavailable_reason
from tests.quickstart_task import quickstart_task

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODEL = str(CONFIGS / "quickstart" / "tiny-model")
DATA = str(CONFIGS / "quickstart" / "qa.jsonl")
JOBS = ("base", "adapter")


@pytest.fixture(scope="module")
def task() -> TrainingTask:
    # more prompts than the quickstart's 3: the random base model answers "." to each, the adapter varies
    return quickstart_task({"spec.evaluation.generation_prompts": 8})


@pytest.fixture(scope="module")
def held_out(task: TrainingTask) -> Any:
    _, rows = examples(task, DATA, "local", render)
    assert rows is not None
    return rows


@pytest.fixture(scope="module")
def prompts(task: TrainingTask, held_out: Any) -> list[str]:
    """The prompts tasks.evaluate.evaluate_in_child answers: the first held-out ones."""
    return [_pieces(held_out[i])[0] for i in range(task.spec.evaluation.generation_prompts)]


@pytest.fixture(scope="module")
def adapter_dir(task: TrainingTask, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The task's LoRA adapter on the tiny model, with B weights drawn at random (peft starts them
    at zero, a no-op) large enough that the adapter changes both the loss and the greedy answers."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tasks.modeling import lora_config

    assert task.spec.model.adapter is not None
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(MODEL), lora_config(task.spec.model.adapter))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def vllm_scores(task: TrainingTask, held_out: Any, prompts: list[str], adapter_dir: str) -> dict[str, VllmScores]:
    reason = vllm_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    request = vllm_request(task, MODEL, {"base": None, "adapter": adapter_dir}, held_out, prompts)
    start = time.perf_counter()
    result = run_vllm_worker(request)
    print(f"vLLM worker: {time.perf_counter() - start:.1f} s, engine start {result.engine_start_s:.1f} s")
    return result.jobs


@pytest.fixture(scope="module")
def transformers_scores(
    task: TrainingTask, held_out: Any, prompts: list[str], adapter_dir: str
) -> dict[str, VllmScores]:
    from tasks.modeling import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    max_length = task.spec.dataset.preprocessing.max_seq_length
    out = {}
    for name, adapter in zip(JOBS, (None, adapter_dir), strict=True):
        model = load_causal_lm(MODEL, task.spec.model.adapter, adapter)
        total, count = _transformers_scores(model, tokenizer, held_out, max_length)
        generations = _transformers_generate(model, tokenizer, prompts, task.spec.evaluation.max_new_tokens)
        out[name] = VllmScores(total, count, generations)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("job", JOBS)
def test_vllm_and_transformers_agree(
    job: str, vllm_scores: dict[str, VllmScores], transformers_scores: dict[str, VllmScores]
) -> None:
    # seen on a 2-core CPU, both in float32, 46 held-out rows: the losses print alike to 6 decimals
    # (base 7.598047, adapter 6.808048 nats/token; ~1e-8 relative) and all 8 greedy answers are identical
    ours, theirs = vllm_scores[job], transformers_scores[job]
    print(
        f"{job}: vllm {ours.total_nll / max(ours.tokens, 1):.6f}, transformers {theirs.total_nll / max(theirs.tokens, 1):.6f}"
    )
    assert ours.tokens == theirs.tokens > 0
    vllm_loss, transformers_loss = ours.total_nll / ours.tokens, theirs.total_nll / theirs.tokens
    assert vllm_loss == pytest.approx(transformers_loss, rel=0.01)
    assert ours.generations == theirs.generations


@pytest.mark.slow
def test_the_adapter_changes_what_vllm_scores_and_answers(vllm_scores: dict[str, VllmScores]) -> None:
    base, adapter = vllm_scores["base"], vllm_scores["adapter"]
    assert abs(adapter.total_nll - base.total_nll) / base.total_nll > 0.01
    assert adapter.generations != base.generations


@pytest.mark.slow
def test_explicit_vllm_runs_on_a_cpu_and_auto_keeps_transformers_there(vllm_scores: dict[str, VllmScores]) -> None:
    from tasks.modeling import cuda_available

    assert choose_backend("vllm") == "vllm"
    assert choose_backend("auto") == ("vllm" if cuda_available() else "transformers")


def test_vllm_without_its_interpreter_is_refused_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "no-python"))
    with pytest.raises(BackendError, match=rf"no vLLM: .*no-python.*\${ENV_VAR}.*make vllm-env"):
        choose_backend("vllm")
    assert choose_backend("auto") == "transformers"


@pytest.mark.slow
def test_a_failing_worker_raises_with_the_end_of_its_stderr(
    task: TrainingTask, tmp_path: Path, vllm_scores: dict[str, VllmScores]
) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    request = vllm_request(task, str(tmp_path), {"base": None}, [], [])
    with pytest.raises(BackendError, match=r"(?s)exited with status 1; the end of its stderr:.*no-such-architecture"):
        run_vllm_worker(request)
