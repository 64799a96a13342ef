"""The Job each Kubernetes pool's worker would submit, rendered by prefect-kubernetes' own code.

No cluster: a Kubernetes API server cannot run here, so the manifest that prefect-kubernetes'
``KubernetesWorkerJobConfiguration`` builds for a flow run is checked against the Kubernetes
OpenAPI schema (kubernetes-validate, strict: unknown fields fail) instead of being submitted.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import kubernetes_validate
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import Flow, FlowRun, WorkPool
from prefect.client.schemas.responses import DeploymentResponse
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

from tests.work_pools.samples import sample_task
from work_pools import base_job_template, job_variables, pool_named, pools
from work_pools.pool_definition import PoolDefinition

# the newest Kubernetes release kubernetes-validate ships schemas for
KUBERNETES_VERSION = kubernetes_validate.latest_version()
KUBERNETES_POOLS = [p for p in pools() if p.kind == "kubernetes"]
GPU_POOLS = [p for p in KUBERNETES_POOLS if p.gpu_type is not None]
TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def gpu_count_for(pool: PoolDefinition) -> int:
    """A count that is neither the variable's default (1) nor above what the pool's nodes offer."""
    return min(2, pool.gpus_per_node) if pool.gpu_type else 0


def render(pool: PoolDefinition, values: dict[str, Any]) -> dict[str, Any]:
    """The Job manifest a worker of ``pool`` would create for one flow run of a deployment with ``values``."""
    template = base_job_template(pool)
    # never contacted: the templates hold no block or variable references for it to resolve
    offline = PrefectClient(api="http://127.0.0.1:9/api")
    configuration = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(template, values, client=offline)
    )
    flow = Flow(name="mloc")
    deployment = DeploymentResponse(name="sft-mistral-7b-on-dolly", flow_id=flow.id, work_pool_name=pool.name)
    flow_run = FlowRun(name="clever-otter", flow_id=flow.id, deployment_id=deployment.id)
    configuration.prepare_for_flow_run(
        flow_run=flow_run,
        deployment=deployment,
        flow=flow,
        work_pool=WorkPool(name=pool.name, type=pool.kind, base_job_template=template),
        worker_name="kubernetes-worker-1",
    )
    return configuration.job_manifest


def validate(manifest: dict[str, Any]) -> None:
    checked = json.loads(json.dumps(manifest))
    pod = checked["spec"]["template"]["spec"]
    # prefect-kubernetes insists on these two in the pod spec (its manifest check fails without them),
    # where the API server drops them as unknown fields; they are Job fields, and 1 is their default there
    assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    kubernetes_validate.validate(checked, desired_version=KUBERNETES_VERSION, strict=True)


@pytest.fixture(params=KUBERNETES_POOLS, ids=lambda p: p.name)
def rendered(request: pytest.FixtureRequest) -> tuple[PoolDefinition, Any, dict[str, Any]]:
    pool = request.param
    task = sample_task(pool.gpu_type, gpu_count_for(pool), cpu="6", memory="48Gi")
    return pool, task, render(pool, job_variables(task, pool))


def test_every_manifest_is_a_valid_job(rendered: tuple[PoolDefinition, Any, dict[str, Any]]) -> None:
    _, _, manifest = rendered
    validate(manifest)


def test_resources_are_the_tasks(rendered: tuple[PoolDefinition, Any, dict[str, Any]]) -> None:
    pool, task, manifest = rendered
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    expected = {"cpu": "6", "memory": "48Gi"}
    if pool.gpu_type:
        expected["nvidia.com/gpu"] = task.spec.resources.hardware.gpu.count
    assert container["resources"] == {"limits": expected, "requests": expected}
    assert container["image"] == pool.image


def test_gpu_pools_pin_their_product_and_tolerate_gpu_taints(
    rendered: tuple[PoolDefinition, Any, dict[str, Any]],
) -> None:
    pool, _, manifest = rendered
    pod = manifest["spec"]["template"]["spec"]
    if pool.gpu_type is None:
        assert "tolerations" not in pod and "affinity" not in pod
        return
    assert pod["tolerations"] == [TOLERATION]
    if pool.gpu_type == "any":
        assert "affinity" not in pod
        return
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [
        {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": list(pool.product_labels)}]}
    ]
    assert pool.product_labels


def test_shared_memory_and_cache_volumes(rendered: tuple[PoolDefinition, Any, dict[str, Any]]) -> None:
    _, _, manifest = rendered
    pod = manifest["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "24576Mi"}  # half of 48Gi
    assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": "mloc-hf-cache"}
    container = pod["containers"][0]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/dev/shm"]["name"] == "dshm"
    assert mounts["/cache/huggingface"]["name"] == "cache"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_HOME"] == "/cache/huggingface"
    assert mounts[env["MLOC_HOME"]]["name"] == "cache"
    assert env["PREFECT_LOGGING_EXTRA_LOGGERS"] == "tasks"


def test_prefect_settings_reach_the_pod(rendered: tuple[PoolDefinition, Any, dict[str, Any]]) -> None:
    """Prefect's own placeholders still work: the run command, its env, labels and name."""
    _, _, manifest = rendered
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PREFECT__FLOW_RUN_ID"]
    # backoffLimit 0: Prefect, not Kubernetes, decides what happens to an evicted run
    assert manifest["spec"]["backoffLimit"] == 0
    assert env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "reschedule"
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 3600
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert manifest["metadata"]["labels"]["prefect.io/flow-run-name"] == "clever-otter"
    assert manifest["metadata"]["labels"]["prefect.io/deployment-name"] == "sft-mistral-7b-on-dolly"
    assert manifest["metadata"]["generateName"].startswith("clever-otter-")


