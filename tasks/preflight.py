"""Checks that run before any training, in seconds.

Each finds a mistake that would otherwise surface minutes (or GPU-hours) later. Before the
download (:func:`hardware`): GPUs the worker lacks, QLoRA or vLLM without CUDA. After it
(:func:`preflight`): template columns missing from the dataset, LoRA target modules missing
from the model, an output destination that cannot be written. All problems of a stage are
collected and reported together.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs.checks import template_fields
from tasks.registry import trainer_for

if TYPE_CHECKING:
    from configs import TrainingTask
    from tasks.columns import Glance


class PreflightError(RuntimeError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("preflight found problems:\n" + "\n".join(f"  - {p}" for p in problems))


def weight_names(model_dir: Path) -> list[str] | None:
    """Parameter names from the safetensors headers, read without loading a tensor (or torch)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return sorted(json.loads(index.read_text())["weight_map"])
    names: list[str] = []
    files = sorted(model_dir.glob("*.safetensors"))
    for file in files:
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            names += [k for k in json.loads(handle.read(length)) if k != "__metadata__"]
    return sorted(names) if files else None


def missing_target_modules(targets: list[str], names: list[str]) -> list[str]:
    """Targets that name no module; PEFT matches a target against the end of a module's name."""
    modules = {n.rsplit(".", 1)[0] for n in names}
    return [t for t in targets if not any(m == t or m.endswith("." + t) for m in modules)]


def check_columns(task: TrainingTask, columns: list[str]) -> list[str]:
    """The columns the task's type needs (its ``required_columns`` hook) that the dataset lacks,
    named by the template that uses them where one does."""
    missing = [c for c in trainer_for(task.spec.task_type).required_columns(task) if c not in columns]
    prep = task.spec.dataset.preprocessing
    problems, named = [], set()
    for name, template in (
        ("prompt_template", prep.prompt_template),
        ("completion_template", prep.completion_template),
    ):
        lacking = [f for f in template_fields(template) if f in missing] if template else []
        if lacking:
            named |= set(lacking)
            problems.append(
                f"spec.dataset.preprocessing.{name} uses {', '.join('{' + m + '}' for m in lacking)}, "
                f"but the dataset's columns are: {', '.join(columns)}"
            )
    rest = [c for c in missing if c not in named]
    if rest:
        problems.append(
            f"taskType '{task.spec.task_type}' needs the column(s) {', '.join(rest)}, "
            f"but the dataset's columns are: {', '.join(columns)}"
        )
    return problems


def hardware(task: TrainingTask, *, nodes_elsewhere: bool = False) -> list[str]:
    """What the task asks of this worker's hardware, checked before anything is downloaded (a
    7B model is 14 GB): raises PreflightError listing every problem; returns notes.

    ``nodes_elsewhere``: the training and the evaluations run on nodes of their own (Kubeflow
    TrainJobs), each with the task's ``gpu.count`` GPUs, which its pool guarantees a node can
    offer; this worker only orchestrates. Its GPUs are then not asked for here, and what needs
    CUDA (QLoRA, vLLM) is refused only where the nodes have no GPU either.
    """
    if nodes_elsewhere:
        return _hardware_of_nodes(task)
    from tasks.evaluate import BackendError, choose_backend
    from tasks.modeling import HardwareError, cuda_available, cuda_device_count, quantization_config

    problems: list[str] = []
    gpu, replicas = task.spec.resources.hardware.gpu, task.spec.resources.replicas
    visible = cuda_device_count()
    # the replicas of a run on this worker are torchrun nodes on this machine, each with its own GPUs;
    # gpu.count counts GPUs, so it is never run as CPU processes instead: that would bill and
    # behave unlike what the task says (replicas is the way to several CPU processes)
    if gpu.count * replicas > visible:
        asked = f"{gpu.count} × {gpu.type}" if gpu.type else f"{gpu.count} GPU(s)"
        if replicas > 1:
            asked += f" on each of {replicas} replicas"
        problems.append(
            f"spec.resources.hardware.gpu asks for {asked}, but this worker has {visible} CUDA GPU(s) — "
            "run it on a worker that has them (`mloc deploy` sends it to its GPU type's pool), "
            "or lower gpu.count"
        )
    try:
        quantization_config(task.spec.model.adapter)
    except HardwareError as exc:
        problems.append(str(exc))
    if task.spec.hyperparameters.get("use_vllm") and not cuda_available():
        problems.append(
            "hyperparameters.use_vllm generates the completions with vLLM, which needs a CUDA GPU, and this worker "
            "has none — run on a GPU pool, or set use_vllm: false"
        )
    if task.spec.evaluation.enabled:
        try:
            choose_backend(task.spec.evaluation.backend)
        except BackendError as exc:
            problems.append(str(exc))
    if problems:
        raise PreflightError(problems)
    notes = [f"hardware: {visible} CUDA GPU(s) for {gpu.count * replicas} asked"]
    if replicas > 1:
        notes.append(f"training runs as {replicas} torchrun nodes on this machine, meeting over loopback")
    return notes


