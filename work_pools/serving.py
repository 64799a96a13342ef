"""The Kubernetes objects of a ServingTask on a pool: a Deployment, its Service, and a KEDA ScaledObject.

The server's pods get what the pool's Job pods get, from the same functions of job_template.py:
the GPU toleration and product affinity, ``nvidia.com/gpu`` = ``gpu.count``, /dev/shm and the
cache volume (the service's files are there, under ``MLOC_HOME``), the credentials Secret, the
non-root security context and the job service account. The Service (ClusterIP) gives clients one
address, ``http://<name>.<namespace>.svc:<port>/v1``; with ``spec.autoscaling`` a ScaledObject lets
KEDA size the Deployment on vLLM's request backlog, read from Prometheus.

Every object carries ``mloc/spec-digest``: the sha256 of its canonical JSON as rendered (the
annotation left out), so converging an unchanged spec can tell it writes nothing
(tasks/serving/kubernetes.py). The Deployment and the Service are checked against the models of
the Kubernetes client (kubernetes_asyncio), the ScaledObject against KEDA's documented fields: a
key either does not know is a ValueError, not dropped.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from work_pools.job_template import (
    DEFAULT_CACHE_CLAIM,
    GPU_RESOURCE,
    JOB_SERVICE_ACCOUNT,
    NAMESPACE,
    cache_env,
    credentials_env_from,
    gpu_affinity,
    gpu_toleration,
    pod_security_context,
    shm_size,
    volume_mounts,
    volumes,
)
from work_pools.pool_definition import PoolDefinition
from work_pools.selection import PoolError
from work_pools.trainjob import MANAGED_BY_LABEL, OWNER_LABEL, PROJECT_LABEL, TASK_LABEL

NAME_LABEL = "app.kubernetes.io/name"
DIGEST_ANNOTATION = "mloc/spec-digest"
CONTAINER = "server"
PORT_NAME = "http"
HEALTH_PATH = "/health"  # answered by both engines once the model is loaded
KEDA_API_VERSION = "keda.sh/v1alpha1"
# vLLM's count of requests waiting for a slot, on its /metrics: what KEDA scales on
BACKLOG_METRIC = "vllm:num_requests_waiting"
# the prometheus-operator's Service in front of every Prometheus of its namespace; a cluster whose
# Prometheus lives elsewhere passes its address
DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"
PROBE_PERIOD_SECONDS = 10
# KEDA's pollingInterval: how often the backlog is read; its default (30 s) is slow beside a request's seconds
POLLING_SECONDS = 15
# what a rollout may take beyond the model's load: scheduling, and pulling a CUDA image of several GB
ROLLOUT_MARGIN_SECONDS = 600
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def render_service(
    task: Any,
    pool: PoolDefinition,
    *,
    command: list[str],
    working_dir: str | None,
    image: str | None = None,
    namespace: str = NAMESPACE,
    cache_claim: str = DEFAULT_CACHE_CLAIM,
    prometheus: str = DEFAULT_PROMETHEUS,
) -> list[dict[str, Any]]:
    """The Deployment, the Service and (with ``spec.autoscaling``) the ScaledObject that serve ``task``
    on ``pool``, as plain dicts (as kubectl takes them), each named ``metadata.name``.

    ``command`` is the server's argv, run in ``working_dir`` (None: the image's); ``image``
    defaults to the pool's. Raises :class:`PoolError` for a task the pool cannot serve, ValueError
    for a name Kubernetes would refuse or what the models cannot hold.
    """
    _check_pool(task, pool)
    name = task.metadata.name
    if not _DNS_1035.match(name):
        raise ValueError(
            f"metadata.name '{name}' cannot name a Service — a Service's name starts with a letter "
            "(a DNS-1035 label): rename the task"
        )
    spec = task.spec
    labels = {
        NAME_LABEL: name,
        MANAGED_BY_LABEL: "mloc",
        # validated task.yaml values: the name a DNS-1123 label, owner and project label values
        TASK_LABEL: name,
        OWNER_LABEL: task.metadata.owner,
        PROJECT_LABEL: task.metadata.project,
    }
    metadata = {"name": name, "namespace": namespace, "labels": labels}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": _deployment_spec(task, pool, labels, command, working_dir, image, cache_claim),
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [{"name": PORT_NAME, "protocol": "TCP", "port": spec.port, "targetPort": PORT_NAME}],
        },
    }
    objects = [_round_trip(deployment, "V1Deployment"), _round_trip(service, "V1Service")]
    if spec.autoscaling is not None:
        objects.append(_checked_scaled_object(_scaled_object(task, metadata, namespace, prometheus)))
    return [_with_digest(o) for o in objects]


def selector_labels(name: str) -> dict[str, str]:
    """The labels the Deployment and the Service select the service's pods by: never changed for a service
    (a Deployment's selector cannot be), unlike its owner or project."""
    return {NAME_LABEL: name, MANAGED_BY_LABEL: "mloc"}


def pod_selector(name: str) -> str:
    """:func:`selector_labels` as a label selector, for listing the service's pods."""
    return ",".join(f"{key}={value}" for key, value in selector_labels(name).items())


def spec_digest(manifest: dict[str, Any]) -> str:
    """The sha256 of ``manifest``'s canonical JSON, its own digest annotation left out."""
    metadata = dict(manifest.get("metadata") or {})
    annotations = {k: v for k, v in (metadata.get("annotations") or {}).items() if k != DIGEST_ANNOTATION}
    metadata.pop("annotations", None)
    if annotations:
        metadata["annotations"] = annotations
    canonical = json.dumps({**manifest, "metadata": metadata}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _with_digest(manifest: dict[str, Any]) -> dict[str, Any]:
    # a copy that shares nothing: the objects share their labels as built, and each is the caller's to change
    manifest = json.loads(json.dumps(manifest))
    metadata = manifest["metadata"]
    metadata["annotations"] = {**(metadata.get("annotations") or {}), DIGEST_ANNOTATION: spec_digest(manifest)}
    return manifest


def _check_pool(task: Any, pool: PoolDefinition) -> None:
    spec = task.spec
    if spec.model.source.type == "remote":
        raise PoolError(
            "spec.model.source: the model is remote — its endpoint is registered, and nothing is deployed for it"
        )
    if pool.kind != "kubernetes":
        raise PoolError(
            f"pool '{pool.name}' runs processes on its worker's machine — a Deployment needs a kubernetes pool"
        )
    gpus = spec.resources.hardware.gpu.count
    if spec.engine.name == "vllm" and pool.gpu_type is None:
        raise PoolError(
            f"spec.engine.name: vllm, and pool '{pool.name}' has no GPU: its image ({pool.image}) has no vLLM — "
            "use engine name: transformers, or ask for a GPU in spec.resources.hardware.gpu"
        )
    if gpus > pool.gpus_per_node:
        raise PoolError(
            f"spec.resources.hardware.gpu.count: asks for {gpus} GPU(s) per replica and a node of pool '{pool.name}' "
            f"offers {pool.gpus_per_node} — lower gpu.count, or pick a pool with bigger nodes"
        )
    if pool.gpu_type is not None and gpus == 0:
        # the CUDA image sets NVIDIA_VISIBLE_DEVICES=all: a pod asking for no GPU would see every GPU of its node
        raise PoolError(
            f"spec.resources.hardware.gpu: asks for no GPU, and pool '{pool.name}' is a GPU pool — "
            "serve it on the cpu pool, or ask for a GPU"
        )


def _deployment_spec(
    task: Any,
    pool: PoolDefinition,
    labels: dict[str, str],
    command: list[str],
    working_dir: str | None,
    image: str | None,
    cache_claim: str,
) -> dict[str, Any]:
    spec = task.spec
    hardware = spec.resources.hardware
    memory = str(hardware.memory)
    # limits equal to requests: Guaranteed QoS, as for the pool's Job pods. A string for the GPUs: the
    # client's model holds quantities as strings
    quantities = {"cpu": str(hardware.cpu), "memory": memory}
    if pool.gpu_type is not None:
        quantities[GPU_RESOURCE] = str(hardware.gpu.count)
    probe = {"httpGet": {"path": HEALTH_PATH, "port": PORT_NAME}, "periodSeconds": PROBE_PERIOD_SECONDS}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image or pool.image,
        "command": list(command),
        "ports": [{"name": PORT_NAME, "containerPort": spec.port, "protocol": "TCP"}],
        "env": cache_env(),
        "envFrom": credentials_env_from(),
        "resources": {"requests": dict(quantities), "limits": dict(quantities)},
        "volumeMounts": volume_mounts(),
        # liveness and readiness wait for it: a replica has startup_timeout_seconds to load its model
        "startupProbe": {**probe, "failureThreshold": math.ceil(spec.startup_timeout_seconds / PROBE_PERIOD_SECONDS)},
        "readinessProbe": {**probe, "failureThreshold": 3},
        # a server busy generating may answer /health late: restarted after a minute without an answer
        "livenessProbe": {**probe, "timeoutSeconds": 5, "failureThreshold": 6},
    }
    if working_dir is not None:
        container["workingDir"] = working_dir
    pod_spec: dict[str, Any] = {
        "serviceAccountName": JOB_SERVICE_ACCOUNT,
        "securityContext": pod_security_context(),
        # Kubernetes would give the pods a <SERVICE>_PORT variable per Service of the namespace, and vLLM
        # reads VLLM_PORT as its own setting (a Service named "vllm" would break it)
        "enableServiceLinks": False,
        "volumes": volumes(shm_size(memory), cache_claim),
        "containers": [container],
    }
    if pool.gpu_type is not None:
        pod_spec["tolerations"] = [gpu_toleration()]
        affinity = gpu_affinity(pool)
        if affinity is not None:
            pod_spec["affinity"] = affinity
    pod_metadata: dict[str, Any] = {"labels": labels}
    if spec.engine.name == "vllm":
        # for a Prometheus that scrapes annotated pods: the backlog KEDA scales on is on vLLM's /metrics
        pod_metadata["annotations"] = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(spec.port),
            "prometheus.io/path": "/metrics",
        }
    deployment: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(task.metadata.name)},
        # a new replica must be ready before an old one goes: the service never has fewer than it had
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "progressDeadlineSeconds": spec.startup_timeout_seconds + ROLLOUT_MARGIN_SECONDS,
        "template": {"metadata": pod_metadata, "spec": pod_spec},
    }
    if spec.autoscaling is None:
        deployment = {"replicas": spec.resources.replicas, **deployment}
    # else no replicas: KEDA's HPA owns the count, and a rendered one would reset it on every apply
    return deployment


