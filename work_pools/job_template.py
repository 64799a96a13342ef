"""A pool's Prefect base job template, and the job variables a task's deployment sets on it.

Both live here because they must agree on the variable names. Kubernetes pools start from
prefect-kubernetes' own default template, so Prefect's placeholders (command, env, labels,
name, namespace, ...) keep working, and add what GPU training needs on Kubernetes.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from configs.quantities import parse_quantity
from work_pools.pool_definition import PoolDefinition

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
HF_HOME = "/cache/huggingface"
MLOC_HOME = "/cache/mloc"
DEFAULT_CACHE_CLAIM = "mloc-hf-cache"
DEFAULT_CREDENTIALS_SECRET = "mloc-credentials"
FINISHED_JOB_TTL_SECONDS = 3600
NAMESPACE = "mloc"  # where infra/k8s gives the worker its rights
JOB_SERVICE_ACCOUNT = "mloc-job"  # infra/k8s: no API access, no token mounted
ORCHESTRATOR_SERVICE_ACCOUNT = "mloc-orchestrator"  # infra/k8s: may create, follow and delete TrainJobs
# what the flow pod of a multi-node task asks for: it orchestrates, downloads into the shared cache and
# reads the dataset's first rows; the training and evaluations run on the TrainJobs' nodes
ORCHESTRATOR_CPU, ORCHESTRATOR_MEMORY = "2", "8Gi"
# the flow pod's own name and uid (the downward API): a TrainJob it submits is owned by it, so that
# Kubernetes deletes the TrainJob with the pod even when the pod could not clean up (killed, its node lost)
POD_NAME_ENV, POD_UID_ENV = "MLOC_POD_NAME", "MLOC_POD_UID"
RUN_AS = 1000  # the uid/gid the worker images run as (infra/docker)
DEFAULT_SHM_SIZE = "8Gi"


def base_job_template(pool: PoolDefinition) -> dict[str, Any]:
    """The base job template the Prefect work pool ``pool.name`` is created with."""
    if pool.kind == "process":
        from prefect.workers.process import ProcessWorker

        return copy.deepcopy(ProcessWorker.get_default_base_job_template())
    from prefect_kubernetes.worker import KubernetesWorker

    template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    _add_job_settings(template, pool)
    _add_volumes_and_env(template)
    if pool.gpu_type is not None:
        _add_gpus(template, pool)
    return template


# The flow pod of a task whose training runs as a TrainJob (runs_as_trainjob) is told so, and where to
# submit it, by these variables (flows/trainjob_run.py reads them)
TRAIN_LAUNCHER_ENV = "MLOC_TRAIN_LAUNCHER"  # "trainjob"; unset: the training runs in the flow run's own pod
TRAINJOB_POOL_ENV = "MLOC_TRAINJOB_POOL"  # the pool whose image and GPU settings the nodes get
TRAINJOB_NAMESPACE_ENV = "MLOC_TRAINJOB_NAMESPACE"
TRAINJOB_CACHE_CLAIM_ENV = "MLOC_TRAINJOB_CACHE_CLAIM"  # the claim the flow pod mounts: the nodes mount it too


def job_variables(task: Any, pool: PoolDefinition) -> dict[str, Any]:
    """What a deployment of ``task`` on ``pool`` sets: its resources, per replica, and for a training run
    as a TrainJob (:func:`runs_as_trainjob`) the variables that tell the flow pod so."""
    if pool.kind == "process":
        return {}  # a process runs with what its machine has; nothing to request
    hardware = task.spec.resources.hardware
    cpu, memory = str(hardware.cpu), str(hardware.memory)
    values: dict[str, Any] = {
        # limits equal to requests: with GPUs (whose request must equal the limit anyway) that is
        # Guaranteed QoS, so a training pod is the last one evicted when a node runs short
        "cpu_request": cpu,
        "cpu_limit": cpu,
        "memory_request": memory,
        "memory_limit": memory,
        "shm_size": shm_size(memory),
    }
    trainjob = runs_as_trainjob(task, pool)
    if trainjob:
        # the one flow pod with Kubernetes API rights, and only over TrainJobs and their pods' logs
        values["service_account_name"] = ORCHESTRATOR_SERVICE_ACCOUNT
        # an orchestrator's size, not a node's: the task's cpu and memory are what each TrainJob node gets
        values |= {
            "cpu_request": ORCHESTRATOR_CPU,
            "cpu_limit": ORCHESTRATOR_CPU,
            "memory_request": ORCHESTRATOR_MEMORY,
            "memory_limit": ORCHESTRATOR_MEMORY,
            "shm_size": shm_size(ORCHESTRATOR_MEMORY),
        }
        values["env"] = {
            TRAIN_LAUNCHER_ENV: "trainjob",
            TRAINJOB_POOL_ENV: pool.name,
            TRAINJOB_NAMESPACE_ENV: NAMESPACE,
            # the template's cache_claim_name default; a deployment that changes one changes both
            TRAINJOB_CACHE_CLAIM_ENV: DEFAULT_CACHE_CLAIM,
        }
    if pool.gpu_type is not None:
        if trainjob:
            # the flow pod only orchestrates: the TrainJob's nodes (trainjob.py) hold the GPUs
            values["gpu_count"] = 0
            # CUDA images set NVIDIA_VISIBLE_DEVICES=all, with which the NVIDIA runtime hands a pod that
            # requests no GPU every GPU of its node; "void" makes it start the container as runc would
            values["env"]["NVIDIA_VISIBLE_DEVICES"] = "void"
        else:
            values["gpu_count"] = hardware.gpu.count
    return values


def runs_as_trainjob(task: Any, pool: PoolDefinition) -> bool:
    """Whether ``task``'s training runs as a Kubeflow Trainer TrainJob, its flow run only orchestrating.

    replicas: R > 1 on Kubernetes means R nodes; one Job's pod cannot span them.
    """
    return pool.kind == "kubernetes" and task.kind == "TrainingTask" and task.spec.resources.replicas > 1


def shm_size(memory: str) -> str:
    """Half the memory limit: /dev/shm pages count against it, and the rest is for the process itself."""
    mebibytes = math.ceil(parse_quantity(memory) / 2 / 2**20)
    return f"{mebibytes}Mi"


# --- pod settings shared by the pool template and the TrainJob (trainjob.py) --------------------


def gpu_toleration() -> dict[str, str]:
    # GPU nodes are usually tainted so that CPU-only pods stay off them
    return {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def gpu_affinity(pool: PoolDefinition) -> dict[str, Any] | None:
    """Node affinity to the pool's GPU product; None where the pool takes whichever GPU a node has."""
    if not pool.product_labels:
        return None
    # `In` over all of the type's product labels: the same card is labelled differently per form factor
    match = {"key": GPU_PRODUCT_LABEL, "operator": "In", "values": list(pool.product_labels)}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [match]}]}
        }
    }


