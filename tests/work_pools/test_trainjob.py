"""The Kubeflow Trainer TrainJob of a multi-node task, and the flow pod that orchestrates it.

No cluster: the TrainJob is checked against kubeflow-trainer-api's own models (a round trip that
must lose nothing), the pod settings MLOC asks for on each node against the Kubernetes OpenAPI
schema (kubernetes-validate, strict), and the whole manifest against a reviewed golden file.

The golden file is tests/work_pools/golden/trainjob_reference.yaml. After a deliberate change,
rewrite it with ``MLOC_UPDATE_GOLDEN=1 python -m pytest tests/work_pools/test_trainjob.py`` and
review its diff.
"""

from __future__ import annotations

import json
import os
from typing import Any

import kubernetes_validate
import pytest
import yaml

from configs import validate_data
from tasks.registry import TASK_TYPES
from tests.conftest import ROOT
from tests.work_pools.samples import sample_task
from tests.work_pools.test_job_manifests import KUBERNETES_VERSION, render, validate
from work_pools import cpu_pool, job_variables, pool_for_task, pool_named
from work_pools.job_template import runs_as_trainjob
from work_pools.trainjob import _round_trip, pod_template_part, render_trainjob

GOLDEN = ROOT / "tests" / "work_pools" / "golden" / "trainjob_reference.yaml"
REFERENCE = ROOT / "configs" / "sft_mistral_7b.yaml"
NAME = "sft-mistral-7b-on-dolly-3f2a9c1e"
COMMAND = ["torchrun", "-m", "tasks", f"/cache/mloc/runs/sft-mistral-7b-on-dolly/{NAME[-8:]}/train-job.json"]
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def reference_task(replicas: int) -> Any:
    """The brief's reference task.yaml with ``replicas`` set, validated as `mloc validate` does."""
    data = yaml.safe_load(REFERENCE.read_text())
    data["spec"]["resources"]["replicas"] = replicas
    result = validate_data(data, TASK_TYPES, str(REFERENCE))
    assert result.valid, "\n".join(issue.format() for issue in result.issues)
    return result.task


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    task = reference_task(2)
    pool = pool_for_task(task)
    assert pool.name == "nvidia-a100-80gb"
    return render_trainjob(task, pool, name=NAME, command=COMMAND)


def node_pod(trainjob: dict[str, Any]) -> dict[str, Any]:
    """The pod part, checked strictly as the core/v1 PodTemplate it is shaped like."""
    part = pod_template_part(trainjob)
    checked = json.loads(json.dumps(part))
    pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "node"}, "template": checked}
    kubernetes_validate.validate(pod_template, desired_version=KUBERNETES_VERSION, strict=True)
    return part


