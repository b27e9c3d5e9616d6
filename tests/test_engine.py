"""The engine kind on llama.cpp, in process, with SmolLM2-135M's GGUF as shipped (Q4_1, from
its PyPI wheel): label log-likelihoods equal llama.cpp's own all-positions logits for the same
tokens, and are close to the de-quantized model's in transformers; greedy answers equal
llama-cpp-python's own greedy completion; an evaluation puts it beside the specialist with its
memory, size and serving form."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import evaluated_run

from finetune.errors import FinetuneError

pytestmark = pytest.mark.slow
REGISTRY_NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def served(gguf):
    from llama_cpp import Llama

    from finetune.systems.engine import Served

    return Served(
        Llama(str(gguf), n_ctx=512, n_threads=2, verbose=False), "eval.baselines.0.engine"
    )


@pytest.fixture(scope="module")
def tokenizer(gguf):
    from finetune.systems.engine import _tokenizer

    return _tokenizer(gguf)


def _all_positions(gguf, tokens: list[int]) -> np.ndarray:
    """log_softmax of llama.cpp's logits at every position of `tokens`, run in one batch."""
    from llama_cpp import Llama

    llm = Llama(str(gguf), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    llm.eval(tokens)
    logits = np.asarray(llm.scores[: len(tokens)], dtype=np.float64)
    llm.close()
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _recipe(task_type: str = "classification", labels=("positive", "negative"), **eval_):
    task = SimpleNamespace(type=task_type, labels=list(labels), instruction="Sentiment?")
    defaults = {"length_normalize": False, "max_new_tokens": 12}
    return SimpleNamespace(task=task, eval=SimpleNamespace(**{**defaults, **eval_}))


def _prompts(tokenizer, texts):
    from finetune.tasks.prompts import encode, prompt_format

    fmt = prompt_format(
        tokenizer, SimpleNamespace(instruction="Sentiment?", template="{text}"), "chat"
    )
    return fmt, [encode(fmt, tokenizer, t, None, max_length=256).input_ids for t in texts]


TEXTS = [
    "a charming, funny film",
    "dull and far too long",
    "an ambitious mess",
    "the best of the year",
]


def test_label_logprobs_equal_llama_cpps_own_logits_at_every_position(gguf, served, tokenizer):
    from finetune.models.scoring import label_token_ids
    from finetune.systems.engine import Engine

    # "very positive" is several tokens: scored one token at a time after the prompt.
    recipe = _recipe(labels=("positive", "negative", "very positive"))
    fmt, prompts = _prompts(tokenizer, TEXTS)
    label_ids = label_token_ids(fmt, tokenizer, recipe.task.labels)
    assert max(len(ids) for ids in label_ids) > 1
    infer = Engine().inference(recipe, fmt, tokenizer)
    predictions, details, _ = infer.run(served, prompts, 4, True)
    again = infer.run(served, prompts, 1, False)[1]  # no cache kept between prompts
    for prompt, detail, fresh in zip(prompts, details, again, strict=True):
        for label, ids in zip(recipe.task.labels, label_ids, strict=True):
            logprobs = _all_positions(gguf, [*prompt, *ids])
            expected = sum(logprobs[len(prompt) - 1 + k, t] for k, t in enumerate(ids))
            assert detail["label_logprobs"][label] == pytest.approx(expected, abs=1e-4)
            assert fresh["label_logprobs"][label] == pytest.approx(expected, abs=1e-4)
    assert predictions == [max(d["label_logprobs"], key=d["label_logprobs"].get) for d in details]


def test_label_logprobs_are_close_to_the_dequantized_model_in_transformers(served, tokenizer):
    """Same weights, same token ids: the difference is llama.cpp's quantized arithmetic (Q8
    activations against Q4 weights) against float32 on de-quantized weights."""
    import torch

    from finetune.models import load_language_model, resolve
    from finetune.models.scoring import LabelScorer, label_token_ids
    from finetune.systems.engine import Engine

    recipe = _recipe()
    fmt, prompts = _prompts(tokenizer, TEXTS)
    label_ids = label_token_ids(fmt, tokenizer, recipe.task.labels)
    model = load_language_model(resolve(REGISTRY_NAME), dtype=torch.float32).eval()
    reference = LabelScorer(model, label_ids, tokenizer.pad_token_id).score(prompts)
    details = Engine().inference(recipe, fmt, tokenizer).run(served, prompts, 4, True)[1]
    gaps = [
        abs(d["label_logprobs"][label] - ref[j])
        for d, ref in zip(details, reference, strict=True)
        for j, label in enumerate(recipe.task.labels)
    ]
    # Measured here (AMD EPYC, AVX2): mean 0.06, max 0.19 nats.
    assert np.mean(gaps) < 0.15 and max(gaps) < 0.4


def test_greedy_answers_equal_llama_cpp_pythons_own_greedy_completion(gguf, served, tokenizer):
    from llama_cpp import Llama

    from finetune.systems.engine import Engine

    recipe = _recipe("qa", labels=())
    fmt, prompts = _prompts(tokenizer, ["What is the capital of France?", "Name a colour."])
    answers, _, counts = Engine().inference(recipe, fmt, tokenizer).run(served, prompts, 2, True)
    own = Llama(str(gguf), n_ctx=512, n_threads=2, verbose=False)
    for prompt, answer, count in zip(prompts, answers, counts, strict=True):
        done = own.create_completion(list(prompt), max_tokens=12, temperature=0.0)
        assert answer == done["choices"][0]["text"].strip()
        assert answer and 0 < count <= 12
    own.close()


def test_a_prompt_longer_than_the_context_names_the_key(served):
    with pytest.raises(FinetuneError) as err:
        served.next_logprobs(list(range(600)))
    assert str(err.value) == (
        "eval.baselines.0.engine.context: a prompt of 600 tokens with its answer does not fit "
        "the engine's context of 512; raise it, or lower model.max_length"
    )


def test_an_engine_baseline_is_evaluated_beside_the_specialist_and_its_transformers_twin(
    tiny_recipe, tiny_run_copy, gguf
):
    from finetune.report import write_report

    path = tiny_recipe(
        eval={
            "baselines": [
                {"name": "engine", "engine": {"model": str(gguf), "context": 512}},
                {"name": "transformers", "model": REGISTRY_NAME},
            ],
            "tfidf": {"enabled": False},
            "latency_items": 2,
            "bootstrap_samples": 100,
            "timing": {"rounds": 6},
        }
    )
    _, _, run, results, predictions = evaluated_run(path, tiny_run_copy)
    engine, twin = results["systems"][1], results["systems"][2]
    assert engine["serving"].startswith("llama.cpp (llama-cpp-python 0.3.36), GGUF as shipped")
    assert "Q4_1" in engine["serving"]
    assert engine["parameters"]["total"] == 134_515_008
    assert engine["disk_bytes"]["model"] == gguf.stat().st_size
    assert engine["peak_memory_bytes"] > engine["weights_bytes"] > 0
    assert engine["latency_ms"]["p50"] > 0 and engine["throughput_items_per_s"] > 0
    gaps = [
        abs(p["predictions"]["engine"]["label_logprobs"][k] - v)
        for p in predictions
        for k, v in p["predictions"]["transformers"]["label_logprobs"].items()
    ]
    assert np.mean(gaps) < 0.15 and max(gaps) < 0.5
    right = sum(p["predictions"]["engine"]["prediction"] == p["gold"] for p in predictions)
    assert engine["metrics"]["accuracy"]["value"] == pytest.approx(right / len(predictions))
    assert engine["tokens"]["input_per_item"] == twin["tokens"]["input_per_item"]
    markdown = write_report(run).markdown.read_text()
    assert "| engine " in markdown


def test_an_engine_baseline_names_its_gguf_in_engine_and_the_name_is_checked(problems_with):
    baselines = [
        {"name": "a", "model": REGISTRY_NAME, "engine": {"model": REGISTRY_NAME}},
        {"name": "b", "engine": {"model": "qwen2.5-coder-1.5b-instruc"}},
        {"name": "c", "engine": {"model": "all-minilm-l6-v2"}},
    ]
    text = "\n".join(problems_with(("eval.baselines", baselines)))
    assert (
        "eval.baselines.0: an engine baseline runs the model named in its `engine.model`; "
        "remove model" in text
    )
    assert (
        "eval.baselines.1.engine.model: 'qwen2.5-coder-1.5b-instruc' is neither a .gguf file "
        "nor a registry model shipped as GGUF. did you mean qwen2.5-coder-1.5b-instruct? "
        "Those are: smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct, "
        "qwen2.5-coder-1.5b-instruct, gemma3-270m" in text
    )
    assert "eval.baselines.2.engine.model: 'all-minilm-l6-v2' is neither" in text


def _token_by_token(served, prompt: list[int], label_ids: list[list[int]]) -> list[list[float]]:
    """The engine's scoring before `engine_labels`: each label token after the prompt in its own
    call of two tokens, the cache past the prompt thrown away between labels."""
    first = served.next_logprobs(prompt, reuse=False, run=2)
    return [
        [float(first[ids[0]])]
        + [float(served.next_logprobs(prompt + ids[:k], run=2)[ids[k]]) for k in range(1, len(ids))]
        for ids in label_ids
    ]


def test_each_labels_tokens_in_one_decode_equal_the_token_by_token_scores(served, tokenizer):
    """Each label's later tokens from one decode give what one call per token gave: exactly
    for a two-token label (the same run), within 1e-3 for longer ones (here exactly too), on
    prompts that reuse the cells of the prompt before and on prompts that do not."""
    from finetune.models.scoring import label_token_ids
    from finetune.systems.engine import Engine

    labels = ["positive", "negative", "very positive", "mixed, leaning to the negative"]
    recipe = _recipe(labels=labels)
    fmt, prompts = _prompts(tokenizer, TEXTS)
    label_ids = label_token_ids(fmt, tokenizer, labels)
    assert sorted(map(len, label_ids))[:3] == [1, 1, 2] and max(map(len, label_ids)) > 4
    infer = Engine().inference(recipe, fmt, tokenizer)
    for share in (True, False):
        details = infer.run(served, prompts, 4, share)[1]
        for prompt, detail in zip(prompts, details, strict=True):
            expected = _token_by_token(served, list(prompt), label_ids)
            for label, ids, tokens in zip(labels, label_ids, expected, strict=True):
                got = detail["label_logprobs"][label]
                assert got == pytest.approx(sum(tokens), abs=1e-3 if len(ids) > 2 else 1e-5)
