"""Library noise the workbench silences, all in this one place.

Each entry is a message a user can do nothing about. `apply()` installs the warning filters
and the library log levels in this process and writes the filters into `PYTHONWARNINGS`, so
every child the workbench starts (memory-alone processes, Ray workers, the llama.cpp server)
starts with them too. The CLI calls it first; the test suite hands `warning_options()` to
pytest's own filters (conftest.py) and fails on any other library line on a command's stderr.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import NamedTuple


class Quiet(NamedTuple):
    message: str  # the start of the warning's text, literally (PYTHONWARNINGS takes no regex)
    category: type[Warning]
    why: str


WARNINGS = (
    Quiet(
        "`is_gradient_checkpointing` is deprecated",
        FutureWarning,
        "PEFT 0.21 reads transformers 5's renamed attribute whenever it wraps a model",
    ),
    Quiet(
        "`past_key_values` is deprecated",
        FutureWarning,
        "TRL 1.16 calls models with transformers' old name (the workbench's own calls use `cache`)",
    ),
)

# Library loggers whose warnings concern paths the workbench never takes.
LOGGERS = {
    # bitsandbytes on an AVX512-BF16 CPU asks the Hub, at import, for a 4-bit CPU matmul kernel
    # (through `kernels`, which transformers 5.25 requires). The workbench refuses 4-bit on a
    # CPU before importing it, and 8-bit does not use that kernel: its failure and the kernels
    # library's offline-mode notice are noise to every other command.
    "bitsandbytes.backends.cpu.ops": logging.ERROR,
    "kernels": logging.ERROR,
}


def warning_options() -> list[str]:
    """Every entry in `-W` form, for PYTHONWARNINGS and pytest's `filterwarnings`."""
    return [_option(quiet) for quiet in WARNINGS]


def _option(quiet: Quiet) -> str:
    """The `-W` / PYTHONWARNINGS form: `ignore:MESSAGE:CATEGORY`."""
    if any(c in quiet.message for c in ":,"):
        raise ValueError(f"PYTHONWARNINGS cannot carry ':' or ',': {quiet.message!r}")
    return f"ignore:{quiet.message}:{quiet.category.__name__}"


def apply() -> None:
    """Silence every entry here, in this process and in the children it will start."""
    for quiet in WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(quiet.message), category=quiet.category)
    options = [o for o in os.environ.get("PYTHONWARNINGS", "").split(",") if o]
    options += [o for o in warning_options() if o not in options]
    os.environ["PYTHONWARNINGS"] = ",".join(options)
    for name, level in LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def progress_bars_off() -> None:
    """transformers' "Loading weights" bar and datasets' per-pass bars, beside the workbench's
    own progress. For the commands that load models or datasets only: importing transformers
    and datasets to reach these switches takes ~2 s that `--help` need not pay."""
    # Children (memory-alone processes) read these before importing anything.
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        from datasets.utils.logging import disable_progress_bar
    except ImportError:
        return
    disable_progress_bar()
