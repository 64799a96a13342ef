"""Preflight finds, in seconds and before any training, what would fail later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from configs import TrainingTask
from tasks.preflight import PreflightError, hardware, missing_target_modules, preflight, weight_names
from tests.quickstart_task import quickstart_task

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODEL = CONFIGS / "quickstart" / "tiny-model"
INPUTS = {
    "model": {"path": str(MODEL), "source_type": "local"},
    "dataset": {"path": str(CONFIGS / "quickstart" / "qa.jsonl"), "source_type": "local"},
}


def task(tmp_path: Path, **edits: Any) -> TrainingTask:
    """The quickstart, its output under tmp_path, with edits given as spec__model__...=value."""
    destination = {"spec.output.destination": {"type": "local", "path": str(tmp_path / "out")}}
    return quickstart_task(destination | {key.replace("__", "."): value for key, value in edits.items()})


def test_the_quickstart_passes(tmp_path: Path) -> None:
    notes = preflight(task(tmp_path), INPUTS, CONFIGS)
    assert any("459 rows" in n for n in notes)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "no probe left behind"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    broken = task(
        tmp_path,
        spec__dataset__preprocessing__prompt_template="Q: {question} ({topic})",
        spec__model__adapter__target_modules=["q_proj", "query_key_value"],
        spec__output__destination={"type": "local", "path": str(blocker / "out")},
    )
    with pytest.raises(PreflightError) as info:
        preflight(broken, INPUTS, CONFIGS)
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert "{topic}" in problems[0] and "question, answer" in problems[0]
    assert "query_key_value not found in the model" in problems[1] and "q_proj" in problems[1]
    assert str(blocker) in problems[2]


def test_qlora_on_a_cpu_is_refused_not_switched(tmp_path: Path) -> None:
    """QLoRA needs CUDA: on a CPU worker that is an error, never a silent fall back to LoRA."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this worker has a CUDA GPU; the refusal is for CPU workers")
    # the task asks for a GPU...
    qlora = task(
        tmp_path, spec__model__adapter__type="qlora", spec__resources__hardware__gpu={"type": "any", "count": 1}
    )
    with pytest.raises(PreflightError) as info:  # ...but this worker has none
        hardware(qlora)
    assert len(info.value.problems) == 2
    assert "asks for 1 × any, but this worker has 0 CUDA GPU(s)" in info.value.problems[0]
    assert "needs a CUDA GPU" in info.value.problems[1]


def test_gpus_the_worker_lacks_and_vllm_without_its_environment_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from tasks import vllm_env

    monkeypatch.setenv(vllm_env.ENV_VAR, str(tmp_path / "no-python"))  # this worker has no vLLM interpreter

    if torch.cuda.is_available():
        pytest.skip("this worker has a CUDA GPU; the refusals are for CPU workers")
    four = task(
        tmp_path,
        spec__resources__hardware__gpu={"type": "nvidia-a100-80gb", "count": 4},
        spec__evaluation__backend="vllm",
    )
    with pytest.raises(PreflightError) as info:
        hardware(four)
    assert "asks for 4 × nvidia-a100-80gb, but this worker has 0 CUDA GPU(s)" in info.value.problems[0]
    assert "evaluation.backend is 'vllm'" in info.value.problems[1]
    assert hardware(task(tmp_path)) == ["hardware: 0 CUDA GPU(s) for 0 asked"]


def test_online_rl_generating_with_vllm_without_cuda_is_refused_before_the_download() -> None:
    """grpo's use_vllm: refused in preflight-hardware, not after the before-evaluation, at training."""
    import torch
    import yaml

    from configs import validate_text
    from tasks.registry import TASK_TYPES

    if torch.cuda.is_available():
        pytest.skip("this worker has a CUDA GPU; the refusal is for CPU workers")
    data = yaml.safe_load((CONFIGS / "quickstart" / "grpo.yaml").read_text())
    data["spec"]["hyperparameters"]["use_vllm"] = True
    grpo = validate_text(yaml.safe_dump(data), "grpo.yaml", TASK_TYPES).task
    assert isinstance(grpo, TrainingTask)
    with pytest.raises(PreflightError) as info:
        hardware(grpo)
    assert info.value.problems == [
        "hyperparameters.use_vllm generates the completions with vLLM, which needs a CUDA GPU, and this worker "
        "has none — run on a GPU pool, or set use_vllm: false"
    ]


