"""`finetune export RUN --merge`: fold a run's LoRA adapter into its base model for deployment.

The result is a plain transformers model directory (safetensors, tokenizer, prompt format,
head) that loads without PEFT and gives the same logits as base + adapter, with the class of
the run's head: `AutoModelForCausalLM`, `AutoModelForSeq2SeqLM` for an encoder-decoder,
`AutoModelForSequenceClassification` for a sequence classifier.
"""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path

from finetune.errors import FinetuneError
from finetune.models import load_classifier, load_language_model, resolve
from finetune.models.heads import CLASSIFIER_HEADS, HEAD_FILE, run_head, run_labels
from finetune.recipe import load_recipe
from finetune.runs import check_same_base
from finetune.tasks.prompts import PROMPT_FILE


def export_merged(
    run_dir: str | Path, out: str | Path | None = None, *, dtype: str = "float32"
) -> Path:
    """Merge `<run>/adapter` into the base model and save it to `out` (default `<run>/merged`)."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    run_dir = Path(run_dir)
    adapter = run_dir / "adapter"
    if not adapter.is_dir():
        if (run_dir / "model").is_dir():
            raise FinetuneError(
                f"{run_dir}: a full fine-tuning run; its model is already complete in {run_dir / 'model'}"
            )
        raise FinetuneError(
            f"{run_dir}: no adapter/ directory; is this a finished LoRA training run?"
        )
    recipe = load_recipe(run_dir / "recipe.yaml")
    source = resolve(recipe.model.base)
    check_same_base(run_dir, source.identity)
    tokenizer_dir = (
        adapter if (adapter / "tokenizer_config.json").is_file() else Path(source.location)
    )
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    # Merge in float32 whatever the training dtype, so the merged weights lose nothing.
    head = run_head(run_dir)
    loader = partial(load_language_model, head=head)
    if head in CLASSIFIER_HEADS:
        loader = partial(load_classifier, labels=run_labels(run_dir), head=head)
    base = loader(
        source,
        dtype=torch.float32,
        trust_remote_code=recipe.model.trust_remote_code,
        allow_pickle=recipe.model.allow_pickle,
    )
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged = merged.to(getattr(torch, dtype))
    if head in CLASSIFIER_HEADS:
        merged.config.pad_token_id = tokenizer.pad_token_id  # as trained (`padded`)
    out = Path(out) if out else run_dir / "merged"
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name in (PROMPT_FILE, HEAD_FILE):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, tmp / name)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
