"""Label scoring on the engine (a general model on llama.cpp), before and after each label's
later tokens were scored in one decode (`Served.label_tail` in `finetune.systems.engine`).

Before: every label token after the first in its own call of two tokens (`next_logprobs`).
After: the engine's classifier as it is, one decode per label of two or more tokens. Both
score the same prompts, one after the other in this process, with the evaluation's prefix
reuse; items/s of each, and the largest gap between their label log-likelihoods. On three
tasks: two-label sentiment (RT reviews, labels of one and two tokens: the same runs, so the
same numbers), eight long labels (8-12 tokens) on the same short reviews, and the eight long
labels on BBC News paragraphs, where the prompt dominates.

    python scripts/bench/engine_labels.py [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from common import RECIPE, ROOT

MODEL = "qwen2.5-coder-1.5b-instruct"
BBC_RECIPE = ROOT / "recipes" / "bbc-topics-smollm2-lora.yaml"
LONG_LABELS = [
    "business news about companies, markets and the economy",
    "entertainment news about films, music, television and celebrities",
    "political news about the government, parliament and elections",
    "sports news about football, rugby, tennis, cricket and athletics",
    "technology news about computers, phones, games and the internet",
    "health news about medicine, hospitals and scientific research",
    "crime news about courts, trials and the police",
    "travel and lifestyle features about food, holidays and fashion",
]
INSTRUCTION = {
    "sentiment": "Is this movie review fresh (positive) or rotten (negative)?",
    "long labels, reviews": "Which kind of news is this text? Answer with its description.",
    "long labels, articles": "Which kind of news is this article? Answer with its description.",
}


def label_scoring(bench: Any) -> dict[str, Any]:
    """Both tasks, before and after, on Qwen2.5-1.5B's GGUF as shipped."""
    from llama_cpp import Llama

    from finetune.models import gguf_as_shipped
    from finetune.systems.engine import Served, _tokenizer

    path = gguf_as_shipped(MODEL, key="bench")
    served = Served(Llama(str(path), n_ctx=4096, n_batch=512, verbose=False), "bench")
    tokenizer = _tokenizer(path)
    reviews = _texts(RECIPE, bench.scaled(32, 16))
    tasks = {
        "sentiment": (reviews, ["fresh", "rotten"]),
        "long labels, reviews": (reviews, LONG_LABELS),
        "long labels, articles": (_texts(BBC_RECIPE, bench.scaled(12, 6)), LONG_LABELS),
    }
    return {
        name: _task(served, tokenizer, name, texts, labels)
        for name, (texts, labels) in tasks.items()
    }


def _texts(recipe_path: Path, n: int) -> list[str]:
    from finetune.data import load_split, prepare
    from finetune.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    prepare(recipe)
    return [item["text"] for item in load_split(recipe, "test")[:n]]


def _task(served: Any, tokenizer: Any, name: str, texts: list[str], labels: list[str]) -> dict:
    from finetune.models.scoring import label_token_ids
    from finetune.systems.engine import Engine
    from finetune.tasks.prompts import encode, prompt_format

    task = SimpleNamespace(instruction=INSTRUCTION[name], template="{text}")
    fmt = prompt_format(tokenizer, task, "chat")
    prompts = [list(encode(fmt, tokenizer, t, None, max_length=512).input_ids) for t in texts]
    label_ids = label_token_ids(fmt, tokenizer, labels)
    _token_by_token(served, prompts[0], label_ids, False)  # warm-up: the first call allocates
    served.llm.reset()  # each way starts from an empty cache and reuses prefixes alike
    before, before_s = _timed(
        lambda: [_token_by_token(served, p, label_ids, True) for p in prompts]
    )
    recipe = SimpleNamespace(
        task=SimpleNamespace(type="classification", labels=labels),
        eval=SimpleNamespace(length_normalize=False, max_new_tokens=12),
    )
    infer = Engine().inference(recipe, fmt, tokenizer)
    served.llm.reset()
    details, after_s = _timed(lambda: infer.run(served, prompts, 16, True)[1])
    after = [[d["label_logprobs"][label] for label in labels] for d in details]
    before = [[sum(tokens) for tokens in row] for row in before]
    gaps = [
        abs(a - b)
        for ra, rb in zip(after, before, strict=True)
        for a, b in zip(ra, rb, strict=True)
    ]
    return {
        "items": len(prompts),
        "labels": len(labels),
        "label_tokens": [len(ids) for ids in label_ids],
        "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts),
        "before_items_per_s": len(prompts) / before_s,
        "after_items_per_s": len(prompts) / after_s,
        "speedup": before_s / after_s,
        "max_abs_logprob_gap": max(gaps),
        "same_labels": sum(
            a.index(max(a)) == b.index(max(b)) for a, b in zip(after, before, strict=True)
        )
        / len(prompts),
    }


def _timed(score) -> tuple[Any, float]:
    start = time.perf_counter()
    out = score()
    return out, time.perf_counter() - start


def _token_by_token(served: Any, prompt: list[int], label_ids: list[list[int]], reuse: bool):
    """The engine's label scoring before `engine_labels`, as it was."""
    first = served.next_logprobs(prompt, reuse=reuse, run=2)
    return [
        [float(first[ids[0]])]
        + [float(served.next_logprobs(prompt + ids[:k], run=2)[ids[k]]) for k in range(1, len(ids))]
        for ids in label_ids
    ]


if __name__ == "__main__":
    import json

    quick = "--quick" in sys.argv
    print(
        json.dumps(
            label_scoring(SimpleNamespace(scaled=lambda full, q: q if quick else full)), indent=2
        )
    )
