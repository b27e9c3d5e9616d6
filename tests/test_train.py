"""The trainer on a tiny random model: methods, masking, determinism, resume, outputs, tracking, DDP."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from callbacks import FailAt, Snapshot
from conftest import REPO, logged, tiny_recipe_factory, train_from
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback
from wandb_files import read_run

from finetune.errors import FinetuneError
from finetune.recipe import RecipeError, load_recipe
from finetune.train import train
from finetune.train.callbacks import read_log

PLANTED_KEY = "planted-wandb-key-0123456789abcdef0123456789abcdef"


MODES = {
    "lora": {},
    "lora-all-options": {
        "lora": {"use_rslora": True, "use_dora": True, "target_modules": ["q_proj", "v_proj"]}
    },
    "full": {"train": {"method": "full", "learning_rate": 1e-3}},
    "lora-8bit": {"model": {"quantization": "8bit"}},
    "lora-bf16": {"model": {"dtype": "bfloat16"}},
    "lora-gradient-checkpointing": {"train": {"gradient_checkpointing": True}},
    "lora-bf16-eager-attention": {"model": {"dtype": "bfloat16"}, "train": {"attention": "eager"}},
    "qlora-4bit": {"model": {"quantization": "4bit", "qlora": {"compute_dtype": "float32"}}},
}
CUDA_ONLY = {"qlora-4bit"}


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(
            m,
            marks=pytest.mark.skipif(
                m in CUDA_ONLY and not torch.cuda.is_available(),
                reason="4-bit LoRA trains on CUDA only",
            ),
        )
        for m in MODES
    ],
)
def test_every_trainable_parameter_moves_and_no_frozen_one_does(tiny_recipe, mode):
    # Two steps: LoRA's B starts at zero, so A gets no gradient until B has moved once.
    path = tiny_recipe(**{**MODES[mode], "train": {**MODES[mode].get("train", {}), "max_steps": 2}})
    snap = Snapshot()
    result = train_from(path, callbacks=[snap])
    _check_only_trainable_moved(snap, result.run_dir, lora=mode.startswith("lora"))


def _check_only_trainable_moved(snap: Snapshot, run_dir: Path, lora: bool) -> None:
    assert snap.trainable, "nothing was trainable"
    unchanged = [n for n in snap.trainable if torch.equal(snap.before[n], snap.after[n])]
    assert not unchanged, f"trainable parameters that did not change: {unchanged}"
    moved = [
        n
        for n in snap.before
        if n not in snap.trainable and not torch.equal(snap.before[n], snap.after[n])
    ]
    assert not moved, f"frozen parameters that changed: {moved}"
    if lora:
        assert all("lora_" in n for n in snap.trainable)
        assert (run_dir / "adapter" / "adapter_config.json").is_file()
    else:
        assert len(snap.trainable) == len(snap.before)
        assert (run_dir / "model" / "model.safetensors").is_file()
    assert all(torch.isfinite(torch.tensor(logged(run_dir))))


def test_qlora_settings_reach_bitsandbytes(tiny_recipe):
    from finetune.train.model import bnb_config

    qlora = {"quant_type": "fp4", "double_quant": False, "compute_dtype": "float16"}
    config = bnb_config(load_recipe(tiny_recipe(model={"quantization": "4bit", "qlora": qlora})))
    assert config.load_in_4bit and not config.load_in_8bit
    assert (
        config.bnb_4bit_quant_type,
        config.bnb_4bit_use_double_quant,
        config.bnb_4bit_compute_dtype,
    ) == ("fp4", False, torch.float16)
    assert bnb_config(load_recipe(tiny_recipe(model={"quantization": "8bit"}))).load_in_8bit


@pytest.mark.skipif(torch.cuda.is_available(), reason="4-bit training is allowed on CUDA")
def test_4bit_training_on_cpu_is_refused_before_anything_starts(tiny_recipe, tmp_path):
    path = tiny_recipe(model={"quantization": "4bit"})
    with pytest.raises(RecipeError) as err:
        train_from(path)
    assert str(err.value).startswith(
        f"1 recipe problem:\n  {path}: model.quantization: 4-bit (QLoRA) training needs a CUDA GPU"
    )
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def first_batch(tmp_path_factory, tiny_model_dir):
    """The first training batch of a 1-step run in a layout ("padded", "packing" or
    "padding_free") and the run: (batch, run_dir), each layout trained once for the module."""
    make = tiny_recipe_factory(tmp_path_factory.mktemp("layouts"), tiny_model_dir)
    runs = {}

    def get(layout: str):
        if layout not in runs:
            snap = Snapshot()
            flags = {"packing": layout == "packing", "padding_free": layout == "padding_free"}
            run = train_from(make(layout, train={"max_steps": 1, **flags}), callbacks=[snap])
            runs[layout] = snap.batch, run.run_dir
        return runs[layout]

    return get


@pytest.mark.parametrize("layout", ["padded", "packing", "padding_free"])
def test_prompt_tokens_are_masked_and_answer_tokens_are_not(first_batch, layout):
    from transformers import AutoTokenizer

    batch, run_dir = first_batch(layout)
    tok = AutoTokenizer.from_pretrained(run_dir / "adapter")
    rows = (
        _segments(batch)
        if layout != "padded"
        else [
            (batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i])
            for i in range(len(batch["input_ids"]))
        ]
    )
    assert len(rows) == 4
    for ids, labels, keep in rows:
        ids, labels = ids[keep.bool()], labels[keep.bool()]
        answer = tok.decode(ids[labels != -100])
        assert answer in ("fresh<|im_end|>\n", "rotten<|im_end|>\n")
        # Every label that is not masked is the token itself (the model shifts internally)...
        assert torch.equal(labels[labels != -100], ids[labels != -100])
        # ...and every prompt token, instruction and input included, is masked.
        prompt = tok.decode(ids[labels == -100])
        assert prompt.startswith("<|im_start|>user\nSentiment?") and prompt.endswith(
            "<|im_start|>assistant\n"
        )


def test_length_grouped_batches_carry_less_padding(tiny_recipe, tiny_model_dir, tmp_path):
    def padding(group: bool) -> int:
        path = tiny_recipe(train={"group_by_length": group, "batch_size": 4})
        trainer = _trainer_pair(path, tiny_model_dir, tmp_path / f"out-{group}")[1]
        batches = list(trainer.get_train_dataloader())
        assert sum(len(b["input_ids"]) for b in batches) == len(trainer.train_dataset)
        return sum(int((b["attention_mask"] == 0).sum()) for b in batches)

    assert padding(True) < padding(False)


def _segments(batch):
    """Split a padding-free packed batch (one row, position ids restarting at 0) into its examples."""
    ids, labels, pos = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
    starts = [*torch.nonzero(pos == 0).flatten().tolist(), len(pos)]
    return [(ids[a:b], labels[a:b], torch.ones(b - a)) for a, b in itertools.pairwise(starts)]


def _trainer_pair(recipe_path: Path, tiny_model_dir: Path, out: Path):
    """TRL's SFTTrainer and ours on the same recipe, model weights and (nonzero) adapters."""
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from finetune.tasks.prompts import prompt_format
    from finetune.train.causal_lm import sft_config
    from finetune.train.dataset import encode_split
    from finetune.train.loss import SupervisedSFTTrainer
    from finetune.train.model import lora_config
    from finetune.train.objective import Splits

    recipe = load_recipe(recipe_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    split = encode_split(recipe, "train", prompt_format(tokenizer, recipe.task), tokenizer)
    args = sft_config(recipe, out, Splits(None, split, None, []))
    trainers = []
    for cls in (SFTTrainer, SupervisedSFTTrainer):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        trainers.append(
            cls(
                model=model,
                args=args,
                train_dataset=split.dataset,
                processing_class=tokenizer,
                peft_config=lora_config(recipe),
            )
        )
    torch.manual_seed(1)
    adapters = {
        n: torch.randn_like(p) * 0.1
        for n, p in trainers[0].model.named_parameters()
        if "lora_" in n
    }
    for trainer in trainers:
        trainer.model.load_state_dict(adapters, strict=False)
        trainer.model.train()
    return trainers


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("num_items", [None, 37])
def test_supervised_position_loss_equals_trl_loss_and_gradients(
    tiny_recipe, tiny_model_dir, tmp_path, packing, num_items
):
    path = tiny_recipe(train={"packing": packing, "batch_size": 8})
    reference, ours = _trainer_pair(path, tiny_model_dir, tmp_path / "out")
    batch = next(iter(reference.get_train_dataloader()))
    assert ("attention_mask" in batch) != packing  # padded rows, or one padding-free row
    losses, grads = [], []
    for trainer in (reference, ours):
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=num_items)
        loss.backward()
        losses.append(loss.detach())
        grads.append(
            {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        )
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("packing", [False, True])
def test_validation_loss_equals_trl_validation_loss(tiny_recipe, tiny_model_dir, tmp_path, packing):
    path = tiny_recipe(train={"packing": packing, "batch_size": 4})
    trainers = _trainer_pair(path, tiny_model_dir, tmp_path / "out")
    losses = [t.evaluate(eval_dataset=t.train_dataset)["eval_loss"] for t in trainers]
    assert math.isfinite(losses[0]) and losses[0] > 0
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_validation_computes_the_shared_prompt_prefix_once_and_gives_the_full_loss(
    tiny_recipe, tiny_model_dir, tmp_path
):
    path = tiny_recipe(
        train={"batch_size": 4},
        task={"instruction": "Is this review fresh or rotten? Answer with one word."},
    )
    _, ours = _trainer_pair(path, tiny_model_dir, tmp_path / "out")
    data = ours.train_dataset
    prefix = ours._shared_validation_prefix(data)
    assert len(prefix) >= 8 and all(ids[: len(prefix)] == prefix for ids in data["input_ids"])
    seen = []
    hook = ours.model.get_input_embeddings().register_forward_hook(
        lambda module, args, out: seen.append(args[0].shape[1])
    )
    shared = ours.evaluate(eval_dataset=data)["eval_loss"]
    batches = -(-len(data) // 4)
    assert seen[0] == len(prefix) and len(seen) == batches + 1  # the prefix once, then suffixes
    seen.clear()
    ours._shared_validation_prefix = lambda data: []  # the full computation, every token
    full = ours.evaluate(eval_dataset=data)["eval_loss"]
    hook.remove()
    assert len(seen) == batches and min(seen) > len(prefix)
    assert shared == pytest.approx(full, rel=1e-5)


def test_supervised_positions_keep_only_what_has_a_next_token_label():
    from finetune.train.loss import supervised_positions

    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, -100, -100, 7, -100]])
    assert supervised_positions(labels).tolist() == [
        1,
        2,
    ]  # logits at 1 and 2 predict tokens 2 and 3
    assert supervised_positions(torch.full((2, 4), -100)).tolist() == [0]


