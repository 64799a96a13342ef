"""What a ServingTask serves, laid out as its server reads it.

A service's files live in one folder, ``<MLOC home>/serving/<service>/``: the base model in
``models/<model name>`` and each adapter in ``adapters/<adapter name>``. Locally that is the
user's MLOC home; on Kubernetes the shared cache volume (``/cache/mloc``), which the converge
flow fills and every replica mounts. Both engines are pointed at those folders, so the names
clients ask for are the served names, whichever engine runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from configs.models import Engine, ServingTask

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
