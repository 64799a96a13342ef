"""Put a ServingTask's model and adapters where its server reads them.

Each source is fetched into MLOC's cache (``tasks.download``: the Hub cache, the S3 mirror,
a local path in place) and linked into the service's folder (tasks/serving/plan.py):
``models/<model name>`` and ``adapters/<adapter name>``. A ``type: training`` source is
resolved first to what that TrainingTask uploaded: the ``adapter/`` folder of its output
(for an adapter) or its ``model/`` folder (a full_model, for the base), following
``latest.json`` for a scheduled training.

``sources.json`` in the folder records what each link points at and the content hash it had,
so that the converge goal "the model is present" can tell at no cost whether the folder
still holds what the spec names.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs.models import (
    HuggingFaceDestination,
    HuggingFaceModelSource,
    LocalDestination,
    LocalSource,
    S3Destination,
    S3Source,
    TrainedModelSource,
    TrainingTask,
)
from tasks import download
from tasks.serving.plan import ServePlan, referenced_task
from tasks.storage.base import DownloadError

if TYPE_CHECKING:
    from configs.models import ServingTask

SOURCES_FILE = "sources.json"
LATEST = "latest.json"  # what tasks/upload.py's publish_latest writes beside the versions


@dataclass(frozen=True)
class Placed:
    """One served model or adapter: its name, where it came from, and what it holds."""

    role: str  # "model" or "adapter"
    name: str
    identifier: str
    revision: str
    content_hash: str
    path: str  # what the link in the service's folder points at

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PrepareError(DownloadError):
    """A source that cannot be served: missing, not a model, or a training that uploaded none."""


def _training_task(source: TrainedModelSource, base_dir: Path) -> tuple[TrainingTask, Path]:
    return referenced_task(source.task, base_dir, TrainingTask, PrepareError)


def _version_prefix(task: TrainingTask, version: str, read_pointer: Any) -> str:
    """The folder of one version of a training's output, relative to its destination path."""
    if task.spec.schedule is None:
        if version != "latest":
            raise PrepareError(
                f"version '{version}' is asked for, and '{task.metadata.name}' is not scheduled: it uploads one "
                "version, in place — set version: latest"
            )
        return ""
    if version != "latest":
        return f"versions/{version}/"
    pointer = read_pointer()
    if pointer is None:
        raise PrepareError(
            f"'{task.metadata.name}' has no {LATEST} at its destination: no run of it has completed an upload yet — "
            "run it first (mloc run, or its deployment)"
        )
    return f"versions/{pointer['version']}/"


def resolve_training(source: TrainedModelSource, base_dir: Path, folder: str, cache_dir: Path) -> download.Source:
    """The concrete source of what a training uploaded into ``folder`` ('adapter' or 'model')."""
    task, task_dir = _training_task(source, base_dir)
    artifact = "adapter_weights" if folder == "adapter" else "full_model"
    if artifact not in task.spec.output.artifacts:
        raise PrepareError(
            f"'{task.metadata.name}' does not upload {artifact} (its spec.output.artifacts: "
            f"{', '.join(task.spec.output.artifacts)}) — add {artifact} there, or serve another source"
        )
    destination = task.spec.output.destination
    if isinstance(destination, LocalDestination):
        root = Path(destination.path).expanduser()
        root = (root if root.is_absolute() else task_dir / root).resolve()

        def local_pointer() -> dict[str, Any] | None:
            pointer = root / LATEST
            return json.loads(pointer.read_text()) if pointer.is_file() else None

        prefix = _version_prefix(task, source.version, local_pointer)
        return LocalSource(type="local", path=str(root / prefix / folder))
    if isinstance(destination, S3Destination):
        base = destination.path.rstrip("/")

        def s3_pointer() -> dict[str, Any] | None:
            pointer = S3Source(
                type="s3",
                bucket=destination.bucket,
                path=f"{base}/{LATEST}",
                credentials_block=destination.credentials_block,
            )
            try:
                got = download.fetch(pointer, kind="model", base_dir=task_dir, cache_dir=cache_dir)
            except DownloadError:
                return None
            return json.loads(Path(got.path).read_text())

        prefix = _version_prefix(task, source.version, s3_pointer)
        return S3Source(
            type="s3",
            bucket=destination.bucket,
            path=f"{base}/{prefix}{folder}",
            credentials_block=destination.credentials_block,
        )
    assert isinstance(destination, HuggingFaceDestination)
    if source.version != "latest":
        raise PrepareError(
            "a training uploaded to the Hugging Face Hub keeps its versions as commits of the repo — "
            "set version: latest, or serve the repo at a revision with type: huggingface"
        )
    return HuggingFaceModelSource(
        type="huggingface",
        identifier=destination.identifier,
        revision="main",
        credentials_block=destination.credentials_block,
    )


