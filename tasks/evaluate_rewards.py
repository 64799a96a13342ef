"""Evaluation of the online-RL types (grpo, ppo): the mean reward of greedy completions.

The base model (before) and the trained one (after) each complete the held-out prompts
greedily, and the completions are scored by the task's rewards (tasks/rewards.py) as training
scores them. They are as long as training's completions may be, max_completion_length, not
evaluation.max_new_tokens: a reward judges a completion of the length it was trained on (a
reasoning model cut off after 64 tokens never reaches its answer, and short_answer_reward
reads the limit).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs.tasktypes import Direction

if TYPE_CHECKING:
    from configs import TrainingTask
    from tasks.jobs import EvaluateJob

#: what gates may check; each reward's own mean is in the result beside them
METRICS: tuple[tuple[str, Direction], ...] = (("mean_reward", "higher"), ("mean_reward_gain", "higher"))
_BATCH = 16  # prompts generated for at once


def evaluate(task: TrainingTask, job: EvaluateJob, config_class: type) -> None:
    """Child side: the mean reward of the model's greedy completions of the held-out prompts, in total
    (weighted as in training) and per reward; writes the result, emits it and prints a summary.
    ``config_class`` is the type's trainer config, whose defaults fill what the task leaves out."""
    from trl.data_utils import is_conversational

    from tasks.data import examples, render_prompt
    from tasks.modeling import load_causal_lm, load_tokenizer
    from tasks.rewards import as_messages, as_texts, max_completion_length, reward_weights, score, task_rewards
    from tasks.runner import emit

    _, held_out = examples(task, job.dataset_path, job.dataset_source_type, render_prompt)
    if held_out is None or len(held_out) == 0:
        raise ValueError("no held-out prompts to evaluate on — enable evaluation or lower max_samples")
    limit = max_completion_length(task, config_class)
    chat_kwargs = task.spec.hyperparameters.get("chat_template_kwargs") or {}
    rewards = task_rewards(task, job.reward_model_path, config_class)
    tokenizer = load_tokenizer(job.model_path)
    model = load_causal_lm(job.model_path, task.spec.model.adapter, job.adapter_dir)
    prompts = list(held_out["prompt"])
    # the other columns reach the reward functions, as TRL hands them over
    columns = {
        c: list(held_out[c]) for c in held_out.column_names if c not in ("prompt", "completion", "completion_ids")
    }
    print(
        f"evaluating ({job.label}) on {len(prompts)} held-out prompts, greedy, at most {limit} new tokens", flush=True
    )
    completion_ids = _greedy(model, tokenizer, prompts, limit, chat_kwargs)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    completions: list[Any] = as_messages(texts) if is_conversational({"prompt": prompts[0]}) else texts
    scores = score(rewards, prompts, completions, completion_ids, columns, chat_kwargs)
    weights = reward_weights(task, rewards)
    totals = [_total(row, weights) for row in zip(*scores.values(), strict=True)]
    scored = [t for t in totals if t is not None]
    if not scored:
        raise ValueError(
            f"no held-out completion could be scored: every reward ({', '.join(scores)}) skipped every one — "
            "accuracy_reward skips rows whose solution math-verify cannot parse; check the `solution` column"
        )
    result: dict[str, Any] = {
        "label": job.label,
        "samples": len(prompts),
        "max_new_tokens": limit,
        "mean_reward": sum(scored) / len(scored),
        **{name: _mean(values) for name, values in scores.items()},
        "rewards": list(scores),
        "reward_weights": weights,
        "generations": [
            {
                "prompt": as_texts([prompts[i]])[0],
                "reference": str(columns["solution"][i]) if "solution" in columns else "",
                "output": texts[i],
                "reward": totals[i],
                **{name: values[i] for name, values in scores.items()},
            }
            for i in range(min(task.spec.evaluation.generation_prompts, len(prompts)))
        ],
    }
    Path(job.result_path).write_text(json.dumps(result, indent=1))
    measured = {n: result[n] for n in ("mean_reward", *scores) if result[n] is not None}
    emit("metrics", **measured, label=job.label)
    each = ", ".join(f"{n} {result[n]:.4f}" for n in scores if result[n] is not None)
    print(
        f"{job.label}: mean_reward {result['mean_reward']:.4f} ({each}) over {len(prompts)} held-out prompts",
        flush=True,
    )


def metrics(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, float]:
    """mean_reward after, mean_reward_before, and mean_reward_gain = after - before."""
    out: dict[str, float] = {}
    if after is not None:
        out["mean_reward"] = after["mean_reward"]
    if before is not None:
        out["mean_reward_before"] = before["mean_reward"]
    if before is not None and after is not None:
        out["mean_reward_gain"] = after["mean_reward"] - before["mean_reward"]
    return out


def _greedy(
    model: Any, tokenizer: Any, prompts: list[Any], max_new_tokens: int, chat_kwargs: dict[str, Any]
) -> list[list[int]]:
    """Greedy completions' token ids, each up to and with its first end-of-sequence token; prompts
    tokenized as TRL's trainers tokenize them (a plain one with the tokenizer's special tokens,
    a conversational one through the chat template with the generation prompt)."""
    import torch
    from transformers import GenerationConfig
    from trl.data_utils import is_conversational

    eos = _eos_token_ids(model, tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
    )
    device = next(model.parameters()).device
    out: list[list[int]] = []
    for start in range(0, len(prompts), _BATCH):
        batch = prompts[start : start + _BATCH]
        if is_conversational({"prompt": batch[0]}):
            encoded = tokenizer.apply_chat_template(
                conversation=batch, add_generation_prompt=True, tokenize=True, return_dict=True, **chat_kwargs
            )
        else:
            encoded = tokenizer(text=batch)
        ids: list[list[int]] = [list(i) for i in encoded["input_ids"]]
        width = max(len(i) for i in ids)
        # left-padded: every completion starts at the same position
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(i)) + i for i in ids], device=device)
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
        with torch.no_grad():
            generated = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        for row in generated[:, width:].tolist():
            end = next((k for k, token in enumerate(row) if token in eos), None)
            out.append(row if end is None else row[: end + 1])
    return out


def _eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a completion, as TRL's trainers count them: the model's and the tokenizer's."""
    declared = model.generation_config.eos_token_id
    ids = [] if declared is None else [declared] if isinstance(declared, int) else list(declared)
    own = tokenizer.eos_token_id
    return ids if own is None or own in ids else [own, *ids]


def _total(row: tuple[float | None, ...], weights: list[float]) -> float | None:
    """A completion's reward: the weighted sum of the rewards that scored it (None where none did)."""
    given = [(w, r) for w, r in zip(weights, row, strict=True) if r is not None]
    return sum(w * r for w, r in given) if given else None


def _mean(values: list[float | None]) -> float | None:
    given = [v for v in values if v is not None]
    return sum(given) / len(given) if given else None
