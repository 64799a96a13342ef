"""The task.yaml format, apiVersion ``mloc/v1``, as pydantic models.

These models are the one source of truth: the validator, the JSON Schema for editors
and the Prefect run form are all derived from them.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from configs import checks
from configs.errors import choice_hint, did_you_mean
from configs.gpus import ANY_GPU, GPU_TYPE_NAMES
from configs.quantities import cpu_quantity, memory_quantity


class FieldError(ValueError):
    """A cross-field error raised by a model validator, attached to one of its fields."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Model(BaseModel):
    # strict: YAML already typed every scalar, so "4" for an integer is a mistake worth reporting
    # allow_inf_nan: a NaN or infinite learning rate, gate bound or dropout never means anything
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    #: hints for keys people put in the wrong place, shown instead of "did you mean"
    key_hints: ClassVar[dict[str, str]] = {}


TaskName = Annotated[str, AfterValidator(checks.task_name)]
LabelValue = Annotated[str, AfterValidator(checks.label_value)]
BlockName = Annotated[str, AfterValidator(checks.block_name)]
RepoId = Annotated[str, AfterValidator(checks.repo_id)]
Bucket = Annotated[str, AfterValidator(checks.bucket_name)]
ObjectPath = Annotated[str, AfterValidator(checks.object_path)]
Template = Annotated[str, AfterValidator(checks.prompt_template)]
NonEmpty = Annotated[str, Field(min_length=1)]
LocalPath = Annotated[str, Field(min_length=1), AfterValidator(checks.local_path)]
# the most GPUs one node carries (HGX-2/DGX-2 class machines); more per replica is a typo
MAX_GPUS_PER_NODE = 16

_CREDENTIALS_HF = Field(
    None,
    description="Name of a Prefect Secret block holding a Hugging Face token (for private or gated repos).",
)
_CREDENTIALS_S3 = Field(
    None,
    description="Name of a prefect-aws AwsCredentials block; unset uses the worker's own AWS credentials.",
)


# --- metadata ---------------------------------------------------------------------------------


class Metadata(Model):
    name: TaskName = Field(
        description="The task's name: its Prefect deployment name and a Kubernetes DNS-1123 label "
        "(lowercase letters, digits and '-', at most 63 characters)."
    )
    owner: LabelValue = Field(description="Who runs the task; GPU-hours are accounted to this user id.")
    project: LabelValue = Field(description="The project GPU-hours are grouped under in usage reports.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Free-form notes, e.g. 'description'.")


# --- resources --------------------------------------------------------------------------------


class Gpu(Model):
    type: str | None = Field(
        None, description=f"A GPU type ({', '.join(GPU_TYPE_NAMES)}) or '{ANY_GPU}'; leave out for CPU-only tasks."
    )
    count: int = Field(
        0,
        ge=0,
        le=MAX_GPUS_PER_NODE,
        description="GPUs per replica; at least 1 when a type is given, 0 for CPU-only.",
    )

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str | None) -> str | None:
        if value is not None and value != ANY_GPU and value not in GPU_TYPE_NAMES:
            raise ValueError(f"'{value}' is not a known GPU type — " + choice_hint(value, [*GPU_TYPE_NAMES, ANY_GPU]))
        return value

    @model_validator(mode="after")
    def _count_matches_type(self) -> Gpu:
        if self.type is not None and self.count < 1:
            raise FieldError(
                "count",
                f"is {self.count} but gpu.type is '{self.type}' — set count to 1 or more, "
                "or remove gpu.type for a CPU-only task",
            )
        if self.type is None and self.count > 0:
            raise FieldError("type", f"is missing for {self.count} GPU(s) — name a GPU type, or '{ANY_GPU}'")
        return self


class Hardware(Model):
    cpu: Annotated[str | int | float, AfterValidator(cpu_quantity)] = Field(
        "1", description="CPU request per replica, a Kubernetes quantity: '8', '500m'."
    )
    memory: Annotated[str | int, AfterValidator(memory_quantity)] = Field(
        "4Gi", description="Memory request per replica, a Kubernetes quantity: '64Gi', '512Mi'."
    )
    gpu: Gpu = Field(default_factory=Gpu, description="GPUs per replica; leave out for CPU-only tasks.")


