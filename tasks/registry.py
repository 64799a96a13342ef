"""The registry of task types, written as a plain list.

Adding a taskType is one module (with a ``TASK_TYPE`` and, for trainers, the hooks of
tasks/tasktype.py) plus one line here. A type of one's own, outside this repository, is the
same module registered under the ``mloc.task_types`` entry point group of its distribution
(``kto = my_package.train_kto``): it validates, deploys and runs like these.
"""

from __future__ import annotations

from dataclasses import replace
from types import ModuleType

from configs import TaskTypeInfo
from tasks import agent, rag, train_dpo, train_grpo, train_ppo, train_rm, train_sft
from tasks.tasktype import TrainerType, as_trainer, implements

BUILTIN: list[ModuleType] = [
    train_sft,
    train_rm,
    train_dpo,
    train_grpo,
    train_ppo,
    rag,
    agent,
]
ENTRY_POINTS = "mloc.task_types"


def _plugins() -> list[ModuleType]:
    """The task-type modules installed distributions register under :data:`ENTRY_POINTS`."""
    from importlib.metadata import entry_points

    builtin = {m.TASK_TYPE.name for m in BUILTIN}
    found: list[ModuleType] = []
    for point in entry_points(group=ENTRY_POINTS):
        module = point.load()
        name = getattr(getattr(module, "TASK_TYPE", None), "name", None)
        if name is None:
            raise TypeError(f"entry point {point.name} = {point.value} ({ENTRY_POINTS}) has no TASK_TYPE")
        if name in builtin or name in {m.TASK_TYPE.name for m in found}:
            raise ValueError(f"entry point {point.name} = {point.value} registers taskType '{name}' a second time")
        found.append(module)
    return found


MODULES: list[ModuleType] = BUILTIN + _plugins()


def _registered(module: ModuleType) -> TaskTypeInfo:
    """Its TASK_TYPE, marked unavailable (with the module's ``UNAVAILABLE`` reason) unless the
    module implements every hook: validation then refuses its tasks, so `mloc run`, `mloc
    deploy`, the REST API and the pipeline never accept a task they cannot run."""
    if implements(module):
        return module.TASK_TYPE
    reason = getattr(module, "UNAVAILABLE", "its pipeline steps are not implemented yet")
    return replace(module.TASK_TYPE, unavailable=reason)


TASK_TYPES: dict[str, TaskTypeInfo] = {m.TASK_TYPE.name: _registered(m) for m in MODULES}


def module_for(task_type: str) -> ModuleType:
    """The pipeline module of a taskType; KeyError lists the valid ones."""
    for module in MODULES:
        if module.TASK_TYPE.name == task_type:
            return module
    raise KeyError(f"'{task_type}' is not a valid taskType among [{', '.join(TASK_TYPES)}]")


def trainer_for(task_type: str) -> TrainerType:
    """The module of a training taskType, as the hooks the pipeline calls."""
    return as_trainer(module_for(task_type))