def _fetch(role: str, name: str, source: Any, base_dir: Path, cache_dir: Path) -> Placed:
    subfolder = ""
    if isinstance(source, TrainedModelSource):
        folder = "adapter" if role == "adapter" else "model"
        source = resolve_training(source, base_dir, folder, cache_dir)
        if isinstance(source, HuggingFaceModelSource):
            subfolder = folder  # the Hub repo holds the whole upload; the files are in its folder
    got = download.fetch(source, kind="model", base_dir=base_dir, cache_dir=cache_dir)
    path = Path(got.path) / subfolder if subfolder else Path(got.path)
    marker = "adapter_config.json" if role == "adapter" else "config.json"
    if not (path / marker).is_file():
        what = "a LoRA adapter" if role == "adapter" else "a model"
        raise PrepareError(
            f"{role} '{name}' ({got.identifier}) has no {marker}: it is not {what} folder — "
            + (
                "point it at the folder peft's save_pretrained wrote"
                if role == "adapter"
                else "point it at a folder that transformers' save_pretrained wrote"
            )
        )
    return Placed(role, name, got.identifier, got.revision, got.content_hash, str(path))


def _link(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` in one step (a rename), so a reader never sees it missing."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and os.readlink(link) == target:
        return
    temporary = link.with_name(f".{link.name}.new")
    if temporary.is_symlink() or temporary.exists():
        temporary.unlink()
    temporary.symlink_to(target, target_is_directory=True)
    os.replace(temporary, link)


def recorded(plan: ServePlan) -> list[dict[str, Any]] | None:
    """What the service's folder was last filled with (its sources.json), or None."""
    path = Path(plan.root) / SOURCES_FILE
    try:
        return json.loads(path.read_text())["placed"]
    except (OSError, ValueError, KeyError):
        return None


def present(task: ServingTask, plan: ServePlan) -> bool:
    """Whether the service's folder holds every model and adapter the spec names, linked and intact."""
    placed = recorded(plan)
    if placed is None or [(p["role"], p["name"]) for p in placed] != _wanted(task, plan):
        return False
    if json.loads((Path(plan.root) / SOURCES_FILE).read_text()).get("spec") != _sources_digest(task):
        return False
    root = Path(plan.root)
    for entry in placed:
        link = root / ("models" if entry["role"] == "model" else "adapters") / entry["name"]
        marker = "adapter_config.json" if entry["role"] == "adapter" else "config.json"
        if not (link.is_symlink() and (link / marker).is_file()):
            return False
    return True


def _wanted(task: ServingTask, plan: ServePlan) -> list[tuple[str, str]]:
    return [("model", plan.model_name), *(("adapter", a.name) for a in task.spec.model.adapters)]


def _sources_digest(task: ServingTask) -> dict[str, Any]:
    model = task.spec.model
    return {
        "model": model.source.model_dump(mode="json"),
        "adapters": [a.model_dump(mode="json") for a in model.adapters],
    }


def prepare(task: ServingTask, plan: ServePlan, *, base_dir: Path, cache_dir: Path) -> list[Placed]:
    """Fetch the model and adapters of ``task`` and link them into ``plan.root``; what was placed.

    Raises :class:`PrepareError` (a DownloadError) for a source that cannot be served: nothing in
    the folder is changed then, so a service already running keeps what it had.
    """
    model = task.spec.model
    placed = [_fetch("model", plan.model_name, model.source, base_dir, cache_dir)]
    placed += [_fetch("adapter", a.name, a.source, base_dir, cache_dir) for a in model.adapters]
    root = Path(plan.root)
    for entry in placed:
        _link(root / ("models" if entry.role == "model" else "adapters") / entry.name, entry.path)
    keep = {"models": {plan.model_name}, "adapters": {a.name for a in model.adapters}}
    for folder, names in keep.items():  # an adapter dropped from the spec is no longer served
        for link in (root / folder).glob("*") if (root / folder).is_dir() else []:
            if link.name not in names and link.is_symlink():
                link.unlink()
    body = {"spec": _sources_digest(task), "placed": [p.to_dict() for p in placed]}
    temporary = root / f".{SOURCES_FILE}.new"
    temporary.write_text(json.dumps(body, indent=1, sort_keys=True))
    os.replace(temporary, root / SOURCES_FILE)
    return placed
