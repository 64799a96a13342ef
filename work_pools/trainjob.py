"""The Kubeflow Trainer TrainJob that runs a task's training on ``replicas`` nodes.

``spec.resources.replicas: R`` (R > 1) is R nodes × ``gpu.count`` processes each. One Job's pod
cannot span nodes, so on Kubernetes the training runs as a TrainJob (``trainer.kubeflow.org/v1alpha1``)
of the ``torch-distributed`` ClusterTrainingRuntime, whose pods get PET_NNODES, PET_NPROC_PER_NODE,
PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT (torchrun's defaults) from Kubeflow; the flow
run's own pod stays the orchestrator and asks for no GPU (job_template.runs_as_trainjob).

The nodes' pods get what the pool's Job pods get, from the same functions of job_template.py:
the GPU toleration and product affinity, /dev/shm and the cache volume, the non-root security
context and the job service account. TrainJob v1alpha1 (kubeflow-trainer-api 2.3) carries the
container settings in ``spec.trainer`` and the pod settings in a ``spec.runtimePatches`` entry
of its own manager, for the runtime's ``node`` replicated job and container.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

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

API_VERSION = "trainer.kubeflow.org/v1alpha1"
RUNTIME = "torch-distributed"  # Kubeflow's ClusterTrainingRuntime for torchrun
NODE = "node"  # that runtime's replicated job, and its training container
MANAGER = "mloc"  # the runtimePatches entry MLOC owns (other managers, e.g. Kueue, keep theirs)
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
TASK_LABEL, OWNER_LABEL, PROJECT_LABEL = "mloc/task", "mloc/owner", "mloc/project"
# TrainJob v1alpha1 has no envFrom (neither spec.trainer nor a runtime patch's containers), so the
# credentials reach the nodes as one secretKeyRef per key: the keys infra/README.md puts in the
# credentials Secret, and what boto3 and huggingface_hub read besides.
CREDENTIAL_KEYS = (
    "HF_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
)
# JobSet names a node's pod <trainjob>-node-0-<rank>, a DNS-1035 label (Kubeflow Trainer checks the name)
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def render_trainjob(
    task: Any,
    pool: PoolDefinition,
    *,
    name: str,
    command: list[str],
    env: list[dict[str, Any]] | None = None,
    namespace: str = NAMESPACE,
    cache_claim: str = DEFAULT_CACHE_CLAIM,
    env_from: list[dict[str, Any]] | None = None,
    nodes: int | None = None,
    procs_per_node: int | None = None,
) -> dict[str, Any]:
    """The TrainJob manifest (a plain dict, as kubectl takes it) that trains ``task`` on ``pool``'s nodes.

    ``nodes`` and ``procs_per_node`` default to the task's replicas and ``max(gpu.count, 1)``; a
    step that runs on one of the task's nodes (an evaluation) gives 1 and 1.

    ``command`` is what each node runs (torchrun, which reads Kubeflow's PET_* variables); ``env`` adds
    to HF_HOME and MLOC_HOME, and an entry of the same name wins. ``env_from`` takes the pool
    template's ``env_from`` entries (default: the credentials Secret): each Secret or ConfigMap
    becomes references to its CREDENTIAL_KEYS, optional, since the API has no envFrom.
    Raises ValueError for a name Kubeflow would refuse, or what the TrainJob model cannot hold.
    """
    if pool.kind != "kubernetes":
        raise ValueError(f"pool '{pool.name}' runs flow runs as processes — a TrainJob needs a kubernetes pool")
    replicas = task.spec.resources.replicas if nodes is None else nodes
    _check_name(name, replicas)
    hardware = task.spec.resources.hardware
    gpus = hardware.gpu.count if pool.gpu_type is not None else 0
    procs = max(gpus, 1) if procs_per_node is None else procs_per_node
    memory = str(hardware.memory)
    quantities: dict[str, Any] = {"cpu": str(hardware.cpu), "memory": memory}
    if pool.gpu_type is not None:
        # extended resources are never overcommitted: Kubernetes requires request == limit. A string, as
        # the model's Quantity (str | float) would turn the int into a float
        quantities[GPU_RESOURCE] = str(gpus)
    labels = {
        MANAGED_BY_LABEL: "mloc",
        # validated task.yaml values: the name a DNS-1123 label, owner and project label values
        TASK_LABEL: task.metadata.name,
        OWNER_LABEL: task.metadata.owner,
        PROJECT_LABEL: task.metadata.project,
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": JOB_SERVICE_ACCOUNT,
        "securityContext": pod_security_context(),
        "volumes": volumes(shm_size(memory), cache_claim),
        "containers": [{"name": NODE, "volumeMounts": volume_mounts()}],
    }
    if pool.gpu_type is not None:
        pod_spec["tolerations"] = [gpu_toleration()]
        affinity = gpu_affinity(pool)
        if affinity is not None:
            pod_spec["affinity"] = affinity
    node_patch = {"name": NODE, "template": {"spec": {"template": {"metadata": {"labels": labels}, "spec": pod_spec}}}}
    manifest = {
        "apiVersion": API_VERSION,
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": RUNTIME},
            "trainer": {
                "image": pool.image,
                "command": list(command),
                "numNodes": replicas,
                # a CPU-only node runs one process: torchrun's gloo backend, one rank per node
                "numProcPerNode": procs,
                # limits equal to requests: Guaranteed QoS, as for the pool's Job pods
                "resourcesPerNode": {"requests": dict(quantities), "limits": dict(quantities)},
                "env": _merged_env(
                    cache_env(), _credential_refs(credentials_env_from() if env_from is None else env_from), env or []
                ),
            },
            "runtimePatches": [
                {"manager": MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [node_patch]}}}}
            ],
        },
    }
    return _round_trip(manifest)


def pod_template_part(trainjob: Mapping[str, Any]) -> dict[str, Any]:
    """The core/v1 PodTemplateSpec MLOC asks for on each node: MLOC's runtime patch with the trainer's
    container settings (image, command, env, resources) put into its ``node`` container.

    What the runtime's own template adds to it (restart policy, Kubeflow's PET_* variables) is not here.
    """
    spec = trainjob["spec"]
    [patch] = [p for p in spec.get("runtimePatches", []) if p["manager"] == MANAGER]
    [node] = [j for j in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"] if j["name"] == NODE]
    template = node["template"]["spec"]["template"]
    trainer = spec["trainer"]
    [container] = [c for c in template["spec"]["containers"] if c["name"] == NODE]
    container = {
        **container,
        "image": trainer["image"],
        "command": trainer["command"],
        "env": trainer["env"],
        "resources": trainer["resourcesPerNode"],
    }
    return {"metadata": template["metadata"], "spec": {**template["spec"], "containers": [container]}}


def _check_name(name: str, replicas: int) -> None:
    longest = f"{name}-{NODE}-0-{replicas - 1}"  # the last node's pod
    if not _DNS_1035.match(name) or len(longest) > 63:
        raise ValueError(
            f"'{name}' cannot name a TrainJob of {replicas} nodes — use lowercase letters, digits and '-', "
            f"starting with a letter, at most {63 - len(longest) + len(name)} characters (its pods are named "
            f"'{longest}', a DNS label)"
        )


def _credential_refs(env_from: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    key_refs = {"secretRef": "secretKeyRef", "configMapRef": "configMapKeyRef"}
    refs = []
    for source in env_from:
        kinds = [kind for kind in key_refs if kind in source]
        if len(kinds) != 1 or set(source) - {*kinds, "prefix"}:
            raise ValueError(
                f"{dict(source)} is not an envFrom entry — give a secretRef or a configMapRef, and optionally a prefix"
            )
        kind, prefix = kinds[0], source.get("prefix", "")
        # optional: a key the Secret lacks leaves its variable unset, as envFrom would
        refs += [
            {
                "name": prefix + key,
                "valueFrom": {key_refs[kind]: {"name": source[kind]["name"], "key": key, "optional": True}},
            }
            for key in CREDENTIAL_KEYS
        ]
    return refs


def _merged_env(*layers: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Variables by name, in first-seen order; a later layer's entry replaces an earlier one's."""
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for variable in layer:
            merged[variable["name"]] = dict(variable)
    return list(merged.values())


