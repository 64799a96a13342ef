"""The rewards online RL (grpo, ppo) scores completions with, in training and in evaluation.

A task names reward functions in `spec.reward_functions` (TRL's own, and MLOC's below) and
may give a reward model (`spec.reward_model`, a sequence classifier with one label). TRL's
trainers call each reward function with the prompts, the completions, their token ids and
every other dataset column as keyword arguments (e.g. `solution`). The reward model is handed
to them as one more such function (:class:`RewardModelScore`), not as a model: TRL would score
it without the tokenizer's special tokens, unlike TRL's RewardTrainer, which trained it on
prompt + answer + eos with them. Evaluation calls the very same functions, so that the
rewards before and after training are the ones training maximised.

TRL's functions read conversational completions (``completion[0]["content"]``); a plain-text
prompt gives plain-string completions, so :class:`RewardFunction` wraps each string as one
message at the boundary (and hands MLOC's functions, which read text, the message's text).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

from configs.models import TrainingSpec

if TYPE_CHECKING:
    from configs import TrainingTask
    from tasks.jobs import TrainJob

#: the name the reward model's scores go by, in the logs, results and metrics
REWARD_MODEL = "reward_model"
#: the functions that compare a completion with the row's `solution` column
READS_SOLUTION = frozenset({"accuracy_reward", "reasoning_accuracy_reward", "exact_match_reward"})
#: the most words a short answer has
SHORT_ANSWER_WORDS = 5
_SCORE_BATCH = 16  # completions the reward model scores at once

Completion = str | list[dict[str, Any]]


def function_names() -> tuple[str, ...]:
    """Every reward function a task may name: the values `spec.reward_functions` accepts."""
    (literal,) = get_args(TrainingSpec.model_fields["reward_functions"].annotation)
    return get_args(literal)


def required_columns(task: TrainingTask) -> list[str]:
    """`prompt` (or the prompt_template's columns), and `solution` when a named function compares with it."""
    from tasks.data import prompt_columns

    return prompt_columns(task) + (["solution"] if READS_SOLUTION & set(task.spec.reward_functions) else [])


# --- MLOC's reward functions --------------------------------------------------------------------


def _normalised(text: str) -> str:
    """Case, surrounding and repeated spaces, and a final full stop do not change an answer."""
    return " ".join(text.strip().removesuffix(".").lower().split())


def exact_match_reward(completions: list[str], solution: list[Any], **kwargs: Any) -> list[float | None]:
    """1.0 where the completion is the solution's text (ignoring case, spaces and a final full stop),
    else 0.0; None (not scored) where a row has no solution. For short plain answers, which TRL's
    accuracy_reward does not credit: it reads LaTeX behind an anchor (\\boxed{24}, "answer is $24$")."""
    out: list[float | None] = []
    for text, gold in zip(completions, solution, strict=True):
        wanted = "" if gold is None else _normalised(str(gold))
        out.append(float(_normalised(text) == wanted) if wanted else None)
    return out


def short_answer_reward(
    completions: list[str], completion_ids: list[list[int]], max_completion_length: int, **kwargs: Any
) -> list[float]:
    """1.0 where the completion is a short answer that ends: one to five words (a word holds a letter
    or a digit) in fewer tokens than max_completion_length; one cut off at the limit is not an answer."""
    out = []
    for text, ids in zip(completions, completion_ids, strict=True):
        words = sum(any(c.isalnum() for c in word) for word in text.split())
        out.append(float(1 <= words <= SHORT_ANSWER_WORDS and len(ids) < max_completion_length))
    return out


_MLOC_FUNCTIONS: dict[str, Callable[..., list[Any]]] = {
    "exact_match_reward": exact_match_reward,
    "short_answer_reward": short_answer_reward,
}


# --- the adapter ----------------------------------------------------------------------------------


def as_messages(completions: Sequence[Completion]) -> list[list[dict[str, Any]]]:
    """Completions as TRL's functions read them: a plain string becomes one assistant message."""
    return [[{"role": "assistant", "content": c}] if isinstance(c, str) else list(c) for c in completions]


def as_texts(completions: Sequence[Completion]) -> list[str]:
    """Completions as text: a conversational one is its (last) message's content."""
    return [c if isinstance(c, str) else str(c[-1]["content"]) for c in completions]


class RewardFunction:
    """A named reward function called the way TRL calls one, its completions in the form it reads.

    A class, not a closure: TRL's async rollout worker pickles its reward functions. ``__name__``
    is what TRL logs its rewards under (``rewards/<name>/mean``)."""

    def __init__(self, name: str, max_completion_length: int) -> None:
        if name not in function_names():
            raise ValueError(f"'{name}' is not a reward function MLOC knows — use one of {', '.join(function_names())}")
        self.__name__ = name
        self.max_completion_length = max_completion_length

    def _function(self) -> Callable[..., list[Any]]:
        if self.__name__ in _MLOC_FUNCTIONS:
            return _MLOC_FUNCTIONS[self.__name__]
        import trl.rewards

        function: Callable[..., list[Any]] = getattr(trl.rewards, self.__name__)
        return function

    def __call__(self, completions: Sequence[Completion], **kwargs: Any) -> list[float | None]:
        if self.__name__ in _MLOC_FUNCTIONS:
            kwargs.setdefault("max_completion_length", self.max_completion_length)
            return self._function()(as_texts(completions), **kwargs)
        return self._function()(as_messages(completions), **kwargs)


# --- the rewards of a task ------------------------------------------------------------------------


@dataclass
class Reward:
    """One reward a task is scored by: a named function, or the reward model with its tokenizer."""

    name: str
    function: RewardFunction | None = None
    model: Any = None
    tokenizer: Any = None


def setting(task: TrainingTask, config_class: type, name: str) -> Any:
    """A trainer setting: hyperparameters[name] if given, else the config class's default."""
    import dataclasses

    if name in task.spec.hyperparameters:
        return task.spec.hyperparameters[name]
    return next(f.default for f in dataclasses.fields(config_class) if f.name == name)


def max_completion_length(task: TrainingTask, config_class: type) -> int:
    """How many tokens a completion may have, in training and evaluation."""
    limit = setting(task, config_class, "max_completion_length")
    if limit is None:
        raise ValueError(
            "hyperparameters.max_completion_length is null — give a number of tokens: "
            "completions are generated up to it, in training and in evaluation"
        )
    return int(limit)


def task_rewards(task: TrainingTask, reward_model_path: str | None, config_class: type) -> list[Reward]:
    """The task's reward functions in the order it names them, then its reward model; checks
    hyperparameters.reward_weights has one weight for each, in that order."""
    limit = max_completion_length(task, config_class)
    rewards = [Reward(name, function=RewardFunction(name, limit)) for name in task.spec.reward_functions]
    if task.spec.reward_model is not None:
        if reward_model_path is None:
            raise ValueError("spec.reward_model is set but no reward model was downloaded for this step")
        model, tokenizer = load_reward_model(reward_model_path)
        rewards.append(Reward(REWARD_MODEL, model=model, tokenizer=tokenizer))
    if not rewards:
        raise ValueError(
            f"taskType '{task.spec.task_type}' has nothing to score completions with — "
            "add spec.reward_functions or spec.reward_model"
        )
    weights = task.spec.hyperparameters.get("reward_weights")
    if weights is not None and len(weights) != len(rewards):
        names = ", ".join(r.name for r in rewards)
        raise ValueError(
            f"hyperparameters.reward_weights has {len(weights)} weight(s) for {len(rewards)} reward(s) ({names}) — "
            "give one weight per reward, in that order: the reward functions as listed, then the reward model"
        )
    return rewards


def reward_weights(task: TrainingTask, rewards: list[Reward]) -> list[float]:
    """How much each reward counts in the sum (TRL's reward_weights; 1.0 each by default)."""
    weights = task.spec.hyperparameters.get("reward_weights")
    return [float(w) for w in weights] if weights is not None else [1.0] * len(rewards)


def load_reward_model(path: str) -> tuple[Any, Any]:
    """The reward model (one score per sequence) and its tokenizer, whose pad token the model reads
    to find each sequence's last token, as TRL sets it."""
    from transformers import AutoModelForSequenceClassification

    from tasks.modeling import cuda_available, load_tokenizer

    tokenizer = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype="auto")
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    if cuda_available():
        model = model.to("cuda")
    model.eval()
    return model, tokenizer