class Resources(Model):
    key_hints: ClassVar[dict[str, str]] = {k: "belongs under spec.resources.hardware" for k in ("cpu", "memory", "gpu")}
    replicas: int = Field(1, ge=1, le=64, description="How many workers (nodes) run the task together.")
    hardware: Hardware = Field(default_factory=Hardware, description="What each replica needs.")


# --- sources and destinations -------------------------------------------------------------------


class HuggingFaceModelSource(Model):
    type: Literal["huggingface"] = Field(description="Download from the Hugging Face Hub.")
    identifier: RepoId = Field(description="The repo id, e.g. 'mistralai/Mistral-7B-Instruct-v0.1'.")
    revision: NonEmpty = Field("main", description="Branch, tag or commit to download.")
    credentials_block: BlockName | None = _CREDENTIALS_HF


class S3Source(Model):
    type: Literal["s3"] = Field(description="Download from an S3 bucket (or any S3-compatible store).")
    bucket: Bucket = Field(description="The bucket name, without 's3://'.")
    path: ObjectPath = Field(description="The key prefix (a folder) or key (a file) inside the bucket.")
    credentials_block: BlockName | None = _CREDENTIALS_S3


class LocalSource(Model):
    type: Literal["local"] = Field(description="Read from a path on the worker (a mounted volume).")
    path: LocalPath = Field(description="A directory or file; relative paths are relative to the task.yaml.")


class HuggingFaceDatasetSource(HuggingFaceModelSource):
    identifier: RepoId = Field(description="The dataset repo id, e.g. 'databricks/dolly-15k'.")
    split: NonEmpty = Field("train", description="The split to train on.")
    subset: str | None = Field(None, description="The dataset's configuration (subset) name, if it has several.")


class RemoteModelSource(Model):
    type: Literal["remote"] = Field(
        description="An OpenAI-compatible server that already serves the model (vLLM, `transformers serve`, a "
        "provider's API): nothing is downloaded, and this run holds no GPU for it."
    )
    base_url: Annotated[str, AfterValidator(checks.http_url)] = Field(
        description="The API root, e.g. 'http://qwen-7b.serving.svc:8000/v1'."
    )
    model: NonEmpty = Field(description="The model name the server serves (as its /v1/models lists it).")
    credentials_block: BlockName | None = Field(
        None, description="Name of a Prefect Secret block holding the API key; unset sends none."
    )
    timeout_seconds: int = Field(
        120, ge=1, le=3600, description="How long one request may take before it is retried (then fails)."
    )


class ServiceModelSource(Model):
    type: Literal["service"] = Field(
        description="The endpoint of an MLOC ServingTask: its base URL and served names are read from it, and this "
        "run holds no GPU for it."
    )
    task: LocalPath = Field(description="The ServingTask's task.yaml, relative to this file.")
    model: TaskName | None = Field(
        None, description="Which served model answers: the base model's name (the default) or one of its adapters'."
    )
    timeout_seconds: int = Field(
        120, ge=1, le=3600, description="How long one request may take before it is retried (then fails)."
    )


ModelSource = Annotated[HuggingFaceModelSource | S3Source | LocalSource, Field(discriminator="type")]
InferenceModelSource = Annotated[
    HuggingFaceModelSource | S3Source | LocalSource | RemoteModelSource | ServiceModelSource,
    Field(discriminator="type"),
]
DatasetSource = Annotated[HuggingFaceDatasetSource | S3Source | LocalSource, Field(discriminator="type")]


class S3Destination(Model):
    type: Literal["s3"] = Field(description="Upload to an S3 bucket.")
    bucket: Bucket = Field(description="The bucket name, without 's3://'.")
    path: ObjectPath = Field(description="The key prefix results are written under.")
    credentials_block: BlockName | None = _CREDENTIALS_S3


class HuggingFaceDestination(Model):
    type: Literal["huggingface"] = Field(description="Upload to a Hugging Face Hub repo.")
    identifier: RepoId = Field(description="The repo id to push to, e.g. 'my-org/mistral-7b-dolly'.")
    private: bool = Field(True, description="Create the repo as private if it does not exist.")
    credentials_block: BlockName | None = _CREDENTIALS_HF


