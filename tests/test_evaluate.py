"""The evaluator on a tiny trained run: same items for every system, numbers that trace to items, checks."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import (
    REPO,
    assert_predicts_as_evaluated,
    copy_run,
    tiny_recipe_factory,
    train_and_evaluate,
)
from test_scoring import direct_logprob

from finetune.data import load_split
from finetune.errors import FinetuneError
from finetune.evaluate import evaluate
from finetune.models.scoring import label_token_ids
from finetune.recipe import load_recipe
from finetune.systems.causal_lm import draw_shots
from finetune.tasks.metrics import compute
from finetune.tasks.prompts import PromptFormat, encode, untrained_format
from finetune.train import train

LONG_REVIEW = "an endless film " * 60


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir, tiny_plain_model_dir):
    """A 6-step LoRA run on the tiny model, evaluated against three baselines."""
    root = tmp_path_factory.mktemp("eval")
    make = tiny_recipe_factory(root, tiny_model_dir)
    reviews = (root / "reviews.jsonl").read_text().splitlines(keepends=True)
    (root / "train.jsonl").write_text("".join(reviews[:56]))
    long = json.dumps({"id": "long", "text": LONG_REVIEW, "label": "rotten"}) + "\n"
    (root / "test.jsonl").write_text("".join(reviews[56:]) + long)  # one review over max_length
    path = make(
        eval={
            "baselines": [
                {"name": "base zero-shot", "model": "base"},
                {"name": "base 2-shot", "model": "base", "shots": 2},
                {"name": "plain model", "model": str(tiny_plain_model_dir)},
            ],
            "batch_size": 4,
            "latency_items": 3,
            "bootstrap_samples": 300,
            "memory": "alone",
        },
        data={
            "source": None,
            "split_files": {"train": str(root / "train.jsonl"), "test": str(root / "test.jsonl")},
        },
        # Room for the label list the baselines read after "Sentiment?" (task.list_labels).
        model={"max_length": 128},
    )
    return train_and_evaluate(path)


def test_every_system_scores_the_same_items_in_the_same_order(evaluated):
    recipe, _, _, results, predictions = evaluated
    names = [s["name"] for s in results["systems"]]
    assert names == [
        "specialist",
        "base zero-shot",
        "base 2-shot",
        "plain model",
        "tf-idf + logreg",
    ]
    test_ids = [row["id"] for row in load_split(recipe, "test")]
    assert [p["id"] for p in predictions] == test_ids
    assert results["test_items"] == len(test_ids)
    for record in predictions:
        assert list(record["predictions"]) == names
        for entry in record["predictions"].values():
            assert entry["prediction"] in recipe.task.labels
            assert entry["score"] == float(entry["prediction"] == record["gold"])


def _peak_of_a_process(code: str) -> int:
    script = (
        f"{code}\nfrom finetune.hardware import process_peak_bytes\nprint(process_peak_bytes())"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_each_system_peak_memory_is_measured_alone(evaluated):
    _, _, _, results, _ = evaluated
    assert results["memory"] == "alone"
    peaks = {s["name"]: s["peak_memory_bytes"] for s in results["systems"]}
    with_torch = _peak_of_a_process("import torch, transformers")
    # TF-IDF is scored last, after four language models, yet its process never held torch:
    # in the evaluating process it would have been charged for all of them.
    assert peaks["tf-idf + logreg"] < with_torch
    for name in ("specialist", "base zero-shot", "base 2-shot", "plain model"):
        assert peaks[name] > with_torch, name
    assert peaks["tf-idf + logreg"] > _peak_of_a_process("import sklearn.linear_model")


def test_a_system_that_cannot_be_measured_alone_is_named_and_the_rest_go_on(evaluated, caplog):
    from types import SimpleNamespace

    from finetune.evaluate.memory import measured_alone
    from finetune.systems.base import System

    recipe, _, run_dir, _, _ = evaluated
    ghost = SimpleNamespace(system=System("ghost", "baseline", "run", kind="run"), key="run:ghost")
    tfidf = SimpleNamespace(
        system=System("tf-idf + logreg", "baseline", "tfidf", kind="tfidf"),
        key="tfidf:tf-idf + logreg",
    )
    peaks = measured_alone(recipe, run_dir, [ghost, tfidf])  # no baseline "ghost" to load
    assert list(peaks) == ["tf-idf + logreg"] and peaks["tf-idf + logreg"] > 0
    assert "ghost: its peak memory could not be measured alone (ValueError" in caplog.text


def test_reported_numbers_equal_a_recount_from_the_predictions(evaluated):
    recipe, _, _, results, predictions = evaluated
    golds = [p["gold"] for p in predictions]
    for system in results["systems"]:
        preds = [p["predictions"][system["name"]]["prediction"] for p in predictions]
        correct = sum(g == p for g, p in zip(golds, preds, strict=True))
        accuracy = system["metrics"]["accuracy"]
        assert accuracy["value"] == correct / len(golds)
        assert accuracy["low"] <= accuracy["value"] <= accuracy["high"]
        assert system["metrics"]["macro_f1"]["value"] == compute(
            "classification", "macro_f1", golds, preds, labels=recipe.task.labels
        )
        confusion = system["confusion"]
        assert sum(map(sum, confusion)) == len(golds)
        assert confusion[0][0] + confusion[1][1] == correct
        latency = system["latency_ms"]
        assert latency["items"] == 3 and len(latency["rounds"]) == recipe.eval.timing.rounds
        assert latency["p50"] == statistics.median(latency["rounds"]) > 0
        assert latency["low"] == min(latency["rounds"]) and latency["high"] == max(
            latency["rounds"]
        )
        assert system["throughput_items_per_s"] > 0 and system["peak_memory_bytes"] > 0
    for comparison in results["comparisons"]:
        base = comparison["baseline"]
        spec_ok = [p["predictions"]["specialist"]["score"] == 1 for p in predictions]
        base_ok = [p["predictions"][base]["score"] == 1 for p in predictions]
        mcnemar = comparison["mcnemar"]
        assert mcnemar["specialist_only"] == sum(
            a and not b for a, b in zip(spec_ok, base_ok, strict=True)
        )
        assert mcnemar["baseline_only"] == sum(
            b and not a for a, b in zip(spec_ok, base_ok, strict=True)
        )
        assert comparison["difference"] == pytest.approx((sum(spec_ok) - sum(base_ok)) / len(golds))
        assert comparison["significant"] == (mcnemar["p_value"] < 0.05)


def test_sizes_parameters_and_costs_describe_each_system(evaluated):
    recipe, _, run_dir, results, _ = evaluated
    specialist, base = results["systems"][0], results["systems"][1]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert specialist["parameters"]["trainable"] == summary["trainable_parameters"] > 0
    assert base["parameters"]["trainable"] == 0
    # Served merged: the adapter's weights are folded into the base's, which keeps its size.
    assert specialist["parameters"]["total"] == base["parameters"]["total"]
    assert specialist["model"].endswith("+ LoRA adapter (merged)")
    adapter = (run_dir / "adapter/adapter_model.safetensors").stat().st_size
    assert specialist["disk_bytes"]["adapter"] == adapter and base["disk_bytes"]["adapter"] is None
    per_hour = recipe.eval.prices.machine_per_hour
    for system in results["systems"]:
        # Each round's cost is machine time at that round's throughput; the figure is the median.
        rounds = system["throughput"]["rounds"]
        expected = [per_hour * 1000 / thr / 3600 for thr in rounds]
        assert system["cost_per_1k"]["rounds"] == pytest.approx(expected)
        assert system["cost_per_1k"]["usd"] == pytest.approx(statistics.median(expected))
        assert system["throughput_items_per_s"] == pytest.approx(statistics.median(rounds))


def test_label_scores_equal_direct_log_probabilities_of_each_system(evaluated, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe, _, run_dir, _, predictions = evaluated
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    fmt = PromptFormat.load(run_dir)
    label_ids = label_token_ids(fmt, tokenizer, recipe.task.labels)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(run_dir / "adapter")
    ).eval()
    items = {row["id"]: row for row in load_split(recipe, "test")}
    # The untrained base reads the label list after the instruction ("Sentiment?" names none).
    formats = {"specialist": fmt, "base zero-shot": untrained_format(fmt, recipe.task)}
    limits = {"max_length": recipe.model.max_length, "reserve": max(map(len, label_ids))}
    for record in predictions[:6]:
        for name, model in (("specialist", tuned), ("base zero-shot", base)):
            prompt = encode(formats[name], tokenizer, items[record["id"]]["text"], None, **limits)
            got = record["predictions"][name]["label_logprobs"]
            for label, ids in zip(recipe.task.labels, label_ids, strict=True):
                want = direct_logprob(model, prompt.input_ids, ids)
                assert got[label] == pytest.approx(want, abs=1e-3), (name, label)
            best = max(got, key=got.get)
            assert record["predictions"][name]["prediction"] == best


def test_a_long_input_is_truncated_counted_and_flagged_never_dropped(evaluated):
    _, _, _, results, predictions = evaluated
    long = [p for p in predictions if p["id"] == "long"]
    assert long, "the long review must be in the test split"
    assert long[0]["predictions"]["specialist"]["truncated"] is True
    language_models = [s for s in results["systems"] if s["name"] != "tf-idf + logreg"]
    assert all(s["truncated_items"] == 1 for s in language_models)
    # The TF-IDF classifier reads every word: nothing to truncate.
    assert results["systems"][-1]["truncated_items"] == 0


def test_shots_are_fixed_by_the_seed_and_take_turns_over_labels(evaluated):
    recipe, *_ = evaluated
    train_rows = load_split(recipe, "train")
    shots = draw_shots(recipe, train_rows, 4)
    assert shots == draw_shots(recipe, train_rows, 4)
    assert Counter(answer for _, answer in shots) == {"fresh": 2, "rotten": 2}
    texts = {row["text"] for row in train_rows}
    assert all(text in texts for text, _ in shots)
    other_seed = recipe.model_copy(update={"seed": recipe.seed + 1})
    assert draw_shots(other_seed, train_rows, 4) != shots


def test_shots_are_the_same_at_every_training_size_that_holds_them(evaluated):
    from finetune.data.split import rank

    recipe, *_ = evaluated
    everything = load_split(recipe, "train")
    shots = draw_shots(recipe, everything, 4)
    for cap in (8, 20, 40):
        data = recipe.data.model_copy(update={"max_train_examples": cap})
        capped = load_split(recipe.model_copy(update={"data": data}), "train")
        assert len(capped) == cap and draw_shots(recipe, capped, 4) == shots, cap
    # Each label's two examples are the shorter two of its first four rows in rank order.
    for label in recipe.task.labels:
        first = sorted(
            (r for r in everything if r["label"] == label), key=lambda r: rank(recipe.seed, r["id"])
        )[:4]
        shorter = sorted(first, key=lambda r: len(r["text"]))[:2]
        assert sorted(t for t, a in shots if a == label) == sorted(r["text"] for r in shorter)


def test_the_plain_baseline_uses_its_own_prompt_style(evaluated):
    _, _, _, results, _ = evaluated
    styles = {s["name"]: s["prompt_style"] for s in results["systems"]}
    assert styles == {
        "specialist": "chat",
        "base zero-shot": "chat",
        "base 2-shot": "chat",
        "plain model": "plain",
        "tf-idf + logreg": "tf-idf features",
    }
    two_shot = results["systems"][2]
    assert two_shot["tokens"]["input_per_item"] > results["systems"][1]["tokens"]["input_per_item"]


def test_an_adapter_trained_on_another_base_is_refused(evaluated, tmp_path):
    recipe, _, run_dir, _, _ = evaluated
    copy = copy_run(run_dir, tmp_path, keep_eval=False)
    provenance = json.loads((copy / "provenance.json").read_text())
    provenance["base_model"]["config_sha256"] = "0" * 64
    (copy / "provenance.json").write_text(json.dumps(provenance))
    with pytest.raises(
        FinetuneError, match=r"the adapter was trained on base model .* is what loads now"
    ):
        evaluate(recipe, copy)
    assert not (copy / "eval").exists()


def test_a_recipe_whose_prompt_differs_from_the_run_is_refused(evaluated, tmp_path):
    recipe, path, run_dir, _, _ = evaluated
    changed = yaml.safe_load(path.read_text())
    changed["task"]["instruction"] = "Is it good?"
    other = tmp_path / "changed.yaml"
    other.write_text(yaml.safe_dump(changed))
    with pytest.raises(FinetuneError) as err:
        evaluate(load_recipe(other), run_dir)
    assert str(err.value) == (
        "task.instruction: the recipe says 'Is it good?' but the run was trained with 'Sentiment?'; "
        f"evaluate with the run's own recipe: `finetune eval {run_dir / 'recipe.yaml'} --run {run_dir}`"
    )
    copy = copy_run(run_dir, tmp_path, keep_eval=False)
    stored = json.loads((copy / "prompt.json").read_text())
    (copy / "prompt.json").write_text(json.dumps({**stored, "template": "{input} =>"}))
    with pytest.raises(FinetuneError, match=r"prompt\.json does not match the recipe"):
        evaluate(recipe, copy)


def test_an_unfinished_run_is_refused(evaluated, tmp_path):
    recipe, _, run_dir, _, _ = evaluated
    partial = shutil.copytree(run_dir, tmp_path / "x.partial")
    with pytest.raises(FinetuneError, match="not a finished training run"):
        evaluate(recipe, partial)


def test_cli_eval_then_report_prints_the_headline_and_writes_html(evaluated):
    import subprocess
    import sys

    run_dir = evaluated[2]
    report = subprocess.run(
        [sys.executable, "-m", "finetune", "report", str(run_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert report.returncode == 0, report.stderr
    assert "specialist" in report.stdout and "Bottom line" in report.stdout
    html = (run_dir / "report.html").read_text()
    assert "base 2-shot" in html and "data:image/png;base64," in html
    assert (run_dir / "report.md").is_file()


GENERATION_TASKS = {
    "qa": (
        {"question": "what is {i}?", "answer": "number {i}"},
        {"text": "question"},
        {"exact_match", "token_f1", "rouge_l"},
        "token_f1",
    ),
    "extraction": (
        {"text": "shares of acme {i} rose", "entities": [{"text": "acme {i}", "type": "org"}]},
        {},
        {"micro_f1", "macro_f1"},
        "micro_f1",
    ),
}


@pytest.mark.parametrize("task", sorted(GENERATION_TASKS))
def test_generation_tasks_generate_and_score_answers(tmp_path, tiny_model_dir, task):
    row, fields, metric_names, primary = GENERATION_TASKS[task]
    source = tmp_path / f"{task}.jsonl"
    source.write_text(
        "".join(
            json.dumps({"id": f"x{i}", **json.loads(json.dumps(row).replace("{i}", str(i)))}) + "\n"
            for i in range(30)
        )
    )
    make = tiny_recipe_factory(tmp_path, tiny_model_dir)
    path = make(
        task={"type": task, "instruction": "Answer.", "labels": []},
        data={"source": str(source), "fields": fields},
        train={"max_steps": 2, "eval_every": 2, "save_every": 2},
        eval={"latency_items": 2, "max_new_tokens": 4, "bootstrap_samples": 100},
    )
    recipe = load_recipe(path)
    run_dir = train(recipe, recipe_path=path).run_dir
    results = json.loads(evaluate(recipe, run_dir).read_text())
    predictions = [json.loads(line) for line in (run_dir / "eval/predictions.jsonl").open()]
    system = results["systems"][0]
    assert set(system["metrics"]) == metric_names
    golds = [p["gold"] for p in predictions]
    preds = [p["predictions"]["specialist"]["prediction"] for p in predictions]
    assert all(isinstance(p, str if task == "qa" else list) for p in preds)
    assert system["metrics"][primary]["value"] == pytest.approx(
        compute(task, primary, golds, preds)
    )
    assert 0 < system["tokens"]["output_per_item"] <= 4
    assert results["comparisons"][0]["mcnemar"] is None
    assert system["confusion"] is None and system["per_class"] == []


def test_unknown_metric_names_fail_validation_with_the_valid_ones(write_recipe):
    from finetune.recipe import RecipeError

    path = write_recipe(
        {
            "name": "x",
            "task": {"type": "classification", "labels": ["a", "b"]},
            "data": {"source": "rotten-tomatoes"},
            "model": {"base": "smollm2-135m-instruct"},
            "eval": {"metrics": ["accuracy", "f1_score"]},
        }
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert (
        f"{path}: eval.metrics: unknown metric 'f1_score' for a classification task; "
        "valid: accuracy, macro_f1" in str(err.value)
    )


def test_priced_systems_cost_their_tokens_and_others_machine_time(evaluated):
    from types import SimpleNamespace

    from finetune.evaluate.results import cost_per_1k
    from finetune.recipe.schema import PriceConfig

    recipe = evaluated[0]
    prices = PriceConfig(
        machine_per_hour=0.5,
        per_million_input_tokens={"hosted": 2.0},
        per_million_output_tokens={"hosted": 8.0},
    )
    priced = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"prices": prices})})
    outcome = SimpleNamespace(input_tokens=100.0, output_tokens=2.0)
    # 1000 requests x (100 tokens x $2/M + 2 tokens x $8/M) = $0.216
    hosted = cost_per_1k(priced, "hosted", 50.0, outcome)
    assert hosted["usd"] == pytest.approx(0.216)
    assert hosted["basis"] == "API tokens at $2/M input, $8/M output"
    # 1000 requests at 4 items/s = 250 s of a $0.50/h machine = $0.034722...
    local = cost_per_1k(priced, "base zero-shot", 4.0, outcome)
    assert local["usd"] == pytest.approx(0.5 * 250 / 3600)


def test_a_bf16_specialist_is_merged_in_float32_and_rounded_once(evaluated):
    """bf16(W + s BA) from float32 W: merging into weights already rounded to bf16 would round the
    small update back onto bf16's grid around W and erase most of it."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from finetune.systems.pool import loaded_model

    recipe, path, run_dir, _, _ = evaluated
    bf16 = load_recipe(path, ["model.dtype=bfloat16"])
    base = load_file(str(Path(recipe.model.base) / "model.safetensors"))
    adapter = load_file(str(run_dir / "adapter/adapter_model.safetensors"))
    config = json.loads((run_dir / "adapter/adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    with loaded_model(bf16, run_dir, "specialist") as loaded:
        assert loaded.serving == "merged in float32, rounded once to bfloat16"
        assert loaded.description.endswith("(merged)")
        weights = dict(loaded.model.named_parameters())
        checked = 0
        for key, a in adapter.items():
            if "lora_A" not in key:
                continue
            b = adapter[key.replace("lora_A", "lora_B")]
            name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            want = (base[name].float() + scale * (b.float() @ a.float())).to(torch.bfloat16)
            assert torch.equal(weights[name], want), name
            checked += 1
        assert checked > 0
    unmerged = load_recipe(path, ["model.dtype=bfloat16", "eval.specialist_form=adapter"])
    with loaded_model(unmerged, run_dir, "specialist") as loaded:
        assert loaded.serving == "adapter unmerged, in float32"
        assert isinstance(loaded.model, PeftModel)
        lora = {p.dtype for n, p in loaded.model.named_parameters() if "lora_" in n}
        rest = {p.dtype for n, p in loaded.model.named_parameters() if "lora_" not in n}
        assert lora == {torch.float32} and rest == {torch.bfloat16}


def test_the_tfidf_classifier_equals_a_direct_scikit_learn_fit_on_the_same_rows(evaluated):
    """Fitted on the run's training rows with the recipe's settings, scored on the same items."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    recipe, _, _, results, predictions = evaluated
    train_rows = load_split(recipe, "train")
    direct = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        LogisticRegression(C=10.0, max_iter=2000, random_state=recipe.seed),
    ).fit([r["text"] for r in train_rows], [r["label"] for r in train_rows])
    texts = [row["text"] for row in load_split(recipe, "test")]
    expected = direct.predict(texts)
    logprobs = direct.predict_log_proba(texts)
    name = "tf-idf + logreg"
    got = [p["predictions"][name] for p in predictions]
    assert [g["prediction"] for g in got] == list(expected)
    for entry, row in zip(got, logprobs, strict=True):
        by_label = dict(zip(direct.classes_, row, strict=True))
        assert entry["label_logprobs"] == {
            k: pytest.approx(by_label[k], abs=1e-5) for k in by_label
        }
    system = next(s for s in results["systems"] if s["name"] == name)
    golds = [p["gold"] for p in predictions]
    assert system["metrics"]["accuracy"]["value"] == np.mean(expected == np.array(golds))
    assert system["model"] == (
        "TF-IDF (word 1-2-grams) + logistic regression (C=10), "
        f"fitted on {len(train_rows)} training rows"
    )
    assert system["parameters"]["total"] == direct[-1].coef_.size + direct[-1].intercept_.size
    assert system["disk_bytes"]["model"] > 0 and system["tokens"]["output_per_item"] == 0


def test_the_majority_class_floor_is_trains_most_common_label_on_the_same_items(evaluated):
    recipe, _, _, results, predictions = evaluated
    train_labels = Counter(r["label"] for r in load_split(recipe, "train"))
    label, count = min(train_labels.items(), key=lambda kv: (-kv[1], kv[0]))
    floor = results["floor"]
    assert (floor["label"], floor["train_share"]) == (label, count / sum(train_labels.values()))
    golds = [p["gold"] for p in predictions]
    assert floor["metrics"]["accuracy"]["value"] == golds.count(label) / len(golds)
    vs = floor["specialist_vs"]
    spec_ok = [p["predictions"]["specialist"]["score"] == 1 for p in predictions]
    floor_ok = [g == label for g in golds]
    assert vs["mcnemar"]["specialist_only"] == sum(
        a and not b for a, b in zip(spec_ok, floor_ok, strict=True)
    )
    assert vs["difference"] == pytest.approx((sum(spec_ok) - sum(floor_ok)) / len(golds))


@pytest.mark.parametrize(
    ("tfidf", "key", "message"),
    [
        (
            {"word_ngrams": None},
            "eval.tfidf",
            "needs word_ngrams or char_ngrams (or enabled: false to leave it out)",
        ),
        ({"char_ngrams": [5, 2]}, "eval.tfidf.char_ngrams", "is [min, max]; found [5, 2]"),
        (
            {"name": "base zero-shot"},
            "eval.tfidf.name",
            "'base zero-shot' is already a system's name; give it another",
        ),
    ],
)
def test_tfidf_settings_are_checked_with_the_key_to_fix(write_recipe, tfidf, key, message):
    from finetune.recipe import RecipeError

    path = write_recipe(
        {
            "name": "x",
            "task": {"type": "classification", "labels": ["a", "b"]},
            "data": {"source": "rotten-tomatoes"},
            "model": {"base": "smollm2-135m-instruct"},
            "eval": {"tfidf": tfidf},
        }
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert f"{path}: {key}: {message}" in str(err.value)


def test_another_finished_run_is_a_baseline_served_as_its_own_recipe_serves_it(evaluated, tmp_path):
    """A second specialist (another LoRA rank) beside the first: its predictions in the first
    run's report equal those of its own evaluation, on the same items."""
    _, path, run_dir, _, _ = evaluated
    # Evaluated again: the fixture's results are kept.
    run_dir = copy_run(run_dir, tmp_path, keep_eval=False)
    # Memory is measured alone elsewhere: here a process per system would only cost time.
    other_recipe = load_recipe(path, ["lora.r=4", "name=other-rank", "eval.memory=shared"])
    other_dir = train(
        other_recipe, recipe_path=path, overrides=["lora.r=4", "name=other-rank"]
    ).run_dir
    own = json.loads(evaluate(other_recipe, other_dir).read_text())
    combined_recipe = load_recipe(
        path,
        [f'eval.baselines=[{{"name": "rank 4", "run": "{other_dir}"}}]', "eval.memory=shared"],
    )
    combined = json.loads(evaluate(combined_recipe, run_dir).read_text())
    names = [s["name"] for s in combined["systems"]]
    assert names == ["specialist", "rank 4", "tf-idf + logreg"]
    rank4 = combined["systems"][1]
    assert rank4["model"] == f"{own['systems'][0]['model']} (run {other_dir})"
    assert rank4["metrics"] == own["systems"][0]["metrics"]
    trained = json.loads((other_dir / "train_summary.json").read_text())["trainable_parameters"]
    assert rank4["parameters"] == own["systems"][0]["parameters"]
    assert rank4["parameters"]["trainable"] == trained > 0
    mine = [json.loads(x) for x in (run_dir / "eval/predictions.jsonl").open()]
    theirs = [json.loads(x) for x in (other_dir / "eval/predictions.jsonl").open()]
    for a, b in zip(mine, theirs, strict=True):
        assert a["predictions"]["rank 4"] == b["predictions"]["specialist"]


def test_a_run_baseline_trained_on_other_data_is_refused_naming_both_runs(evaluated, tmp_path):
    _, path, run_dir, _, _ = evaluated
    other_dir = copy_run(run_dir, tmp_path, keep_eval=False)
    provenance = json.loads((other_dir / "provenance.json").read_text())
    provenance["data"]["fingerprint"] = "f" * 64
    (other_dir / "provenance.json").write_text(json.dumps(provenance))
    combined = load_recipe(path, [f'eval.baselines=[{{"name": "copy", "run": "{other_dir}"}}]'])
    with pytest.raises(FinetuneError) as err:
        evaluate(combined, run_dir)
    assert str(err.value).startswith(
        f"eval.baselines: run {other_dir} cannot be compared with run {run_dir}: prepared data "
        "ffffffffffff against "
    )


def test_a_run_baseline_takes_no_model_settings(evaluated):
    from finetune.recipe import RecipeError

    _, path, run_dir, _, _ = evaluated
    with pytest.raises(RecipeError) as err:
        load_recipe(path, [f'eval.baselines=[{{"name": "x", "run": "{run_dir}", "shots": 2}}]'])
    assert str(err.value).endswith(
        "eval.baselines.0: a run baseline is served as its own recipe serves it; remove shots"
    )


@pytest.mark.parametrize(
    "system", ["specialist", "base zero-shot", "base 2-shot", "plain model", "tf-idf + logreg"]
)
def test_predict_answers_each_item_as_the_evaluation_did(evaluated, tmp_path, system):
    """`finetune predict` on the evaluated items: the LoRA decoder specialist, the prompted
    base (zero- and few-shot), another decoder and TF-IDF answer as in predictions.jsonl."""
    rows = assert_predicts_as_evaluated(evaluated, tmp_path / "out.jsonl", system)
    # The over-long review is cut to model.max_length as evaluated (TF-IDF reads it whole).
    assert [r["id"] for r in rows if r.get("truncated")] == ([] if "tf-idf" in system else ["long"])


def test_the_model_card_carries_the_comparison_and_parses_back(evaluated, tmp_path):
    from huggingface_hub import ModelCard

    from finetune.deploy.card import write_card, write_run_cards
    from finetune.report.verdict import bottom_line

    recipe, _, run_dir, results, _ = evaluated
    (path,) = write_run_cards(recipe, run_dir)
    assert path == run_dir / "adapter" / "README.md"
    card = ModelCard.load(path)
    data = card.data
    assert (data.library_name, data.base_model_relation) == ("peft", "adapter")
    assert (data.license, data.pipeline_tag, data.base_model) == ("other", "text-generation", None)
    assert [(r.metric_type, r.metric_value, r.dataset_split) for r in data.eval_results] == [
        (name, round(results["systems"][0]["metrics"][name]["value"], 4), "test")
        for name in results["metrics"]
    ]
    text = path.read_text()
    assert bottom_line(results) in text
    for system in results["systems"]:
        assert f"| {system['name']} | {system['model']} |" in text
    assert "[More Information Needed]" not in text and "{{" not in text
    merged = tmp_path / "merged"
    merged.mkdir()
    data = ModelCard.load(write_card(recipe, run_dir, merged, "merged")).data
    assert (data.library_name, data.base_model_relation) == ("transformers", "finetune")


def test_a_card_written_before_evaluation_says_so(tiny_run_copy):
    from huggingface_hub import ModelCard

    from finetune.deploy.card import write_run_cards
    from finetune.recipe import load_recipe

    (path,) = write_run_cards(load_recipe(tiny_run_copy / "recipe.yaml"), tiny_run_copy)
    card = ModelCard.load(path)
    assert card.data.eval_results is None
    assert "Not evaluated yet: run `finetune eval` on the run, then `finetune report`." in card.text
