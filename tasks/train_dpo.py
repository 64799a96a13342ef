"""dpo: direct preference optimisation with TRL's DPOTrainer.

The dataset holds `prompt`, `chosen` and `rejected` columns (rows pass to TRL as they are).
`spec.hyperparameters` are fields of `trl.DPOConfig`. Evaluation scores the held-out pairs
with the implied rewards beta * (log p_policy - log p_reference) of DPO.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from configs import TaskTypeInfo, TrainingTask
from tasks.data import prompt_columns, render_prompt
from tasks.jobs import EvaluateJob, TrainJob
from tasks.train import run_trainer
from tasks.trainer_fields import fields_file

TASK_TYPE = TaskTypeInfo(
    name="dpo",
    kind="TrainingTask",
    summary="Direct preference optimisation with TRL's DPOTrainer on prompt/chosen/rejected rows.",
    fields_file=fields_file("dpo"),
    requires_one_of=(),
    example="dpo_mistral_ultrafeedback.yaml",
    metrics=(
        ("eval_loss", "lower"),
        ("eval_loss_reduction", "higher"),
        ("reward_accuracy", "higher"),
        ("reward_margin", "higher"),
    ),
)


def trainer_config_class() -> type:
    """The config class `spec.hyperparameters` maps onto."""
    from trl import DPOConfig

    return DPOConfig


def required_columns(task: TrainingTask) -> list[str]:
    """DPOTrainer's preference format: a prompt (or the template's columns) and the chosen and rejected completions."""
    return [*prompt_columns(task), "chosen", "rejected"]


format_rows = render_prompt  # prompt_template renders the prompt; chosen and rejected stay as they are


def metrics(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, float]:
    """The after values under their names, the before ones as ``*_before``; eval_loss_reduction = before - after."""
    out: dict[str, float] = {}
    if after is not None:
        out.update({name: after[name] for name in _MEASURED})
    if before is not None:
        out.update({f"{name}_before": before[name] for name in _MEASURED})
    if before is not None and after is not None:
        out["eval_loss_reduction"] = before["eval_loss"] - after["eval_loss"]
    return out


def train(task: TrainingTask, job: TrainJob) -> None:
    """Child side: DPO with TRL's DPOTrainer; with an adapter, the base model (adapter off) is the reference."""
    from trl import DPOConfig, DPOTrainer

    # ref_model None: with an adapter the base (adapter disabled) is the reference, else TRL copies the model
    run_trainer(task, job, DPOTrainer, DPOConfig, rows="preference pairs", format_rows=format_rows, ref_model=None)


def evaluate(task: TrainingTask, job: EvaluateJob) -> None:
    """Child side: DPO loss, reward accuracy and margin on the held-out pairs.

    The implied reward of a completion is beta * (log p_policy - log p_reference), its log-probability
    summed over its tokens given the prompt. The reference is the base model; before training the
    policy is the reference, so every reward is 0 and the loss is ln 2.
    """
    from tasks.data import examples
    from tasks.modeling import load_causal_lm, load_tokenizer
    from tasks.runner import emit

    _, held_out = examples(task, job.dataset_path, job.dataset_source_type, format_rows)
    if held_out is None or len(held_out) == 0:
        raise ValueError("no held-out pairs to evaluate on — enable evaluation or lower max_samples")
    beta = float(task.spec.hyperparameters.get("beta", _default_beta()))
    max_length = task.spec.dataset.preprocessing.max_seq_length
    tokenizer = load_tokenizer(job.model_path)
    model = load_causal_lm(job.model_path, task.spec.model.adapter, job.adapter_dir)
    print(f"evaluating ({job.label}) on {len(held_out)} held-out preference pairs", flush=True)
    pairs = [_pair_ids(tokenizer, row, max_length) for row in held_out]
    policy = [(_logp(model, *chosen), _logp(model, *rejected)) for chosen, rejected in pairs]
    if job.adapter_dir is None and job.base_model_path not in (None, job.model_path):
        # a full fine-tune, after training: the reference is the base model, loaded beside it
        base = load_causal_lm(job.base_model_path or job.model_path)
        reference = [(_logp(base, *chosen), _logp(base, *rejected)) for chosen, rejected in pairs]
    elif job.adapter_dir is None:
        reference = policy  # the base model is both
    else:
        with model.disable_adapter():  # the base model, loaded once
            reference = [(_logp(model, *chosen), _logp(model, *rejected)) for chosen, rejected in pairs]
    # r_chosen - r_rejected
    margins = [beta * ((pc - rc) - (pr - rr)) for (pc, pr), (rc, rr) in zip(policy, reference, strict=True)]
    losses = [math.log1p(math.exp(-m)) if m > -30 else -m for m in margins]  # -log sigmoid(m)
    result = {
        "label": job.label,
        "samples": len(held_out),
        "beta": beta,
        "eval_loss": sum(losses) / len(losses),
        "reward_accuracy": sum(m > 0 for m in margins) / len(margins),
        "reward_margin": sum(margins) / len(margins),
    }
    Path(job.result_path).write_text(json.dumps(result, indent=1))
    emit("metrics", **{k: v for k, v in result.items() if k in _MEASURED}, label=job.label)
    print(
        f"{job.label}: eval_loss {result['eval_loss']:.4f}, reward_accuracy {result['reward_accuracy']:.3f}, "
        f"reward_margin {result['reward_margin']:.4f} over {len(held_out)} pairs (beta {beta:g})",
        flush=True,
    )


_MEASURED = ("eval_loss", "reward_accuracy", "reward_margin")


def _default_beta() -> float:
    from trl import DPOConfig

    return float(DPOConfig.beta)  # the dataclass field's default


def _pair_ids(tokenizer: Any, row: dict[str, str], max_length: int) -> tuple[tuple[list[int], int], ...]:
    """(ids, completion start) of prompt+chosen and prompt+rejected, each ending in eos, as DPOTrainer
    tokenizes them: the completion starts where the prompt's tokens and the whole's diverge."""
    prompt_ids = tokenizer(row["prompt"])["input_ids"]
    eos = tokenizer.eos_token or ""
    out = []
    for completion in (row["chosen"], row["rejected"]):
        text = completion if completion.endswith(eos) else completion + eos
        ids = tokenizer(row["prompt"] + text)["input_ids"]
        start = next((i for i, (a, b) in enumerate(zip(prompt_ids, ids, strict=False)) if a != b), len(prompt_ids))
        out.append((ids[:max_length], min(start, len(ids))))
    return tuple(out)


def _logp(model: Any, ids: list[int], start: int) -> float:
    """Summed log-probability of ids[start:] given what precedes them."""
    import torch

    start = max(start, 1)  # the first token has nothing before it
    if start >= len(ids):
        return 0.0
    device = next(model.parameters()).device
    with torch.no_grad():
        input_ids = torch.tensor([ids], device=device)
        logprobs = torch.log_softmax(model(input_ids=input_ids).logits[0, :-1].float(), dim=-1)
        targets = input_ids[0, 1:]
        token_logps = logprobs.gather(1, targets[:, None])[:, 0]
    return float(token_logps[start - 1 :].sum())
