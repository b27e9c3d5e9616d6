"""Run a causal LM over prompts: label log-likelihoods for classification, greedy answers otherwise.

Classification is constrained: every declared label's tokens are scored after the prompt and
the most likely label is the prediction; free text is never parsed. Work common to all
prompts is done once: the longest token prefix they share (the chat template's system turn,
the instruction, few-shot examples) runs through the model a single time and its key/value
cache is reused by every batch. Each batch then runs only the prompts' remaining tokens,
right-padded, and reads the first label token at each prompt's last position; labels of more
than one token are finished in a second pass over the cached prompts, one row per label.
Batches are sorted by length so padding stays small.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from finetune.tasks.prompts import PromptFormat, answer_ids

# Below this many shared tokens, building and copying a prefix cache costs more than it saves.
MIN_SHARED_PREFIX = 8


def label_token_ids(fmt: PromptFormat, tokenizer: Any, labels: Sequence[str]) -> list[list[int]]:
    """The token ids scored for each label: the label as training writes it after the prompt.

    When one label's tokens begin another's ("pos" and "positive"), the end-of-answer text is
    scored too, or the shorter label could never lose to the longer one's first tokens.
    """
    ids = [answer_ids(fmt, tokenizer, label) for label in labels]
    if any(a != b and b[: len(a)] == a for a in ids for b in ids):
        ids = [answer_ids(fmt, tokenizer, label, with_suffix=True) for label in labels]
    return ids


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving each prompt at least one token of its own."""
    if not prompts:
        return 0
    first = prompts[0]
    limit = min(len(p) for p in prompts) - 1
    length = 0
    while length < limit and all(p[length] == first[length] for p in prompts):
        length += 1
    return length


def supports_prefix_sharing(model: Any) -> bool:
    """Prefix caches are plain per-layer key/value tensors; sliding-window layers keep less."""
    config = model.config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None) or []
    return not getattr(config, "sliding_window", None) and all(
        t == "full_attention" for t in layer_types
    )


