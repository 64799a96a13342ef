"""Broken task.yaml files, one mistake each: every error names its line, its field and its fix.

Each case edits a valid task.yaml (BASE) and states the field path, a fragment of the
message, the exit code, and which line the error must point at (the line holding
``anchor`` in the edited text, by default the edited line itself).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app

BASE = """\
apiVersion: mloc/v1
kind: TrainingTask
metadata:
  name: sft-base
  owner: john-doe
  project: llm-research
spec:
  taskType: sft
  resources:
    replicas: 1
    hardware:
      cpu: "8"
      memory: "64Gi"
      gpu:
        type: nvidia-a100-80gb
        count: 4
  model:
    source:
      type: huggingface
      identifier: mistralai/Mistral-7B-Instruct-v0.1
      revision: main
    adapter:
      type: qlora
      r: 16
      lora_alpha: 32
      lora_dropout: 0.05
      target_modules: [q_proj, v_proj]
  dataset:
    source:
      type: huggingface
      identifier: databricks/dolly-15k
      split: train
    preprocessing:
      prompt_template: "### Instruction:\\n{instruction}\\n### Response:\\n"
      completion_template: "{response}"
      max_seq_length: 2048
  hyperparameters:
    num_train_epochs: 3
    per_device_train_batch_size: 4
    learning_rate: 2e-4
    fp16: true
  evaluation:
    gates:
      - metric: perplexity
        max: 20
  schedule:
    cron: "0 3 * * 1"
    timezone: Europe/Berlin
  execution:
    retries: 1
  output:
    destination:
      type: s3
      bucket: my-ml-models
      path: checkpoints/sft
      credentials_block: ml-models-aws
    artifacts: [adapter_weights, training_logs]
