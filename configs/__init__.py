"""The task.yaml format (apiVersion mloc/v1): models, loading, validation, JSON Schema.

Imports pydantic, PyYAML and the standard library only, so validating a file never
pays for torch.
"""

from configs.errors import ConfigIssue, TaskError
from configs.models import InferenceTask, ServingTask, Task, TrainingTask
from configs.tasktypes import TaskTypeInfo
from configs.validate import (
    Result,
    expand_paths,
    load_task,
    load_task_data,
    validate_data,
    validate_file,
    validate_text,
)

__all__ = [
    "ConfigIssue",
    "InferenceTask",
    "Result",
    "ServingTask",
    "Task",
    "TaskError",
    "TaskTypeInfo",
    "TrainingTask",
    "expand_paths",
    "load_task",
    "load_task_data",
    "validate_data",
    "validate_file",
    "validate_text",
]
