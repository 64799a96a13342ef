"""Validating task.yaml files: every error of a file, each with its line, field and fix."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from configs import hyperparameters
from configs.checks import template_fields
from configs.errors import ConfigIssue, Loc, TaskError, choice_hint, did_you_mean, dotted, yaml_type
from configs.gpus import gpu_type
from configs.models import KINDS, FieldError, InferenceTask, QloraAdapter, ServingTask, Task, TaskHeader, TrainingTask
from configs.secrets import HINT as SECRET_HINT
from configs.secrets import find_secrets, mask
from configs.tasktypes import TaskTypeInfo
from configs.yamlsource import Document, Loader, Positions, YamlSyntaxError, parse

_ADAPTER: TypeAdapter[Any] = TypeAdapter(Task)
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class Result:
    """The outcome of validating one file."""

    file: str
    task: TrainingTask | InferenceTask | ServingTask | None = None
    issues: list[ConfigIssue] = field(default_factory=list)
    unreadable: bool = False

    @property
    def valid(self) -> bool:
        return not self.issues

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "valid": self.valid,
            "unreadable": self.unreadable,
            "errors": [i.to_dict() for i in self.issues],
        }


class _Collector:
    def __init__(self, file: str, doc: Document) -> None:
        self.file, self.doc = file, doc
        self.issues: list[ConfigIssue] = []
        self.flagged: set[Loc] = set()

    def add(self, loc: Loc, message: str, at_key: bool = False) -> None:
        line, col = self.doc.positions.of_key(loc) if at_key else self.doc.positions.of_value(loc)
        text, _, hint = message.partition(" — ")
        self.issues.append(ConfigIssue(self.file, line, col, dotted(loc), text, hint))


# --- pydantic errors -> issues ----------------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType) and sum(a is not type(None) for a in get_args(tp)) == 1:
            tp = next(a for a in get_args(tp) if a is not type(None))
        else:
            return tp


def _model_at(parts: Iterable[str | int], root: Any = Task) -> type[BaseModel] | None:
    """The model class that a pydantic error location (tags included) points into."""
    tp: Any = root
    for part in parts:
        tp = _unwrap(tp)
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            members = [m for m in get_args(tp) if isinstance(m, type) and issubclass(m, BaseModel)]
            tp = next((m for m in members if _tag_of(m) == part), None)
            if tp is None:
                return None
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            found = next((f for n, f in tp.model_fields.items() if part in (n, f.alias)), None)
            if found is None:
                return None
            tp = found.annotation
        elif origin in (list, dict):
            tp = get_args(tp)[-1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _tag_of(model: type[BaseModel]) -> str | None:
    for name in ("type", "kind"):
        if name in model.model_fields:
            args = get_args(model.model_fields[name].annotation)
            return args[0] if args else None
    return None


def _data_loc(loc: tuple[str | int, ...], data: Any) -> Loc:
    """Drop the union tags pydantic puts into locations, keeping the path as written in YAML."""
    out: list[str | int] = []
    for index, part in enumerate(loc):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        elif index == len(loc) - 1 and isinstance(part, str) and not part[:1].isupper() and "[" not in part:
            pass  # a missing field: keep its name
        else:
            continue
        out.append(part)
    return tuple(out)


_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "literal_error": None,
}


def _translate(err: Mapping[str, Any], data: Any, out: _Collector, root: Any = Task) -> None:
    kind, loc, value = err["type"], tuple(err["loc"]), err.get("input")
    where = _data_loc(loc, data)
    if where in out.flagged:
        return
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1], root)
        key = str(loc[-1])
        key_hints: dict[str, str] = getattr(model, "key_hints", {})
        if key in key_hints:
            out.add(where, f"is not a field here — {key_hints[key]}", at_key=True)
            return
        names = [f.alias or n for n, f in model.model_fields.items()] if model else []
        guess = did_you_mean(key, names)
        hint = f"did you mean '{guess}'?" if guess else ("valid fields: " + ", ".join(names) if names else "remove it")
        out.add(where, f"unknown field '{key}' — {hint}", at_key=True)
    elif kind == "missing":
        out.add(where, f"is required — add '{where[-1]}:' here", at_key=True)
    elif kind in ("union_tag_not_found", "union_tag_invalid"):
        tag_name = "kind" if where == () else "type"
        expected = [t.strip(" '") for t in str(err.get("ctx", {}).get("expected_tags", "")).split(",")]
        if where == ():
            expected = KINDS
        if kind == "union_tag_not_found":
            out.add((*where, tag_name), f"is required — use one of: {', '.join(expected)}", at_key=True)
        else:
            tag = err["ctx"]["tag"]
            out.add((*where, tag_name), f"'{tag}' is not a valid {tag_name} — " + choice_hint(tag, expected))
    elif kind == "literal_error":
        expected = [e.strip(" '") for e in str(err["ctx"]["expected"]).replace(" or ", ", ").split(",")]
        if isinstance(value, str):
            out.add(where, f"'{value}' is not valid — " + choice_hint(value, expected))
        else:
            out.add(where, f"{yaml_type(value)} is not valid — use one of: {', '.join(expected)}")
    elif kind in ("value_error", "assertion_error"):
        error = err.get("ctx", {}).get("error")
        if isinstance(error, FieldError):
            out.add((*where, error.field), str(error))
        else:
            out.add(where, str(error) if error else err["msg"])
    elif kind == "string_type":
        quote = " — put it in quotes" if isinstance(value, (int, float, bool)) else ""
        out.add(where, f"must be a string, not {yaml_type(value)}{quote}")
    elif kind in _TYPE_WORDS:
        out.add(where, f"must be {_TYPE_WORDS[kind]}, not {yaml_type(value)}")
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        sign = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(err["ctx"].values()))
        out.add(where, f"is {value} — it must be {sign} {bound}")
    elif kind in ("too_short", "string_too_short"):
        out.add(where, "must not be empty")
    else:
        out.add(where, err["msg"])


# --- checks that span sections ----------------------------------------------------------------


def _cross_checks(task: TrainingTask | InferenceTask | ServingTask, info: TaskTypeInfo | None, out: _Collector) -> None:
    if isinstance(task, ServingTask):
        _serving_checks(task, out)
        return
    spec = task.spec
    gpu = spec.resources.hardware.gpu
    if info is not None and info.requires_one_of and not any(getattr(spec, s, None) for s in info.requires_one_of):
        wanted = " or ".join(f"spec.{s}" for s in info.requires_one_of)
        out.add(
            ("spec", info.requires_one_of[0]), f"is required for taskType '{info.name}' — add {wanted}", at_key=True
        )
    if isinstance(task, InferenceTask):
        _inference_checks(task, info, out)
        return
    adapter = task.spec.model.adapter
    if adapter is not None and adapter.type == "qlora" and gpu.count == 0:
        out.add(
            ("spec", "model", "adapter", "type"),
            "qlora loads the base model in 4 bits, which needs a CUDA GPU, and this task asks for none — "
            "ask for one in spec.resources.hardware.gpu, or use type: lora",
        )
    artifacts = task.spec.output.artifacts
    if "adapter_weights" in artifacts and adapter is None:
        out.add(
            ("spec", "output", "artifacts", artifacts.index("adapter_weights")),
            "'adapter_weights' needs an adapter — add spec.model.adapter, or upload 'full_model'",
        )
    evaluation = task.spec.evaluation
    if info is not None:
        for index, gate in enumerate(evaluation.gates):
            if gate.metric not in info.metric_names:
                out.add(
                    ("spec", "evaluation", "gates", index, "metric"),
                    f"'{gate.metric}' is not a metric taskType '{info.name}' measures — "
                    + choice_hint(gate.metric, info.metric_names),
                )
    if not evaluation.enabled and evaluation.gates:
        out.add(("spec", "evaluation", "gates"), "are set but evaluation is disabled — set enabled: true")
    if not evaluation.enabled and "eval_results" in artifacts:
        out.add(
            ("spec", "output", "artifacts", artifacts.index("eval_results")),
            "'eval_results' needs evaluation — set spec.evaluation.enabled: true",
        )
    prep = task.spec.dataset.preprocessing
    if prep.completion_template is not None and prep.prompt_template is None:
        out.add(
            ("spec", "dataset", "preprocessing", "completion_template"),
            "is set without prompt_template — add a prompt_template for the prompt part",
        )
    card = gpu_type(gpu.type) if gpu.type else None
    if card is not None and not card.bf16:
        if task.spec.hyperparameters.get("bf16") is True:
            out.add(
                ("spec", "hyperparameters", "bf16"),
                f"{card.name} cannot compute in bfloat16 — use fp16: true, or a GPU type from the A100 on",
            )
        if isinstance(adapter, QloraAdapter) and adapter.compute_dtype == "bfloat16":
            out.add(
                ("spec", "model", "adapter", "compute_dtype"),
                f"bfloat16 is not supported by {card.name} — set compute_dtype: float16",
            )


def _inference_checks(task: InferenceTask, info: TaskTypeInfo | None, out: _Collector) -> None:
    spec = task.spec
    source = spec.model.source
    if spec.prompt_template is not None:
        allowed = {"question"} | ({"context"} if spec.retrieval and spec.task_type == "rag_inference" else set())
        fields = template_fields(spec.prompt_template)
        for name in fields:
            if name not in allowed:
                out.add(
                    ("spec", "prompt_template"),
                    f"placeholder '{{{name}}}' is not filled in — use {', '.join('{' + a + '}' for a in sorted(allowed))}",
                )
        for needed in sorted(allowed - set(fields)):
            out.add(
                ("spec", "prompt_template"),
                f"has no {{{needed}}} placeholder — the "
                + ("question" if needed == "question" else "retrieved chunks")
                + " would never reach the model: add it",
            )
    if spec.task_type == "agent" and source.type not in ("remote", "service"):
        out.add(
            ("spec", "model", "source", "type"),
            f"'{source.type}' loads the weights through transformers, whose chat models (ChatHuggingFace) never "
            "parse tool calls, so an agent on them could not call a tool — use type: remote with the base_url of "
            "an OpenAI-compatible server that does tool calling (a vLLM server), or type: service naming a ServingTask",
        )
    if spec.agent is not None and "retriever" in spec.agent.tools and spec.retrieval is None:
        out.add(
            ("spec", "agent", "tools", spec.agent.tools.index("retriever")),
            "'retriever' searches spec.retrieval's documents, and there is no spec.retrieval — add it, or drop the tool",
        )
    if spec.agent is not None and spec.task_type != "agent":
        out.add(("spec", "agent"), f"is for taskType 'agent', not '{spec.task_type}' — remove it", at_key=True)
    if spec.resources.replicas > 1:
        out.add(
            ("spec", "resources", "replicas"),
            f"is {spec.resources.replicas} — an inference task answers its inputs on one worker; serving "
            "replicas belong to a ServingTask: set replicas: 1",
        )
    gpu = spec.resources.hardware.gpu
    if source.type in ("remote", "service") and gpu.count > 0:
        out.add(
            ("spec", "resources", "hardware", "gpu"),
            "asks for GPUs, and the model is remote: it runs on its own server, and this run would hold GPUs for "
            "nothing — remove the gpu section",
        )
    if info is not None:
        for index, gate in enumerate(spec.evaluation.gates):
            if gate.metric not in info.metric_names:
                out.add(
                    ("spec", "evaluation", "gates", index, "metric"),
                    f"'{gate.metric}' is not a metric taskType '{info.name}' measures — "
                    + choice_hint(gate.metric, info.metric_names),
                )
    inputs = spec.inputs
    scored = inputs.answer_field is not None or (inputs.document_field is not None and spec.retrieval is not None)
    artifacts = spec.output.artifacts
    if "eval_results" in artifacts and not scored:
        out.add(
            ("spec", "output", "artifacts", artifacts.index("eval_results")),
            "'eval_results' needs something to score against — set spec.inputs.answer_field (reference answers) "
            "or spec.inputs.document_field (the document holding each answer)",
        )
    if spec.evaluation.gates and not scored:
        out.add(
            ("spec", "evaluation", "gates"),
            "are set, and no answer is scored — set spec.inputs.answer_field or spec.inputs.document_field",
        )
    if inputs.document_field is not None and spec.retrieval is None:
        out.add(("spec", "inputs", "document_field"), "scores retrieval, and there is no spec.retrieval — remove it")


def _serving_checks(task: ServingTask, out: _Collector) -> None:
    spec = task.spec
    engine = spec.engine
    resources = spec.resources
    gpu = resources.hardware.gpu
    if spec.model.source.type == "remote":
        # a remote endpoint is registered, not deployed: what shapes a deployment would do nothing
        why = "the model is remote: its endpoint is registered and nothing is deployed, so this would do nothing"
        for name in ("engine", "autoscaling", "port"):
            if name in spec.model_fields_set:
                out.add(("spec", name), f"is set, and {why} — remove it", at_key=True)
        if spec.model.adapters:
            out.add(("spec", "model", "adapters"), f"are set, and {why} — remove them", at_key=True)
        if "resources" in spec.model_fields_set:
            out.add(("spec", "resources"), f"is set, and {why} — remove it", at_key=True)
        return
    names = [spec.model.name or task.metadata.name, *(a.name for a in spec.model.adapters)]
    for index, adapter in enumerate(spec.model.adapters):
        if names.index(adapter.name) != index + 1:
            out.add(
                ("spec", "model", "adapters", index, "name"),
                f"'{adapter.name}' is already the name of "
                + ("the base model" if names.index(adapter.name) == 0 else "another adapter")
                + " — clients pick a model by name: give each its own",
            )
    if engine.name == "transformers":
        refuse = "`transformers serve` serves one model, on one device, and"
        if spec.model.adapters:
            out.add(
                ("spec", "model", "adapters"),
                f"are set, and {refuse} no adapters — use engine name: vllm, or serve a merged full_model",
                at_key=True,
            )
        if spec.autoscaling is not None:
            out.add(
                ("spec", "autoscaling"),
                "scales on vLLM's request backlog (vllm:num_requests_waiting), which `transformers serve` does not "
                "export — use engine name: vllm, or set resources.replicas",
                at_key=True,
            )
        if gpu.count > 1:
            out.add(
                ("spec", "resources", "hardware", "gpu", "count"),
                f"is {gpu.count}, and {refuse} would use one GPU — set count: 1, or use engine name: vllm "
                "(tensor parallel)",
            )
        for name in ("max_model_len", "gpu_memory_utilization", "max_lora_rank"):
            if name in engine.model_fields_set:
                out.add(
                    ("spec", "engine", name),
                    "is a vLLM setting, and `transformers serve` has none like it — remove it, or use name: vllm",
                    at_key=True,
                )
    if spec.autoscaling is not None and "replicas" in resources.model_fields_set:
        out.add(
            ("spec", "resources", "replicas"),
            "is set, and spec.autoscaling decides the replica count between min_replicas and max_replicas — "
            "remove replicas",
            at_key=True,
        )


# --- entry points -----------------------------------------------------------------------------


def _up_to(text: str, line: int, column: int) -> str:
    """The text before a position: all the parser had read when it failed (and, for a document
    refused for its shape, a bounded amount of it to read again)."""
    start = 0
    for _ in range(line - 1):
        start = text.find("\n", start) + 1
        if start == 0:
            return text
    return text[: start + column - 1]


def _syntax_path(text: str) -> Loc:
    """The key path the parser had reached when it failed, for a syntax error's message."""
    stack: list[list[Any]] = []  # [is_mapping, current key or index, expecting_key]
    try:
        for event in yaml.parse(text, Loader=Loader):
            if event.start_mark is not None and event.start_mark.index >= len(text):  # what follows closes the text
                break
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                if stack:
                    _advance(stack)
                stack.append(
                    [
                        isinstance(event, yaml.MappingStartEvent),
                        -1 if isinstance(event, yaml.SequenceStartEvent) else None,
                        True,
                    ]
                )
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                stack.pop()
            elif isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)) and stack:
                top = stack[-1]
                if top[0] and top[2]:
                    top[1], top[2] = getattr(event, "value", None), False
                else:
                    _advance(stack)
    except yaml.YAMLError:
        pass
    return tuple(frame[1] for frame in stack if frame[1] is not None and frame[1] != -1)


