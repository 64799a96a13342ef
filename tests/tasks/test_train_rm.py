"""rm: the held-out evaluation tokenizes and scores pairs as TRL's RewardTrainer trains on them.

A pipeline run checks the figures; these check what it cannot see: that a pair's token ids are
the trainer's own (with a prompt, without, as messages), that padding a batch leaves the scores
as they are, and that "before" is the same model every run. The tiny model, a few pairs, no training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from configs import TrainingTask, validate_text
from tasks import train_rm
from tasks.registry import TASK_TYPES

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart"
TINY_MODEL = QUICKSTART / "tiny-model"

PAIRS = [
    {"prompt": "Question: What is 2 plus 2?\nAnswer:", "chosen": " 4", "rejected": " 5"},
    # an answer that already ends in eos gets no second one
    {"prompt": "Question: Which city is the capital of France?\nAnswer:", "chosen": " Paris</s>", "rejected": " Rome"},
    {"prompt": "Question: What is the opposite of hot?\nAnswer:", "chosen": " cold", "rejected": " very small"},
]
WITHOUT_PROMPT = [{"chosen": p["prompt"] + p["chosen"], "rejected": p["prompt"] + p["rejected"]} for p in PAIRS]
MESSAGES = [
    {
        "prompt": [{"role": "user", "content": "What is 2 plus 2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    }
]
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def rm_task(**hyperparameters: Any) -> TrainingTask:
    """The rm quickstart with hyperparameters replaced (None removes one), validated like a file."""
    data = yaml.safe_load((QUICKSTART / "rm.yaml").read_text())
    for key, value in hyperparameters.items():
        data["spec"]["hyperparameters"].pop(key, None)
        if value is not None:
            data["spec"]["hyperparameters"][key] = value
    result = validate_text(yaml.safe_dump(data), "rm.yaml", TASK_TYPES)
    assert isinstance(result.task, TrainingTask), [i.format() for i in result.issues]
    return result.task


def trainer_ids(rows: list[dict[str, Any]], tokenizer: Any, tmp_path: Path) -> list[tuple[list[int], list[int]]]:
    """The (chosen_ids, rejected_ids) RewardTrainer itself prepares from ``rows``."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    model = AutoModelForSequenceClassification.from_pretrained(TINY_MODEL, num_labels=1)
    args = RewardConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, disable_tqdm=True)
    trainer: Any = RewardTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    return [(row["chosen_ids"], row["rejected_ids"]) for row in trainer.train_dataset]


@pytest.mark.slow
@pytest.mark.parametrize("rows", [PAIRS, WITHOUT_PROMPT, MESSAGES], ids=["prompt", "no-prompt", "messages"])
def test_a_pair_is_tokenized_as_the_trainer_tokenizes_it(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    tokenizer = train_rm.reward_tokenizer(rm_task(), str(TINY_MODEL))
    tokenizer.chat_template = CHAT_TEMPLATE
    ours = [train_rm.pair_ids(tokenizer, row) for row in rows]
    assert ours == trainer_ids(rows, tokenizer, tmp_path)
    if rows is PAIRS:  # eos closes every plain-text answer, once
        assert all(ids[-1] == tokenizer.eos_token_id != ids[-2] for pair in ours for ids in pair)


@pytest.mark.slow
def test_with_and_without_a_prompt_column_a_pair_is_the_same_text() -> None:
    tokenizer = train_rm.reward_tokenizer(rm_task(), str(TINY_MODEL))
    assert [train_rm.pair_ids(tokenizer, r) for r in PAIRS] == [train_rm.pair_ids(tokenizer, r) for r in WITHOUT_PROMPT]


@pytest.mark.slow
def test_the_pad_token_of_the_hyperparameters_is_the_one_scored_with() -> None:
    assert train_rm.reward_tokenizer(rm_task(), str(TINY_MODEL)).pad_token == "</s>"  # the quickstart's
    assert train_rm.reward_tokenizer(rm_task(pad_token=None), str(TINY_MODEL)).pad_token == "<pad>"  # the model's


@pytest.mark.slow
def test_scores_do_not_depend_on_the_batch_a_pair_is_padded_in() -> None:
    from transformers import AutoModelForSequenceClassification, set_seed

    tokenizer = train_rm.reward_tokenizer(rm_task(pad_token=None), str(TINY_MODEL))
    set_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        TINY_MODEL, num_labels=1, pad_token_id=tokenizer.pad_token_id
    ).eval()
    pairs = [train_rm.pair_ids(tokenizer, row) for row in PAIRS]
    batched = train_rm.score_pairs(model, pairs, tokenizer.pad_token_id, batch_size=len(pairs))
    alone = [train_rm.score_pairs(model, [pair], tokenizer.pad_token_id)[0] for pair in pairs]
    flat = [r for pair in batched for r in pair]
    assert flat == pytest.approx([r for pair in alone for r in pair], abs=1e-5)
    assert len({round(r, 6) for r in flat}) == len(flat)  # each pair's chosen and rejected, kept apart


@pytest.mark.slow
def test_before_training_the_fresh_score_head_is_the_same_every_run(tmp_path: Path) -> None:
    from tasks.jobs import EvaluateJob

    data = yaml.safe_load((QUICKSTART / "rm.yaml").read_text())
    data["spec"]["evaluation"]["max_samples"] = 16
    task = validate_text(yaml.safe_dump(data), "rm.yaml", TASK_TYPES).task
    assert isinstance(task, TrainingTask)
    results = []
    for run in ("one", "two"):
        job = EvaluateJob(
            label="before",
            task=task.model_dump(mode="json", by_alias=True),
            model_path=str(TINY_MODEL),
            dataset_path=str(QUICKSTART / "preferences.jsonl"),
            dataset_source_type="local",
            result_path=str(tmp_path / f"{run}.json"),
        )
        train_rm.evaluate(task, job)
        results.append(json.loads(Path(job.result_path).read_text()))
    assert results[0] == results[1]
    assert results[0]["samples"] == 16 and results[0]["reward_margin"] != 0.0


def test_metrics_are_flat_and_every_gateable_one_is_declared() -> None:
    before = {"pairwise_accuracy": 0.5, "reward_margin": 0.0, "samples": 92}
    after = {"pairwise_accuracy": 0.75, "reward_margin": 1.5, "samples": 92}
    values = train_rm.metrics(before, after)
    assert values == {
        "pairwise_accuracy": 0.75,
        "reward_margin": 1.5,
        "pairwise_accuracy_before": 0.5,
        "reward_margin_before": 0.0,
        "pairwise_accuracy_gain": 0.25,
    }
    declared = {name for name, _ in train_rm.TASK_TYPE.metrics}
    assert declared == {name for name in values if not name.endswith("_before")}
    assert train_rm.metrics(None, after) == {"pairwise_accuracy": 0.75, "reward_margin": 1.5}
