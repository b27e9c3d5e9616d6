"""Encoder specialists: a sequence-classification head trained on a tiny random BERT (and on the
tiny Llama), resumed, reloaded with plain transformers and PEFT, and evaluated as the specialist."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from bad_recipes import with_changes
from callbacks import FailAt, Snapshot
from conftest import (
    assert_predicts_as_evaluated,
    logged,
    tiny_recipe_factory,
    train_and_evaluate,
    train_from,
)
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from finetune.data import load_split
from finetune.evaluate import evaluate
from finetune.models import config_role, model_role
from finetune.recipe import RecipeError, load_recipe
from finetune.tasks.metrics import compute
from finetune.train import export_merged, last_checkpoint, train
from finetune.train.callbacks import read_log

LABELS = ["fresh", "rotten"]
LONG_REVIEW = "a boring mess " * 40  # past model.max_length (64 tokens)
WORDS = [
    *("fresh", "and", "funny", "a", "delight", "great", "fun", "wonderful", "film"),
    *("dull", "lifeless", "rotten", "movie", "nothing", "to", "say", "boring", "mess", "number"),
]


def build_tiny_bert(path: Path, pieces: list[str] | None = None) -> Path:
    """A 2-layer random BERT (hidden 32) saved as a masked LM, as Hub BERTs are, with a
    WordPiece tokenizer over `pieces` (default: the review words); no dropout, so the toy
    task learns in a few dozen steps."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    if pieces is None:
        pieces = [*sorted(set(WORDS)), *"0123456789,.", *(f"##{d}" for d in "0123456789")]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate([*specials, *pieces])})
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertForMaskedLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def bert_recipe(tmp_path, tiny_bert_dir):
    """conftest's tiny recipe on the tiny BERT: no `model: base` baseline (an encoder writes no
    answer), batches of 8, a constant learning rate."""
    make = tiny_recipe_factory(tmp_path, tiny_bert_dir)

    def recipe(name: str = "tiny", **sections) -> Path:
        train_section = {"batch_size": 8, "lr_scheduler": "constant", **sections.pop("train", {})}
        return make(
            name,
            train=train_section,
            eval={"baselines": [], **sections.pop("eval", {})},
            **sections,
        )

    return recipe


def _base_classifier(tiny_bert_dir: Path):
    return AutoModelForSequenceClassification.from_pretrained(
        tiny_bert_dir,
        num_labels=2,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )


def _logits(model, tokenizer_dir: Path, texts: list[str]) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, truncation_side="left")
    batch = tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**batch).logits


LEARNS = {
    "lora": {"train": {"learning_rate": 0.01}},
    "lora-checkpointed": {"train": {"learning_rate": 0.01, "gradient_checkpointing": True}},
    "lora-bf16": {"train": {"learning_rate": 0.01}, "model": {"dtype": "bfloat16"}},
    "full": {"train": {"method": "full", "learning_rate": 0.003}},
}


@pytest.mark.parametrize("method", list(LEARNS))
def test_the_head_learns_and_only_what_the_method_trains_moves(bert_recipe, method):
    steps = {"max_steps": 64, "eval_every": 16, "save_every": 64, "logging_steps": 4}
    path = bert_recipe(**{**LEARNS[method], "train": {**LEARNS[method]["train"], **steps}})
    snap = Snapshot()
    run = train_from(path, callbacks=[snap]).run_dir
    moved = {n for n in snap.before if not torch.equal(snap.before[n], snap.after[n])}
    if method.startswith("lora"):
        # Adapters on the encoder's linear layers; the head (new to this checkpoint, as is the
        # pooler of a BERT saved as a masked LM) trained whole; no adapter on the head.
        assert snap.trainable == moved
        assert all("lora_" in n or ".modules_to_save." in n for n in snap.trainable)
        whole = {n.split(".modules_to_save.")[0] for n in snap.trainable if "modules_to_save" in n}
        assert whole == {"base_model.model.classifier", "base_model.model.bert.pooler.dense"}
        assert not [n for n in snap.trainable if "classifier" in n and "lora_" in n]
        assert any("attention.self.query.lora_A" in n for n in snap.trainable)
        # float32 master weights for what trains, whatever the base's dtype.
        assert {snap.after[n].dtype for n in snap.trainable} == {torch.float32}
    else:
        assert snap.trainable == moved == set(snap.before)
    losses, evals = logged(run), logged(run, "eval/loss")
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3])
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["head"] == "sequence-classification" and summary["steps"] == 64
    # The held-out cross-entropy of the checkpoint the run keeps, against chance (ln 2).
    assert evals[0] == pytest.approx(math.log(2), abs=0.01)
    assert summary["best_eval_loss"] == min(evals) < 0.1


