"""The rewards of the online-RL types: TRL's functions behind the adapter, MLOC's own, and the
reward model scored as TRL scores it."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from configs import TrainingTask, validate_file, validate_text
from tasks.evaluate_rewards import metrics
from tasks.registry import TASK_TYPES
from tasks.rewards import (
    Reward,
    RewardFunction,
    exact_match_reward,
    function_names,
    required_columns,
    score,
    short_answer_reward,
    task_rewards,
)

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart"


def grpo_task(**spec: Any) -> TrainingTask:
    """The grpo quickstart with some of its spec replaced."""
    import yaml

    data = yaml.safe_load((QUICKSTART / "grpo.yaml").read_text())
    data["spec"].update(spec)
    result = validate_text(yaml.safe_dump(data), "grpo.yaml", TASK_TYPES)
    assert isinstance(result.task, TrainingTask), [i.format() for i in result.issues]
    return result.task


def call_as_trl(function: RewardFunction, completions: list[Any], **columns: Any) -> list[float | None]:
    """A reward function called the way TRL's trainers call one: keyword arguments only,
    with the completions' token ids and the trainer's own extras."""
    return function(
        prompts=["Question: What is 8 times 3?\nAnswer:"] * len(completions),
        completions=completions,
        completion_ids=[[5, 6, 2]] * len(completions),
        trainer_state=None,
        log_extra=lambda column, values: None,
        log_metric=lambda name, value: None,
        **columns,
    )


def test_trl_accuracy_reward_scores_a_plain_string_completion() -> None:
    accuracy = RewardFunction("accuracy_reward", max_completion_length=8)
    got = call_as_trl(accuracy, [r"\boxed{24}", r"\boxed{23}", "The answer is $24$."], solution=["24"] * 3)
    assert got == [1.0, 0.0, 1.0]


def test_trl_accuracy_reward_does_not_credit_a_bare_number() -> None:
    """math-verify reads LaTeX behind an anchor only: why exact_match_reward exists."""
    accuracy = RewardFunction("accuracy_reward", max_completion_length=8)
    assert call_as_trl(accuracy, [" 24", "24."], solution=["24", "24"]) == [0.0, 0.0]
    exact = RewardFunction("exact_match_reward", max_completion_length=8)
    assert call_as_trl(exact, [" 24", "24."], solution=["24", "24"]) == [1.0, 1.0]


def test_conversational_completions_reach_trl_functions_as_they_are() -> None:
    think = RewardFunction("think_format_reward", max_completion_length=8)
    text = "<think>\n8 times 3.\n</think>\n24"
    assert call_as_trl(think, [text, [{"role": "assistant", "content": text}], "24"]) == [1.0, 1.0, 0.0]


def test_trl_reasoning_accuracy_reward_reads_the_answer_after_the_reasoning() -> None:
    reasoning = RewardFunction("reasoning_accuracy_reward", max_completion_length=8)
    completions = [r"<think>8 times 3</think> \boxed{24}", r"<think>\boxed{24}", r"<think>x</think> \boxed{25}"]
    assert call_as_trl(reasoning, completions, solution=["24"] * 3) == [1.0, 0.0, 0.0]


def test_mloc_functions_read_the_text_of_a_conversational_completion() -> None:
    exact = RewardFunction("exact_match_reward", max_completion_length=8)
    assert call_as_trl(exact, [[{"role": "assistant", "content": " Paris."}]], solution=["paris"]) == [1.0]


def test_exact_match_ignores_case_spaces_and_a_final_full_stop() -> None:
    completions = [" 24", "24.", " New  Delhi.", "24 apples", "", " 24"]
    solutions: list[Any] = ["24", "24", "new delhi", "24", "24", 24]
    assert exact_match_reward(completions, solutions) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]


def test_exact_match_skips_a_row_without_a_solution() -> None:
    assert exact_match_reward([" 24", " 24"], [None, " "]) == [None, None]


def test_short_answer_is_one_to_five_words_that_end_before_the_limit() -> None:
    completions = [".", " Paris.", " Buenos Aires", " one two three four five", " one two three four five six", " 24"]
    ended = [[9, 2]] * 5 + [[9, 9, 9, 9]]  # the last is cut off at the limit of 4 tokens
    assert short_answer_reward(completions, ended, max_completion_length=4) == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_a_reward_function_is_named_and_picklable_as_trl_needs() -> None:
    """TRL logs a function's rewards under its __name__, and its async worker pickles it."""
    for name in function_names():
        function = RewardFunction(name, max_completion_length=8)
        assert function.__name__ == name
        assert callable(function._function())
        copy = pickle.loads(pickle.dumps(function))
        assert copy.__name__ == name and copy.max_completion_length == 8


def test_an_unknown_reward_function_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="exact_match_reward"):
        RewardFunction("exact_reward", max_completion_length=8)


def test_required_columns_name_solution_only_for_the_functions_that_read_it() -> None:
    assert required_columns(grpo_task(reward_functions=["short_answer_reward"])) == ["prompt"]
    for name in ("accuracy_reward", "reasoning_accuracy_reward", "exact_match_reward"):
        assert required_columns(grpo_task(reward_functions=["think_format_reward", name])) == ["prompt", "solution"]


@pytest.mark.slow  # GRPOConfig imports torch
def test_reward_weights_must_match_the_rewards() -> None:
    from trl import GRPOConfig

    task = grpo_task(hyperparameters={"reward_weights": [1.0, 0.5, 2.0]})
    with pytest.raises(
        ValueError, match=r"3 weight\(s\) for 2 reward\(s\) \(short_answer_reward, exact_match_reward\)"
    ):
        task_rewards(task, None, GRPOConfig)