def _scaled_object(task: Any, metadata: dict[str, Any], namespace: str, prometheus: str) -> dict[str, Any]:
    autoscaling = task.spec.autoscaling
    name = task.metadata.name
    # the Deployment's pods are <name>-<template hash>-<suffix>: the anchored regex matches no other service's
    pods = f'{BACKLOG_METRIC}{{namespace="{namespace}",pod=~"{name}-[a-z0-9]+-[a-z0-9]+"}}'
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "pollingInterval": POLLING_SECONDS,
            "minReplicaCount": autoscaling.min_replicas,
            "maxReplicaCount": autoscaling.max_replicas,
            "triggers": [
                {
                    "type": "prometheus",
                    "name": "backlog",
                    # AverageValue: the HPA wants ceil(requests waiting / threshold) replicas
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": prometheus,
                        # one element even with no pod to read (KEDA's prometheus scaler wants a single value)
                        "query": f"sum({pods}) or vector(0)",
                        "threshold": str(autoscaling.target_backlog),
                    },
                }
            ],
        },
    }


# --- the ScaledObject, as KEDA documents it ------------------------------------------------------
# KEDA 2.15's reference (docs/2.15/reference/scaledobject-spec and scalers/prometheus): what MLOC may
# write, no more; a field MLOC starts to use is added here once checked against those pages.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _ScaleTargetRef(_Strict):
    apiVersion: str | None = None
    kind: str | None = None
    name: str = Field(min_length=1)
    envSourceContainerName: str | None = None


