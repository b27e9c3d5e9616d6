"""Loading resolved models and tokenizers with transformers, with load errors explained (offline
Hub, missing files, remote code). Loading never runs code from a model repository unless a
recipe allows it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from finetune.errors import FinetuneError
from finetune.models.registry import REGISTRY, ModelSource

log = logging.getLogger(__name__)


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    _warn_remote_code(source, trust_remote_code)
    with explained_load_errors(source):
        return AutoTokenizer.from_pretrained(source.location, trust_remote_code=trust_remote_code)


def load_language_model(
    source: ModelSource,
    *,
    head: str = "causal-lm",
    dtype: Any = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    **kwargs: Any,
):
    """Load a model that writes text, a causal LM or (`head: seq2seq-lm`) an encoder-decoder,
    preferring safetensors; pickled weights only when the recipe allows them."""
    from finetune.models.heads import auto_class

    return _load_pretrained(
        auto_class(head), source, dtype, trust_remote_code, allow_pickle, **kwargs
    )


TP_LOGGER = "distributed.tensor_parallel"


def load_classifier(
    source: ModelSource,
    labels: list[str],
    *,
    head: str = "sequence-classification",
    dtype: Any = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    **kwargs: Any,
):
    """Load the model with a classification `head` (sequence or token) of one output per label,
    in order (`id2label`), loading weights as `load_language_model` does. A head the checkpoint lacks,
    or has for another number of labels, is newly initialized (`output_loading_info=True` lists it)."""
    from finetune.models.heads import auto_class

    # transformers warns of every weight the checkpoint lacks; a new head is the point here:
    # training names and trains what is new, evaluation restores it from the run. With its
    # loader quieted, transformers 5.23 checks the tensor-parallel plan instead and lists every
    # BERT layer as "not sharded" (nothing is sharded here), so that logger is quieted too.
    loggers = [logging.getLogger(f"transformers.{n}") for n in ("modeling_utils", TP_LOGGER)]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        return _load_pretrained(
            auto_class(head),
            source,
            dtype,
            trust_remote_code,
            allow_pickle,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
            **kwargs,
        )
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _load_pretrained(
    auto_class: Any,
    source: ModelSource,
    dtype: Any,
    trust_remote_code: bool,
    allow_pickle: bool,
    **kwargs: Any,
):
    _warn_remote_code(source, trust_remote_code)
    try:
        with explained_load_errors(source):
            return auto_class.from_pretrained(
                source.location,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                use_safetensors=None if allow_pickle else True,
                # transformers >= 5.2x swaps layers for Hub kernels by default when the model is
                # put in train or eval mode: code fetched from the Hub at that moment. On a GPU
                # without the Hub, training stopped at its first step (seen on an H200).
                use_kernels=False,
                **kwargs,
            )
    except OSError as exc:
        if not allow_pickle and "safetensors" in str(exc).lower():
            raise FinetuneError(
                f"{source.key}: '{source.ref}' has no safetensors weights, only pickled ones, which can run code when loaded. Set model.allow_pickle: true if you trust it"
            ) from None
        raise


# Words in the errors transformers and huggingface_hub raise when the Hub cannot be reached
# or has no such repository (their exception types changed between versions; the words did not).
_HUB_TROUBLE = (
    "connect",
    "offline",
    "timed out",
    "timeout",
    "resolve",
    "huggingface.co",
    "not found",
    "404",
    "401",
    "403",
)


OFFLINE_SOURCES = (
    f"Sources that work offline: the registry models ({', '.join(REGISTRY)}; `finetune models`), "
    "a local model directory, or a Hub model already in the Hugging Face cache"
)


@contextlib.contextmanager
def explained_load_errors(source: ModelSource) -> Iterator[None]:
    """Turn a refused remote-code model and an unreachable Hub into messages naming the fix."""
    try:
        yield
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise FinetuneError(
            f"{source.key}: '{source.ref}' needs to run Python code shipped with the model, which is off by "
            "default. Set model.trust_remote_code: true only if you trust its authors"
        ) from None
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        # A repository with only pickled weights is reached fine: `load_language_model` explains that.
        hub_trouble = any(word in text.lower() for word in _HUB_TROUBLE)
        if source.kind != "hub" or not hub_trouble or "safetensors" in text.lower():
            raise
        first = text.strip().splitlines()[0][:300]
        raise FinetuneError(
            f"{source.key}: could not load '{source.ref}' from the Hugging Face Hub ({first}). "
            f"It is not a local directory either. {OFFLINE_SOURCES}"
        ) from None


def _warn_remote_code(source: ModelSource, trust_remote_code: bool) -> None:
    if trust_remote_code:
        log.warning(
            "model.trust_remote_code is on: Python code shipped with '%s' will run on this machine",
            source.ref,
        )