@dataclass
class LabelScorer:
    """Log-likelihood of each label after each prompt (summed over tokens, or their mean)."""

    model: Any
    label_ids: list[list[int]]
    pad_id: int
    batch_size: int = 16
    length_normalize: bool = False
    share_prefix: bool = True

    def score(
        self, prompts: Sequence[Sequence[int]], on_batch: Callable[[int], None] | None = None
    ) -> list[list[float]]:
        """Scores `[item][label]` for token-id prompts, in the order given."""
        import torch

        shared = shared_prefix_length(prompts) if self.share_prefix else 0
        if shared < MIN_SHARED_PREFIX or not supports_prefix_sharing(self.model):
            shared = 0
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        scores: list[list[float]] = [[] for _ in prompts]
        with torch.inference_mode():
            prefix = self._run_prefix(prompts[0][:shared]) if shared else None
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                rows = self._score_batch([prompts[i][shared:] for i in batch], prefix, shared)
                for i, row in zip(batch, rows, strict=True):
                    scores[i] = row
                if on_batch:
                    on_batch(len(batch))
        return scores

    def _run_prefix(self, prefix: Sequence[int]) -> list[tuple[Any, Any]]:
        import torch

        out = self.model(input_ids=torch.tensor([list(prefix)]), use_cache=True, logits_to_keep=1)
        return [(layer[0], layer[1]) for layer in out.cache]

    def _score_batch(
        self, suffixes: list[Sequence[int]], prefix: list[tuple[Any, Any]] | None, shared: int
    ) -> list[list[float]]:
        import torch

        size, width = len(suffixes), max(len(s) for s in suffixes)
        lengths = torch.tensor([len(s) for s in suffixes])
        input_ids = torch.full((size, width), self.pad_id)
        suffix_mask = torch.zeros((size, width), dtype=torch.long)
        for row, suffix in enumerate(suffixes):
            input_ids[row, : len(suffix)] = torch.tensor(list(suffix))
            suffix_mask[row, : len(suffix)] = 1
        mask = torch.cat([torch.ones((size, shared), dtype=torch.long), suffix_mask], dim=1)
        multi_token = max(len(ids) for ids in self.label_ids) > 1
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=(shared + torch.arange(width)).expand(size, width),
            cache=expanded_cache(prefix, size) if prefix else None,
            use_cache=multi_token,
            logits_to_keep=(lengths - 1)[:, None],
        )
        first = torch.log_softmax(out.logits[:, 0].float(), dim=-1)  # (size, vocab)
        totals = torch.stack([first[:, ids[0]] for ids in self.label_ids], dim=1)
        if multi_token:
            totals = totals + self._continuations(out.cache, mask, lengths + shared)
        counts = torch.tensor([len(ids) for ids in self.label_ids], dtype=totals.dtype)
        return (totals / counts if self.length_normalize else totals).tolist()

    def _continuations(self, cache: Any, mask: Any, ends: Any) -> Any:
        """Log-probabilities of every label's tokens after the first, one cached row per label."""
        import torch

        n_labels, size = len(self.label_ids), mask.shape[0]
        width = max(len(ids) for ids in self.label_ids) - 1
        cache.batch_repeat_interleave(n_labels)
        inputs = torch.full((n_labels, width), self.pad_id)
        targets = torch.zeros((n_labels, width), dtype=torch.long)
        keep = torch.zeros((n_labels, width))
        for j, ids in enumerate(self.label_ids):
            rest = len(ids) - 1
            inputs[j, :rest] = torch.tensor(ids[:-1])
            targets[j, :rest] = torch.tensor(ids[1:])
            keep[j, :rest] = 1
        out = self.model(
            input_ids=inputs.repeat(size, 1),
            # Pads of shorter prompts stay masked in the middle; positions continue each prompt.
            attention_mask=torch.cat(
                [mask.repeat_interleave(n_labels, dim=0), keep.long().repeat(size, 1)], dim=1
            ),
            position_ids=ends.repeat_interleave(n_labels)[:, None] + torch.arange(width),
            cache=cache,
            use_cache=False,
        )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)
        picked = logprobs.gather(-1, targets.repeat(size, 1)[..., None]).squeeze(-1)
        return (picked * keep.repeat(size, 1)).sum(-1).view(size, n_labels)


def expanded_cache(prefix: list[tuple[Any, Any]], size: int) -> Any:
    from transformers import DynamicCache

    # expand() makes views; the cache's first update concatenates, so the prefix stays intact.
    return DynamicCache(
        [(k.expand(size, -1, -1, -1), v.expand(size, -1, -1, -1)) for k, v in prefix]
    )


def generate_answers(
    model: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> list[tuple[str, int]]:
    """Greedy answers (text, generated token count) for token-id prompts, in the order given."""
    import torch

    stop = stop_ids(fmt, tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers: list[tuple[str, int]] = [("", 0)] * len(prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):  # left padding: every prompt ends at the last column
                input_ids[row, width - len(prompts[i]) :] = torch.tensor(list(prompts[i]))
                mask[row, width - len(prompts[i]) :] = 1
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=sorted(stop),
                pad_token_id=pad,
            )
            for row, i in enumerate(batch):
                answers[i] = answer_of(fmt, tokenizer, out[row, width:].tolist(), stop)
            if on_batch:
                on_batch(len(batch))
    return answers


def stop_ids(fmt: PromptFormat, tokenizer: Any) -> set[int]:
    """Tokens that end an answer: the end of text, and the first of the format's answer suffix."""
    stop = {tokenizer.eos_token_id} - {None}
    suffix_ids = answer_ids(fmt, tokenizer, fmt.answer_suffix.strip()) if fmt.answer_suffix else []
    if suffix_ids:
        stop.add(suffix_ids[0])
    return stop


def answer_of(
    fmt: PromptFormat, tokenizer: Any, new: Sequence[int], stop: set[int]
) -> tuple[str, int]:
    """The answer text in generated tokens `new`, cut at the first stop token, and its length."""
    cut = next((k for k, t in enumerate(new) if t in stop), len(new))
    text = tokenizer.decode(list(new[:cut]), skip_special_tokens=True)
    return text.removeprefix(fmt.answer_prefix).strip(), cut
