"""A fair prompt for the general systems: an instruction that does not name every label is
warned about (file, key, the labels, the fix), and the untrained systems (zero- and few-shot
baselines, engines, endpoints) get the label list appended as `task.list_labels` says, while a
trained system keeps the prompt it was trained on; the report says which systems saw it."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from conftest import MINIMAL_RECIPE, REPO, finetune_process

from finetune.recipe import load_recipe
from finetune.recipe.schema import TaskConfig
from finetune.report.document import label_list_text
from finetune.systems import endpoint as remote
from finetune.systems.base import SPECIALIST, System
from finetune.systems.causal_lm import system_format
from finetune.systems.registry import sees_label_list
from finetune.tasks.labels import unnamed_labels
from finetune.tasks.prompts import (
    lists_labels,
    prompt_format,
    render_prompt,
    untrained_format,
    untrained_instruction,
)

TOPICS = ["business", "entertainment", "politics", "sport", "tech"]
LISTED = (
    "Answer with one of these labels:\n- business\n- entertainment\n- politics\n- sport\n- tech"
)


def _recipe(write_recipe, instruction: str, list_labels: str | None = None, name="recipe.yaml"):
    task = {"type": "classification", "labels": TOPICS, "instruction": instruction}
    if list_labels is not None:
        task["list_labels"] = list_labels
    return write_recipe({**MINIMAL_RECIPE, "task": task}, name)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- the warning ---------------------------------------------------------------------------------


def test_an_instruction_that_does_not_name_every_label_is_warned_about(write_recipe, caplog):
    path = _recipe(write_recipe, "Classify the category of this Business or politics article.")
    with caplog.at_level(logging.WARNING):
        recipe = load_recipe(path)
    assert recipe.task.list_labels == "auto"  # valid: a warning, not an error
    assert _warnings(caplog) == [
        f"warning: {path}: task.instruction: does not name the label(s) 'entertainment', "
        "'sport', 'tech', so a model shown only the instruction is never told it may answer "
        "them; the untrained baselines get the label list appended (task.list_labels: auto); "
        "the specialist is trained without it. Name every label in the instruction (e.g. end it "
        'with "Answer with one of: " and the labels), or set task.list_labels: always to keep '
        "the appended list without this warning"
    ]


def test_with_list_labels_never_the_warning_says_the_baselines_are_not_shown_them(
    write_recipe, caplog
):
    path = _recipe(write_recipe, "Classify the category.", "never")
    with caplog.at_level(logging.WARNING):
        load_recipe(path)
    assert _warnings(caplog) == [
        f"warning: {path}: task.instruction: does not name the label(s) 'business', "
        "'entertainment', 'politics', 'sport', 'tech', so a model shown only the instruction is "
        "never told it may answer them; with task.list_labels: never, the untrained baselines "
        "are not shown them either. Name every label in the instruction (e.g. end it with "
        '"Answer with one of: " and the labels), or set task.list_labels: auto to append the '
        "label list to their prompts"
    ]


@pytest.mark.parametrize(
    "instruction, list_labels",
    [
        ("Topic? Answer BUSINESS, entertainment, politics, sport or tech.", None),  # any case
        ("Classify the category.", "always"),  # the list is shown: nothing to warn about
    ],
)
def test_no_warning_when_the_labels_are_named_or_always_listed(
    write_recipe, caplog, instruction, list_labels
):
    with caplog.at_level(logging.WARNING):
        load_recipe(_recipe(write_recipe, instruction, list_labels))
    assert _warnings(caplog) == []


def test_a_label_counts_as_named_only_as_a_whole_word():
    task = TaskConfig(type="classification", labels=["ham", "spam"], instruction="Spam? (Champ)")
    assert unnamed_labels(task) == ["ham"]
    qa = TaskConfig(type="qa", instruction="Answer.")
    assert unnamed_labels(qa) == [] and not lists_labels(qa)


def test_the_warning_names_the_file_that_set_the_instruction(write_recipe, caplog):
    base = _recipe(write_recipe, "Classify the category.", name="base.yaml")
    child = write_recipe({"base": "base.yaml", "name": "child"}, "child.yaml")
    with caplog.at_level(logging.WARNING):
        load_recipe(child)
    (warning,) = _warnings(caplog)
    assert warning.startswith(f"warning: {base}: task.instruction: does not name the label(s)")


def test_no_shipped_recipe_warns(caplog):
    with caplog.at_level(logging.WARNING):
        for path in sorted((REPO / "recipes").glob("*.yaml")):
            load_recipe(path)
    assert _warnings(caplog) == []


def test_validate_prints_the_warning_and_still_passes(write_recipe, tmp_path):
    path = _recipe(write_recipe, "Classify the category.")
    done = finetune_process("validate", str(path), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{path}: ok (" in done.stdout
    assert done.stderr.startswith(
        f"warning: {path}: task.instruction: does not name the label(s) 'business', "
    )
    assert done.stderr.count("warning:") == 1


# --- the prompts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "instruction, list_labels, expected",
    [
        ("Topic?", "auto", f"Topic?\n\n{LISTED}"),
        ("Topic: business, entertainment, politics, sport or tech?", "auto", None),
        ("Topic: business, entertainment, politics, sport or tech?", "always", "+"),
        ("Topic?", "never", None),
        ("", "auto", LISTED),
    ],
)
def test_the_instruction_an_untrained_system_reads(instruction, list_labels, expected):
    task = TaskConfig(
        type="classification", labels=TOPICS, instruction=instruction, list_labels=list_labels
    )
    if expected == "+":
        expected = f"{instruction}\n\n{LISTED}"
    assert untrained_instruction(task) == (expected or instruction)


TASK = TaskConfig(type="classification", labels=["fresh", "rotten"], instruction="Sentiment?")
FRESH_OR_ROTTEN = "Answer with one of these labels:\n- fresh\n- rotten"


def test_prompts_with_and_without_the_label_list(chat_tok, plain_tok):
    trained = prompt_format(chat_tok, TASK)
    assert render_prompt(trained, chat_tok, "a fine film") == (
        "<|im_start|>user\nSentiment?\n\na fine film<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt(untrained_format(trained, TASK), chat_tok, "a fine film") == (
        f"<|im_start|>user\nSentiment?\n\n{FRESH_OR_ROTTEN}\n\na fine film<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    plain = prompt_format(plain_tok, TASK)
    assert render_prompt(plain, plain_tok, "a fine film") == (
        "Sentiment?\n\na fine film\n\nAnswer:"
    )
    assert render_prompt(untrained_format(plain, TASK), plain_tok, "a fine film") == (
        f"Sentiment?\n\n{FRESH_OR_ROTTEN}\n\na fine film\n\nAnswer:"
    )
    shot = [("a dull film", "rotten")]
    assert render_prompt(untrained_format(plain, TASK), plain_tok, "a fine film", shot) == (
        f"Sentiment?\n\n{FRESH_OR_ROTTEN}\n\na dull film\n\nAnswer: rotten\n\n"
        f"Sentiment?\n\n{FRESH_OR_ROTTEN}\n\na fine film\n\nAnswer:"
    )


# --- which systems see it ----------------------------------------------------------------------

SYSTEMS = {
    "specialist": (System(SPECIALIST, "specialist", "run"), False),
    "base zero-shot": (System("base zero-shot", "baseline", "base"), True),
    "base 4-shot, plain": (System("base 4-shot", "baseline", "base", 4, "plain"), True),
    "another model": (System("qwen", "baseline", "qwen2.5-1.5b-instruct"), True),
    "engine": (System("gguf", "baseline", "x.gguf", kind="engine"), True),
    "endpoint": (System("api", "baseline", "gpt-4o-mini", 0, "chat", kind="endpoint"), True),
    "another trained run": (System("minilm run", "baseline", "run", kind="run"), False),
    "tf-idf": (System("tf-idf + logreg", "baseline", "tfidf", kind="tfidf"), False),
}


@pytest.mark.parametrize("which", SYSTEMS)
def test_untrained_systems_see_the_label_list_and_trained_ones_do_not(write_recipe, which):
    system, sees = SYSTEMS[which]
    recipe = load_recipe(_recipe(write_recipe, "Topic?"))
    assert sees_label_list(recipe, system) is sees
    never = load_recipe(_recipe(write_recipe, "Topic?", "never", name="never.yaml"))
    assert sees_label_list(never, system) is False


def test_the_specialist_keeps_its_trained_prompt_and_the_base_baseline_gets_the_list(
    write_recipe, chat_tok, plain_tok
):
    recipe = load_recipe(_recipe(write_recipe, "Topic?"))
    run_format = prompt_format(chat_tok, recipe.task)  # as training stored it
    loaded = SimpleNamespace(tokenizer=plain_tok)
    specialist = system_format(SYSTEMS["specialist"][0], loaded, run_format, recipe)
    assert specialist == run_format and specialist.instruction == "Topic?"
    base = system_format(SYSTEMS["base zero-shot"][0], loaded, run_format, recipe)
    assert base.style == "chat" and base.instruction == f"Topic?\n\n{LISTED}"
    other = system_format(SYSTEMS["another model"][0], loaded, run_format, recipe)
    assert other.style == "plain" and other.instruction == f"Topic?\n\n{LISTED}"
    trained_elsewhere = system_format(SYSTEMS["another trained run"][0], loaded, run_format, recipe)
    assert trained_elsewhere.instruction == "Topic?"


def test_an_endpoint_is_asked_with_the_label_list(write_recipe):
    recipe = load_recipe(_recipe(write_recipe, "Topic?"))
    assert remote.chat_messages(recipe, "Shares fell.", [("Goal!", "sport")]) == [
        {"role": "user", "content": f"Topic?\n\n{LISTED}\n\nGoal!"},
        {"role": "assistant", "content": "sport"},
        {"role": "user", "content": f"Topic?\n\n{LISTED}\n\nShares fell."},
    ]
    endpoint = SimpleNamespace(model="m")
    requests = remote._requests(recipe, endpoint, "prompt_logprobs", "Shares fell.", [])
    assert [r.body["prompt"] for r in requests] == [
        f"Topic?\n\n{LISTED}\n\nShares fell.\n\nAnswer: {label}" for label in TOPICS
    ]


# --- the report ----------------------------------------------------------------------------------


def _results(flags: dict[str, bool | None]) -> dict:
    systems = [{"name": n} | ({} if f is None else {"label_list": f}) for n, f in flags.items()]
    return {"task": "classification", "systems": systems}


def test_the_report_says_which_systems_saw_the_label_list():
    flags = {"specialist": False, "base zero-shot": True, "qwen": True, "tf-idf + logreg": False}
    assert label_list_text(_results(flags)) == (
        "Label list (`task.list_labels`): appended to the instruction for base zero-shot, qwen; "
        "not for specialist, tf-idf + logreg (a trained system keeps the prompt it was trained "
        "on; TF-IDF and classifier heads read no prompt)."
    )
    assert label_list_text(_results({"specialist": False, "base zero-shot": False})) == (
        "Label list (`task.list_labels`): appended for no system; every prompt has the recipe's "
        "instruction as written."
    )
    assert label_list_text(_results({"specialist": None})) is None  # an older evaluation
