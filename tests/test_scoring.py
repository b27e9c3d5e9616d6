"""Label scoring and generation against a direct log-probability computation with the model."""

from __future__ import annotations

import pytest
import torch

from finetune.models.scoring import (
    LabelScorer,
    generate_answers,
    label_token_ids,
    shared_prefix_length,
)
from finetune.tasks.prompts import PromptFormat, encode, prompt_format

LABELS = ["fresh", "rotten", "so so"]
TEXTS = [
    "a delight from start to end",
    "dull",
    "the team won the match in extra time and the crowd sang",
    "shares rose",
    "a new phone with a faster chip was announced today, and it is fresh",
]


class Task:
    instruction = "Is this review fresh or rotten?"
    template = "{instruction}\n\n{input}\n\nAnswer:"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def direct_logprob(model, prompt: list[int], label: list[int]) -> float:
    """Sum of log p(label token | everything before it), from one plain forward pass."""
    ids = torch.tensor([prompt + label])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logprobs[len(prompt) - 1 + k, tok].item() for k, tok in enumerate(label))


def prompts_for(fmt: PromptFormat, tokenizer) -> list[list[int]]:
    shots = [("dull and lifeless", "rotten"), ("a delight", "fresh")]
    return [encode(fmt, tokenizer, t, None, max_length=200, shots=shots).input_ids for t in TEXTS]


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_label_scores_equal_direct_log_probabilities(tiny, share_prefix, batch_size):
    model, tokenizer = tiny
    fmt = prompt_format(tokenizer, Task())
    prompts = prompts_for(fmt, tokenizer)
    label_ids = label_token_ids(fmt, tokenizer, LABELS)
    assert max(len(ids) for ids in label_ids) > 1, "the test needs a multi-token label"
    assert shared_prefix_length(prompts) >= 8, "the test needs a shared prefix to cache"
    scorer = LabelScorer(
        model, label_ids, tokenizer.pad_token_id, batch_size=batch_size, share_prefix=share_prefix
    )
    got = scorer.score(prompts)
    want = [[direct_logprob(model, p, ids) for ids in label_ids] for p in prompts]
    assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-4), (got, want)


def test_length_normalization_divides_by_label_tokens(tiny):
    model, tokenizer = tiny
    fmt = prompt_format(tokenizer, Task(), style="plain")
    prompts = prompts_for(fmt, tokenizer)
    label_ids = label_token_ids(fmt, tokenizer, LABELS)
    summed = LabelScorer(model, label_ids, tokenizer.pad_token_id).score(prompts)
    mean = LabelScorer(model, label_ids, tokenizer.pad_token_id, length_normalize=True).score(
        prompts
    )
    for row_sum, row_mean in zip(summed, mean, strict=True):
        for total, avg, ids in zip(row_sum, row_mean, label_ids, strict=True):
            assert avg == pytest.approx(total / len(ids), abs=1e-5)


def test_a_label_that_starts_another_is_scored_with_its_end_text(tiny):
    _, tokenizer = tiny
    fmt = prompt_format(tokenizer, Task())
    plain = label_token_ids(fmt, tokenizer, ["fresh", "rotten"])
    nested = label_token_ids(fmt, tokenizer, ["fresh", "fresh rotten"])
    end = tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert plain[0] == tokenizer("fresh", add_special_tokens=False)["input_ids"]
    assert nested[0] == plain[0] + end


def test_shared_prefix_leaves_each_prompt_a_token():
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix_length([[9], [1]]) == 0


def test_generation_matches_greedy_decoding_one_by_one(tiny):
    model, tokenizer = tiny
    fmt = prompt_format(tokenizer, Task())
    prompts = prompts_for(fmt, tokenizer)
    batched = generate_answers(model, tokenizer, fmt, prompts, max_new_tokens=6, batch_size=4)
    for prompt, (text, count) in zip(prompts, batched, strict=True):
        ids = list(prompt)
        for _ in range(6):  # greedy decoding written out, stopping at the end-of-turn token
            with torch.no_grad():
                nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if nxt in (tokenizer.eos_token_id,):
                break
            ids.append(nxt)
        new = ids[len(prompt) :]
        assert count == len(new)
        assert text == tokenizer.decode(new, skip_special_tokens=True).strip()