def _round_trip(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` as kubeflow-trainer-api's TrainJob model holds it; ValueError names what it would lose.

    The generated models ignore keys they do not know (from_dict and constructors alike), so a
    misspelt or unsupported field would vanish instead of failing: the dump must equal the input.
    """
    from kubeflow_trainer_api import __version__
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    model = TrainerV1alpha1TrainJob.from_dict(manifest)
    dumped: dict[str, Any] = model.to_dict() if model is not None else {}
    lost = _differences(manifest, dumped, "")
    if lost:
        raise ValueError(
            f"the TrainJob model of kubeflow-trainer-api {__version__} has no place for {', '.join(lost)} "
            "— leave them out or carry them in a field the API has"
        )
    return dumped


def _differences(wanted: Any, got: Any, path: str) -> list[str]:
    """The paths of ``wanted`` that ``got`` lacks or holds differently (a value of another type too)."""
    if isinstance(wanted, dict) and isinstance(got, dict):
        lost = []
        for key, value in wanted.items():
            at = f"{path}.{key}" if re.fullmatch(r"\w+", key) else f"{path}[{key}]"
            lost += _differences(value, got[key], at) if key in got else [at.lstrip(".")]
        return lost
    if isinstance(wanted, list) and isinstance(got, list) and len(wanted) == len(got):
        return [p for i, (w, g) in enumerate(zip(wanted, got, strict=True)) for p in _differences(w, g, f"{path}[{i}]")]
    return [] if wanted == got and type(wanted) is type(got) else [path.lstrip(".") or "<root>"]