class RewardModelScore:
    """The reward model as a reward function: its score of prompt + completion, read as
    TRL's RewardTrainer trained it. ``__name__`` is what TRL logs its rewards under."""

    __name__ = REWARD_MODEL

    def __init__(self, reward: Reward) -> None:
        self.reward = reward

    def __call__(self, prompts: Sequence[Completion], completions: Sequence[Completion], **kwargs: Any) -> list[Any]:
        return _model_scores(self.reward, list(prompts), list(completions), {})


def trainer_rewards(task: TrainingTask, job: TrainJob, config_class: type) -> dict[str, Any]:
    """What an online-RL trainer gets beside its config: ``reward_funcs``, the named functions
    and then the reward model, each a callable (``use_vllm`` without CUDA is refused by preflight)."""
    rewards = task_rewards(task, job.reward_model_path, config_class)
    return {"reward_funcs": [r.function if r.function is not None else RewardModelScore(r) for r in rewards]}


def run_online_rl(task: TrainingTask, job: TrainJob, trainer_class: type, config_class: type) -> None:
    """Child side, for grpo and ppo: `tasks.train.run_trainer` on the prompts (rendered by
    `tasks.data.render_prompt`, their format_rows hook), scored by the task's rewards."""
    from tasks.data import render_prompt
    from tasks.train import run_trainer

    extra = trainer_rewards(task, job, config_class)
    run_trainer(task, job, trainer_class, config_class, rows="prompts", format_rows=render_prompt, **extra)