def preference_task(tmp_path: Path, task_type: str, **preprocessing: str) -> TrainingTask:
    """The dpo or rm quickstart on a copy of its pairs whose prompt is a `question` column."""
    import json

    import yaml

    from configs import validate_text
    from tasks.registry import TASK_TYPES

    rows = [json.loads(line) for line in (CONFIGS / "quickstart" / "preferences.jsonl").read_text().splitlines()]
    with (tmp_path / "pairs.jsonl").open("w") as out:
        for row in rows[:20]:
            question = row["prompt"].removeprefix("Question: ").removesuffix("\nAnswer:")
            out.write(json.dumps({"question": question, "chosen": row["chosen"], "rejected": row["rejected"]}) + "\n")
    data = yaml.safe_load((CONFIGS / "quickstart" / f"{task_type}.yaml").read_text())
    data["spec"]["dataset"]["source"]["path"] = str(tmp_path / "pairs.jsonl")
    data["spec"]["dataset"]["preprocessing"].update(preprocessing)
    data["spec"]["output"]["destination"] = {"type": "local", "path": str(tmp_path / "out")}
    result = validate_text(yaml.safe_dump(data), f"{task_type}.yaml", TASK_TYPES)
    assert isinstance(result.task, TrainingTask), [i.format() for i in result.issues]
    return result.task


@pytest.mark.parametrize("task_type", ["dpo", "rm"])
def test_a_prompt_template_renders_the_prompt_of_preference_pairs(tmp_path: Path, task_type: str) -> None:
    """The type's format_rows hook: the template fills `prompt`, chosen and rejected stay as they are."""
    from tasks.data import examples
    from tasks.registry import trainer_for

    pairs = preference_task(tmp_path, task_type, prompt_template="Question: {question}\nAnswer:")
    inputs = {"model": INPUTS["model"], "dataset": {"path": str(tmp_path / "pairs.jsonl"), "source_type": "local"}}
    preflight(pairs, inputs, CONFIGS)
    train_rows, _ = examples(pairs, str(tmp_path / "pairs.jsonl"), "local", trainer_for(task_type).format_rows)
    assert {"prompt", "chosen", "rejected"} <= set(train_rows.column_names)
    assert all(row["prompt"].startswith("Question: ") and row["prompt"].endswith("\nAnswer:") for row in train_rows)
    lines = (CONFIGS / "quickstart" / "preferences.jsonl").read_text().splitlines()
    shipped = {(json.loads(line)["prompt"], json.loads(line)["chosen"]) for line in lines}
    assert {(row["prompt"], row["chosen"]) for row in train_rows} <= shipped  # the very pairs, prompt rebuilt
    # without the template the pairs have no prompt column, and preflight says which one is missing
    bare = preference_task(tmp_path, "dpo")
    with pytest.raises(PreflightError) as info:
        preflight(bare, inputs, CONFIGS)
    assert (
        "taskType 'dpo' needs the column(s) prompt, but the dataset's columns are: question, chosen, rejected"
        in str(info.value)
    )


def test_a_completion_template_on_a_type_that_reads_its_own_completions_is_refused(tmp_path: Path) -> None:
    pairs = preference_task(
        tmp_path, "dpo", prompt_template="Question: {question}\nAnswer:", completion_template=" {chosen}"
    )
    inputs = {"model": INPUTS["model"], "dataset": {"path": str(tmp_path / "pairs.jsonl"), "source_type": "local"}}
    with pytest.raises(PreflightError) as info:
        preflight(pairs, inputs, CONFIGS)
    assert "completion_template renders sft's training target; taskType 'dpo' reads its completions" in str(info.value)


def test_module_names_come_from_the_safetensors_header() -> None:
    names = weight_names(MODEL)
    assert names and any(n.endswith("self_attn.q_proj.weight") for n in names)
    assert missing_target_modules(["q_proj", "mlp.down_proj", "nope"], names) == ["nope"]


def test_a_task_whose_nodes_run_elsewhere_needs_no_gpu_here() -> None:
    # a TrainJob's flow pod orchestrates: the GPUs, QLoRA's CUDA and vLLM are the nodes' business
    # (validation already refuses QLoRA on a task without GPUs)
    on_gpu_nodes = quickstart_task(
        {
            "spec.resources.replicas": 2,
            "spec.resources.hardware.gpu": {"type": "nvidia-a100-80gb", "count": 4},
            "spec.model.adapter.type": "qlora",
            "spec.evaluation.backend": "vllm",
        }
    )
    [note] = hardware(on_gpu_nodes, nodes_elsewhere=True)
    assert note.startswith("hardware: the training runs on 2 nodes of their own (4 × nvidia-a100-80gb each)")
    with pytest.raises(PreflightError):  # on this CPU machine itself the same task cannot run
        hardware(on_gpu_nodes)
