"""The seq2seq kind: encoder-decoder systems (T5, Flan-T5, BART), the run's specialist or a
baseline, each prompted with the recipe's task.

Loading, prompts, shots and the specialist's serving form are the causal kind's
(`causal_lm.CausalLM`), with `AutoModelForSeq2SeqLM`. The prompt is the encoder's input and the
decoder writes the answer, as training taught it (`prompts.encode_target`). Classification
scores every label's whole target sequence, its end token included, as the decoder's output
after the prompt: the label with the highest log-likelihood is the prediction, so a label that
begins another ("pos", "positive") is told apart by the end token. The encoder runs once per
prompt; its states are repeated for each label. QA and extraction generate greedily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from finetune.models.heads import SEQ2SEQ_LM
from finetune.recipe import Recipe
from finetune.systems.base import Inference
from finetune.systems.causal_lm import CausalLM
from finetune.systems.common import label_predictions, read_answers
from finetune.tasks.prompts import PromptFormat, encode_target
from finetune.tasks.types import LABELS, task_type


class Seq2SeqLM(CausalLM):
    """The `Kind` of every encoder-decoder system."""

    name = "seq2seq"
    head = SEQ2SEQ_LM

    def inference(self, recipe: Recipe, fmt: PromptFormat, tokenizer: Any) -> Inference:
        task = recipe.task
        if task_type(task).request != LABELS:
            return Inference(0, _answering(recipe, tokenizer))
        label_ids = [
            encode_target(tokenizer, label, max_length=recipe.model.max_length)
            for label in task.labels
        ]

        def classify(model, prompts, batch_size, share_prefix, on_batch=None):
            # The prompt is the encoder's: no decoder prefix is shared, so nothing to reuse.
            scores = _in_batches(
                prompts,
                batch_size,
                lambda batch: label_loglikelihoods(
                    model, tokenizer, batch, label_ids, recipe.eval.length_normalize
                ),
                on_batch,
            )
            predictions, details, best = label_predictions(task.labels, scores)
            return predictions, details, [len(label_ids[b]) for b in best]

        return Inference(0, classify)


def _answering(recipe: Recipe, tokenizer: Any) -> Callable[..., Any]:
    def answer(model, prompts, batch_size, share_prefix, on_batch=None):
        outputs = _in_batches(
            prompts,
            batch_size,
            lambda batch: generate(model, tokenizer, batch, recipe.eval.max_new_tokens),
            on_batch,
        )
        predictions, details = read_answers(recipe, [text for text, _ in outputs])
        return predictions, details, [count for _, count in outputs]

    return answer


def _in_batches(
    prompts: Sequence[Sequence[int]],
    batch_size: int,
    run: Callable[[list[Sequence[int]]], list[Any]],
    on_batch: Callable[[int], None] | None,
) -> list[Any]:
    """`run` over batches of similar length (longest first); results in the order given."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[Any] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        for i, result in zip(batch, run([prompts[i] for i in batch]), strict=True):
            results[i] = result
        if on_batch:
            on_batch(len(batch))
    return results


def label_loglikelihoods(
    model: Any,
    tokenizer: Any,
    prompts: list[Sequence[int]],
    label_ids: list[list[int]],
    length_normalize: bool = False,
) -> list[list[float]]:
    """Log-likelihood of each label's target tokens as the decoder's output after each prompt
    (summed, or their mean): `[prompt][label]`."""
    import torch

    n, k = len(prompts), len(label_ids)
    padded = tokenizer.pad({"input_ids": [list(p) for p in prompts]}, return_tensors="pt")
    labels = torch.full((k, max(map(len, label_ids))), -100)
    for j, ids in enumerate(label_ids):
        labels[j, : len(ids)] = torch.tensor(ids)
    with torch.inference_mode():
        mask = padded["attention_mask"].to(model.device)
        states = model.get_encoder()(
            input_ids=padded["input_ids"].to(model.device), attention_mask=mask
        )
        # Row i * k + j: prompt i with label j; the model shifts the labels into its decoder.
        out = model(
            encoder_outputs=(states.last_hidden_state.repeat_interleave(k, dim=0),),
            attention_mask=mask.repeat_interleave(k, dim=0),
            labels=labels.repeat(n, 1).to(model.device),
        )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1).cpu()
    targets = labels.repeat(n, 1)
    keep = targets != -100
    picked = logprobs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * keep
    totals = picked.sum(-1).view(n, k)
    counts = torch.tensor([len(ids) for ids in label_ids], dtype=totals.dtype)
    return (totals / counts if length_normalize else totals).tolist()


def generate(
    model: Any, tokenizer: Any, prompts: list[Sequence[int]], max_new_tokens: int
) -> list[tuple[str, int]]:
    """Greedy answers (text, generated tokens before the end token) for one batch of prompts."""
    import torch

    padded = tokenizer.pad({"input_ids": [list(p) for p in prompts]}, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **{k: v.to(model.device) for k, v in padded.items()},
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
        )
    answers = []
    # The first token is the decoder's start, not generated; a finished answer is padded after
    # its end token (padding before it is the model's own output, as T5's start token is).
    for row in out[:, 1:].tolist():
        cut = next((i for i, t in enumerate(row) if t == tokenizer.eos_token_id), len(row))
        answers.append((tokenizer.decode(row[:cut], skip_special_tokens=True).strip(), cut))
    return answers