class LocalDestination(Model):
    type: Literal["local"] = Field(description="Write to a path on the worker (a mounted volume).")
    path: LocalPath = Field(description="A directory; relative paths are relative to the task.yaml.")


Destination = Annotated[S3Destination | HuggingFaceDestination | LocalDestination, Field(discriminator="type")]


# --- model and adapter ------------------------------------------------------------------------


class LoraAdapter(Model):
    type: Literal["lora"] = Field(description="LoRA: train low-rank adapters on a frozen base model.")
    r: int = Field(16, ge=1, le=1024, description="Rank of the adapter matrices.")
    lora_alpha: int = Field(32, ge=1, description="Scaling factor; the update is scaled by lora_alpha / r.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input, in [0, 1).")
    target_modules: list[NonEmpty] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt (e.g. ['q_proj', 'v_proj']) or 'all-linear'."
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases to train.")
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA scaling (lora_alpha / sqrt(r)).")
    modules_to_save: list[NonEmpty] = Field(
        default_factory=list, description="Modules trained in full and saved with the adapter, e.g. ['lm_head']."
    )
    key_hints: ClassVar[dict[str, str]] = {
        k: "only for adapter type 'qlora'" for k in ("bits", "quant_type", "double_quant", "compute_dtype")
    }

    @field_validator("target_modules")
    @classmethod
    def _distinct(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list):
            if not value:
                raise ValueError("is empty — list module names such as ['q_proj', 'v_proj'], or use 'all-linear'")
            duplicates = sorted({m for m in value if value.count(m) > 1})
            if duplicates:
                raise ValueError(f"lists {', '.join(duplicates)} more than once — list each module once")
        return value


class QloraAdapter(LoraAdapter):
    type: Literal["qlora"] = Field(description="QLoRA: LoRA on a 4-bit quantised base model (needs a CUDA GPU).")  # type: ignore[assignment]
    bits: Literal[4, 8] = Field(4, description="Quantisation of the base model's weights.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantise the quantisation constants too.")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="Compute dtype.")
    key_hints: ClassVar[dict[str, str]] = {}


Adapter = Annotated[LoraAdapter | QloraAdapter, Field(discriminator="type")]


class ModelSpec(Model):
    source: ModelSource = Field(description="Where the base model comes from.")
    adapter: Adapter | None = Field(None, description="Train a LoRA / QLoRA adapter instead of all weights.")


class InferenceModelSpec(Model):
    source: InferenceModelSource = Field(
        description="The model that answers: weights to load (huggingface, s3, local), a remote endpoint, or an "
        "MLOC ServingTask's endpoint (service)."
    )


class RewardModelSpec(Model):
    source: ModelSource = Field(description="Where the reward model (a sequence classifier) comes from.")


# --- data -------------------------------------------------------------------------------------


class Preprocessing(Model):
    prompt_template: Template | None = Field(
        None,
        description="Python format string over dataset columns, e.g. '### Question:\\n{instruction}\\n'. "
        "With completion_template it renders the prompt; alone, the whole training text.",
    )
    completion_template: Template | None = Field(
        None, description="Format string for the completion the loss is computed on, e.g. '{response}'."
    )
    max_seq_length: int = Field(1024, ge=8, le=1_048_576, description="Longest tokenised example; longer ones are cut.")


class DatasetSpec(Model):
    source: DatasetSource = Field(
        description="Where the dataset comes from (JSON lines, CSV, Parquet or a Hub dataset)."
    )
    preprocessing: Preprocessing = Field(default_factory=Preprocessing, description="How rows become text.")


# --- MLOC extensions --------------------------------------------------------------------------