def _hardware_of_nodes(task: TrainingTask) -> list[str]:
    from tasks.modeling import HardwareError, quantization_config

    problems: list[str] = []
    gpu, replicas = task.spec.resources.hardware.gpu, task.spec.resources.replicas
    if gpu.count == 0:  # CPU nodes: what needs CUDA cannot run on them any more than here
        try:
            quantization_config(task.spec.model.adapter)
        except HardwareError as exc:
            problems.append(str(exc))
        if task.spec.hyperparameters.get("use_vllm"):
            problems.append(
                "hyperparameters.use_vllm generates the completions with vLLM, which needs a CUDA GPU, and the "
                "training nodes have none (gpu.count: 0) — ask for gpu.count ≥ 1, or set use_vllm: false"
            )
    if problems:
        raise PreflightError(problems)
    each = f"{gpu.count} × {gpu.type or 'GPU'}" if gpu.count else "no GPU"
    return [
        f"hardware: the training runs on {replicas} nodes of their own ({each} each), each evaluation on one "
        "such node; this worker holds none"
    ]


def _format_first_row(task: TrainingTask, rows: Glance) -> None:
    format_rows = trainer_for(task.spec.task_type).format_rows
    try:
        format_rows(task, rows.head())
    except AttributeError:
        # a type of one's own may use more of `datasets.Dataset` than PlainRows has: it gets the real thing
        from datasets import Dataset

        first = rows.first
        format_rows(task, Dataset.from_dict({c: [first[c]] if first is not None else [] for c in rows.columns}))


def preflight(task: TrainingTask, inputs: dict[str, dict[str, Any]], base_dir: Path) -> list[str]:
    """Raises PreflightError listing every problem; returns notes on what was checked."""
    from tasks.columns import glance
    from tasks.data import DataError
    from tasks.upload import UploadError, check_writable

    problems: list[str] = []
    notes: list[str] = []
    source = task.spec.dataset.source
    try:
        # not tasks.data.load_rows: this process only orchestrates, and `datasets` costs it a second
        rows = glance(
            inputs["dataset"]["path"],
            inputs["dataset"]["source_type"],
            getattr(source, "split", "train"),
            getattr(source, "subset", None),
        )
        problems += check_columns(task, rows.columns)
        notes.append(f"dataset: {rows.rows} rows, columns {', '.join(rows.columns)}")
    except (DataError, ValueError, FileNotFoundError) as exc:
        problems.append(f"the dataset cannot be read: {exc}")
    else:
        if not problems:  # the first row through the type's formatting, as training will see it
            try:
                _format_first_row(task, rows)
            except DataError as exc:
                problems.append(str(exc))
    adapter = task.spec.model.adapter
    if adapter is not None and adapter.target_modules != "all-linear":
        names = weight_names(Path(inputs["model"]["path"]))
        if names is None:
            notes.append("target_modules not checked: the model has no safetensors weights")
        else:
            missing = missing_target_modules(list(adapter.target_modules), names)
            if missing:
                linear = sorted({n.rsplit(".", 2)[-2] for n in names if n.endswith(".weight") and ".layers." in n})
                problems.append(
                    f"spec.model.adapter.target_modules: {', '.join(missing)} not found in the model — "
                    f"its layers have: {', '.join(linear[:20])}, or use 'all-linear'"
                )
    try:
        check_writable(task.spec.output.destination, base_dir=base_dir)
        notes.append("output destination is writable")
    except UploadError as exc:
        problems.append(str(exc))
    if problems:
        raise PreflightError(problems)
    return notes