def test_credentials_come_only_from_secret_references(rendered: tuple[PoolDefinition, Any, dict[str, Any]]) -> None:
    _, _, manifest = rendered
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "mloc-credentials", "optional": True}}]
    secretish = re.compile(r"TOKEN|SECRET|PASSWORD|_KEY", re.IGNORECASE)
    literal = [e["name"] for e in container["env"] if secretish.search(e["name"]) and "value" in e]
    assert literal == []
    assert not re.search(r"\bhf_[A-Za-z0-9]{20,}", json.dumps(manifest))


def test_a_deployment_can_override_the_variables() -> None:
    """What the UI's run form and a deployment's job variables may change, and that env adds to ours."""
    pool = pool_named("nvidia-a10g")
    values = {
        **job_variables(sample_task("nvidia-a10g", 4), pool),
        "image": "registry.example.com/team/worker:1.2.3",
        "cache_claim_name": "team-cache",
        "shm_size": "2Gi",
        "env": {"HF_HUB_OFFLINE": "1", "HF_HOME": "/cache/huggingface/team"},
        "env_from": [{"secretRef": {"name": "team-credentials"}}, {"configMapRef": {"name": "team-settings"}}],
    }
    manifest = render(pool, values)
    validate(manifest)
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example.com/team/worker:1.2.3"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert {v["name"]: v for v in pod["volumes"]}["cache"]["persistentVolumeClaim"]["claimName"] == "team-cache"
    assert container["envFrom"] == values["env_from"]
    env = [(e["name"], e.get("value")) for e in container["env"]]
    assert ("HF_HUB_OFFLINE", "1") in env
    assert [value for name, value in env if name == "HF_HOME"] == ["/cache/huggingface/team"]
    assert ("MLOC_HOME", "/cache/mloc") in env


def test_the_gpu_count_variable_is_bounded_by_the_node() -> None:
    for pool in GPU_POOLS:
        schema = base_job_template(pool)["variables"]["properties"]["gpu_count"]
        # 0: a flow run that orchestrates a TrainJob (replicas > 1) holds no GPU itself
        assert (schema["type"], schema["minimum"], schema["maximum"]) == ("integer", 0, pool.gpus_per_node)


def test_every_placeholder_is_a_declared_variable() -> None:
    """What the Prefect server checks when a pool is created, for every pool."""
    for pool in pools():
        template = base_job_template(pool)
        used = set(re.findall(r"\{\{\s*([\w.]+)\s*\}\}", json.dumps(template["job_configuration"])))
        assert used <= set(template["variables"]["properties"]), pool.name


def test_process_pool_is_prefects_own() -> None:
    from prefect.workers.process import ProcessWorker

    local = pool_named("local")
    assert base_job_template(local) == ProcessWorker.get_default_base_job_template()
    assert job_variables(sample_task("nvidia-a100-80gb", 4), local) == {}


def test_the_daily_usage_report_renders_on_the_cpu_pool_with_its_defaults() -> None:
    """mloc-usage-report/daily sets no job variables (flows.usage.schedule_daily): the cpu
    pool's defaults alone must make a valid Job, one that asks for no GPU and gets no
    database credentials (it reads the usage through the API)."""
    from flows.usage import daily_deployment
    from work_pools import cpu_pool

    wanted = daily_deployment("0 1 * * *", "UTC", cpu_pool().name)
    manifest = render(cpu_pool(), wanted["job_variables"])
    validate(manifest)
    [container] = manifest["spec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert "mloc-prefect-db" not in json.dumps(manifest)
