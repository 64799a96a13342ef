"""What the task.yaml format needs to know about a taskType.

The registry of task types lives in ``tasks/registry.py`` (it knows the pipeline
modules); it hands these records to the validator, so this layer never imports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

Kind = Literal["TrainingTask", "InferenceTask"]
Direction = Literal["higher", "lower"]  # which values of a metric are better


@dataclass(frozen=True)
class TaskTypeInfo:
    """One taskType as the validator sees it."""

    name: str
    kind: Kind
    summary: str
    #: snapshot of the trainer config class ``spec.hyperparameters`` maps onto (e.g. trl.SFTConfig),
    #: written by ``python -m tasks.trainer_fields``; None for types that do not train
    fields_file: Path | None = None
    #: spec sections of which this type needs at least one, e.g. ("reward_model", "reward_functions")
    requires_one_of: tuple[str, ...] = ()
    #: example task.yaml for this type, shipped in configs/
    example: str = ""
    #: the metrics its evaluation produces, each with which way is better: what gates may check
    metrics: tuple[tuple[str, Direction], ...] = ()
    #: why this MLOC version cannot run the type yet ("" when it can); `mloc validate` refuses
    #: its tasks with this reason, so no entry point accepts a task that cannot run
    unavailable: str = ""

    @property
    def metric_names(self) -> list[str]:
        return [name for name, _ in self.metrics]

    @cached_property
    def _snapshot(self) -> dict[str, Any]:
        return json.loads(self.fields_file.read_text()) if self.fields_file else {"fields": {}}

    @property
    def trainer_config(self) -> str | None:
        """The trainer config class's name, e.g. "trl.SFTConfig"."""
        return self._snapshot.get("trainer_config")

    @property
    def hyperparameter_fields(self) -> Mapping[str, Mapping[str, Any]]:
        """Field name -> {"types": [...], "choices"?: [...], "default": ..., "help": ...}."""
        return self._snapshot["fields"]
