"""Every shipped task.yaml validates, every task type passes the same standard checks,
and the JSON Schema that editors use is current and agrees with the validator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from configs import validate_file, validate_text
from configs.schema import task_schema
from tasks.registry import BUILTIN, TASK_TYPES

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
EXAMPLES = sorted(p for p in CONFIGS.glob("*.y*ml"))


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"sft_mistral_7b.yaml", "ppo_zephyr_7b.yaml", "rag_inference_service.yaml", "quickstart.yaml"} <= names


UNAVAILABLE = sorted(name for name, info in TASK_TYPES.items() if info.unavailable)


def example_type(path: Path) -> str:
    return yaml.safe_load(path.read_text())["spec"].get("taskType", "serving")  # a ServingTask may leave it out


def assert_valid_or_refused_as_unavailable(path: Path) -> None:
    """Valid; or, for a type this version cannot run yet, refused for that reason alone (its
    other fields are all valid), at its taskType line, naming the types that do run."""
    result = validate_file(path, TASK_TYPES)
    task_type = example_type(path)
    if task_type not in UNAVAILABLE:
        assert result.valid, "\n".join(i.format() for i in result.issues)
        return
    [issue] = result.issues
    said = issue.format()
    assert issue.field == "spec.taskType" and "cannot run in this MLOC version" in said
    assert TASK_TYPES[task_type].unavailable in said
    assert all(name in said for name in TASK_TYPES if name not in UNAVAILABLE)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path: Path) -> None:
    assert_valid_or_refused_as_unavailable(path)


def test_every_registered_type_runs() -> None:
    """Every training and inference type runs: none is refused as unavailable."""
    assert UNAVAILABLE == []


def test_mloc_validate_configs_folder() -> None:
    """Through the installed console script, as a user runs it: every file passes but the
    examples of the types this version cannot run yet, and those fail for that reason."""
    mloc = Path(sys.executable).parent / "mloc"  # the installed console script, PATH or not
    proc = subprocess.run([str(mloc), "validate", str(CONFIGS)], capture_output=True, text=True, cwd=ROOT)
    refused = [p for p in EXAMPLES if example_type(p) in UNAVAILABLE]
    assert proc.returncode == (1 if refused else 0), proc.stdout + proc.stderr
    # the examples, and the quickstarts of each type under configs/quickstart/
    checked = len(EXAMPLES) + len(list(CONFIGS.glob("quickstart/*.y*ml")))
    assert proc.stdout.count("ok    ") == checked - len(refused), proc.stdout
    assert proc.stdout.count("cannot run in this MLOC version") == len(refused), proc.stdout


def test_validate_does_not_import_torch_or_prefect() -> None:
    code = (
        "import sys\n"
        "from flows.cli import app\n"
        "try:\n"
        f"    app(['validate', {str(CONFIGS / 'sft_mistral_7b.yaml')!r}])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'prefect') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


# --- the standard suite, run over every registered task type ------------------------------------


@pytest.mark.parametrize("module", BUILTIN, ids=lambda m: m.TASK_TYPE.name)
def test_task_type_is_complete(module) -> None:
    info = module.TASK_TYPE
    assert module.__doc__ and module.__doc__.startswith(f"{info.name}:"), "module docstring names the type"
    assert info.summary
    example = CONFIGS / info.example
    assert example.exists(), f"{info.name} has no example task.yaml"
    assert example_type(example) == info.name and yaml.safe_load(example.read_text())["kind"] == info.kind
    assert_valid_or_refused_as_unavailable(example)
    trains = hasattr(module, "trainer_config_class")
    assert trains == (info.kind == "TrainingTask")
    if trains:
        assert info.fields_file is not None and info.fields_file.exists()
        assert info.trainer_config and info.trainer_config.startswith("trl.")
        assert len(info.hyperparameter_fields) > 50


def test_ppo_says_which_trainer_it_runs() -> None:
    info = TASK_TYPES["ppo"]
    assert info.trainer_config == "trl.RLOOConfig"
    assert "RLOOTrainer" in info.summary


def test_every_field_is_described() -> None:
    """Prefect's run form and editors show these descriptions."""
    schema = task_schema(TASK_TYPES)
    missing = [
        f"{name}.{prop}"
        for name, definition in schema["$defs"].items()
        for prop, body in definition.get("properties", {}).items()
        if not body.get("description")
    ]
    assert missing == []


# --- JSON Schema -------------------------------------------------------------------------------


def test_shipped_schema_is_current() -> None:
    shipped = json.loads((CONFIGS / "task.schema.json").read_text())
    assert shipped == task_schema(TASK_TYPES), "run: mloc schema -o configs/task.schema.json"


def test_schema_accepts_the_examples_and_rejects_what_the_validator_rejects() -> None:
    schema = task_schema(TASK_TYPES)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in EXAMPLES:
        if example_type(path) in UNAVAILABLE:
            continue  # refused by the validator until its type runs
        task = validate_file(path, TASK_TYPES).task
        assert task is not None
        document = task.model_dump(mode="json", by_alias=True, exclude_unset=True)
        errors = list(validator.iter_errors(document))
        assert errors == [], f"{path.name}: {errors[0].message if errors else ''}"
    reference = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    reference["spec"]["hyperparameters"]["learning_rte"] = 0.1
    assert not validator.is_valid(reference)
    assert not validate_text(yaml.safe_dump(reference), "x.yaml", TASK_TYPES).valid


def test_readme_example_validates() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    result = validate_text(block, "README.md", TASK_TYPES)
    assert result.valid, "\n".join(i.format() for i in result.issues)