def _advance(stack: list[list[Any]]) -> None:
    top = stack[-1]
    if top[0]:
        top[2] = True
    else:
        top[1] += 1


def validate_text(text: str, file: str, task_types: Mapping[str, TaskTypeInfo]) -> Result:
    """Validate one task.yaml's text. Never raises for bad input."""
    try:
        doc = parse(text)
    except YamlSyntaxError as exc:
        issue = ConfigIssue(
            file,
            exc.line,
            exc.column,
            mask(dotted(_syntax_path(_up_to(text, exc.line, exc.column)))),
            mask(f"not valid YAML: {exc.message}"),
            exc.hint,
        )
        return Result(file, issues=[issue], unreadable=True)
    return _validate_document(doc, file, task_types)


def validate_data(data: Any, task_types: Mapping[str, TaskTypeInfo], source: str = "<parameters>") -> Result:
    """Validate a task given as data (e.g. flow-run parameters edited in the Prefect UI)."""
    doc = Document(data, Positions(), [], [])
    _collect_strings(data, (), doc)
    return _validate_document(doc, source, task_types)


def _collect_strings(value: Any, loc: Loc, doc: Document) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            doc.strings.append(((*loc, str(key)), str(key), True))
            _collect_strings(item, (*loc, str(key)), doc)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _collect_strings(item, (*loc, index), doc)
    elif isinstance(value, str):
        doc.strings.append((loc, value, False))


