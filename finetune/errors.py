"""The exception type the CLI turns into a clean message and exit code 2, and the explanations
of resource failures (disk full, out of memory) that get the same treatment."""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable

DISK_FULL_FIX = (
    "Free space there, or point the outputs at a bigger disk: tracking.runs_dir (runs), "
    "data.prepared_dir (prepared data), FINETUNE_CACHE_DIR (models). An interrupted training run "
    "continues with `finetune train --resume RUN.partial`"
)
OUT_OF_MEMORY_FIX = (
    "To fit: lower train.batch_size (raising train.gradient_accumulation_steps keeps the effective "
    "batch), lower model.max_length, set train.gradient_checkpointing: true, or load the frozen "
    "base quantized with model.quantization: 8bit (4bit on a GPU); evaluation uses eval.batch_size"
)
# What torch says when an allocation fails (CPU allocator, CUDA) or a file write fails for space.
_OOM_WORDS = ("can't allocate memory", "out of memory", "cannot allocate memory")
# torch's checkpoint writer (inline_container.cc) reports a short write as "file write failed"
# or, on some paths, as "unexpected pos <expected> vs <actual>".
_DISK_WORDS = (
    "no space left on device",
    "disk quota exceeded",
    "file write failed",
    "unexpected pos",
)


class FinetuneError(Exception):
    """A problem the user can fix (bad recipe, missing file, missing package): no traceback."""


def explain_resource_error(exc: BaseException) -> str | None:
    """A message saying what ran out and what to change, when `exc` (or what it wraps) is a
    full disk or a failed memory allocation; None for anything else."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing '{exc.filename}'" if exc.filename else ""
            return f"the disk is full{where} ({exc.strerror}). {DISK_FULL_FIX}"
        if isinstance(exc, RuntimeError) and any(w in text.lower() for w in _DISK_WORDS):
            # torch's file writer reports no errno: a full disk is by far the likeliest cause.
            return f"a file write failed, most likely the disk is full ({_first_line(text)}). {DISK_FULL_FIX}"
        if isinstance(exc, MemoryError) or (
            isinstance(exc, RuntimeError) and any(w in text.lower() for w in _OOM_WORDS)
        ):
            return f"out of memory ({_first_line(text) or type(exc).__name__}). {OUT_OF_MEMORY_FIX}"
        exc = exc.__cause__ or exc.__context__
    return None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """` Did you mean 'x'?` for the choice nearest to a name that is none of them, else ``."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