class Gradients(TrainerCallback):
    """The clipped, accumulated gradients just before the first optimizer step."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self.grads = {
                n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
            }


def test_gradient_accumulation_gives_the_gradient_of_the_whole_batch(tiny_recipe):
    grads = []
    for batch_size, accumulation in ((8, 1), (4, 2), (2, 4)):
        snap = Gradients()
        path = tiny_recipe(
            train={
                "max_steps": 1,
                "batch_size": batch_size,
                "gradient_accumulation_steps": accumulation,
                "max_grad_norm": 1e9,
            }
        )
        train_from(path, callbacks=[snap])
        grads.append(snap.grads)
    assert any(g.abs().sum() > 0 for g in grads[0].values())
    for other in grads[1:]:
        for name, grad in grads[0].items():
            torch.testing.assert_close(other[name], grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant_with_warmup"])
def test_logged_learning_rates_follow_the_schedule_with_warmup(tiny_recipe, scheduler):
    from transformers import get_scheduler

    path = tiny_recipe(
        train={
            "max_steps": 10,
            "warmup_ratio": 0.3,
            "lr_scheduler": scheduler,
            "eval_every": 10,
            "save_every": 10,
        }
    )
    run = train_from(path).run_dir
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    expected_schedule = get_scheduler(
        scheduler, optimizer, num_warmup_steps=3, num_training_steps=10
    )
    expected = []
    for _ in range(10):  # each step is logged with the rate it was taken at
        expected.append(expected_schedule.get_last_lr()[0])
        optimizer.step()
        expected_schedule.step()
    rates = logged(run, "train/learning_rate")
    assert rates == pytest.approx(expected, rel=1e-6)
    assert rates[0] < rates[2]  # warming up


def test_without_completion_only_the_prompt_is_trained_too(tiny_recipe):
    snap = Snapshot()
    train_from(tiny_recipe(train={"max_steps": 1, "completion_only": False}), callbacks=[snap])
    labels, mask = snap.batch["labels"], snap.batch["attention_mask"]
    assert torch.equal(labels[mask.bool()], snap.batch["input_ids"][mask.bool()])


@pytest.mark.parametrize(
    "attention", ["sdpa", "eager"]
)  # eager: `train.attention: auto` in CPU bf16
def test_packed_examples_attend_only_within_themselves(first_batch, tiny_model_dir, attention):
    """The packed batch the trainer builds gives each example the logits it has on its own."""
    batch, _ = first_batch("packing")
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attention)
    model.eval()
    with torch.no_grad():
        # use_cache=False as in SFTTrainer.compute_loss: with a cache transformers ignores packing.
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits[0]
        separate = torch.cat(
            [model(input_ids=ids[None]).logits[0] for ids, _, _ in _segments(batch)]
        )
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=1e-5)


def test_same_recipe_and_seed_give_identical_losses(tiny_recipe):
    path = tiny_recipe(lora={"dropout": 0.1})
    first, second = train_from(path).run_dir, train_from(path).run_dir
    assert first != second
    assert logged(first) == logged(second)
    assert logged(first, "eval/loss") == logged(second, "eval/loss")
    a, b = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (first, second))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compiled_decoder_layers_train_to_the_same_losses(tiny_recipe, monkeypatch):
    path = tiny_recipe(train={"max_steps": 3, "eval_every": 3, "save_every": 3})
    compiled_path = tiny_recipe(
        "compiled", train={"max_steps": 3, "eval_every": 3, "save_every": 3, "compile": True}
    )
    plain = train_from(path).run_dir
    # One graph for every layer and every step, validation passes included (which run eagerly):
    # a second graph would be another cold compile on a user's first run.
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    snap = Snapshot()
    compiled = train_from(compiled_path, callbacks=[snap]).run_dir
    # Compiled, the adapters train and nothing else moves (the LoRA mode of the test above).
    _check_only_trainable_moved(snap, compiled, lora=True)
    assert len(logged(plain)) == 3
    # Inductor fuses float32 ops in another order: equal up to rounding.
    assert logged(compiled) == pytest.approx(logged(plain), rel=1e-4)
    assert logged(compiled, "eval/loss") == pytest.approx(logged(plain, "eval/loss"), rel=1e-4)


def test_compile_finds_every_decoder_layer(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from finetune.train.model import compile_decoder_layers

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    assert compile_decoder_layers(model) == model.config.num_hidden_layers
    assert compile_decoder_layers(torch.nn.Linear(2, 2)) == 0


@pytest.mark.parametrize(
    ("requested", "dtype", "cuda", "fast", "length", "expected"),
    [
        ("auto", "auto", False, True, 100, "eager"),  # CPU with native bf16: bf16 autocast
        ("auto", "bfloat16", False, False, 192, "eager"),
        ("auto", "auto", False, True, 193, None),  # long batches: the fused kernel
        ("auto", "auto", False, False, 100, None),  # float32 on this CPU: transformers' default
        ("auto", "float32", False, True, 100, None),
        ("auto", "bfloat16", True, True, 100, None),  # CUDA's fused attention is the fast one
        ("sdpa", "bfloat16", False, True, 100, "sdpa"),
        ("eager", "bfloat16", False, True, 512, "eager"),
    ],
)
def test_auto_attention_is_eager_only_for_short_bf16_training_on_cpu(
    monkeypatch, requested, dtype, cuda, fast, length, expected
):
    from finetune import hardware

    monkeypatch.setattr(hardware, "has_cuda", lambda: cuda)
    monkeypatch.setattr(hardware, "fast_bf16", lambda: fast)
    assert hardware.training_attention(requested, dtype, length) == expected


def test_the_attention_setting_reaches_the_loaded_model(tiny_recipe):
    from finetune.models import resolve
    from finetune.train.model import load_base_for_training

    for attention in ("eager", "sdpa"):
        recipe = load_recipe(tiny_recipe(train={"attention": attention}))
        model = load_base_for_training(recipe, resolve(recipe.model.base))
        assert model.config._attn_implementation == attention


def test_losses_fall_and_the_run_is_complete_with_all_outputs(tiny_recipe):
    result = train_from(tiny_recipe(train={"max_steps": 12}))
    run = result.run_dir
    losses, evals = logged(run), logged(run, "eval/loss")
    assert losses[-1] < losses[0] and evals[-1] < evals[0]
    assert not run.name.endswith(".partial")
    assert json.loads((run / "provenance.json").read_text())["status"] == "complete"
    for name in (
        "recipe.yaml",
        "prompt.json",
        "train_log.jsonl",
        "train_summary.json",
        "logs/run.log",
    ):
        assert (run / name).is_file(), name
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 12 and summary["stopped_by"] == "completed"
    assert (
        summary["tokens_seen"] > 0 and summary["trainable_parameters"] < summary["total_parameters"]
    )
    assert summary["best_eval_loss"] == min(evals)
    assert not (run / "adapter" / "training_args.bin").exists()


def test_adapter_loads_with_peft_and_the_merged_export_gives_the_same_logits(
    tiny_run_copy, tiny_model_dir
):
    from peft import PeftModel

    from finetune.train import export_merged

    run = tiny_run_copy  # the exports are written into the run
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = PeftModel.from_pretrained(base, run / "adapter").eval()
    merged_dir = export_merged(run)
    from typer.testing import CliRunner

    from finetune.cli import app

    cli = CliRunner().invoke(
        app,
        ["export", str(run), "--merge", "--out", str(run / "merged-bf16"), "--dtype", "bfloat16"],
    )
    assert cli.exit_code == 0, cli.output
    assert AutoModelForCausalLM.from_pretrained(run / "merged-bf16").dtype == torch.bfloat16
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert (merged_dir / "model.safetensors").is_file() and not list(merged_dir.glob("adapter*"))
    ids = torch.tensor([[3, 50, 120, 7, 99, 42, 5]])
    with torch.no_grad():
        expected, got = tuned(ids).logits, merged(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
    assert not torch.allclose(expected, plain, atol=1e-3), "the adapter changed nothing"
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_best_checkpoint_is_kept_when_early_stopping(tiny_recipe):
    # A learning rate this high makes validation loss climb after the first steps.
    path = tiny_recipe(
        train={
            "max_steps": 40,
            "learning_rate": 0.5,
            "early_stopping_patience": 2,
            "max_grad_norm": 100.0,
        }
    )
    run = train_from(path).run_dir
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["stopped_by"].startswith("early stopping") and summary["steps"] < 40
    best = run / "checkpoints" / f"checkpoint-{summary['best_step']}"
    kept, final = (load_file(d / "adapter_model.safetensors") for d in (best, run / "adapter"))
    assert all(torch.equal(kept[k], final[k]) for k in kept)
    assert summary["best_eval_loss"] == min(logged(run, "eval/loss"))


def test_a_terminal_gets_a_progress_bar_with_speed_and_eta(tiny_recipe):
    import io

    from rich.console import Console

    screen = io.StringIO()
    train_from(tiny_recipe(), console=Console(file=screen, force_terminal=True, width=160))
    text = screen.getvalue()
    assert "train" in text and "6/6" in text and "tok/s" in text and "ETA" in text
    assert "training summary" in text


def test_time_budget_stops_cleanly_and_saves(tiny_recipe):
    run = train_from(tiny_recipe(train={"max_steps": 500, "budget_minutes": 0.0001})).run_dir
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["stopped_by"] == "time budget (train.budget_minutes) at step 1"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_a_failed_run_stays_partial_and_resume_checks_the_prompt_format(tiny_recipe, tmp_path):
    path = tiny_recipe()
    with pytest.raises(RuntimeError, match="injected failure"):
        train_from(path, callbacks=[FailAt(3)])
    (partial,) = (tmp_path / "runs" / "tiny").glob("*.partial")
    provenance = json.loads((partial / "provenance.json").read_text())
    assert provenance["status"] == "failed" and "injected failure" in provenance["error"]
    prompt = json.loads((partial / "prompt.json").read_text())
    (partial / "prompt.json").write_text(json.dumps({**prompt, "chat_template": "{{ messages }}"}))
    with pytest.raises(
        FinetuneError, match="different prompt format than the one this run started with"
    ):
        train(
            load_recipe(partial / "recipe.yaml"),
            recipe_path=partial / "recipe.yaml",
            resume=partial,
        )
    (partial / "prompt.json").write_text(json.dumps(prompt))
    result = train(
        load_recipe(partial / "recipe.yaml"), recipe_path=partial / "recipe.yaml", resume=partial
    )
    assert result.summary["steps"] == 6 and not result.run_dir.name.endswith(".partial")


def test_wandb_offline_files_hold_the_same_losses_as_the_jsonl_log(tiny_recipe, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", PLANTED_KEY)
    run = train_from(
        tiny_recipe(tracking={"wandb": {"mode": "offline", "project": "tiny-test"}})
    ).run_dir
    logged_run = read_run(run)
    history, config = logged_run["history"], logged_run["config"]
    in_wandb = [(r["_step"], r["train/loss"]) for r in history if "train/loss" in r]
    assert in_wandb == [(r["step"], r["train/loss"]) for r in read_log(run) if "train/loss" in r]
    assert [r["eval/loss"] for r in history if "eval/loss" in r] == logged(run, "eval/loss")
    assert any("train/learning_rate" in r and "train/tokens_per_second" in r for r in history)
    assert config == yaml.safe_load((run / "recipe.yaml").read_text())  # the resolved recipe
    assert any("train/loss_curve/_type" in r for r in history)
    ((name, kind, files),) = logged_run["artifacts"]
    assert (name, kind) == ("tiny-adapter", "model")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files)
    # The key is in the environment but written nowhere.
    for file in run.rglob("*"):
        if file.is_file():
            assert PLANTED_KEY.encode() not in file.read_bytes(), file


def test_online_without_a_key_falls_back_to_offline(tiny_recipe, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = train_from(
        tiny_recipe(train={"max_steps": 1}, tracking={"wandb": {"mode": "online"}})
    ).run_dir
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))


def test_cli_resume_refuses_a_complete_run_and_extra_recipe(tiny_recipe, tiny_run_copy, tmp_path):
    from typer.testing import CliRunner

    from finetune.cli import app

    tiny_recipe()  # tmp_path/tiny.yaml, the extra recipe
    run = tiny_run_copy
    result = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert (
        result.exit_code != 0
        and f"{run}: this run is complete; there is nothing to resume" in str(result.exception)
    )
    result = CliRunner().invoke(app, ["train", str(tmp_path / "tiny.yaml"), "--resume", str(run)])
    assert "--resume continues a run with the recipe stored in it" in str(result.exception)


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP on CPU is exercised on Linux")
def test_two_process_ddp_ends_with_identical_weights_on_both_ranks(tiny_recipe, tmp_path):
    path = tiny_recipe(
        train={"max_steps": None, "epochs": 1, "batch_size": 4, "eval_every": 4, "save_every": 4}
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(REPO / "configs/accelerate/cpu-ddp.yaml"),
            "-m",
            "finetune",
            "train",
            str(path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert len(set(summary["rank_weight_digests"])) == 1
    assert (
        summary["final_train_loss"] < summary["first_train_loss"]
    )  # identical because trained, not untouched
    # 64 training examples, 4 per process and 2 processes: 8 optimizer steps in one epoch.
    assert summary["train_examples"] == 64 and summary["steps"] == 8


def test_lora_inputs_stay_bf16_under_autocast_same_numbers_fewer_saved_bytes(tiny_recipe):
    """PEFT's cast of each adapter input to float32 is undone by autocast at the matmul: the
    same values, one more copy per adapted layer kept for backward."""
    from peft import get_peft_model

    from finetune.models import resolve
    from finetune.train.model import adapter_inputs_kept, load_base_for_training, lora_config

    recipe = load_recipe(tiny_recipe(model={"dtype": "bfloat16"}))
    torch.manual_seed(0)
    model = get_peft_model(
        load_base_for_training(recipe, resolve(recipe.model.base)), lora_config(recipe)
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    ids = torch.randint(0, 300, (4, 40))

    def step():
        saved = {}

        def pack(t):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        model.zero_grad()
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        with hooks, torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads, sum(saved.values())

    loss, grads, cast_bytes = step()
    with adapter_inputs_kept(model, recipe):
        kept_loss, kept_grads, kept_bytes = step()
    assert torch.equal(loss, kept_loss) and grads.keys() == kept_grads.keys() and grads
    assert all(torch.equal(grads[n], kept_grads[n]) for n in grads)
    assert kept_bytes < cast_bytes
    with adapter_inputs_kept(model, load_recipe(tiny_recipe(model={"dtype": "float32"}))):
        layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
        assert layers and all(m.cast_input_dtype_enabled for m in layers)  # no autocast: left on


def test_min_steps_gives_a_small_training_set_more_passes(tiny_recipe):
    from conftest import train_from

    from finetune.recipe import load_recipe
    from finetune.train.callbacks import read_log
    from finetune.train.objective import epochs_for

    steps = {"max_steps": None, "epochs": 1, "batch_size": 16, "eval_every": 100}
    path = tiny_recipe(train={**steps, "save_every": 100, "min_steps": 20})
    recipe = load_recipe(path)
    # 64 training rows in batches of 16: 4 steps a pass, so 5 passes make the 20 steps.
    assert epochs_for(recipe, 64) == 5.0
    assert epochs_for(recipe, 640) == 1.0  # 40 steps in one pass: epochs as given
    run = train_from(path).run_dir
    assert max(r["step"] for r in read_log(run) if "train/loss" in r) == 20
