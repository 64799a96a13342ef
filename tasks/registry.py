"""The registry of task types, written as a plain list.

Adding a taskType is one module (with a ``TASK_TYPE`` and, for trainers,
``trainer_config_class``) plus one line here.
"""

from __future__ import annotations

from types import ModuleType

from configs import TaskTypeInfo
from tasks import agent, rag, train_dpo, train_grpo, train_ppo, train_rm, train_sft
from tasks.tasktype import TrainerType, as_trainer, implements

MODULES: list[ModuleType] = [
    train_sft,
    train_rm,
    train_dpo,
    train_grpo,
    train_ppo,
    rag,
    agent,
]

TASK_TYPES: dict[str, TaskTypeInfo] = {m.TASK_TYPE.name: m.TASK_TYPE for m in MODULES}


def module_for(task_type: str) -> ModuleType:
    """The pipeline module of a taskType; KeyError lists the valid ones."""
    for module in MODULES:
        if module.TASK_TYPE.name == task_type:
            return module
    raise KeyError(f"'{task_type}' is not a valid taskType among [{', '.join(TASK_TYPES)}]")


def runnable(task_type: str) -> bool:
    """Whether MLOC can run this taskType end to end yet: its module implements every hook of
    tasks/tasktype.py. The one place this is decided; `mloc run`, `mloc deploy`, the REST API
    and the pipeline all ask here."""
    return implements(module_for(task_type))


def trainer_for(task_type: str) -> TrainerType:
    """The module of a training taskType, as the hooks the pipeline calls."""
    return as_trainer(module_for(task_type))
