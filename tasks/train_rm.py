"""rm: reward-model training with TRL's RewardTrainer.

The dataset holds preference pairs (`chosen` / `rejected`, optionally a shared
`prompt`); the model, the base loaded as a sequence classifier with one label, learns a
scalar score. `spec.hyperparameters` are fields of `trl.RewardConfig`. Evaluation scores
the held-out pairs: the share whose chosen answer scores higher, and the mean margin.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from configs import TaskTypeInfo, TrainingTask
from tasks.data import prompt_columns, render_prompt
from tasks.jobs import EvaluateJob, TrainJob
from tasks.train import run_trainer
from tasks.trainer_fields import fields_file

TASK_TYPE = TaskTypeInfo(
    name="rm",
    kind="TrainingTask",
    summary="Reward-model training with TRL's RewardTrainer on chosen/rejected pairs.",
    fields_file=fields_file("rm"),
    requires_one_of=(),
    example="rm_qwen_helpfulness.yaml",
    metrics=(
        ("pairwise_accuracy", "higher"),
        ("pairwise_accuracy_gain", "higher"),
        ("reward_margin", "higher"),
    ),
)

_MEASURED = ("pairwise_accuracy", "reward_margin")


def trainer_config_class() -> type:
    """The config class `spec.hyperparameters` maps onto."""
    from trl import RewardConfig

    return RewardConfig


def required_columns(task: TrainingTask) -> list[str]:
    """RewardTrainer's preference format; a `prompt` column is optional (prefixed to both answers),
    and a prompt_template's columns are needed when it renders one."""
    template = task.spec.dataset.preprocessing.prompt_template
    return [*(prompt_columns(task) if template else []), "chosen", "rejected"]


format_rows = render_prompt  # prompt_template renders the prompt; chosen and rejected stay as they are


def metrics(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, float]:
    """The after values under their names, the before ones as ``*_before``; the accuracy's gain = after - before."""
    values = {name: float(after[name]) for name in _MEASURED} if after else {}
    values.update({f"{name}_before": float(before[name]) for name in _MEASURED} if before else {})
    if before and after:
        values["pairwise_accuracy_gain"] = float(after["pairwise_accuracy"]) - float(before["pairwise_accuracy"])
    return values


def train(task: TrainingTask, job: TrainJob) -> None:
    """Child side: train the base, as a one-label sequence classifier, with TRL's RewardTrainer.

    With an adapter, PEFT's SEQ_CLS task type trains (and saves) the score head whole beside
    the LoRA weights. The pad token id goes into the model's config, so that the merged
    model of `full_model` finds each sequence's last token without this tokenizer.
    """
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import RewardConfig, RewardTrainer

    # TRL would have the pad token set on the tokenizer instead; a task.yaml can only name it here,
    # and MLOC does set it on the tokenizer (reward_tokenizer), for evaluation and the merged model
    warnings.filterwarnings("ignore", message="`pad_token` is deprecated", category=FutureWarning)
    tokenizer = reward_tokenizer(task, job.model_path)
    set_seed(_seed(task))  # the fresh score head is the one "before" was scored with
    run_trainer(
        task,
        job,
        RewardTrainer,
        RewardConfig,
        rows="preference pairs",
        format_rows=format_rows,
        model_class=AutoModelForSequenceClassification,
        model_kwargs={"num_labels": 1, "pad_token_id": tokenizer.pad_token_id},
        peft_task_type="SEQ_CLS",
    )


