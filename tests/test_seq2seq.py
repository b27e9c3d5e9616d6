"""Encoder-decoder specialists (T5, BART) on tiny random models built here: the role and head a
base gets, label log-likelihoods and greedy answers against the model's own loss and
`generate`, LoRA and full training, the run's outputs, QA by generation, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from callbacks import Snapshot
from conftest import (
    CORPUS,
    assert_predicts_as_evaluated,
    logged,
    tiny_recipe_factory,
    train_and_evaluate,
    train_bpe,
    train_from,
)
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from finetune.data import load_split
from finetune.models import config_role, model_role
from finetune.models.heads import head_problems, resolved_head
from finetune.recipe import RecipeError, load_recipe
from finetune.report import write_report
from finetune.systems.seq2seq import generate, label_loglikelihoods
from finetune.tasks.metrics import compute
from finetune.tasks.prompts import (
    PromptFormat,
    encode,
    encode_target,
    prompt_format,
    untrained_format,
)
from finetune.train.export import export_merged

LABELS = ["fresh", "rotten"]


def _tokenizer(template: str):
    """A byte-level BPE tokenizer whose every encoding gets the model's special tokens, as T5's
    (`$A </s>`) and BART's (`<s> $A </s>`) do."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = train_bpe(["<pad>", "</s>", "<unk>", "<s>"], unk_token="<unk>")
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, tok.token_to_id(t)) for t in ("<s>", "</s>")]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
    )


def build_tiny_t5(path: Path) -> Path:
    """A 2+2-layer random T5 (d_model 32, no dropout), saved as T5s are on the Hub."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = _tokenizer("$A </s>")
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    T5ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_bart(path: Path) -> Path:
    """A 2+2-layer random BART (d_model 32, no dropout): its decoder starts from `</s>`."""
    from transformers import BartConfig, BartForConditionalGeneration

    tokenizer = _tokenizer("<s> $A </s>")
    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=256,
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_bos_token_id=None,
    )
    BartForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def tiny_bart_dir(tmp_path_factory) -> Path:
    return build_tiny_bart(tmp_path_factory.mktemp("tiny-bart"))


def t5_recipe_factory(root: Path, tiny_t5_dir: Path):
    """conftest's tiny recipe on the tiny T5, with the base zero-shot as a baseline."""
    make = tiny_recipe_factory(root, tiny_t5_dir)

    def recipe(name: str = "tiny", **sections) -> Path:
        train_section = {"batch_size": 8, "lr_scheduler": "constant", **sections.pop("train", {})}
        return make(name, train=train_section, **sections)

    return recipe


@pytest.fixture
def t5_recipe(tmp_path, tiny_t5_dir):
    return t5_recipe_factory(tmp_path, tiny_t5_dir)


def test_an_encoder_decoder_is_told_apart_and_gets_the_seq2seq_head(tiny_t5_dir, t5_recipe):
    config = json.loads((tiny_t5_dir / "config.json").read_text())
    assert config_role(config) == model_role(str(tiny_t5_dir)) == "seq2seq"
    assert resolved_head("auto", "seq2seq", "classification") == "seq2seq-lm"
    assert resolved_head("auto", "seq2seq", "qa") == "seq2seq-lm"
    path = t5_recipe(model={"head": "causal-lm"}, train={"packing": True})
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    # The head is wrong: what it would pack is beside the point.
    assert [(p.source, p.key, p.message) for p in info.value.problems] == [
        (
            str(path),
            "model.head",
            f"{str(tiny_t5_dir)!r} is an encoder-decoder (T5, BART): its decoder writes the "
            "answer, which is head: seq2seq-lm (or auto); found 'causal-lm'",
        )
    ]
    with pytest.raises(RecipeError) as info:
        load_recipe(t5_recipe(train={"packing": True}))
    assert [p.key for p in info.value.problems] == ["train.packing"]
    recipe = load_recipe(t5_recipe(model={"head": "seq2seq-lm"}))
    ((key, message),) = head_problems(recipe, "causal-lm")
    assert (key, message.split(",")[0]) == (
        "model.head",
        "head: seq2seq-lm needs an encoder-decoder base model (T5",
    )


def _model_and_tokenizer(path: Path):
    return AutoModelForSeq2SeqLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("build", ["tiny_t5_dir", "tiny_bart_dir"])
def test_label_loglikelihoods_equal_the_models_own_loss_on_each_label(request, build):
    model, tokenizer = _model_and_tokenizer(request.getfixturevalue(build))
    prompts = [tokenizer(t)["input_ids"] for t in CORPUS[:5]]  # of different lengths: padded
    labels = ["positive", "negative", "pos"]  # "pos" begins "positive": the end token decides
    label_ids = [encode_target(tokenizer, label, max_length=16) for label in labels]
    assert all(ids[-1] == tokenizer.eos_token_id for ids in label_ids)
    scores = label_loglikelihoods(model, tokenizer, prompts, label_ids)
    means = label_loglikelihoods(model, tokenizer, prompts, label_ids, length_normalize=True)
    for i, prompt in enumerate(prompts):
        for j, ids in enumerate(label_ids):
            with torch.no_grad():
                loss = model(input_ids=torch.tensor([prompt]), labels=torch.tensor([ids])).loss
            # The model's loss is the mean cross-entropy over the label's tokens.
            assert scores[i][j] == pytest.approx(-loss.item() * len(ids), abs=1e-4)
            assert means[i][j] == pytest.approx(-loss.item(), abs=1e-5)


