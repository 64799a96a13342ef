"""An InferenceTask names a ServingTask as its model (``model.source: {type: service}``): the endpoint it resolves to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from configs import InferenceTask, validate_text
from configs.models import ServiceModelSource
from tasks.registry import TASK_TYPES
from tasks.serving.endpoint import EndpointError, resolve

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _service(folder: Path, **spec: object) -> Path:
    path = folder / "serve.yaml"
    data = yaml.safe_load((CONFIGS / "quickstart" / "serve.yaml").read_text())
    data["spec"]["model"]["source"]["path"] = str(CONFIGS / "quickstart" / "tiny-model")
    data["spec"].update(spec)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_local_service_resolves_to_the_base_url_of_its_state_file(tmp_path: Path) -> None:
    _service(tmp_path)
    state = tmp_path / "home" / "serving" / "quickstart-serve" / "service.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"base_url": "http://127.0.0.1:8011/v1"}))
    got = resolve(ServiceModelSource(type="service", task="serve.yaml"), tmp_path, tmp_path / "home", "mloc")
    assert (got.base_url, got.model, got.credentials_block) == ("http://127.0.0.1:8011/v1", "tiny", None)
    adapter = resolve(
        ServiceModelSource(type="service", task="serve.yaml", model="quickstart-sft"), tmp_path, tmp_path / "home", "m"
    )
    assert adapter.model == "quickstart-sft"


def test_a_service_not_served_here_resolves_to_its_cluster_dns_name(tmp_path: Path) -> None:
    _service(tmp_path)
    got = resolve(ServiceModelSource(type="service", task="serve.yaml"), tmp_path, tmp_path / "home", "mloc")
    assert got.base_url == "http://quickstart-serve.mloc.svc:8011/v1"


def test_a_remote_service_resolves_to_its_own_endpoint_and_key(tmp_path: Path) -> None:
    remote = {"type": "remote", "base_url": "https://llm.example.com/v1", "model": "m7", "credentials_block": "key"}
    data = {
        "apiVersion": "mloc/v1",
        "kind": "ServingTask",
        "metadata": {"name": "hosted", "owner": "o", "project": "p"},
        "spec": {"model": {"source": remote}},
    }
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(data))
    got = resolve(ServiceModelSource(type="service", task="serve.yaml"), tmp_path, tmp_path, "mloc")
    assert (got.base_url, got.model, got.credentials_block) == ("https://llm.example.com/v1", "m7", "key")


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ({"task": "serve.yaml", "model": "other"}, "serves tiny, quickstart-sft, not 'other'"),
        ({"task": "missing.yaml"}, "cannot be read"),
        ({"task": "train.yaml"}, "is a TrainingTask, not a ServingTask"),
    ],
)
def test_a_service_that_does_not_serve_the_model_is_refused_with_the_fix(
    tmp_path: Path, source: dict[str, str], fragment: str
) -> None:
    _service(tmp_path)
    (tmp_path / "train.yaml").write_text((CONFIGS / "quickstart.yaml").read_text())
    with pytest.raises(EndpointError, match=fragment):
        resolve(ServiceModelSource(type="service", **source), tmp_path, tmp_path, "mloc")


def test_an_agent_may_answer_through_a_service_and_holds_no_gpu_for_it() -> None:
    data = yaml.safe_load((CONFIGS / "quickstart" / "agent.yaml").read_text())
    data["spec"]["model"]["source"] = {"type": "service", "task": "serve.yaml"}
    result = validate_text(yaml.safe_dump(data), "agent.yaml", TASK_TYPES)
    assert result.valid, [i.format() for i in result.issues]
    assert isinstance(result.task, InferenceTask)
    data["spec"]["resources"] = {"hardware": {"gpu": {"type": "nvidia-l4", "count": 1}}}
    refused = validate_text(yaml.safe_dump(data), "agent.yaml", TASK_TYPES)
    assert [i.field for i in refused.issues] == ["spec.resources.hardware.gpu"]
