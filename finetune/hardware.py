"""What the machine can do: the accelerator, fast bf16, weight dtypes, and peak memory.

Training and evaluation both ask here, so a recipe's `model.dtype: auto` means the same
thing in every stage.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DTYPES = ("bfloat16", "float16", "float32")


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def fast_bf16() -> bool:
    """True where bf16 matmuls run natively: CUDA with bf16, or a CPU with AVX512-BF16 or AMX."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers moved: fall back to the kernel's CPU flags
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        return "avx512_bf16" in flags or "amx_bf16" in flags


def weight_dtype(requested: str, *, method: str = "lora") -> Any:
    """The torch dtype to load weights in for `model.dtype` (`auto` resolved for this machine).

    `auto` keeps full fine-tuning in float32 master weights (bf16 then runs as autocast),
    because AdamW updates on bf16 weights lose most of their precision.
    """
    import torch

    if requested == "auto":
        requested = "bfloat16" if fast_bf16() and method != "full" else "float32"
    return getattr(torch, requested)


def weight_dtype_name(requested: str, *, method: str = "lora") -> str:
    """`weight_dtype` as its name ("bfloat16"), for reports and other tools' options."""
    return str(weight_dtype(requested, method=method)).removeprefix("torch.")


def use_bf16_autocast(requested: str) -> bool:
    """Mixed precision for training: on for `auto` where bf16 is fast, and whenever bf16 is asked for."""
    return requested == "bfloat16" or (requested == "auto" and fast_bf16())


# Padded training batches at or below this length train faster with eager attention on a CPU in
# bf16; above it the fused kernel is as fast or faster and never holds the (length x length)
# scores. Measured on the 2-core AMD EPYC (AVX512-BF16): eager 1.21x faster at the sentiment
# recipe's ~100 tokens, even at 256 (4.1 against 3.0 GiB), sdpa 1.4x faster at 512 (7.7 against
# 10.7 GiB at batch 8).
EAGER_MAX_LENGTH = 192


def training_attention(requested: str, dtype: str, typical_length: int | None = None) -> str | None:
    """The attention kernel for `train.attention` (None: transformers' default).

    `auto` picks eager attention on a CPU training in bf16 when batches are short
    (`typical_length`, the 90th percentile of the training examples' lengths, up to
    `EAGER_MAX_LENGTH`): PyTorch's CPU flash-attention backward is slow in bf16 there. Longer
    batches keep the default fused kernel, whose memory does not grow with length squared.
    """
    if requested != "auto":
        return requested
    short = typical_length is None or typical_length <= EAGER_MAX_LENGTH
    return "eager" if not has_cuda() and use_bf16_autocast(dtype) and short else None


def peak_memory_bytes() -> int:
    """Peak accelerator memory on CUDA, else the process's peak resident set size.

    On Linux the peak RSS is read from /proc (VmHWM), which `reset_peak_memory` can reset, so
    each system in an evaluation gets its own peak.
    """
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return process_peak_bytes()


def process_peak_bytes() -> int:
    """This process's peak resident set, read without importing torch (the process measuring
    a TF-IDF system alone never loads it)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def reset_peak_memory() -> None:
    """Start a new peak: CUDA's allocator statistics, or the kernel's VmHWM (Linux)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    # "5" resets the peak RSS to the current RSS. Not Linux, or not permitted: the peak then
    # covers the whole process.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def to_accelerator(model: Any) -> Any:
    """A torch model moved to the GPU when there is one, for inference; anything else (llama.cpp,
    scikit-learn, an API client) and models bitsandbytes has already placed stay as they are."""
    torch = sys.modules.get("torch")  # not imported: not a torch model (TF-IDF never loads it)
    if torch is None or not (isinstance(model, torch.nn.Module) and torch.cuda.is_available()):
        return model
    if getattr(model, "is_quantized", False) or getattr(model, "hf_device_map", None):
        return model
    return model.to("cuda")


@contextlib.contextmanager
def on_device_of(model: Any) -> Iterator[None]:
    """Tensors made inside (token ids, masks, positions) land on the device of `model`'s
    weights, so that inference code written once runs on a CPU and on a GPU alike."""
    torch = sys.modules.get("torch")  # not imported: not a torch model
    is_torch = torch is not None and isinstance(model, torch.nn.Module)
    weight = next(model.parameters(), None) if is_torch else None
    if weight is None or weight.device.type == "cpu":
        yield
        return
    with torch.device(weight.device):
        yield


def describe_device() -> str:
    """One line naming the accelerator or CPU, for reports."""
    import os

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    model = platform_cpu_name()
    return f"{model} ({os.cpu_count()} cores)"


def platform_cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def free_memory() -> tuple[int, str]:
    """Bytes free for a model to load into, and where: the GPU's free memory, else the machine's
    available RAM (MemAvailable: free plus reclaimable page cache)."""
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free), f"GPU 0 ({torch.cuda.get_device_name(0)})"
    import psutil

    return int(psutil.virtual_memory().available), "this machine"