def test_resume_after_a_failure_ends_like_an_uninterrupted_run(bert_recipe, tmp_path):
    path = bert_recipe(train={"max_steps": 10, "eval_every": 2, "save_every": 4})
    with pytest.raises(RuntimeError, match="injected failure"):
        train_from(path, callbacks=[FailAt(7)])
    (partial,) = (tmp_path / "runs" / "tiny").glob("*.partial")
    assert last_checkpoint(partial).name == "checkpoint-4"
    assert json.loads((partial / "head.json").read_text())["head"] == "sequence-classification"
    stored = partial / "recipe.yaml"
    resumed = train(load_recipe(stored), recipe_path=stored, resume=partial).run_dir
    uninterrupted = train_from(path).run_dir

    assert [r["step"] for r in read_log(resumed)] == [r["step"] for r in read_log(uninterrupted)]
    for key in ("train/loss", "eval/loss"):
        assert logged(resumed, key) == pytest.approx(logged(uninterrupted, key), abs=1e-6)
    a, b = (
        load_file(d / "adapter" / "adapter_model.safetensors") for d in (resumed, uninterrupted)
    )
    assert a.keys() == b.keys() and any("classifier" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-6)
    provenance = json.loads((resumed / "provenance.json").read_text())
    assert provenance["status"] == "complete" and len(provenance["resumed"]) == 1


def test_lora_output_loads_with_peft_and_exports_a_plain_classifier(bert_recipe, tiny_bert_dir):
    from peft import PeftModel

    run = train_from(bert_recipe()).run_dir
    adapter = run / "adapter"
    assert json.loads((run / "head.json").read_text()) == {
        "head": "sequence-classification",
        "labels": LABELS,
    }
    assert json.loads((run / "prompt.json").read_text())["style"] == "text"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "classifier" in config["modules_to_save"]
    assert (adapter / "tokenizer_config.json").is_file()
    assert not (adapter / "training_args.bin").exists()
    card = (adapter / "README.md").read_text()
    assert "[More Information Needed]" not in card and "library_name: peft" in card

    texts = [row["text"] for row in load_split(load_recipe(run / "recipe.yaml"), "test")]
    tuned = PeftModel.from_pretrained(_base_classifier(tiny_bert_dir), adapter)
    expected = _logits(tuned, adapter, texts)
    untuned = _logits(_base_classifier(tiny_bert_dir), adapter, texts)
    assert not torch.allclose(expected, untuned, atol=1e-3), "the run changed nothing"
    merged = AutoModelForSequenceClassification.from_pretrained(export_merged(run))
    assert merged.config.id2label == {0: "fresh", 1: "rotten"}
    torch.testing.assert_close(_logits(merged, adapter, texts), expected, atol=1e-5, rtol=1e-5)


