"""Prompt formatting shared by training and evaluation.

A `PromptFormat` fixes how an example becomes tokens: the tokenizer's chat template when
it has one (the instruction and input as the user turn, the answer as the assistant turn),
else the recipe's plain template. Training stores the format in the run directory
(`prompt.json`) and evaluation loads it from there, so both see identical prompts.

Prompt and answer are tokenized separately and concatenated, so the answer's tokens are
the same whether they are trained on, scored or generated. An encoder-decoder reads the
prompt alone and its decoder writes the answer apart (`encode_target`). A sequence classifier
reads no prompt: its format is `text` (the input alone, `encode_text`), stored the same way.

A system that was not trained on the task (a zero- or few-shot baseline) may see the label
list appended to the instruction (`task.list_labels`, `untrained_format`): it has no other way
to learn which answers exist. The specialist's stored format never has it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from finetune.errors import FinetuneError
from finetune.files import write_json
from finetune.tasks.labels import unnamed_labels
from finetune.tasks.types import TASK_TYPES

PROMPT_FILE = "prompt.json"
_PROBE_ANSWER = "ANSWER"
LABEL_LIST_HEADING = "Answer with one of these labels:"


@dataclass(frozen=True)
class PromptFormat:
    """Everything needed to rebuild a prompt exactly: style, texts and the chat template itself.

    Style `text` is a sequence classifier's: the input text alone; its instruction and template
    are the recipe's, kept for the checks that compare a run with its recipe."""

    style: Literal["chat", "plain", "text"]
    instruction: str
    template: str
    chat_template: str | None
    answer_prefix: str  # text between the prompt and the answer (" " after "Answer:")
    answer_suffix: (
        str  # text after the answer: the end-of-turn or EOS text the model learns to stop on
    )

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / PROMPT_FILE
        write_json(path, asdict(self))
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> PromptFormat:
        path = Path(run_dir) / PROMPT_FILE
        if not path.is_file():
            raise FinetuneError(f"{run_dir}: no {PROMPT_FILE}; is this a finished training run?")
        return cls(**json.loads(path.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    completion_mask: list[int]  # 1 on answer tokens, 0 on prompt tokens
    truncated: bool = False
    prompt_length: int = field(default=0)


def prompt_format(tokenizer: Any, task: Any, style: str = "auto") -> PromptFormat:
    """The format for this tokenizer and task (`task` is the recipe's TaskConfig).

    `style` is `chat`, `plain` or `auto` (chat when the tokenizer has a chat template).
    """
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if style == "chat" and not has_chat:
        raise FinetuneError(
            "prompt_style: chat was asked for, but the tokenizer has no chat template; use prompt_style: plain or auto"
        )
    if style == "chat" or (style == "auto" and has_chat):
        fmt = PromptFormat("chat", task.instruction, task.template, tokenizer.chat_template, "", "")
        prompt = render_prompt(fmt, tokenizer, "x")
        full = _render_chat(fmt, tokenizer, "x", answer=_PROBE_ANSWER)
        prefix, _, suffix = full[len(prompt) :].partition(_PROBE_ANSWER)
        if not full.startswith(prompt) or _PROBE_ANSWER not in full[len(prompt) :]:
            # A template that renders the prompt differently once an answer follows:
            # train on the answer plus EOS after the generation prompt.
            prefix, suffix = "", tokenizer.eos_token or ""
        return PromptFormat(
            "chat", task.instruction, task.template, tokenizer.chat_template, prefix, suffix
        )
    return PromptFormat(
        "plain", task.instruction, task.template, None, " ", tokenizer.eos_token or ""
    )


def text_format(task: Any) -> PromptFormat:
    """The format of a sequence classifier, which reads the input text alone."""
    return PromptFormat("text", task.instruction, task.template, None, "", "")


def lists_labels(task: Any) -> bool:
    """Whether untrained systems see the label list (`task.list_labels`; classification only)."""
    if task.type != "classification" or task.list_labels == "never":
        return False
    return task.list_labels == "always" or bool(unnamed_labels(task))


def untrained_instruction(task: Any) -> str:
    """The instruction an untrained system reads: the recipe's, then the label list one label a
    line when `lists_labels`."""
    if not lists_labels(task):
        return task.instruction
    listed = "\n".join(f"- {label}" for label in task.labels)
    return "\n\n".join(filter(None, [task.instruction, f"{LABEL_LIST_HEADING}\n{listed}"]))


def untrained_format(fmt: PromptFormat, task: Any) -> PromptFormat:
    """`fmt` with the instruction an untrained system reads (`untrained_instruction`)."""
    return dataclasses.replace(fmt, instruction=untrained_instruction(task))


def encode_text(tokenizer: Any, text: str, *, max_length: int, truncation: str = "left") -> Encoded:
    """The input text alone as a sequence classifier reads it, with the tokenizer's special tokens
    (`[CLS] ... [SEP]` for BERT), cut to `max_length` tokens at the `truncation` end."""
    whole = len(_ids(tokenizer, text)) + tokenizer.num_special_tokens_to_add()
    side, tokenizer.truncation_side = tokenizer.truncation_side, truncation
    try:
        ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    finally:
        tokenizer.truncation_side = side
    return Encoded(ids, [0] * len(ids), truncated=whole > max_length, prompt_length=len(ids))


def encode_target(tokenizer: Any, answer: str, *, max_length: int) -> list[int]:
    """An answer as an encoder-decoder's decoder writes it: the tokenizer's target encoding with
    its special tokens (T5's `... </s>`, BART's `<s> ... </s>`), cut to `max_length` tokens with
    the end token kept. Labels, scored labels and generated answers all take this form."""
    return tokenizer(text_target=answer, truncation=True, max_length=max_length)["input_ids"]


def render_prompt(
    fmt: PromptFormat, tokenizer: Any, text: str, shots: list[tuple[str, str]] = ()
) -> str:
    """The prompt text for one input, with optional (input, answer) in-context examples first."""
    if fmt.style == "chat":
        return _render_chat(fmt, tokenizer, text, shots=shots)
    blocks = [
        _plain_block(fmt, shot_text) + fmt.answer_prefix + answer for shot_text, answer in shots
    ]
    return "\n\n".join([*blocks, _plain_block(fmt, text)])


def completion_text(fmt: PromptFormat, answer: str) -> str:
    return fmt.answer_prefix + answer + fmt.answer_suffix


def answer_ids(
    fmt: PromptFormat, tokenizer: Any, answer: str, *, with_suffix: bool = False
) -> list[int]:
    """Token ids of an answer as training concatenates them after the prompt (optionally with its end text)."""
    text = completion_text(fmt, answer) if with_suffix else fmt.answer_prefix + answer
    return _ids(tokenizer, text)


def target_text(task_type: str, example: dict[str, Any]) -> str:
    """The answer the model should write for an example (`TaskType.target_text`)."""
    return TASK_TYPES[task_type].target_text(example)


def encode(
    fmt: PromptFormat,
    tokenizer: Any,
    text: str,
    answer: str | None,
    *,
    max_length: int,
    truncation: str = "left",
    shots: list[tuple[str, str]] = (),
    reserve: int = 0,
) -> Encoded:
    """Token ids of prompt (+ answer) within `max_length`, cutting the input text when too long.

    The input is cut (`left`: its start is dropped, `right`: its end), never the
    instruction, the template or the answer, so a truncated example still asks the same
    question. `reserve` keeps room for tokens generated later (prompt-only encoding).
    """
    completion_ids = _ids(tokenizer, completion_text(fmt, answer)) if answer is not None else []
    overhead = len(_prompt_ids(fmt, tokenizer, "", shots))
    room = max_length - overhead - reserve
    if room - len(completion_ids) < 1 and completion_ids:
        # An answer longer than the whole budget: keep its start and at least a little input.
        completion_ids = completion_ids[: max(room - min(16, room // 2), 1)]
    room -= len(completion_ids)
    if room < 1:
        raise FinetuneError(
            f"model.max_length: {max_length} tokens do not fit the prompt template and instruction ({overhead} tokens); raise model.max_length"
        )
    text_ids = _ids(tokenizer, text)
    truncated = len(text_ids) > room
    prompt_ids = _prompt_ids(fmt, tokenizer, text, shots)
    while len(prompt_ids) + len(completion_ids) > max_length:
        # Re-tokenizing a cut text can merge tokens differently, so trim until it fits.
        text_ids = text_ids[-room:] if truncation == "left" else text_ids[:room]
        text = tokenizer.decode(text_ids)
        prompt_ids = _prompt_ids(fmt, tokenizer, text, shots)
        room -= 1
        truncated = True
    return Encoded(
        input_ids=prompt_ids + completion_ids,
        completion_mask=[0] * len(prompt_ids) + [1] * len(completion_ids),
        truncated=truncated,
        prompt_length=len(prompt_ids),
    )


def _render_chat(
    fmt: PromptFormat,
    tokenizer: Any,
    text: str,
    *,
    shots: list[tuple[str, str]] = (),
    answer: str | None = None,
) -> str:
    messages = []
    for shot_text, shot_answer in shots:
        messages += [_user(fmt, shot_text), {"role": "assistant", "content": shot_answer}]
    messages.append(_user(fmt, text))
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return tokenizer.apply_chat_template(
        messages,
        chat_template=fmt.chat_template,
        tokenize=False,
        add_generation_prompt=answer is None,
    )


def _user(fmt: PromptFormat, text: str) -> dict[str, str]:
    content = f"{fmt.instruction}\n\n{text}" if fmt.instruction else text
    return {"role": "user", "content": content}


def _plain_block(fmt: PromptFormat, text: str) -> str:
    return fmt.template.format(instruction=fmt.instruction, input=text).strip()


def _prompt_ids(
    fmt: PromptFormat, tokenizer: Any, text: str, shots: list[tuple[str, str]]
) -> list[int]:
    prompt = render_prompt(fmt, tokenizer, text, shots)
    # A chat template writes its own special tokens (BOS included); a plain prompt gets the tokenizer's.
    return tokenizer(prompt, add_special_tokens=fmt.style == "plain")["input_ids"]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