def load_task_data(data: Any) -> TrainingTask | InferenceTask | ServingTask:
    """A task from data MLOC itself wrote (a job file): structure only, no registry needed."""
    return _ADAPTER.validate_python(data)


def _validate_document(doc: Document, file: str, task_types: Mapping[str, TaskTypeInfo]) -> Result:
    result = _check_document(doc, file, task_types)
    # an issue names its field and may quote a value: a key or value that looks like a secret is
    # refused, and never printed, logged or stored whole on the way
    result.issues = [
        dataclasses.replace(i, field=mask(i.field), message=mask(i.message), hint=mask(i.hint)) for i in result.issues
    ]
    return result


def _check_document(doc: Document, file: str, task_types: Mapping[str, TaskTypeInfo]) -> Result:
    out = _Collector(file, doc)
    data = doc.data
    for loc in doc.duplicates:
        out.add(loc, "is given twice — keep one", at_key=True)
    for loc, what in find_secrets(doc.strings):
        out.flagged.add(loc)
        out.add(loc, f"holds {what} — {SECRET_HINT}")
    if data is None:
        out.add((), "the file is empty — a task.yaml starts with 'apiVersion: mloc/v1' and 'kind: TrainingTask'")
        return Result(file, issues=out.issues)
    if not isinstance(data, dict):
        out.add(
            (), f"the file holds {yaml_type(data)} — a task.yaml is a mapping of apiVersion, kind, metadata and spec"
        )
        return Result(file, issues=out.issues)

    task = None
    try:
        task = _ADAPTER.validate_python(data, context={"task_types": task_types})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        for err in errors:
            _translate(err, data, out)
        if any(not e["loc"] for e in errors):  # no kind to go by: check what every kind shares
            try:
                TaskHeader.model_validate(data)
            except ValidationError as header:
                for err in header.errors(include_url=False):
                    _translate(err, data, out, root=TaskHeader)

    spec = data.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    info = task_types.get(spec["taskType"]) if isinstance(spec.get("taskType"), str) else None
    if info is not None and info.trainer_config and isinstance(spec.get("hyperparameters"), dict):
        values, problems = hyperparameters.check(
            spec["hyperparameters"], info.hyperparameter_fields, info.trainer_config
        )
        for name, message in problems:
            if ("spec", "hyperparameters", name) not in out.flagged:
                out.add(("spec", "hyperparameters", name), message, at_key="is not a field" in message)
        if task is not None and not problems:
            task.spec.hyperparameters = values
    if task is not None:
        _cross_checks(task, info, out)
    issues = sorted(out.issues, key=lambda i: (i.line, i.column))
    return Result(file, task=task if not issues else None, issues=issues)


def validate_file(path: Path | str, task_types: Mapping[str, TaskTypeInfo]) -> Result:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "it is not UTF-8 text"
        if isinstance(exc, IsADirectoryError):
            reason = "it is a directory"
        issue = ConfigIssue(str(path), 1, 1, "(file)", f"cannot be read: {reason}", "give the path of a task.yaml file")
        return Result(str(path), issues=[issue], unreadable=True)
    return validate_text(text, str(path), task_types)


def expand_paths(paths: Iterable[Path | str]) -> list[Path]:
    """Files as given, folders expanded to the YAML files under them (sorted)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file()))
        else:
            out.append(path)
    return out


def load_task(path: Path | str, task_types: Mapping[str, TaskTypeInfo]) -> TrainingTask | InferenceTask | ServingTask:
    """The validated task in ``path``; raises :class:`TaskError` listing every problem."""
    result = validate_file(path, task_types)
    if result.task is None:
        raise TaskError(result.issues, unreadable=result.unreadable)
    return result.task
