"""`kind: ServingTask`: the shipped examples validate, and every field that would do nothing is refused.

Each case edits the production example (configs/serve_mistral_7b.yaml) and states the field
the error must name and a fragment of its message; the line must be the field's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from configs import ServingTask, validate_text
from tasks.registry import TASK_TYPES

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EXAMPLE = (CONFIGS / "serve_mistral_7b.yaml").read_text()


def _edit(**changes: object) -> str:
    """The example with ``spec`` keys replaced (a value of None removes the key)."""
    data = yaml.safe_load(EXAMPLE)
    for dotted, value in changes.items():
        parent = data["spec"]
        *path, last = dotted.split("__")
        for key in path:
            parent = parent.setdefault(key, {})
        if value is None:
            parent.pop(last, None)
        else:
            parent[last] = value
    return yaml.safe_dump(data, sort_keys=False)


def _errors(text: str) -> list[tuple[str, str, int]]:
    result = validate_text(text, "serve.yaml", TASK_TYPES)
    return [(i.field, f"{i.message} — {i.hint}", i.line) for i in result.issues]


def test_the_examples_validate_into_serving_tasks() -> None:
    for path in (CONFIGS / "serve_mistral_7b.yaml", CONFIGS / "quickstart" / "serve.yaml"):
        result = validate_text(path.read_text(), str(path), TASK_TYPES)
        assert result.valid, [i.format() for i in result.issues]
        assert isinstance(result.task, ServingTask)
        assert result.task.spec.task_type == "serving"
    task = validate_text(EXAMPLE, "x", TASK_TYPES).task
    assert isinstance(task, ServingTask)
    assert task.spec.model.adapters[0].source.type == "training"
    assert task.spec.autoscaling is not None and task.spec.autoscaling.max_replicas == 4


REMOTE = {"type": "remote", "base_url": "http://vllm.serving.svc:8000/v1", "model": "mistral-7b"}

CASES = [
    pytest.param(
        {"model__adapters": [{"name": "mistral-7b-instruct", "source": {"type": "local", "path": "a"}}]},
        "spec.model.adapters[0].name",
        "already the name of the base model",
        id="adapter-named-like-the-base",
    ),
    pytest.param(
        {"engine": {"name": "transformers"}, "autoscaling": None},
        "spec.model.adapters",
        "no adapters",
        id="transformers-with-adapters",
    ),
    pytest.param(
        {"engine": {"name": "transformers"}, "model__adapters": None},
        "spec.autoscaling",
        "vllm:num_requests_waiting",
        id="transformers-with-autoscaling",
    ),
    pytest.param(
        {"engine": {"name": "transformers", "max_model_len": 2048}, "model__adapters": None, "autoscaling": None},
        "spec.engine.max_model_len",
        "vLLM setting",
        id="transformers-with-a-vllm-setting",
    ),
    pytest.param(
        {
            "engine": {"name": "transformers"},
            "model__adapters": None,
            "autoscaling": None,
            "resources__hardware__gpu": {"type": "nvidia-l40s", "count": 2},
        },
        "spec.resources.hardware.gpu.count",
        "one GPU",
        id="transformers-on-two-gpus",
    ),
    pytest.param(
        {"resources__replicas": 2},
        "spec.resources.replicas",
        "autoscaling decides",
        id="replicas-beside-autoscaling",
    ),
    pytest.param(
        {"autoscaling": {"min_replicas": 5, "max_replicas": 2}},
        "spec.autoscaling.min_replicas",
        "above max_replicas",
        id="autoscaling-upside-down",
    ),
    pytest.param(
        {"model__source": REMOTE, "model__adapters": None, "autoscaling": None, "resources": None, "port": None},
        "spec.engine",
        "nothing is deployed",
        id="remote-with-an-engine",
    ),
    pytest.param(
        {"model__source": REMOTE, "engine": None, "autoscaling": None, "port": None},
        "spec.resources",
        "nothing is deployed",
        id="remote-with-resources",
    ),
    pytest.param(
        {"autoscaling": {"min_replicas": 0, "max_replicas": 2}},
        "spec.autoscaling.min_replicas",
        "must be >= 1",
        id="no-scale-to-zero",
    ),
    pytest.param({"schedule": {"cron": "0 3 * * *"}}, "spec.schedule", "unknown field", id="no-schedule"),
    pytest.param({"port": 80}, "spec.port", "must be >= 1024", id="privileged-port"),
    pytest.param({"engine__name": "tgi"}, "spec.engine.name", "vllm", id="unknown-engine"),
    pytest.param(
        {"model__adapters": [{"name": "x", "source": {"type": "training", "task": "t.yaml", "version": ""}}]},
        "spec.model.adapters[0].source.version",
        "must not be empty",
        id="empty-version",
    ),
]


@pytest.mark.parametrize(("changes", "field", "fragment"), CASES)
def test_a_field_that_would_do_nothing_is_refused(changes: dict[str, object], field: str, fragment: str) -> None:
    text = _edit(**changes)
    errors = _errors(text)
    assert any(f == field and fragment in m for f, m, _ in errors), errors
    line = next(line for f, _, line in errors if f == field)
    key = field.split(".")[-1].split("[")[0]
    assert key in text.splitlines()[line - 1], (field, line, text)


def test_a_remote_service_is_registered_with_nothing_else() -> None:
    text = _edit(model__source=REMOTE, model__adapters=None, autoscaling=None, resources=None, port=None, engine=None)
    result = validate_text(text, "x", TASK_TYPES)
    assert result.valid, [i.format() for i in result.issues]


def test_training_and_inference_kinds_are_unchanged_by_the_serving_kind() -> None:
    quickstart = (CONFIGS / "quickstart.yaml").read_text()
    assert validate_text(quickstart, "q", TASK_TYPES).valid
    refused = _errors(quickstart.replace("kind: TrainingTask", "kind: ServingTask"))
    assert any(f == "spec.dataset" and "unknown field" in m for f, m, _ in refused), refused
