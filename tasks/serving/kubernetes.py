"""The Kubernetes side of a service: apply its objects, observe its pods, say how it stands.

The client is kubernetes_asyncio through prefect-kubernetes' ``KubernetesCredentials`` (in a
pod, its service account; else the kubeconfig KUBECONFIG names), as for TrainJobs.

- :func:`apply` writes only what differs: every object MLOC renders carries the digest of its
  rendering in an annotation (``mloc/spec-digest``, work_pools/serving.py); an object whose live digest is the
  same is left alone, so converging an unchanged spec sends no write. A changed one is
  replaced (its resourceVersion, and a Service's cluster IP, kept), which rolls the Deployment
  forward; an object the spec no longer renders (the ScaledObject once autoscaling is
  removed) is deleted.
- :func:`observe` reads the Deployment's status and its pods; :func:`classify` turns them into
  a phase and a reason, from what Kubernetes itself says (PodScheduled=False/Unschedulable,
  CrashLoopBackOff, ErrImagePull, ...).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

KEDA_GROUP, KEDA_VERSION, KEDA_PLURAL = "keda.sh", "v1alpha1", "scaledobjects"
# container states Kubernetes reports for a configuration it cannot start: no retry mends them
CONFIGURATION_REASONS = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}


@contextlib.asynccontextmanager
async def clients() -> AsyncIterator[tuple[Any, Any, Any]]:
    """(apps, core, custom objects) API clients."""
    from blocks.credentials import kubernetes_credentials

    credentials = kubernetes_credentials()
    async with (
        credentials.get_client("apps") as apps,
        credentials.get_client("core") as core,
        credentials.get_client("custom_objects") as custom,
    ):
        yield apps, core, custom


def _plain(api: Any, obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    return dict(api.api_client.sanitize_for_serialization(obj))


def _digest(obj: dict[str, Any] | None, key: str) -> str | None:
    if obj is None:
        return None
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(key)


class _Kind:
    """read / create / replace / delete of one kind of object, through its typed API."""

    def __init__(self, kind: str, apps: Any, core: Any, custom: Any) -> None:
        self.kind = kind
        self.api = {"Deployment": apps, "Service": core, "ScaledObject": custom}[kind]

    async def read(self, name: str, namespace: str) -> dict[str, Any] | None:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            if self.kind == "Deployment":
                got = await self.api.read_namespaced_deployment(name, namespace)
            elif self.kind == "Service":
                got = await self.api.read_namespaced_service(name, namespace)
            else:
                got = await self.api.get_namespaced_custom_object(
                    KEDA_GROUP, KEDA_VERSION, namespace, KEDA_PLURAL, name
                )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _plain(self.api, got)

    async def create(self, namespace: str, body: dict[str, Any]) -> None:
        if self.kind == "Deployment":
            await self.api.create_namespaced_deployment(namespace, body)
        elif self.kind == "Service":
            await self.api.create_namespaced_service(namespace, body)
        else:
            await self.api.create_namespaced_custom_object(KEDA_GROUP, KEDA_VERSION, namespace, KEDA_PLURAL, body)

    async def replace(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        if self.kind == "Deployment":
            await self.api.replace_namespaced_deployment(name, namespace, body)
        elif self.kind == "Service":
            await self.api.replace_namespaced_service(name, namespace, body)
        else:
            await self.api.replace_namespaced_custom_object(
                KEDA_GROUP, KEDA_VERSION, namespace, KEDA_PLURAL, name, body
            )

    async def delete(self, name: str, namespace: str) -> bool:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            if self.kind == "Deployment":
                await self.api.delete_namespaced_deployment(name, namespace)
            elif self.kind == "Service":
                await self.api.delete_namespaced_service(name, namespace)
            else:
                await self.api.delete_namespaced_custom_object(KEDA_GROUP, KEDA_VERSION, namespace, KEDA_PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True


KINDS = ("Deployment", "Service", "ScaledObject")


def _with_live_fields(kind: str, wanted: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """``wanted`` as a replacement of ``live``: its resourceVersion, and a Service's cluster IPs."""
    body = {**wanted, "metadata": {**wanted["metadata"]}}
    if kind == "Deployment" and "replicas" not in (wanted.get("spec") or {}):
        # autoscaled: the replica count is KEDA's (its HPA's); a replacement without one would reset it to 1
        live_replicas = (live.get("spec") or {}).get("replicas")
        if live_replicas is not None:
            body["spec"] = {**wanted["spec"], "replicas": live_replicas}
    version = (live.get("metadata") or {}).get("resourceVersion")
    if version:
        body["metadata"]["resourceVersion"] = version
    if kind == "Service":
        spec = dict(body.get("spec") or {})
        for key in ("clusterIP", "clusterIPs"):
            if (live.get("spec") or {}).get(key):
                spec[key] = live["spec"][key]
        body["spec"] = spec
    return body