class Gate(Model):
    metric: NonEmpty = Field(
        description="The metric checked after training: one the taskType's evaluation produces "
        "(`mloc task-types` lists them; sft: eval_loss, perplexity, eval_loss_reduction)."
    )
    min: float | None = Field(None, description="Fail the run (and upload nothing) below this value.")
    max: float | None = Field(None, description="Fail the run (and upload nothing) above this value.")

    @model_validator(mode="after")
    def _has_bound(self) -> Gate:
        if self.min is None and self.max is None:
            raise FieldError("max", "is missing — a gate needs 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise FieldError("min", f"({self.min}) is above max ({self.max}) — no value could pass")
        return self


class Evaluation(Model):
    enabled: bool = Field(True, description="Evaluate before and after training.")
    split: str | None = Field(None, description="A named held-out split of the dataset; unset holds out a fraction.")
    held_out_fraction: float = Field(0.1, gt=0, lt=1, description="Share of rows held out when no split is named.")
    max_samples: int = Field(256, ge=1, description="At most this many held-out rows are scored.")
    generation_prompts: int = Field(3, ge=0, le=100, description="Held-out prompts to generate answers for.")
    max_new_tokens: int = Field(64, ge=1, le=32768, description="Length limit of those generations.")
    backend: Literal["auto", "vllm", "transformers"] = Field(
        "auto", description="'auto' uses vLLM when it is installed and a GPU is present, else transformers."
    )
    gates: list[Gate] = Field(default_factory=list, description="Quality gates: the run fails if one is not met.")


class Schedule(Model):
    cron: Annotated[str, AfterValidator(checks.cron)] = Field(
        description="When to run, five cron fields: '0 3 * * 1' is Mondays at 03:00."
    )
    timezone: Annotated[str, AfterValidator(checks.timezone)] = Field(
        "UTC", description="IANA time zone the cron expression is read in, e.g. 'Europe/Berlin'."
    )
    active: bool = Field(True, description="Set false to keep the schedule but pause it.")


class Execution(Model):
    retries: int = Field(0, ge=0, le=10, description="How often Prefect retries a failed run.")
    retry_delay_seconds: int = Field(60, ge=0, description="Wait between retries.")
    timeout_seconds: int | None = Field(None, ge=1, description="Cancel a run that takes longer than this.")
    rendezvous_timeout_seconds: int = Field(
        600,
        ge=10,
        le=86_400,
        description="How long the nodes of a multi-node training (replicas > 1) wait for each other to join "
        "before the attempt fails.",
    )
    scheduling_timeout_seconds: int = Field(
        900,
        ge=1,
        le=86_400,
        description="How long the nodes of a training run as a Kubeflow TrainJob (replicas > 1 on Kubernetes) "
        "may wait to be scheduled and started; after it the TrainJob is deleted and the attempt fails with "
        "the reason Kubernetes gives (e.g. Unschedulable).",
    )


# --- outputs ----------------------------------------------------------------------------------

TrainingArtifact = Literal["adapter_weights", "full_model", "training_logs", "eval_results"]
InferenceArtifact = Literal["predictions", "eval_results", "logs"]


def _distinct_artifacts(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("is empty — list what to upload, e.g. ['adapter_weights', 'training_logs']")
    duplicates = sorted({a for a in value if value.count(a) > 1})
    if duplicates:
        raise ValueError(f"lists {', '.join(duplicates)} more than once — list each artifact once")
    return value


class TrainingOutput(Model):
    destination: Destination = Field(description="Where results are uploaded.")
    artifacts: Annotated[list[TrainingArtifact], AfterValidator(_distinct_artifacts)] = Field(
        description="What to upload: adapter_weights, full_model (adapter merged in), training_logs, eval_results."
    )


class InferenceOutput(Model):
    destination: Destination = Field(description="Where results are uploaded.")
    artifacts: Annotated[list[InferenceArtifact], AfterValidator(_distinct_artifacts)] = Field(
        ["predictions"], description="What to upload: predictions, eval_results, logs."
    )


# --- inference --------------------------------------------------------------------------------


class Retrieval(Model):
    documents: DatasetSource = Field(description="The corpus to retrieve from.")
    text_field: NonEmpty = Field("text", description="The column holding each document's text.")
    embedding_model: ModelSource = Field(description="A sentence-embedding model.")
    chunk_size: int = Field(512, ge=32, le=8192, description="Characters per chunk.")
    chunk_overlap: int = Field(64, ge=0, description="Characters shared by neighbouring chunks.")
    top_k: int = Field(4, ge=1, le=100, description="Chunks put into each prompt.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Retrieval:
        if self.chunk_overlap >= self.chunk_size:
            raise FieldError(
                "chunk_overlap", f"({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})"
            )
        return self


class Agent(Model):
    tools: list[Literal["retriever", "calculator"]] = Field(
        min_length=1,
        description="Tools the agent may call: retriever (searches spec.retrieval's documents) and calculator "
        "(safe arithmetic).",
    )
    max_iterations: int = Field(
        5,
        ge=1,
        le=50,
        description="Tool calls allowed per question; an agent that wants more is stopped, and the question "
        "recorded as unanswered with the reason.",
    )


class Generation(Model):
    max_new_tokens: int = Field(256, ge=1, le=32768, description="Length limit of each answer.")
    temperature: float = Field(0.0, ge=0, le=5, description="0 decodes greedily.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    repetition_penalty: float = Field(1.0, gt=0, description="Above 1 discourages repeats.")


class Inputs(Model):
    source: DatasetSource = Field(description="The questions to answer: a .jsonl file, a folder of them, or a dataset.")
    question_field: NonEmpty = Field("question", description="The column holding each question.")
    answer_field: str | None = Field(
        None, description="A column holding each question's reference answer: answers are scored against it."
    )
    document_field: str | None = Field(
        None,
        description="A column naming the document (its file name) that holds each answer: retrieval is scored "
        "by hit@k against it.",
    )


class InferenceEvaluation(Model):
    match: Literal["contains", "exact"] = Field(
        "contains",
        description="How an answer is scored against its reference (inputs.answer_field): 'contains' (the "
        "reference appears in the answer) or 'exact' (they are equal), ignoring case, spaces and punctuation "
        "at the ends.",
    )
    gates: list[Gate] = Field(
        default_factory=list,
        description="Quality gates on the run's metrics (`mloc task-types` lists them): the run fails, and "
        "uploads nothing, if one is not met.",
    )


# --- serving ----------------------------------------------------------------------------------


class TrainedModelSource(Model):
    type: Literal["training"] = Field(
        description="What an MLOC TrainingTask uploaded: its adapter_weights (for an adapter) or its full_model."
    )
    task: LocalPath = Field(
        description="The TrainingTask's task.yaml, relative to this file: its spec.output.destination is read."
    )
    version: NonEmpty = Field(
        "latest",
        description="For a scheduled (versioned) training, the version folder to serve; 'latest' follows its "
        "latest.json. An unscheduled training has one version, so leave it at 'latest'.",
    )


ServedSource = Annotated[
    HuggingFaceModelSource | S3Source | LocalSource | TrainedModelSource, Field(discriminator="type")
]
ServingModelSource = Annotated[
    HuggingFaceModelSource | S3Source | LocalSource | TrainedModelSource | RemoteModelSource,
    Field(discriminator="type"),
]


class ServedAdapter(Model):
    name: TaskName = Field(
        description="The model name clients ask for to get this adapter (as /v1/models lists it), a DNS-1123 label."
    )
    source: ServedSource = Field(
        description="A LoRA adapter folder (adapter_config.json and weights): hub, S3, local, or a training's "
        "adapter_weights."
    )


class ServingModelSpec(Model):
    name: TaskName | None = Field(
        None, description="The model name clients ask for (as /v1/models lists it); unset: metadata.name."
    )
    source: ServingModelSource = Field(
        description="The weights to serve (huggingface, s3, local, or a training's full_model), or a remote "
        "endpoint that already serves the model: it is registered, and nothing is deployed."
    )
    adapters: list[ServedAdapter] = Field(
        default_factory=list, description="LoRA adapters served on the base model, each under a name of its own."
    )


class Engine(Model):
    name: Literal["vllm", "transformers"] = Field(
        "vllm", description="The inference server: vllm, or `transformers serve` (a CPU fallback, no adapters)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="The weights' compute dtype; 'auto' takes the model's own (float16 for float32 on GPU)."
    )
    max_model_len: int | None = Field(
        None, ge=16, le=1_048_576, description="Longest prompt plus answer, in tokens; unset: the model's own."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vLLM: the share of GPU memory (on a CPU, of RAM) it reserves for the model."
    )
    max_lora_rank: int = Field(16, ge=1, le=512, description="vLLM: the largest LoRA rank an adapter may have.")


class Autoscaling(Model):
    min_replicas: int = Field(
        1,
        ge=1,
        le=64,
        description="Fewest replicas, at least 1: the backlog is read from the replicas themselves, so a service "
        "scaled to zero would have none to read it from and never scale up again.",
    )
    max_replicas: int = Field(ge=1, le=64, description="Most replicas.")
    target_backlog: int = Field(
        8,
        ge=1,
        le=10_000,
        description="Requests waiting per replica (vLLM's vllm:num_requests_waiting) above which KEDA adds one.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise FieldError(
                "min_replicas", f"({self.min_replicas}) is above max_replicas ({self.max_replicas}) — lower it"
            )
        return self


# --- the task ---------------------------------------------------------------------------------


class _Spec(Model):
    KIND: ClassVar[str]
    task_type: str = Field(alias="taskType", description="Selects the pipeline step module.")
    resources: Resources = Field(default_factory=Resources, description="Replicas, CPU, memory and GPUs.")
    schedule: Schedule | None = Field(None, description="Run periodically on a cron schedule.")
    execution: Execution = Field(default_factory=Execution, description="Retries and time limits.")

    @field_validator("task_type")
    @classmethod
    def _registered(cls, value: str, info: ValidationInfo) -> str:
        task_types = (info.context or {}).get("task_types")
        if task_types is None:  # validated outside the CLI (e.g. a Prefect parameter): checked at run time
            return value
        if value not in task_types:
            names = sorted(task_types)
            guess = did_you_mean(value, names)
            hint = f"did you mean '{guess}'?" if guess else "see `mloc task-types`"
            raise ValueError(f"'{value}' is not a valid taskType among [{', '.join(names)}] — {hint}")
        kind = task_types[value].kind
        if kind != cls.KIND:
            same = sorted(n for n, t in task_types.items() if t.kind == cls.KIND)
            raise ValueError(
                f"'{value}' is a {kind} type — set kind: {kind}, or use one of the {cls.KIND} types: {', '.join(same)}"
            )
        if task_types[value].unavailable:
            running = sorted(n for n, t in task_types.items() if not t.unavailable)
            raise ValueError(
                f"'{value}' cannot run in this MLOC version: {task_types[value].unavailable} — "
                f"the types that run are: {', '.join(running)}"
            )
        return value


class TrainingSpec(_Spec):
    KIND: ClassVar[str] = "TrainingTask"
    key_hints: ClassVar[dict[str, str]] = {
        "prompt_template": "belongs under spec.dataset.preprocessing",
        "max_seq_length": "belongs under spec.dataset.preprocessing",
        "adapter": "belongs under spec.model",
        "hardware": "belongs under spec.resources",
        "gpu": "belongs under spec.resources.hardware",
    }
    model: ModelSpec = Field(description="The base model and the adapter to train.")
    dataset: DatasetSpec = Field(description="The training data and how rows become text.")
    reward_model: RewardModelSpec | None = Field(
        None, description="The reward model that online RL (ppo, grpo) scores completions with."
    )
    reward_functions: list[
        Literal[
            "accuracy_reward",
            "reasoning_accuracy_reward",
            "think_format_reward",
            "exact_match_reward",
            "short_answer_reward",
        ]
    ] = Field(
        default_factory=list,
        description="Reward functions scoring completions in online RL (grpo, ppo), beside a reward model or, "
        "for grpo, instead of one; their rewards are summed (weighted by hyperparameters.reward_weights). TRL's "
        "accuracy_reward (a LaTeX answer such as \\boxed{42} equals column `solution`, by math-verify), "
        "reasoning_accuracy_reward (the same, after </think>) and think_format_reward (<think>...</think> first); "
        "MLOC's exact_match_reward (the completion is `solution`, ignoring case, spaces and a final full stop) "
        "and short_answer_reward (one to five words, ending before max_completion_length).",
    )
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="Fields of the trainer's config class (e.g. trl.SFTConfig), passed as-is."
    )
    evaluation: Evaluation = Field(default_factory=Evaluation, description="Held-out evaluation and quality gates.")
    output: TrainingOutput = Field(description="Where results go and which ones.")


class InferenceSpec(_Spec):
    KIND: ClassVar[str] = "InferenceTask"
    model: InferenceModelSpec = Field(description="The language model that answers.")
    inputs: Inputs = Field(description="The questions to answer.")
    prompt_template: Template | None = Field(
        None, description="Format string with {question} and, for retrieval, {context}."
    )
    retrieval: Retrieval | None = Field(None, description="Retrieval-augmented generation settings.")
    agent: Agent | None = Field(None, description="Agent settings: tools and limits.")
    generation: Generation = Field(default_factory=Generation, description="Decoding settings.")
    evaluation: InferenceEvaluation = Field(
        default_factory=InferenceEvaluation, description="How answers are scored, and quality gates."
    )
    output: InferenceOutput = Field(description="Where results go and which ones.")


class ServingSpec(Model):
    KIND: ClassVar[str] = "ServingTask"
    key_hints: ClassVar[dict[str, str]] = {
        "adapters": "belongs under spec.model",
        "hardware": "belongs under spec.resources",
        "gpu": "belongs under spec.resources.hardware",
        "replicas": "belongs under spec.resources",
        "dtype": "belongs under spec.engine",
    }
    task_type: Literal["serving"] = Field(
        "serving", alias="taskType", description="Always 'serving' (it may be left out); usage reports group by it."
    )
    model: ServingModelSpec = Field(description="The model to serve, and its adapters.")
    engine: Engine = Field(default_factory=Engine, description="The inference server and its settings.")
    port: int = Field(8000, ge=1024, le=65535, description="The port the OpenAI-compatible API listens on.")
    resources: Resources = Field(
        default_factory=Resources, description="Replicas, and what each needs: CPU, memory, GPUs (which pick the pool)."
    )
    autoscaling: Autoscaling | None = Field(
        None, description="Scale replicas on the request backlog with KEDA (vLLM only); unset: resources.replicas."
    )
    startup_timeout_seconds: int = Field(
        900,
        ge=10,
        le=86_400,
        description="How long a replica may take to load the model and answer /health before it counts as failed.",
    )


class _Task(Model):
    key_hints: ClassVar[dict[str, str]] = {
        k: "belongs under 'spec:'"
        for k in ("taskType", "resources", "model", "dataset", "hyperparameters", "output", "evaluation", "schedule")
    } | {k: "belongs under 'metadata:'" for k in ("name", "owner", "project", "annotations")}
    api_version: Literal["mloc/v1"] = Field(alias="apiVersion", description="The task.yaml format version.")
    metadata: Metadata = Field(description="Name, owner and project.")


class TrainingTask(_Task):
    """Fine-tune a model: SFT, reward model, DPO, GRPO, PPO-style online RL."""

    kind: Literal["TrainingTask"] = Field(description="A task that trains a model.")
    spec: TrainingSpec = Field(description="What to train, on what, with which resources.")


class InferenceTask(_Task):
    """Answer questions with a model: retrieval-augmented inference, agents."""

    kind: Literal["InferenceTask"] = Field(description="A task that runs a model without training it.")
    spec: InferenceSpec = Field(description="What to run, on what, with which resources.")


class ServingTask(_Task):
    """Serve a model as an OpenAI-compatible endpoint: on its GPU pool, or locally."""

    kind: Literal["ServingTask"] = Field(description="A task that serves a model as an endpoint.")
    spec: ServingSpec = Field(description="What to serve, with which engine and resources.")


class TaskHeader(_Task):
    """What every kind shares: still checked when the kind is missing or unknown."""

    kind: Any = None
    spec: Any = None


Task = Annotated[TrainingTask | InferenceTask | ServingTask, Field(discriminator="kind")]
KINDS = ["TrainingTask", "InferenceTask", "ServingTask"]