"""

HF_TOKEN = "hf_" + "Zq8" * 12  # built here so no token-shaped literal sits in the repo
AWS_KEY = "AKIA" + "QWERTYUIOPASDFGH"


@dataclass
class Case:
    id: str
    edits: list[tuple[str, str]]
    field: str
    fragment: str
    code: int = 1
    anchor: str | None = None  # defaults to the first line of the last edit's new text

    def text(self) -> str:
        out = BASE
        for old, new in self.edits:
            assert old in out, f"{self.id}: {old!r} not in the base file"
            out = out.replace(old, new, 1)
        return out

    def line(self, text: str) -> int:
        anchor = self.anchor or next(s for s in self.edits[-1][1].splitlines() if s.strip())
        for number, line in enumerate(text.splitlines(), 1):
            if anchor.strip() and anchor.strip() in line:
                return number
        raise AssertionError(f"{self.id}: anchor {anchor!r} not found")


def one(id: str, old: str, new: str, field: str, fragment: str, code: int = 1, anchor: str | None = None) -> Case:
    return Case(id, [(old, new)], field, fragment, code, anchor)


CASES = [
    # typos in keys, with a suggestion
    one("typo-top-level", "kind: TrainingTask", "kidn: TrainingTask", "kidn", "did you mean 'kind'?"),
    one("typo-metadata", "  owner: john-doe", "  ownr: john-doe", "metadata.ownr", "did you mean 'owner'?"),
    one("typo-spec", "  hyperparameters:", "  hyperparams:", "spec.hyperparams", "did you mean 'hyperparameters'?"),
    one(
        "typo-adapter", "lora_alpha: 32", "lora_alpa: 32", "spec.model.adapter.lora_alpa", "did you mean 'lora_alpha'?"
    ),
    one("snake-case-tasktype", "  taskType: sft", "  task_type: sft", "spec.task_type", "did you mean 'taskType'?"),
    one(
        "misplaced-key",
        "  execution:",
        "  prompt_template: x\n  execution:",
        "spec.prompt_template",
        "belongs under spec.dataset.preprocessing",
    ),
    one(
        "duplicate-key",
        "  project: llm-research",
        "  project: llm-research\n  owner: someone-else",
        "metadata.owner",
        "is given twice",
        anchor="owner: someone-else",
    ),
    # wrong types
    one("replicas-not-int", "replicas: 1", "replicas: one", "spec.resources.replicas", "must be an integer"),
    one("gpu-count-float", "count: 4", "count: 4.5", "spec.resources.hardware.gpu.count", "must be an integer"),
    one("owner-int", "owner: john-doe", "owner: 42", "metadata.owner", "put it in quotes"),
    one(
        "section-not-mapping",
        "  execution:\n    retries: 1",
        "  execution: fast",
        "spec.execution",
        "must be a mapping",
    ),
    one("replicas-zero", "replicas: 1", "replicas: 0", "spec.resources.replicas", "must be >= 1"),
    one("retries-too-many", "retries: 1", "retries: 11", "spec.execution.retries", "must be <= 10"),
    # Kubernetes quantities
    one("cpu-words", 'cpu: "8"', 'cpu: "8 cores"', "spec.resources.hardware.cpu", "not a Kubernetes quantity"),
    one("cpu-memory-unit", 'cpu: "8"', 'cpu: "2Gi"', "spec.resources.hardware.cpu", "not a CPU amount"),
    one("memory-gb", 'memory: "64Gi"', 'memory: "64GB"', "spec.resources.hardware.memory", "write '64G'"),
    one("memory-millibytes", 'memory: "64Gi"', 'memory: "64m"', "spec.resources.hardware.memory", "milli-bytes"),
    one(
        "memory-negative",
        'memory: "64Gi"',
        'memory: "-4Gi"',
        "spec.resources.hardware.memory",
        "not a Kubernetes quantity",
    ),
    # taskType, kind, apiVersion
    one("unknown-tasktype", "taskType: sft", "taskType: sfft", "spec.taskType", "did you mean 'sft'?"),
    one(
        "tasktype-of-other-kind", "taskType: sft", "taskType: rag_inference", "spec.taskType", "set kind: InferenceTask"
    ),
    one("unknown-kind", "kind: TrainingTask", "kind: TrainngTask", "kind", "did you mean 'TrainingTask'?"),
    one("api-version", "apiVersion: mloc/v1", "apiVersion: mloc/v2", "apiVersion", "did you mean 'mloc/v1'?"),
    # GPUs
    one(
        "unknown-gpu",
        "type: nvidia-a100-80gb",
        "type: nvidia-a100",
        "spec.resources.hardware.gpu.type",
        "not a known GPU type",
    ),
    one("gpu-count-zero", "count: 4", "count: 0", "spec.resources.hardware.gpu.count", "is 0 but gpu.type is"),
    one("gpu-count-negative", "count: 4", "count: -1", "spec.resources.hardware.gpu.count", "must be >= 0"),
    Case(
        "bf16-on-t4",
        [("type: nvidia-a100-80gb", "type: nvidia-t4"), ("    fp16: true", "    bf16: true")],
        "spec.hyperparameters.bf16",
        "cannot compute in bfloat16",
    ),
    # schedule
    one("cron-out-of-range", '"0 3 * * 1"', '"0 25 * * 1"', "spec.schedule.cron", "not a valid cron expression"),
    one("cron-four-fields", '"0 3 * * 1"', '"0 3 * *"', "spec.schedule.cron", "has 4 fields"),
    one(
        "timezone-typo",
        "timezone: Europe/Berlin",
        "timezone: Europe/Berln",
        "spec.schedule.timezone",
        "did you mean 'Europe/Berlin'?",
    ),
    one(
        "timezone-unknown",
        "timezone: Europe/Berlin",
        "timezone: Mars/Olympus",
        "spec.schedule.timezone",
        "not a known time zone",
    ),
    # literal secrets
    one(
        "hf-token",
        "      revision: main",
        f"      revision: main\n      token: {HF_TOKEN}",
        "spec.model.source.token",
        "Hugging Face token",
        anchor="token:",
    ),
    one(
        "aws-key-in-annotation",
        "  project: llm-research",
        f"  project: llm-research\n  annotations:\n    note: {AWS_KEY}",
        "metadata.annotations.note",
        "AWS access key",
        anchor="note:",
    ),
    one(
        "secret-hyperparameter",
        "    fp16: true",
        "    fp16: true\n    hub_token: not-a-block",
        "spec.hyperparameters.hub_token",
        "Prefect Secret",
        anchor="hub_token",
    ),
    one(
        "password-in-url",
        "path: checkpoints/sft",
        "path: https://me:pa55@example.com/x",
        "spec.output.destination.path",
        "password inside a URL",
    ),
    # hyperparameters, checked against trl.SFTConfig
    one(
        "unknown-hyperparameter",
        "learning_rate: 2e-4",
        "learning_rte: 2e-4",
        "spec.hyperparameters.learning_rte",
        "did you mean 'learning_rate'?",
    ),
    one(
        "hyperparameter-type",
        "num_train_epochs: 3",
        'num_train_epochs: "three"',
        "spec.hyperparameters.num_train_epochs",
        "must be a number",
    ),
    one("hyperparameter-bool", "fp16: true", "fp16: maybe", "spec.hyperparameters.fp16", "must be true/false"),
    one(
        "hyperparameter-int",
        "per_device_train_batch_size: 4",
        "per_device_train_batch_size: 4.5",
        "spec.hyperparameters.per_device_train_batch_size",
        "must be an integer",
    ),
    one(
        "hyperparameter-choice",
        "    fp16: true",
        "    fp16: true\n    lr_scheduler_type: cosin",
        "spec.hyperparameters.lr_scheduler_type",
        "did you mean 'cosine'?",
        anchor="lr_scheduler_type",
    ),
    one(
        "hyperparameter-owned",
        "    fp16: true",
        "    fp16: true\n    max_length: 512",
        "spec.hyperparameters.max_length",
        "preprocessing.max_seq_length",
        anchor="max_length",
    ),
    # adapter
    one("lora-rank-zero", "r: 16", "r: 0", "spec.model.adapter.r", "must be >= 1"),
    one("lora-dropout", "lora_dropout: 0.05", "lora_dropout: 1.5", "spec.model.adapter.lora_dropout", "must be < 1"),
    one("adapter-type", "type: qlora", "type: dora", "spec.model.adapter.type", "'dora' is not a valid type"),
    one(
        "target-modules-empty",
        "target_modules: [q_proj, v_proj]",
        "target_modules: []",
        "spec.model.adapter.target_modules",
        "is empty",
    ),
    one(
        "qlora-field-on-lora",
        "type: qlora",
        "type: lora\n      bits: 4",
        "spec.model.adapter.bits",
        "only for adapter type 'qlora'",
        anchor="bits: 4",
    ),
    one(
        "qlora-without-gpu",
        "      gpu:\n        type: nvidia-a100-80gb\n        count: 4\n",
        "",
        "spec.model.adapter.type",
        "needs a CUDA GPU",
        anchor="type: qlora",
    ),
    # names
    one("bad-name", "name: sft-base", "name: SFT_Base", "metadata.name", "not a valid name"),
    one("long-name", "name: sft-base", "name: " + "a" * 70, "metadata.name", "use at most 63"),
    one("bad-owner", "owner: john-doe", 'owner: "john doe"', "metadata.owner", "not a valid id"),
    one("missing-owner", "  owner: john-doe\n", "", "metadata.owner", "is required", anchor="metadata:"),
    one(
        "bucket-url", "bucket: my-ml-models", "bucket: s3://my-ml-models", "spec.output.destination.bucket", "is a URL"
    ),
    one(
        "block-name",
        "credentials_block: ml-models-aws",
        "credentials_block: ML_Models",
        "spec.output.destination.credentials_block",
        "not a Prefect block name",
    ),
    # templates, artifacts, gates
    one(
        "template-brace",
        "{instruction}",
        "{instruction",
        "spec.dataset.preprocessing.prompt_template",
        "not a valid template",
    ),
    one("template-positional", "{instruction}", "{}", "spec.dataset.preprocessing.prompt_template", "positional"),
    one(
        "template-jinja",
        "{instruction}",
        "{{ instruction }}",
        "spec.dataset.preprocessing.prompt_template",
        "placeholders — MLOC templates",
    ),
    one(
        "unknown-artifact",
        "[adapter_weights, training_logs]",
        "[adapter_weights, weights]",
        "spec.output.artifacts[1]",
        "did you mean 'adapter_weights'?",
    ),
    one(
        "duplicate-artifact",
        "[adapter_weights, training_logs]",
        "[training_logs, training_logs]",
        "spec.output.artifacts",
        "more than once",
    ),
    one(
        "gate-metric",
        "metric: perplexity",
        "metric: accuracy",
        "spec.evaluation.gates[0].metric",
        "'accuracy' is not a metric taskType 'sft' measures — use one of: eval_loss, perplexity, eval_loss_reduction",
    ),
    one(
        "gate-metric-of-another-type",
        "metric: perplexity",
        "metric: reward_accuracy",
        "spec.evaluation.gates[0].metric",
        "'reward_accuracy' is not a metric taskType 'sft' measures",
    ),
    # not a task at all
    one(
        "yaml-syntax",
        "num_train_epochs: 3",
        "num_train_epochs: [3",
        "spec.hyperparameters.num_train_epochs[0]",
        "flow sequence that starts at line 38",
        code=2,
        anchor="per_device_train_batch_size",
    ),
    one("yaml-tab", "    retries: 1", "\tretries: 1", "spec.execution", "not valid YAML", code=2),
    # hostile or broken YAML: refused at its line, quickly, never a traceback or a hang
    one(
        "billion-laughs",
        "apiVersion: mloc/v1",
        'l0: &l0 ["lol"]\n'
        + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
        + "apiVersion: mloc/v1",
        "l1",
        "with its aliases (*name) and merge keys (<<) expanded the document holds over",
        code=2,
        anchor="l1: &l1",
    ),
    one(
        "merge-key-bomb",
        "apiVersion: mloc/v1",
        "m0: &m0 {k0: v}\n"
        + "".join(f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: v}}\n" for i in range(1, 21))
        + "apiVersion: mloc/v1",
        "m1.<<",
        "write the repeated part out once instead of aliasing it",
        code=2,
        anchor="m1: &m1",
    ),
    one(
        "aliased-long-string",
        "apiVersion: mloc/v1",
        f's: &s "{"x" * 100_000}"\nl: [{", ".join(["*s"] * 2_000)}]\napiVersion: mloc/v1',
        "l[999]",
        "more than 1000 aliases",
        code=2,
        anchor="l: [",
    ),
    one(
        "deep-flow-nesting",
        "apiVersion: mloc/v1",
        "x: " + "[" * 2_000 + "]" * 2_000 + "\napiVersion: mloc/v1",
        "x" + "[0]" * 63,
        "nests deeper than 64 levels",
        code=2,
        anchor="x: [[[",
    ),
    one(
        "deep-block-nesting",
        "apiVersion: mloc/v1",
        "".join(f"{' ' * i}k{i}:\n" for i in range(70)) + " " * 70 + "v: 1\napiVersion: mloc/v1",
        ".".join(f"k{i}" for i in range(64)),
        "nests deeper than 64 levels",
        code=2,
        anchor=" " * 64 + "k64:",
    ),
    one(
        "nul-byte",
        "  owner: john-doe",
        "  owner: john\x00doe",
        "metadata.owner",
        "the character U+0000 (a control character) cannot appear in YAML",
        code=2,
    ),
    one(
        "control-character",
        "  owner: john-doe",
        "  owner: john\x07doe",
        "metadata.owner",
        "the character U+0007",
        code=2,
    ),
    one(
        "bad-int-tag",
        "    num_train_epochs: 3",
        "    num_train_epochs: !!int abc",
        "spec.hyperparameters.num_train_epochs",
        "the value tagged !!int is not a valid int — drop the !!int tag",
        code=2,
    ),
    one(
        "bad-timestamp-tag",
        "    num_train_epochs: 3",
        "    num_train_epochs: !!timestamp 2020-99-99",
        "spec.hyperparameters.num_train_epochs",
        "is not a valid timestamp",
        code=2,
    ),
    # values no trainer, node or scheduler could use: refused before anything runs
    one(
        "nan-learning-rate",
        "learning_rate: 2e-4",
        "learning_rate: .nan",
        "spec.hyperparameters.learning_rate",
        "is nan — a hyperparameter is a finite number",
    ),
    one(
        "inf-epochs",
        "num_train_epochs: 3",
        "num_train_epochs: .inf",
        "spec.hyperparameters.num_train_epochs",
        "is inf — a hyperparameter is a finite number",
    ),
    one("nan-gate-bound", "        max: 20", "        max: .nan", "spec.evaluation.gates[0].max", "finite number"),
    one(
        "negative-batch-size",
        "per_device_train_batch_size: 4",
        "per_device_train_batch_size: -1",
        "spec.hyperparameters.per_device_train_batch_size",
        "must be at least 1",
    ),
    one(
        "fractional-save-steps",
        "    fp16: true",
        "    fp16: true\n    save_steps: 2.5",
        "spec.hyperparameters.save_steps",
        "above 1 it counts steps and must be a whole number",
        anchor="save_steps",
    ),
    one(
        "zero-max-steps",
        "    fp16: true",
        "    fp16: true\n    max_steps: 0",
        "spec.hyperparameters.max_steps",
        "or -1 to train num_train_epochs",
        anchor="max_steps",
    ),
    one(
        "huge-integer",
        "    fp16: true",
        "    fp16: true\n    max_steps: 1000000000000000000000000000000",
        "spec.hyperparameters.max_steps",
        "far beyond any sensible value",
        anchor="max_steps",
    ),
    one(
        "huge-gpu-count",
        "        count: 4",
        "        count: 1000000000000000000000000000000",
        "spec.resources.hardware.gpu.count",
        "16",
    ),
    one("cpu-exponent-overflow", 'cpu: "8"', 'cpu: "1e1000000"', "spec.resources.hardware.cpu", "is out of range"),
    one(
        "memory-past-int-digits",
        'memory: "64Gi"',
        'memory: "1e4400"',
        "spec.resources.hardware.memory",
        "is out of range",
    ),
    one(
        "memory-beyond-any-node",
        'memory: "64Gi"',
        'memory: "5000Ti"',
        "spec.resources.hardware.memory",
        "more memory than any node has",
    ),
    one(
        "cpu-beyond-any-node",
        'cpu: "8"',
        'cpu: "100000"',
        "spec.resources.hardware.cpu",
        "more cores than any node has",
    ),
    one(
        "long-time-zone",
        "timezone: Europe/Berlin",
        "timezone: " + "Europe/" * 40,
        "spec.schedule.timezone",
        "is not a known time zone",
    ),
    one(
        "nul-in-a-path",
        "      path: checkpoints/sft",
        '      path: "checkpoints/\\0sft"',
        "spec.output.destination.path",
        "control character",
    ),
    one(
        "unknown-tag",
        "    num_train_epochs: 3",
        "    num_train_epochs: !!python/object:os.system 3",
        "spec.hyperparameters.num_train_epochs",
        "is not one a task.yaml uses",
        code=2,
    ),
    Case("empty-file", [(BASE, "")], "(document)", "the file is empty", anchor="", code=1),
    Case("top-level-list", [(BASE, "- a\n- b\n")], "(document)", "a task.yaml is a mapping", anchor="- a"),
]


runner = CliRunner()


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


def test_base_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text(BASE)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_broken_file_is_reported(case: Case, tmp_path: Path) -> None:
    text = case.text()
    path = tmp_path / "task.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == case.code, result.output
    line = case.line(text) if case.anchor != "" else 1
    pattern = re.escape(f"{path}:{line}:") + r"\d+: " + re.escape(f"{case.field}: ") + r".*" + re.escape(case.fragment)
    assert re.search(pattern, result.output), f"expected line {line}, {case.field}: …{case.fragment}\n{result.output}"
    assert "Traceback" not in result.output
    # secrets are named, never repeated
    assert HF_TOKEN not in result.output and AWS_KEY not in result.output and "pa55" not in result.output


def test_all_errors_of_a_file_are_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text(
        BASE.replace("owner: john-doe", "ownr: john-doe")
        .replace('memory: "64Gi"', 'memory: "64GB"')
        .replace("learning_rate: 2e-4", "learning_rte: 2e-4")
        .replace("timezone: Europe/Berlin", "timezone: Europe/Berln")
    )
    result = runner.invoke(app, ["validate", "--json", str(path)])
    assert result.exit_code == 1
    fields = [e["field"] for e in json.loads(result.output)["files"][0]["errors"]]
    for field in (
        "metadata.ownr",
        "metadata.owner",
        "spec.resources.hardware.memory",
        "spec.hyperparameters.learning_rte",
        "spec.schedule.timezone",
    ):
        assert field in fields
    lines = [e["line"] for e in json.loads(result.output)["files"][0]["errors"]]
    assert lines == sorted(lines)


def test_json_output_shape(tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text(BASE.replace("r: 16", "r: 0"))
    result = runner.invoke(app, ["validate", "--json", str(path)])
    payload = json.loads(result.output)
    assert payload["valid"] is False
    (error,) = payload["files"][0]["errors"]
    assert error == {
        "file": str(path),
        "line": 24,
        "column": 10,
        "field": "spec.model.adapter.r",
        "message": "is 0",
        "hint": "it must be >= 1",
    }


def test_unreadable_file_exits_2_and_a_folder_is_searched(tmp_path: Path) -> None:
    assert runner.invoke(app, ["validate", str(tmp_path / "missing.yaml")]).exit_code == 2
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    assert runner.invoke(app, ["validate", str(tmp_path / "binary.yaml")]).exit_code == 2
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "good.yaml").write_text(BASE)
    (folder / "bad.yml").write_text(BASE.replace("r: 16", "r: 0"))
    (folder / "notes.txt").write_text("not a task")
    result = runner.invoke(app, ["validate", str(folder)])
    assert result.exit_code == 1
    assert "ok    " in result.output and "bad.yml" in result.output and "notes.txt" not in result.output


def test_hyperparameters_are_normalised_for_the_trainer(tmp_path: Path) -> None:
    """YAML 1.1 reads 2e-4 as a string; the validated task carries the float the trainer needs."""
    from configs import validate_text
    from tasks.registry import TASK_TYPES

    result = validate_text(BASE, "task.yaml", TASK_TYPES)
    assert result.valid, result.issues
    assert result.task is not None
    assert result.task.spec.hyperparameters["learning_rate"] == pytest.approx(2e-4)