def score(
    rewards: list[Reward],
    prompts: list[Completion],
    completions: list[Completion],
    completion_ids: list[list[int]],
    columns: dict[str, list[Any]],
    chat_template_kwargs: dict[str, Any] | None = None,
) -> dict[str, list[float | None]]:
    """Each reward's score of each completion, as TRL's trainers compute them: the functions get the
    other dataset columns as keyword arguments; the reward model reads prompt + completion as
    :func:`_model_scores` tokenizes them."""
    scores: dict[str, list[float | None]] = {}
    for reward in rewards:
        if reward.function is not None:
            scores[reward.name] = list(
                reward.function(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
            )
        else:
            scores[reward.name] = _model_scores(reward, prompts, completions, chat_template_kwargs or {})
    return scores


def _model_scores(
    reward: Reward, prompts: list[Completion], completions: list[Completion], chat_template_kwargs: dict[str, Any]
) -> list[float | None]:
    import torch
    from trl.data_utils import apply_chat_template, is_conversational

    if prompts and is_conversational({"prompt": prompts[0]}):
        conversations: list[dict[str, Any]] = [
            {"messages": list(p) + as_messages([c])[0]} for p, c in zip(prompts, completions, strict=True)
        ]
        texts = [apply_chat_template(m, reward.tokenizer, **chat_template_kwargs)["text"] for m in conversations]
        special = False  # the chat template writes them
    else:
        # as RewardTrainer tokenized its pairs: prompt + answer + eos, with the tokenizer's special tokens
        eos = reward.tokenizer.eos_token or ""
        texts = [str(p) + str(c) + eos for p, c in zip(prompts, completions, strict=True)]
        special = True
    device = next(reward.model.parameters()).device
    out: list[float | None] = []
    for start in range(0, len(texts), _SCORE_BATCH):
        inputs = reward.tokenizer(
            text=texts[start : start + _SCORE_BATCH],
            return_tensors="pt",
            padding=True,
            padding_side="right",
            add_special_tokens=special,
        ).to(device)
        with torch.inference_mode():
            out += [float(v) for v in reward.model(**inputs).logits[:, 0].float()]
    return out