async def differing(objects: list[dict[str, Any]], namespace: str, digest_key: str) -> list[str]:
    """What :func:`apply` would write, as 'create Deployment x' lines; empty when all is applied."""
    async with clients() as (apps, core, custom):
        return await _plan(objects, namespace, digest_key, apps, core, custom, write=False)


async def apply(objects: list[dict[str, Any]], namespace: str, digest_key: str) -> list[str]:
    """Create, replace or delete what differs from ``objects``, each object's rendered digest in
    its annotation ``digest_key``; the writes made, as lines."""
    async with clients() as (apps, core, custom):
        return await _plan(objects, namespace, digest_key, apps, core, custom, write=True)


async def _plan(
    objects: list[dict[str, Any]], namespace: str, key: str, apps: Any, core: Any, custom: Any, *, write: bool
) -> list[str]:
    writes: list[str] = []
    rendered = {o["kind"]: o for o in objects}
    name = objects[0]["metadata"]["name"]
    for kind in KINDS:
        api = _Kind(kind, apps, core, custom)
        wanted = rendered.get(kind)
        live = await api.read(name, namespace)
        if wanted is None:
            if live is not None and _digest(live, key) is not None:  # MLOC's, no longer rendered
                writes.append(f"delete {kind} {name}")
                if write:
                    await api.delete(name, namespace)
            continue
        if live is None:
            writes.append(f"create {kind} {name}")
            if write:
                await api.create(namespace, wanted)
        elif _digest(live, key) != _digest(wanted, key):
            writes.append(f"replace {kind} {name}")
            if write:
                await api.replace(name, namespace, _with_live_fields(kind, wanted, live))
    return writes


async def delete_all(name: str, namespace: str) -> list[str]:
    """Take a service down: its ScaledObject, Service and Deployment; what was deleted."""
    deleted = []
    async with clients() as (apps, core, custom):
        for kind in reversed(KINDS):
            if await _Kind(kind, apps, core, custom).delete(name, namespace):
                deleted.append(f"delete {kind} {name}")
    return deleted


# --- observing --------------------------------------------------------------------------------


@dataclass
class ClusterView:
    """What the API server says of a service's Deployment and pods."""

    deployment: dict[str, Any] | None
    pods: list[dict[str, Any]] = field(default_factory=list)

    @property
    def wanted(self) -> int:
        return int(((self.deployment or {}).get("spec") or {}).get("replicas") or 0)

    @property
    def available(self) -> int:
        return int(((self.deployment or {}).get("status") or {}).get("availableReplicas") or 0)


async def observe(name: str, namespace: str, selector: str) -> ClusterView:
    async with clients() as (apps, core, custom):
        deployment = await _Kind("Deployment", apps, core, custom).read(name, namespace)
        pods = _plain(core, await core.list_namespaced_pod(namespace, label_selector=selector)).get("items") or []
    return ClusterView(deployment, list(pods))


def classify(view: ClusterView) -> tuple[str, str | None, str]:
    """(phase, reason, message) of a service from its Deployment and pods."""
    if view.deployment is None:
        return "Pending", None, "the Deployment is not there yet"
    for pod in view.pods:
        status = pod.get("status") or {}
        for condition in status.get("conditions") or []:
            if (condition.get("type"), condition.get("status"), condition.get("reason")) == (
                "PodScheduled",
                "False",
                "Unschedulable",
            ):
                return "Failed", "Unschedulable", f"pod {pod['metadata']['name']}: {condition.get('message', '')}"
        for container in status.get("containerStatuses") or []:
            state = container.get("state") or {}
            waiting = state.get("waiting") or {}
            reason = waiting.get("reason")
            if reason in CONFIGURATION_REASONS:
                return (
                    "Failed",
                    "ConfigurationError",
                    f"pod {pod['metadata']['name']}: {reason}: {waiting.get('message', '')}",
                )
            if reason == "CrashLoopBackOff" or (
                (state.get("terminated") or {}).get("exitCode") not in (None, 0) and container.get("restartCount", 0)
            ):
                last = (container.get("lastState") or {}).get("terminated") or state.get("terminated") or {}
                return (
                    "Failed",
                    "Crashing",
                    f"pod {pod['metadata']['name']}: the server exited {last.get('exitCode', '?')} "
                    f"({last.get('reason', reason or 'Error')}), restarted {container.get('restartCount', 0)} time(s)",
                )
    if view.wanted and view.available >= view.wanted:
        return "Running", None, f"{view.available} of {view.wanted} replica(s) available"
    return "Pending", None, f"{view.available} of {view.wanted} replica(s) available"
