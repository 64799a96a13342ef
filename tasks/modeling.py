"""Loading models and building adapter configs, shared by every trainer and by evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from configs.models import LoraAdapter


class HardwareError(RuntimeError):
    """What the task asks for cannot run on this worker (e.g. QLoRA without CUDA)."""


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def cuda_device_count() -> int:
    """The CUDA GPUs this process sees (what CUDA_VISIBLE_DEVICES and the pod's GPU limit leave)."""
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def lora_config(adapter: LoraAdapter, task_type: str = "CAUSAL_LM") -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.lora_alpha,
        lora_dropout=adapter.lora_dropout,
        target_modules=adapter.target_modules,
        bias=adapter.bias,
        use_rslora=adapter.use_rslora,
        modules_to_save=adapter.modules_to_save or None,
        task_type=task_type,
    )


def quantization_config(adapter: LoraAdapter | None) -> Any:
    """bitsandbytes settings for QLoRA; None for LoRA and full fine-tuning."""
    from configs.models import QloraAdapter

    if not isinstance(adapter, QloraAdapter):
        return None
    if not cuda_available():
        raise HardwareError(
            "QLoRA loads the base model in 4/8 bits with bitsandbytes, which needs a CUDA GPU, and this worker "
            "has none — run on a GPU pool, or set spec.model.adapter.type: lora"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise HardwareError(
            "QLoRA needs bitsandbytes — install MLOC with the 'gpu' extra: pip install 'mloc[gpu]'"
        ) from exc
    import torch
    from transformers import BitsAndBytesConfig

    dtype = getattr(torch, adapter.compute_dtype)
    if adapter.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=adapter.quant_type,
        bnb_4bit_use_double_quant=adapter.double_quant,
        bnb_4bit_compute_dtype=dtype,
    )


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # batching needs one; the eos token is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, adapter: LoraAdapter | None = None, adapter_dir: str | None = None) -> Any:
    """The base model (quantised for QLoRA), with a trained adapter applied when given."""
    from transformers import AutoModelForCausalLM

    return load_model(AutoModelForCausalLM, path, adapter, adapter_dir)


def load_model(
    model_class: Any, path: str, adapter: LoraAdapter | None = None, adapter_dir: str | None = None, **kwargs: Any
) -> Any:
    """``model_class.from_pretrained(path, **kwargs)`` (quantised for QLoRA), with a trained adapter
    applied when given, on the GPU when there is one, in eval mode."""
    quant = quantization_config(adapter)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = "auto"
    model: Any = model_class.from_pretrained(path, **kwargs)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    if quant is None and cuda_available():
        model = model.to("cuda")
    model.eval()
    return model
