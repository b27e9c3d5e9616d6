"""How much memory a model's weights need, estimated before loading, and the check that refuses
a model that would not fit."""

from __future__ import annotations

from typing import Any

from finetune.errors import FinetuneError
from finetune.models.load import explained_load_errors
from finetune.models.registry import ModelSource


def parameter_count(
    source: ModelSource, *, trust_remote_code: bool = False, head: str = "causal-lm"
) -> int:
    """Parameters of the model with its `head` (`heads.AUTO_CLASS`), from its config alone:
    built on the meta device, no weights read."""
    import torch
    from transformers import AutoConfig

    from finetune.models.heads import auto_class

    with explained_load_errors(source):
        config = AutoConfig.from_pretrained(source.location, trust_remote_code=trust_remote_code)
    auto = auto_class(head)
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in model.parameters())


def weights_bytes_needed(
    source: ModelSource,
    *,
    dtype: Any,
    quantization: str = "none",
    trust_remote_code: bool = False,
    head: str = "causal-lm",
) -> int:
    """Bytes the model's weights take once loaded in `dtype` (or quantized), from its config."""
    params = parameter_count(source, trust_remote_code=trust_remote_code, head=head)
    return int(params * bytes_per_parameter(dtype, quantization))


def bytes_per_parameter(dtype: Any, quantization: str = "none") -> float:
    return {"8bit": 1.0, "4bit": 0.5}.get(quantization, dtype.itemsize)


def check_fits(
    source: ModelSource,
    *,
    dtype: Any,
    quantization: str = "none",
    training: str | None = None,
    trust_remote_code: bool = False,
    head: str = "causal-lm",
) -> None:
    """Refuse, before loading, a model whose weights (for full training also gradients and AdamW
    state) alone exceed this machine's free memory. The estimate is a floor: activations come on top."""
    from finetune.hardware import free_memory

    params = parameter_count(source, trust_remote_code=trust_remote_code, head=head)
    need = params * bytes_per_parameter(dtype, quantization) * (4 if training == "full" else 1)
    free, where = free_memory()
    if need <= free:
        return
    what = (
        "its weights, gradients and AdamW state for full fine-tuning"
        if training == "full"
        else "its weights alone"
    )
    fixes = "use train.method: lora, " if training == "full" else ""
    raise FinetuneError(
        f"{source.key}: '{source.ref}' has {params / 1e9:.2f}B parameters; {what} need at least "
        f"{need / 2**30:.1f} GiB, but {where} has {free / 2**30:.1f} GiB free. Use a smaller model, "
        f"{fixes}model.quantization: 8bit, a lower model.dtype, or a bigger machine "
        "(model.check_memory: false skips this check)"
    )
