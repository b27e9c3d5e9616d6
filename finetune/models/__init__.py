"""Models: the built-in registry (`registry`), references resolved to a loadable source
(`resolve`), registry models materialized offline from PyPI wheels (`materialize`), loading
(`load`), memory estimates (`memory`), the heads a recipe can train (`heads`), and what a
loaded causal LM computes for evaluation and training alike (`scoring`).

The names below are the package's public API; its modules import each other directly.
"""

from finetune.models.load import (
    OFFLINE_SOURCES,
    explained_load_errors,
    load_classifier,
    load_language_model,
    load_tokenizer,
)
from finetune.models.memory import (
    bytes_per_parameter,
    check_fits,
    parameter_count,
    weights_bytes_needed,
)
from finetune.models.registry import (
    GGUF_FILE,
    REGISTRY,
    ModelSource,
    RegistryModel,
    Role,
    is_cached,
    model_cache_path,
    registry_rows,
)
from finetune.models.resolve import (
    config_role,
    model_role,
    reference_problem,
    resolve,
    source_role,
)
from finetune.models.wheels import gguf_as_shipped, gguf_facts, gguf_problem, materialize

__all__ = [
    "GGUF_FILE",
    "OFFLINE_SOURCES",
    "REGISTRY",
    "ModelSource",
    "RegistryModel",
    "Role",
    "bytes_per_parameter",
    "check_fits",
    "config_role",
    "explained_load_errors",
    "gguf_as_shipped",
    "gguf_facts",
    "gguf_problem",
    "is_cached",
    "load_classifier",
    "load_language_model",
    "load_tokenizer",
    "materialize",
    "model_cache_path",
    "model_role",
    "parameter_count",
    "reference_problem",
    "registry_rows",
    "resolve",
    "source_role",
    "weights_bytes_needed",
]
