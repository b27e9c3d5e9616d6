"""Shared fixtures and helpers: a tiny random causal LM and tokenizer built offline, the tiny
recipe, one tiny run trained once for the session, training and evaluation helpers, and the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One compute thread, here and in every child process: the tiny models gain nothing from a
# second, and on a shared 2-core machine OpenMP threads waiting on each other made a tiny
# evaluation three times slower. Real models and timing comparisons get every core back
# (`all_cores`).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from finetune import quiet

if TYPE_CHECKING:
    from finetune.recipe import Recipe

# The workbench's one list of library noise, for the tests' processes and their children.
quiet.apply()


def pytest_configure(config):
    # pytest runs each test (and collection) under filters of its own, which drop those set at
    # import: the same list goes into its `filterwarnings` too.
    for option in quiet.warning_options():
        config.addinivalue_line("filterwarnings", option)


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
    path: Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    chat_template: bool = True,
    tokenizer: Any = None,
) -> Path:
    """Save a 2-layer random Llama and a byte-level BPE tokenizer (about 400 tokens) to `path`;
    or with `tokenizer` (a real model's, say), that one as it is."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if tokenizer is None:
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
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def all_cores(monkeypatch):
    """Compute threads on every core, as a user's run has them, in this process and its
    children; for tests on real models (marked slow) and for timing comparisons."""
    import torch

    cores = os.cpu_count() or 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores))
    threads = torch.get_num_threads()
    torch.set_num_threads(cores)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _real_models_get_all_cores(request):
    if request.node.get_closest_marker("slow"):
        request.getfixturevalue("all_cores")


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
            # Timing: the fewest rounds that give a 0.95 interval, on a few items; the tests
            # that compare speeds set their own.
            "eval": {
                "memory": "shared",
                "latency_items": 2,
                "timing": {"rounds": 6, "throughput_items": 8},
            },
        }
        for section, values in sections.items():
            recipe[section] = (
                {**recipe.get(section, {}), **values} if isinstance(values, dict) else values
            )
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return make


def train_from(path: Path, **kwargs):
    """Train the recipe at `path` as `finetune train` does: the TrainResult (`.run_dir`, ...)."""
    from finetune.recipe import load_recipe
    from finetune.train import train

    return train(load_recipe(path), recipe_path=path, **kwargs)


def logged(run_dir: Path, key: str = "train/loss") -> list[float]:
    """Every value of `key` in a run's training log, in step order."""
    from finetune.train.callbacks import read_log

    return [r[key] for r in read_log(run_dir) if key in r]


class Evaluated(NamedTuple):
    """A trained and evaluated run: its recipe, the recipe's file, the run, results.json as a
    mapping and the rows of eval/predictions.jsonl."""

    recipe: Recipe
    path: Path
    run_dir: Path
    results: dict
    predictions: list[dict]


def evaluated_run(path: Path, run_dir: Path) -> Evaluated:
    """Evaluate the finished run `run_dir` with the recipe at `path`."""
    from finetune.evaluate import evaluate
    from finetune.recipe import load_recipe

    recipe = load_recipe(path)
    results = json.loads(evaluate(recipe, run_dir).read_text())
    predictions = [json.loads(line) for line in (run_dir / "eval/predictions.jsonl").open()]
    return Evaluated(recipe, path, run_dir, results, predictions)


def train_and_evaluate(path: Path, **kwargs) -> Evaluated:
    """Train the recipe at `path` (keyword args go to `train`), then evaluate the run."""
    return evaluated_run(path, train_from(path, **kwargs).run_dir)


def copy_run(run_dir: Path, root: Path, *, keep_eval: bool = True) -> Path:
    """A copy of a finished run at root/runs/<its recipe's name>/<its name>, where a recipe whose
    `tracking.runs_dir` is root/runs keeps its runs; without its evaluation if not `keep_eval`."""
    copy = root / "runs" / run_dir.parent.name / run_dir.name
    shutil.copytree(run_dir, copy)
    if not keep_eval:
        shutil.rmtree(copy / "eval", ignore_errors=True)
    return copy


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir) -> Path:
    """The run `tiny_recipe()` trains (6 LoRA steps on the tiny model), trained once for the
    session: its `eval` and `tracking` sections change nothing trained. Read it in place; to
    evaluate, export or otherwise change it, take `tiny_run_copy`."""
    root = tmp_path_factory.mktemp("tiny-run")
    return train_from(tiny_recipe_factory(root, tiny_model_dir)()).run_dir


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path) -> Path:
    """This test's own copy of `tiny_run`, in tmp_path/runs/ where `tiny_recipe`'s runs go."""
    return copy_run(tiny_run, tmp_path)