def test_full_output_loads_with_plain_transformers(bert_recipe):
    run = train_from(bert_recipe(train={"method": "full", "learning_rate": 0.003})).run_dir
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.id2label == {0: "fresh", 1: "rotten"}
    logits = _logits(model, run / "model", ["great fun, number 3", "a boring mess, number 4"])
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_bert_dir, tiny_model_dir):
    """A 64-step LoRA run on the tiny BERT, evaluated beside the tiny causal LM (prompted with the
    recipe's instruction) and the TF-IDF classifier; the test split has one over-long review."""
    root = tmp_path_factory.mktemp("encoder-eval")
    make = tiny_recipe_factory(root, tiny_bert_dir)
    reviews = (root / "reviews.jsonl").read_text().splitlines(keepends=True)
    (root / "train.jsonl").write_text("".join(reviews[:56]))
    long = json.dumps({"id": "long", "text": LONG_REVIEW, "label": "rotten"}) + "\n"
    (root / "test.jsonl").write_text("".join(reviews[56:]) + long)
    path = make(
        train={
            "max_steps": 64,
            "batch_size": 8,
            "lr_scheduler": "constant",
            "eval_every": 16,
            "save_every": 64,
        },
        eval={
            "baselines": [{"name": "tiny llm", "model": str(tiny_model_dir)}],
            "batch_size": 4,
            "latency_items": 3,
            "bootstrap_samples": 300,
            "timing": {"throughput_items": 16},
        },
        data={
            "source": None,
            "split_files": {"train": str(root / "train.jsonl"), "test": str(root / "test.jsonl")},
        },
    )
    return train_and_evaluate(path)


def test_specialist_scores_equal_a_direct_forward_pass(evaluated, tiny_bert_dir):
    import torch.nn.functional as F
    from peft import PeftModel

    recipe, _, run_dir, _, predictions = evaluated
    items = load_split(recipe, "test")
    texts = [item["text"] for item in items]
    assert [p["id"] for p in predictions] == [item["id"] for item in items]
    tuned = PeftModel.from_pretrained(_base_classifier(tiny_bert_dir), run_dir / "adapter")
    logprobs = F.log_softmax(_logits(tuned, run_dir / "adapter", texts), dim=-1)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    for record, row, text in zip(predictions, logprobs.tolist(), texts, strict=True):
        entry = record["predictions"]["specialist"]
        assert entry["prediction"] == LABELS[max(range(2), key=row.__getitem__)]
        assert entry["label_logprobs"] == pytest.approx(
            dict(zip(LABELS, row, strict=True)), abs=2e-5
        )
        assert entry.get("truncated", False) == (len(tokenizer(text)["input_ids"]) > 64)
    assert predictions[-1]["predictions"]["specialist"]["truncated"] is True


def test_reported_metrics_equal_a_recount_from_the_predictions(evaluated):
    _, _, _, results, predictions = evaluated
    golds = [p["gold"] for p in predictions]
    for system in results["systems"]:
        preds = [p["predictions"][system["name"]]["prediction"] for p in predictions]
        for metric in ("accuracy", "macro_f1"):
            assert system["metrics"][metric]["value"] == compute(
                "classification", metric, golds, preds, labels=LABELS
            )
    specialist = results["systems"][0]
    assert specialist["metrics"]["accuracy"]["value"] > 0.9  # the toy task, learned
    assert specialist["truncated_items"] == 1


