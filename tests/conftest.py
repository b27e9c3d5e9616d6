"""Shared fixtures: a tiny random causal LM and tokenizer built offline, and recipe helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from finetune import quiet

# The workbench's one list of library noise, for the tests' processes and their children.
quiet.apply()

REPO = Path(__file__).resolve().parent.parent
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the film was fresh and funny, a delight from start to end",
    "a rotten, dull and lifeless movie with nothing to say",
    "business news: shares rose as the company reported profits",
    "sport: the team won the match in extra time",
    "tech: a new phone with a faster chip was announced",
    "Answer the question about construction law. What permit do I need to build a wall?",
    "0123456789 ,.;:!?'\"()[]{}-_/ positive negative fresh rotten label answer question",
]


def train_bpe(specials: list[str], unk_token: str | None = None):
    """A byte-level BPE tokenizer (about 400 tokens) trained on CORPUS, `specials` first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=unk_token))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def build_tiny_model(
    path: Path, *, hidden: int = 64, layers: int = 2, chat_template: bool = True
) -> Path:
    """Save a 2-layer random Llama and a byte-level BPE tokenizer (about 400 tokens) to `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = train_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random causal LM with a chat template, saved as safetensors; shared by the session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_plain_model_dir(tmp_path_factory) -> Path:
    """The same tiny model without a chat template (prompts fall back to the recipe's template)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-plain"), chat_template=False)


MINIMAL_RECIPE = {
    "name": "tiny",
    "task": {"type": "classification", "labels": ["fresh", "rotten"]},
    "data": {"source": "rotten-tomatoes"},
    "model": {"base": "smollm2-135m-instruct"},
}


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe mapping (or raw text) to tmp_path/<name> and return its path."""

    def write(content: dict | str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(
            content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        )
        return path

    return write


def write_reviews(path: Path, n: int = 80) -> None:
    good = ["fresh and funny", "a delight", "great fun", "a wonderful film"]
    bad = ["dull and lifeless", "a rotten movie", "nothing to say", "a boring mess"]
    with path.open("w") as f:
        for i in range(n):
            words = (good if i % 2 == 0 else bad)[i // 2 % 4]
            f.write(
                json.dumps(
                    {
                        "id": f"r{i}",
                        "text": f"{words}, number {i}",
                        "label": "fresh" if i % 2 == 0 else "rotten",
                    }
                )
                + "\n"
            )


@pytest.fixture
def tiny_recipe(tmp_path, tiny_model_dir):
    """Write a recipe training the tiny model on 80 synthetic reviews; keyword args override sections."""
    return tiny_recipe_factory(tmp_path, tiny_model_dir)


def tiny_recipe_factory(tmp_path: Path, tiny_model_dir: Path):
    write_reviews(tmp_path / "reviews.jsonl")

    def make(name: str = "tiny", **sections) -> Path:
        recipe = {
            "name": name,
            "seed": 3,
            "task": {
                "type": "classification",
                "labels": ["fresh", "rotten"],
                "instruction": "Sentiment?",
            },
            "data": {
                "source": str(tmp_path / "reviews.jsonl"),
                "prepared_dir": str(tmp_path / "data"),
            },
            "model": {"base": str(tiny_model_dir), "max_length": 64, "dtype": "float32"},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "train": {
                "max_steps": 6,
                "batch_size": 4,
                "learning_rate": 0.01,
                "eval_every": 2,
                "save_every": 2,
                "logging_steps": 1,
                "warmup_ratio": 0.0,
            },
            "tracking": {"runs_dir": str(tmp_path / "runs"), "wandb": {"mode": "disabled"}},
            # Memory measured alone costs a fresh process per system; its own tests ask for it.
            "eval": {"memory": "shared"},
        }
        for section, values in sections.items():
            recipe[section] = (
                {**recipe.get(section, {}), **values} if isinstance(values, dict) else values
            )
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return make


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run `finetune ARGS` in this process through its real entry point: (exit code, output)."""
    import sys

    from finetune.cli import main

    monkeypatch.setattr(sys, "argv", ["finetune", *args])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out + captured.err


def finetune_process(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 600):
    """Run `finetune ARGS` as a separate process, the way a user does: the finished process."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "finetune", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def scored(monkeypatch):
    """The names of the systems the evaluator actually scores (not taken from a kept
    evaluation), in order."""
    from finetune.evaluate import evaluator

    names: list[str] = []
    real = evaluator._score

    def counted(recipe, run_dir, plan, loaded, progress):
        names.append(plan.system.name)
        return real(recipe, run_dir, plan, loaded, progress)

    monkeypatch.setattr(evaluator, "_score", counted)
    return names


def screenshot(report_dir: Path, out: Path) -> tuple[int, int]:
    """Render `report_dir/report.html` with the screenshot script in headless Chromium: the
    PNG's (width, height)."""
    import struct
    import subprocess
    import sys

    script = REPO / "scripts" / "screenshot_report.py"
    done = subprocess.run(
        [sys.executable, str(script), str(report_dir), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    header = out.read_bytes()[:24]
    assert header.startswith(b"\x89PNG\r\n\x1a\n")
    return struct.unpack(">II", header[16:24])  # the IHDR chunk
