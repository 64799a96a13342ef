"""What the infra tests share: where infra/ is, and its YAML read as plain data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
HELM = INFRA / "helm"
DOCKER = INFRA / "docker"


def yaml_documents(path: Path) -> list[Any]:
    """Every non-empty document of a (possibly multi-document) YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object under infra/k8s, with the file it is in."""
    return [(path, doc) for path in sorted(K8S.glob("*.y*ml")) for doc in yaml_documents(path)]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in k8s_objects() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} under infra/k8s, found {len(found)}"
    return found[0]


def namespace() -> str:
    """The one namespace infra/k8s creates, which everything else lives in."""
    names = [doc["metadata"]["name"] for _, doc in k8s_objects() if doc["kind"] == "Namespace"]
    assert len(names) == 1, f"infra/k8s should create exactly one Namespace, found {names}"
    return names[0]