def test_the_encoder_specialist_runs_beside_a_causal_baseline_and_tfidf(evaluated, tiny_bert_dir):
    _, _, run_dir, results, predictions = evaluated
    systems = {s["name"]: s for s in results["systems"]}
    assert list(systems) == ["specialist", "tiny llm", "tf-idf + logreg"]
    specialist, llm = systems["specialist"], systems["tiny llm"]
    assert specialist["model"] == f"{tiny_bert_dir} + LoRA adapter (merged), sequence classifier"
    assert specialist["serving"] == "merged in float32"
    assert specialist["prompt_style"] == "text only" and llm["prompt_style"] == "chat"
    assert specialist["tokens"]["output_per_item"] == 0 and llm["tokens"]["output_per_item"] > 0
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert specialist["parameters"]["trainable"] == summary["trainable_parameters"]
    weights = (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size
    base = (tiny_bert_dir / "model.safetensors").stat().st_size
    assert specialist["disk_bytes"] == {"adapter": weights, "model": base}
    assert [c["baseline"] for c in results["comparisons"]] == ["tiny llm", "tf-idf + logreg"]
    for record in predictions:
        assert set(record["predictions"]["tiny llm"]["label_logprobs"]) == set(LABELS)


def test_a_decoder_run_beside_the_encoder_is_timed_and_measured_on_its_own_weights(
    evaluated, tiny_model_dir, tmp_path
):
    """A LoRA decoder run as a `run:` baseline of the encoder run: the timing rounds and the
    memory processes load each system by its own instance key (the decoder's prompts on BERT
    weights fail: ids past BERT's vocabulary)."""
    recipe, _, run_dir, _, _ = evaluated
    causal = load_recipe(
        run_dir / "recipe.yaml",
        [
            f"model.base={tiny_model_dir}",
            "name=tiny-decoder",
            "train.max_steps=4",
            "eval.baselines=[]",
        ],
    )
    other = train(causal, recipe_path=run_dir / "recipe.yaml").run_dir
    own = json.loads(evaluate(causal, other).read_text())["systems"][0]
    combined = recipe.model_copy(
        update={
            "eval": recipe.eval.model_copy(
                update={
                    "memory": "alone",
                    "baselines": [
                        type(recipe.eval.baselines[0])(name="decoder lora", run=str(other))
                    ],
                }
            )
        }
    )
    results = json.loads(evaluate(combined, run_dir).read_text())
    systems = {s["name"]: s for s in results["systems"]}
    decoder = systems["decoder lora"]
    assert decoder["metrics"] == own["metrics"]
    assert len(decoder["latency_ms"]["rounds"]) == recipe.eval.timing.rounds


def test_a_decoder_trains_a_classification_head_when_asked(tmp_path, tiny_model_dir):
    make = tiny_recipe_factory(tmp_path, tiny_model_dir)
    path = make(
        model={"head": "sequence-classification"},
        train={"max_steps": 4},
        eval={"latency_items": 2, "bootstrap_samples": 200, "timing": {"rounds": 6}},
    )
    run = train_from(path).run_dir
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert "base_model.model.score.weight" in adapter  # the new head, trained whole
    results = json.loads(evaluate(load_recipe(path), run).read_text())
    systems = {s["name"]: s for s in results["systems"]}
    assert systems["specialist"]["model"].endswith("sequence classifier")
    # The untuned base is still prompted, in its own chat format: the run's has no prompt.
    assert systems["base zero-shot"]["prompt_style"] == "chat"


MINILM = {"model.base": "all-minilm-l6-v2", "eval.baselines": []}
ENCODER_PROBLEMS = [
    (
        "base-baseline",
        {"model.base": "all-minilm-l6-v2"},
        "eval.baselines.0.model: 'base' is the untuned base model prompted to write the answer, "
        "but 'all-minilm-l6-v2' is an encoder with no language-model head to write one; name a "
        "decoder model instead (a registry name such as smollm2-135m-instruct, a local directory "
        "or a Hub id), or leave this baseline out",
    ),
    (
        "qa-task",
        {**MINILM, "task": {"type": "qa"}},
        "task.type: 'all-minilm-l6-v2' is an encoder: it trains a sequence-classification head, "
        "which needs task.type: classification; found 'qa'. Use a decoder base model (e.g. "
        "smollm2-135m-instruct) for qa tasks",
    ),
    (
        "causal-head",
        {**MINILM, "model.head": "causal-lm"},
        "model.head: 'all-minilm-l6-v2' is an encoder (BERT family), which has no language-model "
        "head to write answers with; use head: sequence-classification or token-classification "
        "(or auto), or a decoder base model",
    ),
    (
        "packing",
        {**MINILM, "train.packing": True},
        "train.packing: joins several examples into one row, but a sequence-classification head "
        "reads one text per row; set it to false",
    ),
    (
        "quantized",
        {**MINILM, "model.quantization": "8bit"},
        "model.quantization: a sequence-classification head trains on unquantized weights; found "
        "quantization '8bit'. Use quantization: none",
    ),
    (
        "decoder-head-on-qa",
        {"model.head": "sequence-classification", "task": {"type": "qa"}},
        "model.head: sequence-classification needs task.type: classification; found 'qa'. Use "
        "head: causal-lm (or auto)",
    ),
]


@pytest.mark.parametrize(
    "changes, expected", [c[1:] for c in ENCODER_PROBLEMS], ids=[c[0] for c in ENCODER_PROBLEMS]
)
def test_encoder_recipes_that_cannot_work_are_refused_with_the_fix(write_recipe, changes, expected):
    path = write_recipe(with_changes(*changes.items()))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == f"1 recipe problem:\n  {path}: {expected}"


def test_an_encoder_recipe_takes_decoder_baselines(write_recipe, tiny_bert_dir):
    baselines = [{"name": "smollm2", "model": "smollm2-135m-instruct", "shots": 2}]
    for base in ("all-minilm-l6-v2", str(tiny_bert_dir)):
        recipe = load_recipe(
            write_recipe(with_changes(("model.base", base), ("eval.baselines", baselines)))
        )
        assert recipe.model.head == "auto" and model_role(recipe.model.base) == "encoder"


@pytest.mark.parametrize(
    "config, role",
    [
        ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, "encoder"),
        ({"model_type": "bert", "architectures": ["BertModel"]}, "encoder"),  # all-MiniLM-L6-v2
        ({"model_type": "deberta-v2"}, "encoder"),
        (
            {"model_type": "bert", "architectures": ["BertLMHeadModel"], "is_decoder": True},
            "causal-lm",
        ),
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "causal-lm"),
        ({"model_type": "llama", "architectures": ["LlamaModel"]}, "causal-lm"),
        ({"model_type": "bart", "is_encoder_decoder": True}, "seq2seq"),
    ],
)
def test_an_encoder_is_told_from_its_config(config, role):
    assert config_role(config) == role


