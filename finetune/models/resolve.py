"""Model references (a registry name, a local directory, a Hub id) resolved to a `ModelSource`,
checked before anything loads, and what a model is: a decoder, an encoder or an
encoder-decoder."""

from __future__ import annotations

import difflib
import json
import logging
from pathlib import Path
from typing import Any

from finetune import fetch
from finetune.errors import FinetuneError
from finetune.models.load import OFFLINE_SOURCES, explained_load_errors
from finetune.models.registry import (
    HUB_ID,
    REGISTRY,
    ModelSource,
    Role,
)
from finetune.models.wheels import materialize, sha256_file

log = logging.getLogger(__name__)


def resolve(ref: str, *, key: str = "model.base") -> ModelSource:
    """Turn a recipe's model reference into a loadable location, materializing registry models."""
    problem = reference_problem(ref)
    if problem:
        raise FinetuneError(f"{key}: {problem}")
    if ref in REGISTRY:
        path = materialize(ref)
        manifest = json.loads((path / "manifest.json").read_text())
        return ModelSource(
            ref,
            "registry",
            str(path),
            {
                "registry": ref,
                "hub_id": manifest["hub_id"],
                "source_sha256": manifest["source_sha256"],
                "packages": manifest["packages"],
            },
            key,
        )
    local = Path(ref).expanduser()
    if local.is_dir():
        return ModelSource(
            ref,
            "local",
            str(local.resolve()),
            {"path": str(local.resolve()), "config_sha256": sha256_file(local / "config.json")},
            key,
        )
    return _hub_source(ref, key)


def _hub_source(ref: str, key: str) -> ModelSource:
    """A Hub model: fetched as usual when the Hub answers, else its cached snapshot, else a stop."""

    reason = fetch.unreachable_reason()
    if reason is None:
        return ModelSource(ref, "hub", ref, {"hub_id": ref}, key)
    snapshot = fetch.cached_snapshot(ref)
    if snapshot is None:
        raise FinetuneError(
            f"{key}: could not load '{ref}' from the Hugging Face Hub ({reason}), and it is in "
            f"neither the Hugging Face cache nor a local directory. {OFFLINE_SOURCES}"
        )
    log.info("the Hub is not reachable (%s): using the cached snapshot %s", reason, snapshot)
    return ModelSource(ref, "hub", snapshot, {"hub_id": ref}, key)


def reference_problem(ref: str) -> str | None:
    """Why `ref` names no model (None when it may): checked when a recipe loads, before any work."""
    if ref in REGISTRY:
        return None
    local = Path(ref).expanduser()
    if local.is_dir():
        if (local / "config.json").is_file():
            return None
        return f"directory '{ref}' has no config.json; it is not a transformers model directory"
    if HUB_ID.match(ref) and not ref.startswith((".", "/", "~")):
        return None
    close = difflib.get_close_matches(ref, list(REGISTRY), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    return (
        f"'{ref}' is not a registry model, an existing directory, or a Hub id (owner/name). {hint}"
        f"Registry models: {', '.join(REGISTRY)}"
    )


# Architectures whose class writes text: a decoder, or an encoder-decoder's generator.
_WRITING_ARCHITECTURES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def model_role(ref: str) -> Role | None:
    """Whether `ref` is a decoder (`causal-lm`), an encoder or an encoder-decoder (`seq2seq`),
    without loading it: the registry's
    role, else its config.json in a local directory or the Hugging Face cache (None: no config here)."""
    if ref in REGISTRY:
        return REGISTRY[ref].role
    folder: str | None = str(Path(ref).expanduser())
    if not Path(folder).is_dir():
        folder = fetch.cached_snapshot(ref) if HUB_ID.match(ref) else None
    config = Path(folder) / "config.json" if folder else None
    if config is None or not config.is_file():
        return None
    return config_role(json.loads(config.read_text(encoding="utf-8")))


def source_role(source: ModelSource, *, trust_remote_code: bool = False) -> str:
    """`model_role` of a resolved source; a Hub model not in the cache is asked for its config."""
    role = model_role(source.ref if source.kind == "registry" else source.location)
    if role is not None:
        return role
    from transformers import AutoConfig

    with explained_load_errors(source):
        config = AutoConfig.from_pretrained(source.location, trust_remote_code=trust_remote_code)
    return config_role(config.to_dict())


def config_role(config: dict[str, Any]) -> Role:
    """An encoder-decoder (T5, BART) says so in its config. An encoder is neither that nor a
    decoder, and its model type has a masked-LM class in transformers (BERT, RoBERTa, DeBERTa,
    ModernBERT, ...). `BertModel` and `LlamaModel` look alike by architecture, so only a
    masked-LM or a text-writing class decides it alone."""
    if config.get("is_encoder_decoder"):
        return "seq2seq"
    if config.get("is_decoder"):
        return "causal-lm"
    architectures = config.get("architectures") or []
    if any(a.endswith(_WRITING_ARCHITECTURES) for a in architectures):
        return "causal-lm"
    if any(a.endswith("ForMaskedLM") for a in architectures):
        return "encoder"
    # Imports torch (seconds), so only for configs the architectures leave open.
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    masked = config.get("model_type") in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return "encoder" if masked else "causal-lm"