@pytest.mark.parametrize("build", ["tiny_t5_dir", "tiny_bart_dir"])
def test_batched_answers_equal_generate_on_each_prompt_alone(request, build):
    model, tokenizer = _model_and_tokenizer(request.getfixturevalue(build))
    prompts = [tokenizer(t)["input_ids"] for t in CORPUS[:4]]
    answers = generate(model, tokenizer, prompts, max_new_tokens=6)
    for prompt, (text, count) in zip(prompts, answers, strict=True):
        with torch.no_grad():
            alone = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)
        new = alone[0, 1:].tolist()
        cut = next((k for k, t in enumerate(new) if t == tokenizer.eos_token_id), len(new))
        assert count == cut and 0 < count <= 6
        assert text == tokenizer.decode(new[:cut], skip_special_tokens=True).strip()


def test_training_examples_are_the_prompt_in_and_the_answer_out(t5_recipe, tiny_t5_dir):
    from finetune.data import prepare
    from finetune.train.seq2seq import Seq2SeqObjective

    recipe = load_recipe(t5_recipe())
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5_dir)
    splits = Seq2SeqObjective().encode(recipe, prepare(recipe), tokenizer)
    assert splits.fmt.style == "plain"  # the tokenizer has no chat template
    row = load_split(recipe, "train")[0]
    example = splits.train.dataset[0]
    prompt = encode(splits.fmt, tokenizer, row["text"], None, max_length=64)
    assert example["input_ids"] == prompt.input_ids
    assert example["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example["labels"]) == f"{row['label']}</s>"
    assert prompt_format(tokenizer, recipe.task) == splits.fmt


@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_decoder_learns_the_labels_and_only_what_the_method_trains_moves(t5_recipe, method):
    rate = {"lora": 0.01, "full": 0.003}[method]
    steps = {"max_steps": 40, "eval_every": 10, "save_every": 40, "logging_steps": 4}
    path = t5_recipe(train={"method": method, "learning_rate": rate, **steps})
    snap = Snapshot()
    run = train_from(path, callbacks=[snap]).run_dir
    moved = {n for n in snap.before if not torch.equal(snap.before[n], snap.after[n])}
    if method == "lora":
        assert snap.trainable == moved and all("lora_" in n for n in moved)
        assert any("decoder" in n for n in moved) and any("encoder" in n for n in moved)
    else:
        assert snap.trainable == moved == set(snap.before)
    losses = logged(run)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3]) / 2
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["head"] == "seq2seq-lm" and summary["steps"] == 40
    assert json.loads((run / "head.json").read_text()) == {"head": "seq2seq-lm", "labels": []}


def test_lora_output_loads_with_peft_and_exports_a_plain_seq2seq_model(t5_recipe, tiny_t5_dir):
    from peft import PeftModel

    run = train_from(t5_recipe()).run_dir
    adapter = run / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_2_SEQ_LM"
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    batch = tokenizer(CORPUS[:3], padding=True, return_tensors="pt")
    labels = tokenizer(text_target=["fresh"] * 3, return_tensors="pt")["input_ids"]

    def logits(model):
        with torch.no_grad():
            return model.eval()(**batch, labels=labels).logits

    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir)
    untuned = logits(base)
    tuned = logits(PeftModel.from_pretrained(base, adapter))
    assert not torch.allclose(tuned, untuned, atol=1e-3), "the run changed nothing"
    merged = AutoModelForSeq2SeqLM.from_pretrained(export_merged(run))
    torch.testing.assert_close(logits(merged), tuned, atol=1e-5, rtol=1e-5)
    assert load_file(adapter / "adapter_model.safetensors").keys()


def _direct_scores(model, tokenizer, fmt, text: str, labels: list[str]) -> dict[str, float]:
    """Each label's log-likelihood for one prompt, unbatched, from the model's own loss."""
    prompt = torch.tensor([encode(fmt, tokenizer, text, None, max_length=64).input_ids])
    scores = {}
    for label in labels:
        ids = encode_target(tokenizer, label, max_length=64)
        with torch.no_grad():
            loss = model(input_ids=prompt, labels=torch.tensor([ids])).loss.item()
        scores[label] = -loss * len(ids)
    return scores


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_t5_dir, tiny_model_dir):
    """A T5 LoRA specialist evaluated beside the untuned T5 zero-shot, a decoder and TF-IDF."""
    path = t5_recipe_factory(tmp_path_factory.mktemp("t5-eval"), tiny_t5_dir)(
        train={"max_steps": 40, "learning_rate": 0.01, "eval_every": 20, "save_every": 40},
        eval={
            "baselines": [
                {"name": "t5 zero-shot", "model": "base"},
                {"name": "tiny llm", "model": str(tiny_model_dir)},
            ],
            "latency_items": 2,
            "bootstrap_samples": 200,
            "timing": {"rounds": 6},
        },
    )
    return train_and_evaluate(path)