@pytest.mark.slow
def test_real_minilm_learns_a_classifier_and_is_evaluated(tmp_path):
    """all-MiniLM-L6-v2 from the registry (built from PyPI once): 12 steps on 32 reviews."""
    make = tiny_recipe_factory(tmp_path, Path("unused"))
    path = make(
        model={"base": "all-minilm-l6-v2", "max_length": 32},
        train={
            "max_steps": 12,
            "batch_size": 8,
            "eval_every": 4,
            "save_every": 12,
            "learning_rate": 2e-3,
        },
        data={"max_train_examples": 32, "max_validation_examples": 8, "max_test_examples": 8},
        eval={
            "baselines": [],
            "latency_items": 2,
            "bootstrap_samples": 100,
            "timing": {"rounds": 1},
        },
    )
    run = train_from(path).run_dir
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["head"] == "sequence-classification" and summary["steps"] == 12
    evals = logged(run, "eval/loss")
    assert all(map(math.isfinite, evals)) and evals[-1] < evals[0] - 0.05
    # LoRA r=4 on the 6 layers' 6 linear layers (27,648 each layer) and the pooler (3,072), and
    # the new 384 x 2 head with its bias (770): the checkpoint has a pooler, so only the head is new.
    assert summary["trainable_parameters"] == 6 * 27_648 + 3_072 + 770
    results = json.loads(evaluate(load_recipe(path), run).read_text())
    specialist = results["systems"][0]
    assert specialist["model"] == "all-minilm-l6-v2 + LoRA adapter (merged), sequence classifier"
    assert specialist["parameters"]["total"] > 22_000_000
    assert [s["name"] for s in results["systems"]] == ["specialist", "tf-idf + logreg"]


@pytest.mark.parametrize("system", ["specialist", "tiny llm", "tf-idf + logreg"])
def test_predict_answers_each_item_as_the_evaluation_did(evaluated, tmp_path, system):
    assert_predicts_as_evaluated(evaluated, tmp_path / "out.jsonl", system)
