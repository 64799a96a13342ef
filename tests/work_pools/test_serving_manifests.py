"""The Deployment, Service and ScaledObject of a ServingTask on each Kubernetes pool.

No cluster: the Deployment and the Service are checked against the Kubernetes OpenAPI schema
(kubernetes-validate, strict: unknown fields fail), the ScaledObject against KEDA's documented
fields (work_pools/serving.py), and each engine's objects against a reviewed golden file.

The golden files are tests/work_pools/golden/serving_*.yaml. After a deliberate change, rewrite
them with ``MLOC_UPDATE_GOLDEN=1 python -m pytest tests/work_pools/test_serving_manifests.py``
and review their diff.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest
import yaml

from configs import validate_data
from flows.serve_kubernetes import service_manifests
from tasks.registry import TASK_TYPES
from tests.conftest import ROOT
from tests.work_pools.test_job_manifests import GPU_POOLS, KUBERNETES_VERSION, TOLERATION
from work_pools import PoolError, cpu_pool, pool_for_task, pool_named
from work_pools.pool_definition import PoolDefinition
from work_pools.serving import (
    DIGEST_ANNOTATION,
    _checked_scaled_object,
    _round_trip,
    pod_selector,
    render_service,
    spec_digest,
)

EXAMPLE = ROOT / "configs" / "serve_mistral_7b.yaml"
GOLDEN = ROOT / "tests" / "work_pools" / "golden"
SERVICE_ROOT = "/cache/mloc/serving/mistral-7b-dolly"


def serving_task(change: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """The shipped serving example, changed by ``change`` (on its parsed YAML), validated as `mloc validate` does."""
    data = yaml.safe_load(EXAMPLE.read_text())
    if change is not None:
        change(data)
    result = validate_data(data, TASK_TYPES, str(EXAMPLE))
    assert result.valid, "\n".join(issue.format() for issue in result.issues)
    return result.task


def on_gpus(gpu_type: str | None, count: int) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        hardware = data["spec"]["resources"]["hardware"]
        if gpu_type is None:
            hardware.pop("gpu")
        else:
            hardware["gpu"] = {"type": gpu_type, "count": count}
        data["spec"]["engine"]["dtype"] = "float16"  # one every catalog GPU (T4 included) computes in

    return change


def transformers(gpu_type: str | None = None) -> Callable[[dict[str, Any]], None]:
    """The fallback engine: one model, no adapters, no autoscaling, on a CPU unless ``gpu_type``."""

    def change(data: dict[str, Any]) -> None:
        spec = data["spec"]
        spec["engine"] = {"name": "transformers", "dtype": "float32"}
        del spec["model"]["adapters"], spec["autoscaling"]
        spec["resources"] = {"replicas": 2, "hardware": {"cpu": "4", "memory": "16Gi"}}
        if gpu_type is not None:
            spec["resources"]["hardware"]["gpu"] = {"type": gpu_type, "count": 1}

    return change


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = {o["kind"]: o for o in objects}
    assert len(kinds) == len(objects)
    return kinds


def validate_strictly(objects: list[dict[str, Any]]) -> None:
    for manifest in objects:
        if manifest["kind"] != "ScaledObject":  # a custom resource: the OpenAPI schema has none
            kubernetes_validate.validate(
                json.loads(json.dumps(manifest)), desired_version=KUBERNETES_VERSION, strict=True
            )


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [server] = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return server


@pytest.fixture(scope="module")
def reference() -> list[dict[str, Any]]:
    task = serving_task()
    return service_manifests(task, pool_for_task(task))


@pytest.mark.parametrize("pool", GPU_POOLS, ids=lambda p: p.name)
def test_every_gpu_pool_serves_on_its_own_gpus(pool: PoolDefinition) -> None:
    count = min(2, pool.gpus_per_node)
    task = serving_task(on_gpus(pool.gpu_type, count))
    assert pool_for_task(task) == pool  # a ServingTask picks its pool as a training does
    objects = service_manifests(task, pool)
    validate_strictly(objects)
    pod = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    assert pod["tolerations"] == [TOLERATION]
    if pool.product_labels:
        [term] = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert term == {
            "matchExpressions": [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": list(pool.product_labels)}
            ]
        }
    else:  # any-gpu: whichever GPU a node has
        assert "affinity" not in pod
    server = container(objects)
    assert server["image"] == pool.image
    wanted = {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": str(count)}
    assert server["resources"] == {"requests": wanted, "limits": wanted}
    argv = server["command"]
    # the replica's GPUs are one tensor-parallel vLLM: the flag only where there are several
    parallel = argv[argv.index("--tensor-parallel-size") + 1] if "--tensor-parallel-size" in argv else "1"
    assert parallel == str(count)


def test_the_cpu_pool_serves_with_transformers_and_no_gpu() -> None:
    task = serving_task(transformers())
    assert pool_for_task(task) == cpu_pool()
    objects = service_manifests(task, cpu_pool())
    validate_strictly(objects)
    pod = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "affinity" not in pod
    server = container(objects)
    assert server["resources"]["limits"] == {"cpu": "4", "memory": "16Gi"}
    assert server["command"][-2:] == ["--device", "cpu"]


def test_transformers_on_a_gpu_pool_takes_its_gpu() -> None:
    pool = pool_named("nvidia-l4")
    objects = service_manifests(serving_task(transformers("nvidia-l4")), pool)
    validate_strictly(objects)
    server = container(objects)
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert server["command"][-2:] == ["--device", "auto"]


def test_vllm_golden_args_and_gpus(reference: list[dict[str, Any]]) -> None:
    validate_strictly(reference)
    server = container(reference)
    argv = server["command"]
    assert argv[:3] == ["/opt/vllm/bin/vllm", "serve", f"{SERVICE_ROOT}/models/mistral-7b-instruct"]

    def after(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert after("--served-model-name") == "mistral-7b-instruct"
    assert (after("--port"), after("--dtype"), after("--max-model-len")) == ("8000", "bfloat16", "4096")
    assert after("--lora-modules") == f"mistral-7b-dolly={SERVICE_ROOT}/adapters/mistral-7b-dolly"
    assert "--tensor-parallel-size" not in argv  # one GPU per replica
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "workingDir" not in server
    check_golden(reference, "serving_vllm.yaml")


def test_transformers_golden_args() -> None:
    objects = service_manifests(serving_task(transformers()), cpu_pool())
    server = container(objects)
    assert server["command"][:3] == ["transformers", "serve", "mistral-7b-instruct"]
    assert server["workingDir"] == f"{SERVICE_ROOT}/models"  # the served name is that folder's entry
    argv = server["command"]
    assert (argv[argv.index("--port") + 1], argv[argv.index("--dtype") + 1]) == ("8000", "float32")
    assert "nvidia.com/gpu" not in server["resources"]["limits"]
    check_golden(objects, "serving_transformers.yaml")


def check_golden(objects: list[dict[str, Any]], name: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MLOC_UPDATE_GOLDEN"):
        path.write_text(yaml.safe_dump(objects, sort_keys=True))
    assert yaml.safe_load(path.read_text()) == objects, (
        f"the serving objects differ from {name}; if the change is meant, set MLOC_UPDATE_GOLDEN=1 and review the diff"
    )


def test_the_service_reaches_the_pods_on_the_server_port(reference: list[dict[str, Any]]) -> None:
    kinds = by_kind(reference)
    deployment, service = kinds["Deployment"], kinds["Service"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "protocol": "TCP", "port": 8000, "targetPort": "http"}]
    assert container(reference)["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert pod_selector("mistral-7b-dolly") == ",".join(f"{k}={v}" for k, v in selector.items())
    assert (labels["mloc/task"], labels["mloc/owner"], labels["mloc/project"]) == (
        "mistral-7b-dolly",
        "jane-roe",
        "chat-assistant",
    )
    assert "mloc/owner" not in selector  # a Deployment's selector cannot change; an owner can


def test_pods_get_the_cache_credentials_and_a_non_root_user(reference: list[dict[str, Any]]) -> None:
    pod = by_kind(reference)["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": "mloc-hf-cache"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "24576Mi"}  # half of 48Gi
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == "mloc-job"
    assert pod["enableServiceLinks"] is False
    server = container(reference)
    env = {e["name"]: e["value"] for e in server["env"]}
    assert env == {"HF_HOME": "/cache/huggingface", "MLOC_HOME": "/cache/mloc"}
    mounts = {m["mountPath"]: m["subPath"] for m in server["volumeMounts"] if "subPath" in m}
    assert mounts[env["MLOC_HOME"]] == "mloc"
    assert server["envFrom"] == [{"secretRef": {"name": "mloc-credentials", "optional": True}}]


def test_probes_give_a_slow_model_load_its_startup_timeout() -> None:
    def slow(data: dict[str, Any]) -> None:
        data["spec"]["startup_timeout_seconds"] = 1805

    server = container(service_manifests(serving_task(slow), pool_named("nvidia-l40s")))
    startup = server["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 1805
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert server["livenessProbe"]["failureThreshold"] * server["livenessProbe"]["periodSeconds"] < 1805


def test_autoscaling_renders_a_scaled_object_that_owns_the_replicas(reference: list[dict[str, Any]]) -> None:
    kinds = by_kind(reference)
    assert "replicas" not in kinds["Deployment"]["spec"]  # KEDA's HPA owns the count
    scaled = kinds["ScaledObject"]
    assert (scaled["apiVersion"], scaled["metadata"]["name"]) == ("keda.sh/v1alpha1", "mistral-7b-dolly")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mistral-7b-dolly"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 4)
    [trigger] = spec["triggers"]
    assert (trigger["type"], trigger["metricType"]) == ("prometheus", "AverageValue")
    metadata = trigger["metadata"]
    assert metadata["threshold"] == "8"
    assert metadata["query"].startswith("sum(vllm:num_requests_waiting{")
    assert 'namespace="mloc"' in metadata["query"] and 'pod=~"mistral-7b-dolly-' in metadata["query"]
    assert metadata["serverAddress"].startswith("http://")
    template = kinds["Deployment"]["spec"]["template"]["metadata"]
    assert template["annotations"]["prometheus.io/scrape"] == "true"  # vLLM's /metrics, for the backlog
    other = service_manifests(serving_task(), pool_named("nvidia-l40s"), prometheus="http://prom.observability:9090")
    assert by_kind(other)["ScaledObject"]["spec"]["triggers"][0]["metadata"]["serverAddress"] == (
        "http://prom.observability:9090"
    )


def test_no_autoscaling_no_scaled_object_and_fixed_replicas() -> None:
    def fixed(data: dict[str, Any]) -> None:
        del data["spec"]["autoscaling"]
        data["spec"]["resources"]["replicas"] = 3

    objects = service_manifests(serving_task(fixed), pool_named("nvidia-l40s"))
    assert [o["kind"] for o in objects] == ["Deployment", "Service"]
    assert by_kind(objects)["Deployment"]["spec"]["replicas"] == 3


def test_vllm_is_refused_on_a_pool_without_gpus() -> None:
    task = serving_task(on_gpus(None, 0))
    with pytest.raises(PoolError, match="use engine name: transformers, or ask for a GPU"):
        service_manifests(task, cpu_pool())


def test_more_gpus_than_a_node_offers_are_refused() -> None:
    pool = pool_named("nvidia-a10g")
    task = serving_task(on_gpus("nvidia-a10g", pool.gpus_per_node + 1))
    with pytest.raises(PoolError, match=rf"asks for {pool.gpus_per_node + 1} GPU\(s\).*offers {pool.gpus_per_node}"):
        service_manifests(task, pool)


def test_other_tasks_a_pool_cannot_serve_are_refused() -> None:
    with pytest.raises(PoolError, match="kubernetes pool"):
        service_manifests(serving_task(), pool_named("local"))
    with pytest.raises(PoolError, match="asks for no GPU"):
        service_manifests(serving_task(transformers()), pool_named("nvidia-l4"))

    def remote(data: dict[str, Any]) -> None:
        spec = data["spec"]
        spec["model"] = {
            "name": "qwen",
            "source": {"type": "remote", "base_url": "http://qwen.serving.svc:8000/v1", "model": "qwen"},
        }
        for key in ("engine", "autoscaling", "port", "resources"):
            del spec[key]

    with pytest.raises(PoolError, match="remote"):
        service_manifests(serving_task(remote), cpu_pool())

    def digit_first(data: dict[str, Any]) -> None:
        data["metadata"]["name"] = "7b-chat"

    with pytest.raises(ValueError, match="starts with a letter"):
        service_manifests(serving_task(digit_first), pool_named("nvidia-l40s"))


def test_what_the_kubernetes_models_cannot_hold_is_refused(reference: list[dict[str, Any]]) -> None:
    deployment = json.loads(json.dumps(by_kind(reference)["Deployment"]))
    misplaced = json.loads(json.dumps(deployment))
    misplaced["spec"]["template"]["spec"]["envFrom"] = misplaced["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    with pytest.raises(ValueError, match=r"no place for spec\.template\.spec\.envFrom\b"):
        _round_trip(misplaced, "V1Deployment")
    as_text = json.loads(json.dumps(deployment))
    as_text["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    with pytest.raises(ValueError, match=r"containers\[0\]\.ports\[0\]\.containerPort \(int expected, not str\)"):
        _round_trip(as_text, "V1Deployment")
    nameless = json.loads(json.dumps(deployment))
    del nameless["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError, match=r"containers\[0\]"):
        _round_trip(nameless, "V1Deployment")
    assert _round_trip(deployment, "V1Deployment") == deployment


def test_what_keda_does_not_document_is_refused(reference: list[dict[str, Any]]) -> None:
    scaled = by_kind(reference)["ScaledObject"]
    assert _checked_scaled_object(scaled) == scaled
    removed = json.loads(json.dumps(scaled))
    removed["spec"]["triggers"][0]["metadata"]["metricName"] = "backlog"  # removed in KEDA 2.12
    with pytest.raises(ValueError, match="metricName"):
        _checked_scaled_object(removed)
    misplaced = json.loads(json.dumps(scaled))
    misplaced["spec"]["replicas"] = 2
    with pytest.raises(ValueError, match="replicas"):
        _checked_scaled_object(misplaced)
    number = json.loads(json.dumps(scaled))
    number["spec"]["triggers"][0]["metadata"]["threshold"] = 8  # trigger metadata is strings
    with pytest.raises(ValueError, match="threshold"):
        _checked_scaled_object(number)


def digests(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {o["kind"]: o["metadata"]["annotations"][DIGEST_ANNOTATION] for o in objects}


def test_each_object_carries_the_digest_of_its_rendering(reference: list[dict[str, Any]]) -> None:
    for manifest in reference:
        assert manifest["metadata"]["annotations"][DIGEST_ANNOTATION] == spec_digest(manifest)
    again = service_manifests(serving_task(), pool_named("nvidia-l40s"))
    assert again == reference and digests(again) == digests(reference)


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("dtype", lambda d: d["spec"]["engine"].update(dtype="float16")),
        ("adapters", lambda d: d["spec"]["model"].pop("adapters")),
        ("gpu count", lambda d: d["spec"]["resources"]["hardware"]["gpu"].update(count=2)),
        ("memory", lambda d: d["spec"]["resources"]["hardware"].update(memory="64Gi")),
        ("startup timeout", lambda d: d["spec"].update(startup_timeout_seconds=1200)),
    ],
)
def test_a_change_to_the_pod_changes_the_deployments_digest(
    reference: list[dict[str, Any]], field: str, change: Callable[[dict[str, Any]], None]
) -> None:
    changed = digests(service_manifests(serving_task(change), pool_named("nvidia-l40s")))
    before = digests(reference)
    assert changed["Deployment"] != before["Deployment"], field
    assert changed["Service"] == before["Service"], field  # the Service is left alone


def test_what_does_not_change_an_object_leaves_its_digest(reference: list[dict[str, Any]]) -> None:
    before = digests(reference)

    def described(data: dict[str, Any]) -> None:
        data["metadata"]["annotations"]["description"] = "another description"

    assert digests(service_manifests(serving_task(described), pool_named("nvidia-l40s"))) == before

    def wider(data: dict[str, Any]) -> None:
        data["spec"]["autoscaling"]["max_replicas"] = 6

    changed = digests(service_manifests(serving_task(wider), pool_named("nvidia-l40s")))
    assert (changed["Deployment"], changed["Service"]) == (before["Deployment"], before["Service"])
    assert changed["ScaledObject"] != before["ScaledObject"]

    def port(data: dict[str, Any]) -> None:
        data["spec"]["port"] = 8080

    changed = digests(service_manifests(serving_task(port), pool_named("nvidia-l40s")))
    assert changed["Deployment"] != before["Deployment"] and changed["Service"] != before["Service"]


def test_render_service_runs_the_command_it_is_given() -> None:
    task = serving_task()
    objects = render_service(
        task, pool_named("nvidia-l40s"), command=["vllm", "serve", "x"], working_dir="/srv", image="example/vllm:1"
    )
    server = container(objects)
    assert (server["command"], server["workingDir"], server["image"]) == (
        ["vllm", "serve", "x"],
        "/srv",
        "example/vllm:1",
    )