def test_reference_task_runs_on_two_nodes_of_four_gpus(reference: dict[str, Any]) -> None:
    assert (reference["apiVersion"], reference["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert reference["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert reference["spec"]["runtimeRef"]["kind"] == "ClusterTrainingRuntime"
    trainer = reference["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    expected = {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "4"}
    assert trainer["resourcesPerNode"] == {"requests": expected, "limits": expected}
    assert trainer["command"] == COMMAND
    assert trainer["image"] == pool_named("nvidia-a100-80gb").image
    labels = reference["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "mloc"
    assert (labels["mloc/task"], labels["mloc/owner"], labels["mloc/project"]) == (
        "sft-mistral-7b-on-dolly",
        "john-doe",
        "llm-research",
    )


def test_reference_nodes_get_the_pools_pod_settings(reference: dict[str, Any]) -> None:
    pod = node_pod(reference)
    spec = pod["spec"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    a100 = list(pool_named("nvidia-a100-80gb").product_labels)
    assert a100 and terms == [
        {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": a100}]}
    ]
    assert spec["tolerations"] == [TOLERATION]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "32768Mi"}  # half of 64Gi
    assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": "mloc-hf-cache"}
    assert spec["serviceAccountName"] == "mloc-job"
    assert spec["securityContext"]["runAsNonRoot"] is True
    [container] = spec["containers"]
    assert container["name"] == "node"  # the torch-distributed runtime's training container
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert (mounts["/dev/shm"]["name"], mounts["/cache/huggingface"]["subPath"]) == ("dshm", "huggingface")
    env = {e["name"]: e for e in container["env"]}
    assert mounts[env["MLOC_HOME"]["value"]]["subPath"] == "mloc"
    assert env["HF_HOME"]["value"] == "/cache/huggingface"
    # the credentials: references to the Secret only, never a value
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "mloc-credentials", "key": "HF_TOKEN", "optional": True}},
    }
    assert not [e for e in container["env"] if e["name"] not in {"HF_HOME", "MLOC_HOME"} and "value" in e]
    assert pod["metadata"]["labels"]["mloc/owner"] == "john-doe"  # GPU-hours of the nodes' pods are the owner's


def test_reference_manifest_is_the_golden_one(reference: dict[str, Any]) -> None:
    rendered = yaml.safe_dump(reference, sort_keys=True)
    if os.environ.get("MLOC_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(rendered)
    assert yaml.safe_load(GOLDEN.read_text()) == reference, (
        f"the TrainJob differs from {GOLDEN.name}; if the change is meant, set MLOC_UPDATE_GOLDEN=1 and review the diff"
    )


def test_reference_manifest_survives_the_model_round_trip(reference: dict[str, Any]) -> None:
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    model = TrainerV1alpha1TrainJob.from_dict(reference)
    assert model.to_dict() == reference
    assert model.spec.trainer.num_nodes == 2
    [patch] = model.spec.runtime_patches
    [node] = patch.training_runtime_spec.template.spec.replicated_jobs
    assert node.template.spec.template.spec.service_account_name == "mloc-job"


def test_the_round_trip_refuses_what_the_model_would_drop(reference: dict[str, Any]) -> None:
    # envFrom is the field one would reach for first: TrainJob v1alpha1's trainer has none
    unknown = json.loads(json.dumps(reference))
    unknown["spec"]["trainer"]["envFrom"] = [{"secretRef": {"name": "mloc-credentials"}}]
    with pytest.raises(ValueError, match=r"no place for spec\.trainer\.envFrom\b"):
        _round_trip(unknown)
    # an int quantity would come back a float: refused as well, not silently changed
    changed = json.loads(json.dumps(reference))
    changed["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] = 4
    with pytest.raises(ValueError, match=r"resourcesPerNode\.limits\[nvidia\.com/gpu\]"):
        _round_trip(changed)
    assert _round_trip(json.loads(json.dumps(reference))) == reference


def test_the_flow_pod_only_orchestrates_when_training_runs_on_several_nodes() -> None:
    pool = pool_named("nvidia-a100-80gb")
    for replicas, gpus in ((2, 0), (1, 4)):
        task = reference_task(replicas)
        assert runs_as_trainjob(task, pool) is (replicas > 1)
        manifest = render(pool, job_variables(task, pool))
        validate(manifest)
        [container] = manifest["spec"]["template"]["spec"]["containers"]
        # an orchestrator's size when the nodes train; the task's own when this pod trains
        expected = {"cpu": "2", "memory": "8Gi"} if replicas > 1 else {"cpu": "8", "memory": "64Gi"}
        expected["nvidia.com/gpu"] = gpus
        assert container["resources"] == {"requests": expected, "limits": expected}
        env = {e["name"]: e.get("value") for e in container["env"]}
        # its own name and uid (the downward API): what it submits is owned by it
        refs = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
        assert refs == {"MLOC_POD_NAME": "metadata.name", "MLOC_POD_UID": "metadata.uid"}
        # without a GPU request the NVIDIA runtime would still show the CUDA image every GPU of the node
        assert env.get("NVIDIA_VISIBLE_DEVICES") == ("void" if replicas > 1 else None)
        assert env["HF_HOME"] == "/cache/huggingface"  # the deployment's env adds to the pool's
        # only an orchestrating flow pod gets Kubernetes API rights (infra/k8s/21-orchestrator-rbac.yaml)
        pod_spec = manifest["spec"]["template"]["spec"]
        assert pod_spec["serviceAccountName"] == ("mloc-orchestrator" if replicas > 1 else "mloc-job")


def test_a_cpu_task_on_two_nodes_asks_for_no_gpu() -> None:
    task = sample_task(None, cpu="4", memory="16Gi").model_copy(deep=True)
    task.spec.resources.replicas = 2
    trainjob = render_trainjob(task, cpu_pool(), name="cpu-sft", command=["torchrun", "-m", "tasks", "job.json"])
    trainer = trainjob["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 1)
    assert trainer["resourcesPerNode"]["limits"] == {"cpu": "4", "memory": "16Gi"}
    assert trainer["image"] == cpu_pool().image
    spec = node_pod(trainjob)["spec"]
    assert "tolerations" not in spec and "affinity" not in spec
    assert "nvidia.com/gpu" not in json.dumps(trainjob)
    # the cpu pool's flow pod keeps what it asked for: it never had a GPU to give up
    assert "gpu_count" not in job_variables(task, cpu_pool())


def test_env_and_credential_sources_are_the_callers() -> None:
    task = reference_task(2)
    trainjob = render_trainjob(
        task,
        pool_named("nvidia-a100-80gb"),
        name=NAME,
        command=COMMAND,
        env=[{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": "HF_HOME", "value": "/cache/huggingface/team"}],
        env_from=[{"secretRef": {"name": "team-credentials"}, "prefix": "TEAM_"}],
        cache_claim="team-cache",
        namespace="team",
    )
    env = {e["name"]: e for e in node_pod(trainjob)["spec"]["containers"][0]["env"]}
    assert env["HF_HOME"]["value"] == "/cache/huggingface/team"  # one variable, the caller's value
    assert env["NCCL_DEBUG"]["value"] == "INFO"
    assert env["TEAM_HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "team-credentials",
        "key": "HF_TOKEN",
        "optional": True,
    }
    assert "mloc-credentials" not in json.dumps(trainjob)
    assert trainjob["metadata"]["namespace"] == "team"
    assert "team-cache" in json.dumps(trainjob["spec"]["runtimePatches"])
    with pytest.raises(ValueError, match="not an envFrom entry"):
        render_trainjob(task, pool_named("nvidia-a100-80gb"), name=NAME, command=COMMAND, env_from=[{"secret": "x"}])


@pytest.mark.parametrize("name", ["1-starts-with-a-digit", "Upper", "x" * 56])
def test_a_name_kubeflow_would_refuse_is_refused_here(name: str) -> None:
    with pytest.raises(ValueError, match="cannot name a TrainJob"):
        render_trainjob(reference_task(2), pool_named("nvidia-a100-80gb"), name=name, command=COMMAND)


def test_a_process_pool_has_no_trainjob() -> None:
    with pytest.raises(ValueError, match="kubernetes pool"):
        render_trainjob(reference_task(2), pool_named("local"), name=NAME, command=COMMAND)