def pod_security_context() -> dict[str, Any]:
    # the images run as a non-root user; fsGroup makes the cache volume writable for it
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS}


def volumes(shm_size: str, cache_claim: str) -> list[dict[str, Any]]:
    return [
        # Docker's 64 MiB /dev/shm starves NCCL and DataLoader workers; a memory-backed emptyDir replaces it
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},
        # one claim holds the Hugging Face cache and MLOC's own state, so a re-run neither downloads again
        # nor loses its checkpoints
        {"name": "cache", "persistentVolumeClaim": {"claimName": cache_claim}},
    ]


def volume_mounts() -> list[dict[str, str]]:
    return [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "cache", "mountPath": HF_HOME, "subPath": "huggingface"},
        {"name": "cache", "mountPath": MLOC_HOME, "subPath": "mloc"},
    ]


def cache_env() -> list[dict[str, str]]:
    return [{"name": "HF_HOME", "value": HF_HOME}, {"name": "MLOC_HOME", "value": MLOC_HOME}]


def credentials_env_from() -> list[dict[str, Any]]:
    """The default envFrom: every key of the credentials Secret; optional, so a pod starts without it."""
    return [{"secretRef": {"name": DEFAULT_CREDENTIALS_SECRET, "optional": True}}]


# --- the kubernetes template, piece by piece ---------------------------------------------------


