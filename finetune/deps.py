"""One helper for optional and heavy imports, so a missing package says how to install it."""

from __future__ import annotations

import importlib
from types import ModuleType

from finetune.errors import FinetuneError


def require(module: str, *, package: str | None = None, needed_for: str = "") -> ModuleType:
    """Import `module`, or fail with the pip command that installs it and what needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        why = f" (needed for {needed_for})" if needed_for else ""
        raise FinetuneError(
            f"Python package '{package or module}' is not installed{why}: "
            f"run `.venv/bin/pip install {package or module}` or `make setup`. ({exc})"
        ) from None