class _PrometheusMetadata(_Strict):
    # trigger metadata is a map of strings
    serverAddress: str = Field(pattern=r"^https?://")
    query: str = Field(min_length=1)
    threshold: str = Field(pattern=r"^\d+(\.\d+)?$")
    activationThreshold: str | None = Field(None, pattern=r"^\d+(\.\d+)?$")
    queryParameters: str | None = None
    namespace: str | None = None
    customHeaders: str | None = None
    ignoreNullValues: Literal["true", "false"] | None = None
    unsafeSsl: Literal["true", "false"] | None = None
    timeout: str | None = None


class _PrometheusTrigger(_Strict):
    type: Literal["prometheus"]
    metadata: _PrometheusMetadata
    name: str | None = None
    useCachedMetrics: bool | None = None
    metricType: Literal["AverageValue", "Value"] | None = None


class _Fallback(_Strict):
    failureThreshold: int = Field(ge=1)
    replicas: int = Field(ge=0)


class _ScaledObjectSpec(_Strict):
    scaleTargetRef: _ScaleTargetRef
    pollingInterval: int | None = Field(None, ge=1)
    cooldownPeriod: int | None = Field(None, ge=0)
    initialCooldownPeriod: int | None = Field(None, ge=0)
    idleReplicaCount: int | None = Field(None, ge=0)
    minReplicaCount: int | None = Field(None, ge=0)
    maxReplicaCount: int | None = Field(None, ge=1)
    fallback: _Fallback | None = None
    triggers: list[_PrometheusTrigger] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> _ScaledObjectSpec:
        if (self.minReplicaCount or 0) > (self.maxReplicaCount or 100):  # KEDA's defaults: 0 and 100
            raise ValueError("minReplicaCount is above maxReplicaCount")
        return self


