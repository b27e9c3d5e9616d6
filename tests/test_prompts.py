"""The shared prompt format: chat template or plain template, answer masks, truncation, storage."""

from __future__ import annotations

import pytest

from finetune.errors import FinetuneError
from finetune.recipe.schema import TaskConfig
from finetune.tasks.prompts import (
    PromptFormat,
    completion_text,
    encode,
    prompt_format,
    render_prompt,
    target_text,
)

TASK = TaskConfig(type="classification", labels=["fresh", "rotten"], instruction="Sentiment?")


def test_chat_format_puts_instruction_and_input_in_the_user_turn(chat_tok):
    fmt = prompt_format(chat_tok, TASK)
    assert fmt.style == "chat"
    assert render_prompt(fmt, chat_tok, "a fine film") == (
        "<|im_start|>user\nSentiment?\n\na fine film<|im_end|>\n<|im_start|>assistant\n"
    )
    # What the template writes after an assistant answer is what the model learns to stop on.
    assert (fmt.answer_prefix, fmt.answer_suffix) == ("", "<|im_end|>\n")


def test_plain_format_uses_the_recipe_template(plain_tok):
    fmt = prompt_format(plain_tok, TASK)
    assert fmt.style == "plain"
    assert render_prompt(fmt, plain_tok, "a fine film") == "Sentiment?\n\na fine film\n\nAnswer:"
    assert completion_text(fmt, "fresh") == " fresh<|im_end|>"


def test_chat_style_without_a_chat_template_is_an_error(plain_tok):
    with pytest.raises(FinetuneError, match="tokenizer has no chat template"):
        prompt_format(plain_tok, TASK, style="chat")


@pytest.mark.parametrize("tok_name", ["chat_tok", "plain_tok"])
def test_completion_mask_covers_exactly_the_answer_tokens(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    fmt = prompt_format(tok, TASK)
    enc = encode(fmt, tok, "a fine film", "rotten", max_length=128)
    answer_ids = [i for i, m in zip(enc.input_ids, enc.completion_mask, strict=True) if m]
    prompt_ids = [i for i, m in zip(enc.input_ids, enc.completion_mask, strict=True) if not m]
    assert tok.decode(answer_ids) == completion_text(fmt, "rotten")
    assert tok.decode(prompt_ids) == render_prompt(fmt, tok, "a fine film")
    assert enc.completion_mask == sorted(enc.completion_mask)  # prompt first, then answer
    assert not enc.truncated


def test_shots_come_before_the_input_as_earlier_turns(chat_tok):
    fmt = prompt_format(chat_tok, TASK)
    text = render_prompt(
        fmt, chat_tok, "new review", shots=[("good one", "fresh"), ("bad one", "rotten")]
    )
    assert (
        text.index("good one")
        < text.index("fresh")
        < text.index("bad one")
        < text.index("new review")
    )
    assert text.count("<|im_start|>assistant\n") == 3


@pytest.mark.parametrize(
    ("side", "kept", "dropped"), [("left", "END", "START"), ("right", "START", "END")]
)
def test_truncation_cuts_the_input_and_keeps_instruction_and_answer(chat_tok, side, kept, dropped):
    fmt = prompt_format(chat_tok, TASK)
    text = "START " + "film " * 200 + "END"
    enc = encode(fmt, chat_tok, text, "fresh", max_length=64, truncation=side)
    decoded = chat_tok.decode(enc.input_ids)
    assert len(enc.input_ids) <= 64
    assert enc.truncated
    assert kept in decoded and dropped not in decoded
    assert "Sentiment?" in decoded
    assert decoded.endswith("<|im_start|>assistant\nfresh<|im_end|>\n")


def test_max_length_below_the_template_is_an_error(chat_tok):
    fmt = prompt_format(chat_tok, TASK)
    with pytest.raises(
        FinetuneError, match=r"model.max_length: 5 tokens do not fit the prompt template"
    ):
        encode(fmt, chat_tok, "a fine film", "fresh", max_length=5)


def test_format_round_trips_through_the_run_directory(chat_tok, tmp_path):
    fmt = prompt_format(chat_tok, TASK)
    fmt.save(tmp_path)
    assert PromptFormat.load(tmp_path) == fmt
    with pytest.raises(FinetuneError, match=r"no prompt\.json"):
        PromptFormat.load(tmp_path / "missing")


def test_target_text_per_task():
    assert target_text("classification", {"label": "fresh"}) == "fresh"
    assert target_text("qa", {"answer": "Yes."}) == "Yes."
    entities = [{"text": "Paris", "type": "LOC"}]
    assert target_text("extraction", {"entities": entities}) == '[{"text": "Paris", "type": "LOC"}]'
