"""Where a ServingTask answers: what an InferenceTask's ``model.source: {type: service}`` resolves to.

The ServingTask's own task.yaml says what it serves (its base model's name and its
adapters') and how: a remote one names its endpoint; one served locally (`mloc serve up
--local`) has its base URL in its state file under the MLOC home; one on Kubernetes answers
at its Service's cluster DNS name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from configs.models import RemoteModelSource, ServingTask
from tasks.serving.plan import SERVING_DIR, model_name, referenced_task

if TYPE_CHECKING:
    from configs.models import ServiceModelSource

STATE_FILE = "service.json"  # written by the local backend beside the service's models/ folder
CLUSTER_DOMAIN = "svc"  # <service>.<namespace>.svc resolves from any pod of the cluster


class EndpointError(RuntimeError):
    """The service a task names cannot be read, or does not serve the model asked for."""


def _serving_task(source: ServiceModelSource, base_dir: Path) -> ServingTask:
    return referenced_task(source.task, base_dir, ServingTask, EndpointError)[0]


def local_base_url(name: str, mloc_home: Path) -> str | None:
    """The base URL of a service served locally, from its state file; None when it is not."""
    try:
        state = json.loads((mloc_home / SERVING_DIR / name / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    url = state.get("base_url")
    return url if isinstance(url, str) else None


def resolve(source: ServiceModelSource, base_dir: Path, mloc_home: Path, namespace: str) -> RemoteModelSource:
    """The remote endpoint an inference run talks to for ``source``."""
    task = _serving_task(source, base_dir)
    spec = task.spec
    if isinstance(spec.model.source, RemoteModelSource):
        remote = spec.model.source
        if source.model not in (None, remote.model):
            raise EndpointError(
                f"'{task.metadata.name}' registers the remote model '{remote.model}', not '{source.model}' — "
                "remove spec.model.source.model, or set it to that name"
            )
        return remote.model_copy(update={"timeout_seconds": source.timeout_seconds})
    served = [model_name(task), *(a.name for a in spec.model.adapters)]
    wanted = source.model or served[0]
    if wanted not in served:
        raise EndpointError(
            f"'{task.metadata.name}' serves {', '.join(served)}, not '{wanted}' — set spec.model.source.model "
            "to one of them"
        )
    base_url = local_base_url(task.metadata.name, mloc_home) or (
        f"http://{task.metadata.name}.{namespace}.{CLUSTER_DOMAIN}:{spec.port}/v1"
    )
    return RemoteModelSource(type="remote", base_url=base_url, model=wanted, timeout_seconds=source.timeout_seconds)
