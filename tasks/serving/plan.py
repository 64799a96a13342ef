"""What a ServingTask serves, laid out as its server reads it.

A service's files live in one folder, ``<MLOC home>/serving/<service>/``: the base model in
``models/<model name>`` and each adapter in ``adapters/<adapter name>``. Locally that is the
user's MLOC home; on Kubernetes the shared cache volume (``/cache/mloc``), which the converge
flow fills and every replica mounts. Both engines are pointed at those folders, so the names
clients ask for are the served names, whichever engine runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from configs.models import Engine, ServingTask

T = TypeVar("T")

SERVING_DIR = "serving"


@dataclass(frozen=True)
class ServePlan:
    service: str  # metadata.name: the service's (and Deployment's) name
    model_name: str  # the name clients ask for the base model by
    root: str  # the service's folder, as the server sees it
    adapters: tuple[str, ...]  # adapter names, each served under its own name
    engine: Engine
    port: int
    host: str
    gpus: int  # per replica: vLLM's tensor-parallel size when above 1

    @property
    def model_dir(self) -> str:
        return f"{self.root}/models/{self.model_name}"

    @property
    def models_dir(self) -> str:
        return f"{self.root}/models"

    def adapter_dir(self, name: str) -> str:
        return f"{self.root}/adapters/{name}"

    @property
    def served_names(self) -> list[str]:
        """What /v1/models must list once the service is up."""
        return [self.model_name, *self.adapters]


def model_name(task: ServingTask) -> str:
    return task.spec.model.name or task.metadata.name


def plan_for(task: ServingTask, mloc_home: str, host: str = "0.0.0.0") -> ServePlan:
    """The plan of ``task`` whose files lie under ``mloc_home`` (as the server sees it)."""
    spec = task.spec
    return ServePlan(
        service=task.metadata.name,
        model_name=model_name(task),
        root=f"{mloc_home.rstrip('/')}/{SERVING_DIR}/{task.metadata.name}",
        adapters=tuple(a.name for a in spec.model.adapters),
        engine=spec.engine,
        port=spec.port,
        host=host,
        gpus=spec.resources.hardware.gpu.count,
    )


def referenced_task(reference: str, base_dir: Path, kind: type[T], error: type[Exception]) -> tuple[T, Path]:
    """The task of kind ``kind`` in the task.yaml a field names (``reference``, relative to
    ``base_dir``), and its folder; ``error`` with the fix when it cannot be read or is another kind."""
    from configs import TaskError, load_task
    from tasks.registry import TASK_TYPES

    path = (base_dir / Path(reference).expanduser()).resolve()
    try:
        task = load_task(path, TASK_TYPES)
    except TaskError as exc:
        first = exc.issues[0] if exc.issues else None
        detail = f"{first.field}: {first.message}" if first else "it does not validate"
        raise error(
            f"the {kind.__name__} '{reference}' (resolved to {path}) cannot be read: {detail} — check the path, "
            "and run `mloc validate` on it"
        ) from exc
    if not isinstance(task, kind):
        raise error(f"'{reference}' is a {task.kind}, not a {kind.__name__} — name the task.yaml of a {kind.__name__}")
    return task, path.parent
