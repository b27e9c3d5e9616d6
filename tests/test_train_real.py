"""The trainer on the real SmolLM2-135M-Instruct and Rotten Tomatoes data (slow; runs in CI)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO

from finetune.recipe import load_recipe
from finetune.train import train
from finetune.train.callbacks import read_log


@pytest.mark.slow
def test_real_model_learns_and_its_adapter_reloads_and_generates(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.data import load_split
    from finetune.models import resolve
    from finetune.tasks.prompts import PromptFormat, render_prompt

    recipe_path = REPO / "recipes" / "rt-sentiment-smollm2-lora.yaml"
    overrides = [
        f"data.prepared_dir={tmp_path / 'data'}",
        f"tracking.runs_dir={tmp_path / 'runs'}",
        "tracking.wandb.mode=disabled",
        "data.max_train_examples=48",
        "data.max_validation_examples=16",
        "train.max_steps=6",
        "train.eval_every=6",
        "train.save_every=6",
        "train.learning_rate=1e-3",
    ]
    recipe = load_recipe(recipe_path, overrides)
    run = train(recipe, recipe_path=recipe_path, overrides=overrides).run_dir

    evals = [r["eval/loss"] for r in read_log(run) if "eval/loss" in r]
    assert len(evals) == 2 and evals[1] < evals[0] * 0.5
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["trainable_parameters"] == 4_884_480  # r=16 on all 7 linear layers of 30 blocks

    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    base = AutoModelForCausalLM.from_pretrained(resolve(recipe.model.base).location)
    model = PeftModel.from_pretrained(base, run / "adapter").eval()
    fmt = PromptFormat.load(run)
    item = load_split(recipe, "test")[0]
    prompt = tokenizer(
        render_prompt(fmt, tokenizer, item["text"]), return_tensors="pt", add_special_tokens=False
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip() in recipe.task.labels
