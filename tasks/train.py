"""Training, common to every trainer: the child-process job, checkpoints and resuming.

Parent side: :func:`prepare_training` reuses a completed result or builds the job, resuming
from the last complete checkpoint when one exists; :func:`run_training` runs that job as a
child on this machine (a Kubeflow TrainJob runs it on nodes of its own: flows/trainjob_run.py).
Child side: a taskType module's ``train(task, job)`` builds its TRL trainer, hands it to :func:`report_to_parent` and ends with :func:`finish`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.jobs import TrainJob
from tasks.launch import is_main, launch_for, local_rank, rank, world_size
from tasks.runner import emit, run_child

if TYPE_CHECKING:
    from configs import TrainingTask

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Files a checkpoint directory has once the trainer finished writing it.
_WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass
class TrainResult:
    global_step: int
    max_steps: int
    train_loss: float | None
    runtime_s: float
    resumed_from: str | None
    final_dir: str  # the adapter (or the full model, without an adapter)
    merged_dir: str | None  # the adapter merged into the base model, when full_model is asked for
    state_file: str  # trainer_state.json: the log history
    trainer: str  # the TRL trainer class that trained it, e.g. "RLOOTrainer" for a ppo task
    flow_run_id: str | None = None  # the run that trained it, where a Prefect run did

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def output_dir(task: TrainingTask, workdir: Path) -> Path:
    """Where checkpoints go: hyperparameters.output_dir if given, else the run's work dir."""
    given = task.spec.hyperparameters.get("output_dir")
    return Path(given) if given else workdir / "train"


def last_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint the trainer finished writing; a half-written one is skipped."""
    if not directory.is_dir():
        return None
    found = []
    for child in directory.iterdir():
        match = _CHECKPOINT.match(child.name)
        complete = (child / "trainer_state.json").is_file() and any((child / w).is_file() for w in _WEIGHTS)
        if match and child.is_dir() and complete:
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def checkpoint_step(checkpoint: Path) -> tuple[int, int]:
    """(global_step, max_steps) a checkpoint was written at."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return int(state.get("global_step", 0)), int(state.get("max_steps", 0))


def completed_result(task: TrainingTask, workdir: Path) -> TrainResult | None:
    """The result of a training this work dir already finished, if its files are all still there.

    The work dir is keyed by the task and its inputs' hashes, so a result found here is the
    training this run would do again.
    """
    path = workdir / "train-result.json"
    if not path.is_file():
        return None
    try:
        result = TrainResult(**json.loads(path.read_text()))
    except (ValueError, TypeError):  # half-written or from another MLOC version: train again
        return None
    wanted = [result.final_dir, result.state_file]
    if task.spec.model.adapter is not None and "full_model" in task.spec.output.artifacts:
        wanted.append(result.merged_dir or "")
    if result.global_step < result.max_steps or not all(w and Path(w).exists() for w in wanted):
        return None
    return result


def prepare_training(
    task: TrainingTask,
    inputs: dict[str, dict[str, Any]],
    workdir: Path,
    on_line: Callable[[str], None],
    on_event: Callable[[dict[str, Any]], None],
) -> TrainResult | TrainJob:
    """The result of a training this work dir already completed (not run again), or the job that
    trains it, resuming from the last complete checkpoint: what every launcher starts from."""
    done = completed_result(task, workdir)
    if done is not None:
        by = f"run {done.flow_run_id}" if done.flow_run_id else "an earlier run"
        on_line(
            f"training already completed in {workdir} (step {done.global_step}/{done.max_steps}): "
            f"reused from {by}, not training again"
        )
        on_event({"event": "progress", "step": done.global_step, "max_steps": done.max_steps})
        return done
    out = output_dir(task, workdir)
    resume = last_checkpoint(out)
    if resume is not None:
        step, max_steps = checkpoint_step(resume)
        if max_steps and step >= max_steps:
            on_line(f"{resume.name} is the last step ({step}/{max_steps}): saving it as the result, not training again")
        else:
            on_line(f"resuming from {resume.name} (step {step}/{max_steps})")
    return TrainJob(
        task=task.model_dump(mode="json", by_alias=True),
        model_path=inputs["model"]["path"],
        dataset_path=inputs["dataset"]["path"],
        dataset_source_type=inputs["dataset"]["source_type"],
        reward_model_path=inputs.get("reward_model", {}).get("path"),
        output_dir=str(out),
        resume_from=str(resume) if resume else None,
        result_path=str(workdir / "train-result.json"),
    )


def job_result(job: TrainJob) -> TrainResult:
    """What a finished ``job`` wrote (rank 0 writes it)."""
    return TrainResult(**json.loads(Path(job.result_path).read_text()))