def evaluate(task: TrainingTask, job: EvaluateJob) -> None:
    """Child side: pairwise accuracy and mean reward margin on the held-out pairs.

    Before training the model is the base with a fresh score head, seeded as training seeds
    it, so "before" is the very model training starts from; after, the trained adapter on the
    base, or the fully trained weights.
    """
    from tasks.data import examples
    from tasks.runner import emit

    _, held_out = examples(task, job.dataset_path, job.dataset_source_type, format_rows)
    if held_out is None or len(held_out) == 0:
        raise ValueError(
            "no held-out pairs to evaluate on — raise spec.evaluation.held_out_fraction or name a non-empty split"
        )
    max_length = task.spec.dataset.preprocessing.max_seq_length
    tokenizer = reward_tokenizer(task, job.model_path)
    pairs = [pair_ids(tokenizer, row) for row in held_out]
    kept = [(c, r) for c, r in pairs if len(c) <= max_length and len(r) <= max_length]
    if not kept:
        raise ValueError(
            f"every held-out pair is longer than max_seq_length ({max_length} tokens), and RewardTrainer skips such "
            "pairs — raise spec.dataset.preprocessing.max_seq_length"
        )
    model = _reward_model(task, job, tokenizer.pad_token_id)
    print(f"evaluating ({job.label}) on {len(kept)} held-out preference pairs", flush=True)
    batch_size = int(task.spec.hyperparameters.get("per_device_eval_batch_size", 8))
    rewards = score_pairs(model, kept, tokenizer.pad_token_id, batch_size)
    margins = [chosen - rejected for chosen, rejected in rewards]
    result = {
        "label": job.label,
        "samples": len(kept),
        "skipped_too_long": len(pairs) - len(kept),
        "pairwise_accuracy": sum(m > 0 for m in margins) / len(margins),
        "reward_margin": sum(margins) / len(margins),
        "mean_reward_chosen": sum(c for c, _ in rewards) / len(rewards),
        "mean_reward_rejected": sum(r for _, r in rewards) / len(rewards),
    }
    Path(job.result_path).write_text(json.dumps(result, indent=1))
    emit("metrics", **{k: v for k, v in result.items() if k in _MEASURED}, label=job.label)
    skipped = (
        f", {result['skipped_too_long']} longer than {max_length} tokens skipped" if len(kept) < len(pairs) else ""
    )
    print(
        f"{job.label}: pairwise_accuracy {result['pairwise_accuracy']:.3f}, reward_margin "
        f"{result['reward_margin']:.4f} over {len(kept)} pairs{skipped}",
        flush=True,
    )


def reward_tokenizer(task: TrainingTask, path: str) -> Any:
    """The tokenizer with the pad and eos tokens RewardTrainer uses: hyperparameters.pad_token /
    eos_token when given, else its own (eos standing in for a missing pad token)."""
    from tasks.modeling import load_tokenizer

    tokenizer = load_tokenizer(path)
    for name in ("pad_token", "eos_token"):
        if task.spec.hyperparameters.get(name):
            setattr(tokenizer, name, task.spec.hyperparameters[name])
    return tokenizer


def pair_ids(tokenizer: Any, row: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Token ids of (prompt +) chosen and (prompt +) rejected, as RewardTrainer tokenizes them: plain
    text gets eos appended to each answer and the prompt prefixed; messages go through the chat template."""
    prompt = row.get("prompt")
    out = []
    for answer in (row["chosen"], row["rejected"]):
        if isinstance(answer, str):
            eos = tokenizer.eos_token
            text = (prompt or "") + (answer if answer.endswith(eos) else answer + eos)
            out.append(list(tokenizer(text=text)["input_ids"]))
        else:
            chat = tokenizer.apply_chat_template((prompt or []) + answer, tokenize=True, return_dict=True)
            out.append(list(chat["input_ids"]))
    return out[0], out[1]


def score_pairs(
    model: Any, pairs: list[tuple[list[int], list[int]]], pad_token_id: int, batch_size: int = 8
) -> list[tuple[float, float]]:
    """(r_chosen, r_rejected) of each pair, batched and right-padded as RewardTrainer's collator does."""
    import torch
    from trl.trainer.reward_trainer import DataCollatorForPreference

    collate = DataCollatorForPreference(pad_token_id=pad_token_id)
    device = next(model.parameters()).device
    scores: list[tuple[float, float]] = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = collate([{"chosen_ids": c, "rejected_ids": r} for c, r in pairs[start : start + batch_size]])
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            chosen, rejected = logits.squeeze(-1).float().chunk(2)
            scores.extend(zip(chosen.tolist(), rejected.tolist(), strict=True))
    return scores


def _seed(task: TrainingTask) -> int:
    from trl import RewardConfig

    return int(task.spec.hyperparameters.get("seed", RewardConfig.seed))  # the dataclass field's default


def _reward_model(task: TrainingTask, job: EvaluateJob, pad_token_id: int) -> Any:
    """The model to score with: job.model_path as a one-label sequence classifier (quantised for
    QLoRA), its score head seeded as training's, with the trained adapter applied when there is one."""
    from transformers import AutoModelForSequenceClassification, set_seed

    from tasks.modeling import load_model

    set_seed(_seed(task))
    return load_model(
        AutoModelForSequenceClassification,
        job.model_path,
        task.spec.model.adapter,
        job.adapter_dir,
        num_labels=1,
        pad_token_id=pad_token_id,
    )
