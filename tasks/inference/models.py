"""The model that answers: local weights through transformers, or a remote endpoint.

Both are a :class:`Generator`: a prompt in, the generated text and its token counts out. An
agent needs a chat model that calls tools, which only the remote endpoint gives
(:func:`tasks.inference.remote.chat_model`); validation refuses agents on local weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from configs.models import Generation


@dataclass(frozen=True)
class Generated:
    text: str
    input_tokens: int
    output_tokens: int


class Generator(Protocol):
    def generate(self, prompt: str) -> Generated: ...


class PromptTooLong(ValueError):
    """A filled prompt plus the answer's length exceeds the model's context window."""


class LocalGenerator:
    """A causal LM from a local folder (what the download step fetched), on a GPU when there is one."""

    def __init__(self, model_path: str, generation: Generation) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a terminal bar in a run's log
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_path)
        model: Any = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto")
        self.model: Any = model.to(self.device).eval()
        self.generation = generation
        self.context = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    def generate(self, prompt: str) -> Generated:
        import torch

        encoded = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        prompt_tokens = int(encoded["input_ids"].shape[1])
        wanted = prompt_tokens + self.generation.max_new_tokens
        if self.context and wanted > self.context:
            raise PromptTooLong(
                f"the prompt is {prompt_tokens} tokens and the answer may take {self.generation.max_new_tokens} "
                f"(spec.generation.max_new_tokens): {wanted} is more than the model's context of {self.context} "
                "tokens — lower spec.retrieval.top_k or chunk_size, or max_new_tokens"
            )
        sampling = self.generation.temperature > 0
        options: dict[str, Any] = {
            "max_new_tokens": self.generation.max_new_tokens,
            "do_sample": sampling,
            "repetition_penalty": self.generation.repetition_penalty,
            "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        }
        if sampling:
            options |= {"temperature": self.generation.temperature, "top_p": self.generation.top_p}
        with torch.no_grad():
            out = self.model.generate(**encoded, **options)
        new = out[0, prompt_tokens:]
        return Generated(self.tokenizer.decode(new, skip_special_tokens=True).strip(), prompt_tokens, int(new.shape[0]))


class RemoteGenerator:
    """A prompt sent as one user message to a LangChain chat model (ChatOpenAI on the endpoint)."""

    def __init__(self, chat: Any) -> None:
        self.chat = chat

    def generate(self, prompt: str) -> Generated:
        from langchain_core.messages import HumanMessage

        reply = self.chat.invoke([HumanMessage(prompt)])
        usage = reply.usage_metadata or {}
        text = reply.content if isinstance(reply.content, str) else str(reply.content)
        return Generated(text.strip(), int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)))