class _ScaledObject(_Strict):
    apiVersion: Literal["keda.sh/v1alpha1"]
    kind: Literal["ScaledObject"]
    metadata: dict[str, Any]  # an ObjectMeta: checked with the Kubernetes models
    spec: _ScaledObjectSpec


def _checked_scaled_object(manifest: dict[str, Any]) -> dict[str, Any]:
    try:
        _ScaledObject.model_validate(manifest)
    except ValidationError as exc:
        raise ValueError(f"the ScaledObject is not one KEDA 2.15 documents — {exc}") from exc
    return {**manifest, "metadata": _round_trip(manifest["metadata"], "V1ObjectMeta")}


# --- the Deployment and the Service, as the Kubernetes client's models hold them -----------------


def _round_trip(manifest: dict[str, Any], model: str) -> dict[str, Any]:
    """``manifest`` built into the client's ``model`` and written back; ValueError names what it lost.

    As ApiClient.deserialize does it (which kubernetes_asyncio cannot run without an event loop):
    by each model's ``openapi_types`` and ``attribute_map``. Those models ignore keys they do not
    know, and their primitive deserialisation converts ('8000' to 8000), so each key and each
    value's type is checked on the way in, and the dump must equal the input.
    """
    from kubernetes_asyncio import __version__

    problems: list[str] = []
    built = _build(manifest, model, "", problems)
    if not problems:
        dumped = _dump(built)
        if dumped != manifest:
            problems.append("<root> (changed by the round trip)")
    if problems:
        raise ValueError(
            f"the {model} model of kubernetes_asyncio {__version__} has no place for {', '.join(problems)} "
            "— leave them out, or give them where the Kubernetes API has them"
        )
    return manifest


_NATIVE = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float)}


def _build(value: Any, kind: str, path: str, problems: list[str]) -> Any:
    from kubernetes_asyncio.client import models

    if kind.startswith("list["):
        if not isinstance(value, list):
            problems.append(f"{path.lstrip('.')} (list expected, not {type(value).__name__})")
            return None
        return [_build(item, kind[5:-1], f"{path}[{i}]", problems) for i, item in enumerate(value)]
    if kind.startswith("dict("):
        if not isinstance(value, dict):
            problems.append(f"{path.lstrip('.')} (mapping expected, not {type(value).__name__})")
            return None
        inner = kind[5:-1].split(", ", 1)[1]
        return {key: _build(item, inner, f"{path}[{key}]", problems) for key, item in value.items()}
    if kind in _NATIVE:
        # bool is an int to Python, not to Kubernetes
        if isinstance(value, bool) != (kind == "bool") or not isinstance(value, _NATIVE[kind]):
            problems.append(f"{path.lstrip('.')} ({kind} expected, not {type(value).__name__})")
        return value
    if kind in ("object", "date", "datetime"):  # IntOrString and the like: JSON as it is
        return value
    klass = getattr(models, kind)
    if not isinstance(value, dict):
        problems.append(f"{path.lstrip('.')} ({kind} expected, not {type(value).__name__})")
        return None
    fields = {key: attr for attr, key in klass.attribute_map.items()}
    problems += [f"{path}.{key}".lstrip(".") for key in value if key not in fields]
    arguments = {
        fields[key]: _build(item, klass.openapi_types[fields[key]], f"{path}.{key}", problems)
        for key, item in value.items()
        if key in fields
    }
    try:
        return klass(**arguments)
    except (TypeError, ValueError) as exc:  # the model's own checks: a required field missing
        problems.append(f"{path.lstrip('.') or '<root>'} ({exc})")
        return None


def _dump(value: Any) -> Any:
    if hasattr(value, "openapi_types"):
        return {
            value.attribute_map[attr]: _dump(getattr(value, attr))
            for attr in value.openapi_types
            if getattr(value, attr) is not None
        }
    if isinstance(value, list):
        return [_dump(item) for item in value]
    if isinstance(value, dict):
        return {key: _dump(item) for key, item in value.items()}
    return value