def run_training(
    task: TrainingTask,
    inputs: dict[str, dict[str, Any]],
    workdir: Path,
    on_line: Callable[[str], None],
    on_event: Callable[[dict[str, Any]], None],
    flow_run_id: str | None = None,
) -> TrainResult:
    """Train in a child process (or torchrun nodes on this machine), resuming from the last
    complete checkpoint; a training this work dir already completed is not run again. The
    result names ``flow_run_id`` as the run that trained it, so a later run reusing it says whose."""
    prepared = prepare_training(task, inputs, workdir, on_line, on_event)
    if isinstance(prepared, TrainResult):
        return prepared
    launch = launch_for(task)
    if launch.distributed:
        on_line(f"training as {launch.describe()}")
    run_child(prepared, workdir, on_line, on_event, launch)
    result = job_result(prepared)
    if flow_run_id is not None:
        result = replace(result, flow_run_id=flow_run_id)
        path = Path(prepared.result_path)
        written = path.with_name(path.name + ".tmp")  # whole or not at all: a torn file would retrain
        written.write_text(json.dumps(result.to_dict(), indent=1))
        written.replace(path)
    return result


# --- child side -------------------------------------------------------------------------------


def trainer_arguments(task: TrainingTask, job: TrainJob, config_class: type | None = None) -> dict[str, Any]:
    """spec.hyperparameters, plus what MLOC sets from the rest of the task: ``max_length`` from
    preprocessing.max_seq_length where the config class has that field (the online RL configs
    bound the completion instead, with their own max_completion_length)."""
    import dataclasses

    from tasks.modeling import cuda_available

    has_max_length = config_class is None or any(f.name == "max_length" for f in dataclasses.fields(config_class))
    return {
        **task.spec.hyperparameters,
        "output_dir": job.output_dir,
        **({"max_length": task.spec.dataset.preprocessing.max_seq_length} if has_max_length else {}),
        "disable_tqdm": True,  # progress goes to Prefect as events, not as terminal bars
        # under torchrun on a CPU, accelerate needs it: without it every process trains alone, silently
        "use_cpu": not cuda_available(),
        # an adapter's weights are all used in each forward: DDP's search for unused ones only costs a
        # traversal of the graph every step (a task that needs it sets it)
        **({"ddp_find_unused_parameters": False} if world_size() > 1 else {}),
        **{k: v for k, v in task.spec.hyperparameters.items() if k == "ddp_find_unused_parameters"},
    }


def run_trainer(
    task: TrainingTask,
    job: TrainJob,
    trainer_class: type,
    config_class: type,
    rows: str,
    *,
    format_rows: Callable[[Any, Any], Any],
    model_class: type | None = None,
    model_kwargs: dict[str, Any] | None = None,
    peft_task_type: str = "CAUSAL_LM",
    **extra: Any,
) -> None:
    """Child side, for any TRL trainer: load the data, tokenizer and model (quantised for QLoRA),
    build ``trainer_class`` with ``config_class(**trainer_arguments)`` and the task's adapter,
    train (resuming from ``job.resume_from``) and save the result.

    ``rows`` names what a row is in the log line; ``format_rows`` is the type's hook. The model is a ``model_class`` (a causal LM
    unless given, e.g. a sequence classifier for a reward model) loaded with ``model_kwargs``;
    the adapter's PEFT task type is ``peft_task_type``. ``extra`` goes to the trainer (e.g.
    ``ref_model`` for DPO, ``reward_funcs`` for online RL)."""
    from transformers import AutoModelForCausalLM

    from tasks.data import examples
    from tasks.modeling import load_tokenizer, lora_config, quantization_config

    train_rows, _ = examples(task, job.dataset_path, job.dataset_source_type, format_rows)
    tokenizer = load_tokenizer(job.model_path)
    adapter = task.spec.model.adapter
    quant = quantization_config(adapter)
    loader: Any = model_class or AutoModelForCausalLM
    model = loader.from_pretrained(
        job.model_path,
        **(model_kwargs or {}),
        # a k-bit model whole on this rank's GPU: "auto" would spread one model over every GPU
        # the process sees, each working in turn
        **({"quantization_config": quant, "device_map": {"": local_rank()}} if quant else {}),
    )
    trainer = trainer_class(
        model=model,
        args=config_class(**trainer_arguments(task, job, config_class)),
        train_dataset=train_rows,
        processing_class=tokenizer,
        peft_config=lora_config(adapter, peft_task_type) if adapter else None,
        **extra,
    )
    report_to_parent(trainer)
    if world_size() > 1:
        # what the processes actually joined: a rank that silently trained alone shows world size 1
        state = trainer.accelerator.state
        print(
            f"rank {state.process_index} of world size {state.num_processes} ({state.distributed_type}, "
            f"backend {state.backend}), local rank {local_rank()}, pid {os.getpid()}",
            flush=True,
        )
    start = f"resuming from {Path(job.resume_from).name}" if job.resume_from else "from the start"
    if is_main():
        print(f"training with {trainer_class.__name__} on {len(train_rows)} {rows}, {start}", flush=True)
    fit(trainer, job)
    check_ranks_agree(trainer)
    finish(trainer, tokenizer, task, job, model_class=loader, model_kwargs=model_kwargs)
    if world_size() > 1:
        # no rank leaves before rank 0's files are written, and each tears its process group
        # down before it exits: gloo's threads, destroyed at exit, abort the process (SIGABRT)
        trainer.accelerator.wait_for_everyone()
        trainer.accelerator.end_training()