def test_the_specialist_and_its_base_score_labels_as_a_direct_forward_pass_and_are_reported(
    evaluated, tiny_t5_dir
):
    from peft import PeftModel

    recipe, _, run_dir, results, predictions = evaluated
    fmt = PromptFormat.load(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir).eval()
    listed = untrained_format(fmt, recipe.task)  # the untuned base also reads the label list
    untuned = {
        p["id"]: _direct_scores(base, tokenizer, listed, p["text"], LABELS) for p in predictions
    }
    tuned = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    for record in predictions:
        for name, model_scores in (
            ("specialist", _direct_scores(tuned, tokenizer, fmt, record["text"], LABELS)),
            ("t5 zero-shot", untuned[record["id"]]),
        ):
            entry = record["predictions"][name]
            assert entry["label_logprobs"] == pytest.approx(model_scores, abs=1e-4), name
            assert entry["prediction"] == max(model_scores, key=model_scores.get)
    systems = {s["name"]: s for s in results["systems"]}
    accuracy = {name: s["metrics"]["accuracy"]["value"] for name, s in systems.items()}
    assert accuracy["specialist"] >= 0.75 > accuracy["t5 zero-shot"]
    assert systems["specialist"]["model"] == f"{tiny_t5_dir} + LoRA adapter (merged)"
    assert (
        systems["t5 zero-shot"]["prompt_style"] == systems["specialist"]["prompt_style"] == "plain"
    )
    assert systems["tiny llm"]["prompt_style"] == "chat"
    assert set(systems) == {"specialist", "t5 zero-shot", "tiny llm", "tf-idf + logreg"}
    markdown = write_report(run_dir).markdown.read_text()
    assert all(f"| {name} " in markdown for name in systems), markdown


def test_qa_answers_are_generated_as_the_model_generates_them(tmp_path, tiny_t5_dir):
    source = tmp_path / "qa.jsonl"
    source.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "question": f"what is {i}?", "answer": f"number {i}"}) + "\n"
            for i in range(30)
        )
    )
    make = tiny_recipe_factory(tmp_path, tiny_t5_dir)
    path = make(
        task={"type": "qa", "instruction": "Answer.", "labels": []},
        data={"source": str(source), "fields": {"text": "question"}},
        train={"method": "full", "max_steps": 6, "learning_rate": 0.003},
        eval={"latency_items": 2, "max_new_tokens": 5, "bootstrap_samples": 100},
    )
    evaluated = train_and_evaluate(path)
    _, _, run_dir, results, predictions = evaluated
    model, tokenizer = _model_and_tokenizer(run_dir / "model")
    fmt = PromptFormat.load(run_dir)
    for record in predictions:
        prompt = encode(fmt, tokenizer, record["text"], None, max_length=64).input_ids
        ((text, _),) = generate(model, tokenizer, [prompt], max_new_tokens=5)
        assert record["predictions"]["specialist"]["prediction"] == text
    system = results["systems"][0]
    golds = [p["gold"] for p in predictions]
    preds = [p["predictions"]["specialist"]["prediction"] for p in predictions]
    assert system["metrics"]["token_f1"]["value"] == pytest.approx(
        compute("qa", "token_f1", golds, preds)
    )
    assert 0 < system["tokens"]["output_per_item"] <= 5
    assert system["model"] == f"{tiny_t5_dir} fine-tuned (full)"
    assert_predicts_as_evaluated(evaluated, tmp_path / "predicted.jsonl")  # full seq2seq, QA


def test_the_untuned_base_is_loaded_as_an_encoder_decoder_to_measure_its_memory_alone(evaluated):
    from types import SimpleNamespace

    from finetune.evaluate.memory import measured_alone
    from finetune.systems.base import System

    recipe, _, run_dir, _, _ = evaluated
    base = SimpleNamespace(system=System("t5 zero-shot", "baseline", "base"), key="base")
    # A causal-LM loader would fail on T5 weights, and the peak would be missing.
    peaks = measured_alone(recipe, run_dir, [base])
    assert list(peaks) == ["t5 zero-shot"] and peaks["t5 zero-shot"] > 0


@pytest.mark.parametrize("system", ["specialist", "t5 zero-shot", "tiny llm"])
def test_predict_answers_each_item_as_the_evaluation_did(evaluated, tmp_path, system):
    assert_predicts_as_evaluated(evaluated, tmp_path / "out.jsonl", system)