def _parts(template: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The pod spec, its one container, and the variables' properties."""
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    return pod, pod["containers"][0], template["variables"]["properties"]


def _add_job_settings(template: dict[str, Any], pool: PoolDefinition) -> None:
    _, _, variables = _parts(template)
    variables["image"]["default"] = pool.image
    # 0: a failed pod is not silently re-run by Kubernetes, spending GPU-hours outside Prefect's view.
    # Retries are Prefect's (spec.execution.retries); with 0, prefect-kubernetes also has an evicted
    # pod's flow run rescheduled by Prefect instead of handing it to Kubernetes' Job controller.
    variables["backoff_limit"]["default"] = 0
    variables["backoff_limit"]["description"] = (
        "How often Kubernetes re-runs a failed pod. Keep 0: Prefect owns retries (spec.execution.retries) "
        "and reschedules the flow run of an evicted pod; above 0, GPU work re-runs outside Prefect's view."
    )
    # a finished Job and its pod (and logs) stay an hour for inspection, then Kubernetes deletes them
    variables["finished_job_ttl"]["default"] = FINISHED_JOB_TTL_SECONDS
    variables["namespace"]["default"] = NAMESPACE
    variables["service_account_name"]["default"] = JOB_SERVICE_ACCOUNT
    pod, _, _ = _parts(template)
    pod["securityContext"] = pod_security_context()


def _add_volumes_and_env(template: dict[str, Any]) -> None:
    pod, container, variables = _parts(template)
    pod["volumes"] = volumes("{{ shm_size }}", "{{ cache_claim_name }}")
    container["volumeMounts"] = volume_mounts()
    # A list, not Prefect's "{{ env }}" placeholder: prefect-kubernetes puts the `env` job variable in
    # front of these and drops any of them a deployment sets itself, so a deployment's env adds to them
    # instead of replacing them.
    container["env"] = [
        *cache_env(),
        {"name": "PREFECT_LOGGING_EXTRA_LOGGERS", "value": "tasks"},
        {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": POD_UID_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
    ]
    # credentials reach the pod only as references to Kubernetes Secrets: envFrom cannot carry a value
    container["envFrom"] = "{{ env_from }}"
    variables["shm_size"] = {
        "title": "Shared memory size",
        "description": "Size limit of the memory-backed /dev/shm, a Kubernetes quantity ('16Gi'). "
        "Its pages count against the memory limit.",
        "type": "string",
        "default": DEFAULT_SHM_SIZE,
    }
    variables["cache_claim_name"] = {
        "title": "Cache volume claim",
        "description": f"The PersistentVolumeClaim mounted at {HF_HOME} (HF_HOME) and {MLOC_HOME} (MLOC_HOME). "
        "Give it ReadWriteMany access when jobs on several nodes share it.",
        "type": "string",
        "default": DEFAULT_CACHE_CLAIM,
    }
    variables["env_from"] = {
        "title": "Environment from Secrets",
        "description": "Kubernetes envFrom entries: Secrets (or ConfigMaps) whose keys become environment "
        "variables, e.g. HF_TOKEN, AWS_ACCESS_KEY_ID. optional: true lets a pod start without them.",
        "type": "array",
        "items": {"type": "object"},
        "default": credentials_env_from(),
    }


def _add_gpus(template: dict[str, Any], pool: PoolDefinition) -> None:
    pod, container, variables = _parts(template)
    # extended resources are never overcommitted: Kubernetes requires request == limit
    container["resources"]["limits"][GPU_RESOURCE] = "{{ gpu_count }}"
    container["resources"]["requests"][GPU_RESOURCE] = "{{ gpu_count }}"
    pod["tolerations"] = [gpu_toleration()]
    affinity = gpu_affinity(pool)
    if affinity is not None:
        pod["affinity"] = affinity
    variables["gpu_count"] = {
        "title": "GPU count",
        "description": f"GPUs per pod ({GPU_RESOURCE}); a {pool.name} node offers at most {pool.gpus_per_node}. "
        "0 for a flow run that only orchestrates, its training running as a Kubeflow TrainJob (replicas > 1).",
        "type": "integer",
        "minimum": 0,
        "maximum": pool.gpus_per_node,
        "default": 1,
    }