def fit(trainer: Any, job: TrainJob) -> None:
    """``trainer.train()``, resuming from ``job.resume_from``; a checkpoint written at the
    last step is loaded as it is, since resuming from it would train one step past max_steps."""
    resume = job.resume_from
    if resume:
        step, max_steps = checkpoint_step(Path(resume))
        if max_steps and step >= max_steps:
            from transformers.trainer_callback import TrainerState

            trainer._load_from_checkpoint(resume)  # the trainer's own loader: full weights or the adapter
            trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
            return
    trainer.train(resume_from_checkpoint=resume)


def report_to_parent(trainer: Any) -> None:
    """Replace the trainer's console printing with lines and events for the parent."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints the same metrics as raw dicts
    for callback in _callbacks():
        trainer.add_callback(callback)


def _callbacks() -> list[Any]:
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            emit("progress", step=state.global_step, max_steps=state.max_steps)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            emit("progress", step=state.global_step, max_steps=state.max_steps)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            # every rank logs the same (globally reduced) figures: rank 0 prints them
            if logs and state.is_world_process_zero:
                shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items())
                print(f"step {state.global_step}/{state.max_steps}: {shown}", flush=True)

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                print(f"checkpoint saved at step {state.global_step}", flush=True)

    return [Report()]


def trainable_digest(model: Any) -> str:
    """sha256 over the trainable parameters' names and values: equal on every rank of a
    data-parallel training whose gradients were synchronised."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class RanksDiverged(RuntimeError):
    """The ranks of a distributed training ended with different weights."""


def check_ranks_agree(trainer: Any) -> None:
    """In a distributed training, every rank's trainable weights must be the same at the end;
    each rank prints its digest, and the training fails if any differs from rank 0's."""
    if world_size() <= 1:
        return
    import torch.distributed as dist

    mine = trainable_digest(trainer.model)
    print(f"rank {rank()}: trainable parameters sha256:{mine}", flush=True)
    everyone: list[str | None] = [None] * world_size()
    dist.all_gather_object(everyone, mine)
    differ = [r for r, d in enumerate(everyone) if d != everyone[0]]
    if differ:
        raise RanksDiverged(f"rank(s) {', '.join(map(str, differ))} ended with weights that differ from rank 0's")


def finish(
    trainer: Any,
    tokenizer: Any,
    task: TrainingTask,
    job: TrainJob,
    model_class: type | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> None:
    """Save the final weights (and the merged model, a ``model_class``, if asked for) and the
    result file: rank 0's work, the other ranks of a distributed training hold the same weights."""
    out = Path(job.output_dir)
    final_dir = out / "final"
    trainer.save_model(str(final_dir))  # every rank calls it; the trainer writes from rank 0 only
    if not is_main():
        return
    tokenizer.save_pretrained(str(final_dir))
    state_file = out / "trainer_state.json"
    trainer.state.save_to_json(str(state_file))
    merged_dir = None
    if task.spec.model.adapter is not None and "full_model" in task.spec.output.artifacts:
        merged_dir = out / "merged"
        merge_adapter(job.model_path, str(final_dir), str(merged_dir), model_class, model_kwargs)
        tokenizer.save_pretrained(str(merged_dir))
    # train_loss is the mean over the whole training, logged at its end; a result saved from the
    # last checkpoint has only the logged step losses
    losses = [h["train_loss"] for h in trainer.state.log_history if "train_loss" in h] or [
        h["loss"] for h in trainer.state.log_history if "loss" in h
    ]
    result = TrainResult(
        global_step=trainer.state.global_step,
        max_steps=trainer.state.max_steps,
        train_loss=losses[-1] if losses else None,
        runtime_s=sum(h.get("train_runtime", 0.0) for h in trainer.state.log_history),
        resumed_from=job.resume_from,
        final_dir=str(final_dir),
        merged_dir=str(merged_dir) if merged_dir else None,
        state_file=str(state_file),
        trainer=type(trainer).__name__,
    )
    Path(job.result_path).write_text(json.dumps(result.to_dict(), indent=1))


def merge_adapter(
    base_path: str,
    adapter_dir: str,
    target: str,
    model_class: type | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> None:
    """The adapter folded into an unquantised copy of the base model (merging into 4 bits would
    lose it), loaded as ``model_class`` (a causal LM unless given)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loader: Any = model_class or AutoModelForCausalLM
    base = loader.from_pretrained(base_path, dtype="auto", **(model_kwargs or {}))
    PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(target)