@pytest.mark.slow
def test_the_limit_is_the_trainers_max_completion_length() -> None:
    from trl import GRPOConfig

    [short, _] = task_rewards(grpo_task(), None, GRPOConfig)
    assert short.function is not None and short.function.max_completion_length == 8  # the quickstart's
    [short, _] = task_rewards(grpo_task(hyperparameters={}), None, GRPOConfig)
    assert short.function is not None and short.function.max_completion_length == GRPOConfig.max_completion_length


def test_metrics_are_after_before_and_the_gain() -> None:
    before = {"mean_reward": 0.25, "short_answer_reward": 0.25, "rewards": ["short_answer_reward"]}
    after = {"mean_reward": 1.0, "short_answer_reward": 1.0, "rewards": ["short_answer_reward"]}
    assert metrics(before, after) == {"mean_reward": 1.0, "mean_reward_before": 0.25, "mean_reward_gain": 0.75}
    assert metrics(before, None) == {"mean_reward_before": 0.25}
    for task_type in ("grpo", "ppo"):
        assert set(TASK_TYPES[task_type].metric_names) == set(metrics(before, after)) - {"mean_reward_before"}


def test_the_quickstarts_validate() -> None:
    for name in ("grpo.yaml", "ppo.yaml"):
        result = validate_file(QUICKSTART / name, TASK_TYPES)
        assert result.valid, [i.format() for i in result.issues]


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as a one-label sequence classifier (its score head fresh), with its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification

    out = tmp_path_factory.mktemp("reward-model")
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(QUICKSTART / "tiny-model", num_labels=1).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((QUICKSTART / "tiny-model" / name).read_bytes())
    return out


@pytest.mark.slow
def test_the_reward_model_scores_a_batch_as_rm_scored_each_answer(reward_model_dir: Path) -> None:
    """Right padding and the pad token set on the model: a batch's scores are each sequence's own,
    and each is the score the rm type's evaluation gives that answer, tokenized as TRL's
    RewardTrainer trains (prompt + answer + eos, with the special tokens)."""
    from tasks.rewards import load_reward_model
    from tasks.train_rm import pair_ids, score_pairs

    model, tokenizer = load_reward_model(str(reward_model_dir))
    reward = Reward("reward_model", model=model, tokenizer=tokenizer)
    prompts = ["Question: What is 8 times 3?\nAnswer:", "Question: What is 1 plus 1?\nAnswer:"]
    completions = [" 24", " It is two, I think."]
    batched = score([reward], list(prompts), list(completions), [[], []], {})["reward_model"]
    alone = []
    for prompt, completion in zip(prompts, completions, strict=True):
        pair = pair_ids(tokenizer, {"prompt": prompt, "chosen": completion, "rejected": completion})
        [(chosen, _)] = score_pairs(model, [pair], tokenizer.pad_token_id, batch_size=1)
        alone.append(chosen)
    assert batched == pytest.approx(alone, abs=1e-5)
    assert batched[0] != pytest.approx(batched[1])


@pytest.mark.slow
def test_evaluation_scores_completions_as_the_trainer_does(reward_model_dir: Path, tmp_path: Path) -> None:
    """The rewards evaluation reports are the ones GRPOTrainer trains on: every function and the
    reward model, on the same completions, give the trainer's own numbers."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from tasks.jobs import TrainJob
    from tasks.rewards import trainer_rewards

    task = grpo_task(
        reward_functions=["short_answer_reward", "exact_match_reward", "accuracy_reward"],
        reward_model={"source": {"type": "local", "path": str(reward_model_dir)}},
    )
    job = TrainJob(
        task=task.model_dump(mode="json", by_alias=True),
        model_path=str(QUICKSTART / "tiny-model"),
        dataset_path=str(QUICKSTART / "prompts.jsonl"),
        dataset_source_type="local",
        reward_model_path=str(reward_model_dir),
        output_dir=str(tmp_path / "train"),
        result_path=str(tmp_path / "result.json"),
    )
    rows = [
        {"prompt": "Question: What is 8 times 3?\nAnswer:", "solution": "24"},
        {"prompt": "Question: What is 1 plus 1?\nAnswer:", "solution": "2"},
    ] * 2
    config = GRPOConfig(
        output_dir=job.output_dir,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to="none",
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(QUICKSTART / "tiny-model"),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(QUICKSTART / "tiny-model"),
        **trainer_rewards(task, job, GRPOConfig),
    )
    prompts = [r["prompt"] for r in rows]
    completions: list[Any] = [" 24", " It is two, I think, so two.", r" \boxed{24}", "."]
    ids = [[470, 2], [9] * 8, [5, 6, 2], [7, 2]]  # the second one cut off at max_completion_length
    by_trainer = trainer._calculate_rewards(rows, prompts, completions, ids).tolist()
    ours = score(
        task_rewards(task, str(reward_model_dir), GRPOConfig),
        prompts,
        completions,
        ids,
        {"solution": [r["solution"] for r in rows]},
    )
    assert list(ours) == ["short_answer_reward", "exact_match_reward", "accuracy_reward", "reward_model"]
    for row, trained in zip(zip(*ours.values(), strict=True), by_trainer, strict=True):
        assert list(row) == pytest.approx(trained, abs=1e-5)
    assert [row[:3] for row in by_trainer] == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