@pytest.fixture(scope="session")
def gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF as shipped (Q4_1, from its PyPI wheel)."""
    from finetune.models import gguf_as_shipped

    return gguf_as_shipped("smollm2-135m-instruct", key="engine.model")


def recipe_problems(path: Path) -> list:
    """The problems `load_recipe` finds in the recipe at `path` (it must refuse it): each has
    `.source`, `.key` and `.message`, and reads "source: key: message"."""
    from finetune.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    return info.value.problems


@pytest.fixture
def problems_with(write_recipe):
    """The problems `load_recipe` finds in MINIMAL_RECIPE with dotted keys changed (as
    `bad_recipes.with_changes` takes them), each as "key: message"."""
    from bad_recipes import with_changes

    def problems(*changes: tuple[str, object]) -> list[str]:
        return [
            f"{p.key}: {p.message}" for p in recipe_problems(write_recipe(with_changes(*changes)))
        ]

    return problems


# What a training process imports; the server the warm children fork from imports it once.
TRAINING_STACK = ["torch", "transformers", "peft", "trl", "datasets", "accelerate"]
TRAINING_STACK += [f"finetune.train.{name}" for name in ("trainer", "loss", "callbacks")]


def start_warm_process(target, *args, log: Path):
    """Start `target(*args)` in a child process forked from a server that has imported the
    training stack once for the session (a fresh interpreter spends 5-20 s importing it): the
    started `multiprocessing.Process`. Its output goes to `log`. `target` must be a module-level
    function; the child sees the environment the session had when the server started, and
    inherits nothing else from the test's process."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(TRAINING_STACK)
    process = context.Process(target=_logged_to, args=(log, target, *args))
    process.start()
    return process


def in_warm_process(target, *args, log: Path) -> int:
    """Run `target(*args)` as `start_warm_process` does, to its end: the child's exit code,
    negative for the signal that ended it."""
    process = start_warm_process(target, *args, log=log)
    process.join()
    return process.exitcode


def _logged_to(log: Path, target, *args) -> None:
    with open(log, "w") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
    target(*args)


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


@pytest.fixture(scope="module")
def chat_tok(tiny_model_dir):
    """The tiny model's tokenizer, which has a chat template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def plain_tok(tiny_plain_model_dir):
    """A tiny tokenizer without a chat template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_plain_model_dir)


def predicted(recipe: Recipe, run_dir: Path, out: Path, system: str = "specialist") -> list[dict]:
    """`finetune predict` with `system` on the items the evaluation scored (the run's test split,
    written to a file as ids and texts), in the same order; the rows it wrote."""
    from finetune.data import load_split
    from finetune.deploy.predict import predict

    source = out.with_suffix(".input.jsonl")
    items = load_split(recipe, "test")
    source.write_text("".join(json.dumps({"id": i["id"], "text": i["text"]}) + "\n" for i in items))
    predict(recipe, run_dir, source, out, system=system, fields={"id": "id", "text": "text"})
    return [json.loads(line) for line in out.open()]


def assert_predicts_as_evaluated(evaluated: Evaluated, out: Path, system: str = "specialist"):
    """Each row `finetune predict` writes for `system` holds the answer and the details that
    the evaluation's predictions.jsonl holds for the same item."""
    from finetune.tasks.types import task_type

    rows = predicted(evaluated.recipe, evaluated.run_dir, out, system)
    field = task_type(evaluated.recipe.task).target
    assert [r["id"] for r in rows] == [p["id"] for p in evaluated.predictions]
    for row, record in zip(rows, evaluated.predictions, strict=True):
        expected = dict(record["predictions"][system])
        expected.pop("score")
        got = {k: v for k, v in row.items() if k not in ("id", "probabilities")}
        assert got == {field: expected.pop("prediction"), **expected}, row["id"]
    return rows
