"""The engine kind: a big general model served here by llama.cpp (llama-cpp-python, in this
process) from its GGUF as shipped, 4-bit rather than de-quantized, as a baseline.

It is prompted exactly as a local transformers model is (`causal_lm.CausalLM`'s plan: the
tokenizer transformers reads from the same GGUF, its chat template, the recipe's shots), and
its token ids go to llama.cpp unchanged, so the only difference from the de-quantized model is
llama.cpp's quantized arithmetic. Classification scores each label's exact log-likelihood from
the logits after the prompt, each label's later tokens in one decode (`label_tail`); QA and
extraction decode greedily. Prompts run one at a time; the key/value cache keeps the tokens a
prompt shares with the one before (the system turn, instruction and shots), which is what
batching would save. Its memory is the process's peak, as for any local system.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from finetune.deps import require
from finetune.errors import FinetuneError
from finetune.models import GGUF_FILE, gguf_as_shipped
from finetune.models.scoring import answer_of, label_token_ids, stop_ids
from finetune.recipe import Recipe
from finetune.systems.base import Inference, Kind, Loaded, System, baseline_config
from finetune.systems.causal_lm import CausalLM
from finetune.systems.common import label_predictions, read_answers
from finetune.tasks.prompts import PromptFormat
from finetune.tasks.types import LABELS, task_type

LLAMA_PACKAGE = "llama-cpp-python[server]==0.3.36"


class Served:
    """A llama.cpp model and the context it runs prompts in, continuing from the tokens already
    in its key/value cache where a prompt starts with them."""

    def __init__(self, llm: Any, where: str) -> None:
        self.llm, self.where = llm, where
        self._llama = require("llama_cpp", package=LLAMA_PACKAGE, needed_for="engine baselines")
        self._batch = self._llama.llama_batch_init(llm.n_batch, 0, 1)
        # Freed with this object, or at exit before the interpreter tears down the modules
        # llama-cpp-python's own __del__ would need.
        weakref.finalize(self, _close, self._llama, llm, self._batch)

    def next_logprobs(self, tokens: list[int], reuse: bool = True, run: int = 1) -> np.ndarray:
        """Log-probabilities of the token after `tokens`: only tokens not already cached run, and
        at least `run` of them. llama.cpp computes a token run alone with other kernels than
        tokens run together (0.13 nats apart on one label here, AVX2 EPYC), and results from
        batches of 2 or more agree exactly, whatever their size; scoring asks for 2 so that every
        label's log-likelihood is the same number however the cache left off."""
        llm, n_ctx = self.llm, self.llm.n_ctx()
        if len(tokens) > n_ctx:
            raise FinetuneError(
                f"{self.where}.context: a prompt of {len(tokens)} tokens with its answer does not "
                f"fit the engine's context of {n_ctx}; raise it, or lower model.max_length"
            )
        keep = _shared(llm.input_ids[: llm.n_tokens], tokens) if reuse else 0
        llm.n_tokens = max(0, min(keep, len(tokens) - run))
        llm.eval(tokens[llm.n_tokens :])
        return self._logits(-1)

    def label_tail(self, prompt: list[int], ids: list[int]) -> list[float]:
        """Log-probabilities of a label's tokens after its first, right after `next_logprobs`
        ran `prompt`: one decode of the prompt's last token and the label's tokens but its
        last, each with its logits, where asking token by token took a call of two tokens per
        label token. For a two-token label this is the very run that call made."""
        llm, n = self.llm, len(prompt) - 1
        rows = [prompt[-1], *ids[:-1]]
        if len(rows) > llm.n_batch:
            return [
                float(self.next_logprobs(prompt + ids[:k], run=2)[ids[k]])
                for k in range(1, len(ids))
            ]
        llm.n_tokens = n
        llm._ctx.kv_cache_seq_rm(-1, n, -1)
        b = self._batch
        for i, token in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = token, n + i, 1, 0, 1
        b.n_tokens = len(rows)
        if self._llama.llama_decode(llm.ctx, b) != 0:
            raise FinetuneError(
                f"{self.where}: llama.cpp could not score a label (llama_decode failed)"
            )
        llm.input_ids[n : n + len(rows)] = rows  # what the cache holds, for the next prefix
        llm.n_tokens = n + len(rows)
        return [float(self._logits(k)[t]) for k, t in enumerate(ids[1:], start=1)]

    def _logits(self, i: int) -> np.ndarray:
        pointer = self._llama.llama_get_logits_ith(self.llm.ctx, i)
        return _log_softmax(np.ctypeslib.as_array(pointer, shape=(self.llm.n_vocab(),)))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def _close(llama_cpp: Any, llm: Any, batch: Any) -> None:
    llama_cpp.llama_batch_free(batch)
    llm.close()


def _shared(cached: np.ndarray, tokens: list[int]) -> int:
    n = min(len(cached), len(tokens))
    differ = np.nonzero(cached[:n] != np.asarray(tokens[:n]))[0]
    return int(differ[0]) if differ.size else n


class Engine(CausalLM):
    """The `Kind` of an engine baseline; its key is `engine:<name>`. It plans like every
    decoder and runs on llama.cpp."""

    name = "engine"
    baseline_field = "engine"
    instance_key = Kind.instance_key

    def system(self, baseline: Any) -> System:
        b = baseline
        return System(b.name, "baseline", b.engine.model, b.shots, b.prompt_style, kind=self.name)

    def load(self, recipe: Recipe, run_dir: Path, key: str) -> Loaded:
        llama_cpp = require("llama_cpp", package=LLAMA_PACKAGE, needed_for="engine baselines")
        index, baseline = baseline_config(recipe, key)
        e, where = baseline.engine, f"eval.baselines.{index}.engine"
        path = gguf_as_shipped(e.model, key=f"{where}.model")
        threads = e.threads or len(os.sched_getaffinity(0))
        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=e.context,
            n_batch=min(512, e.context),
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=e.gpu_layers,
            seed=recipe.seed,
            verbose=False,
        )
        served = Served(llm, where)
        return Loaded(
            served,
            _tokenizer(path),
            f"{e.model} on llama.cpp",
            self,
            {"adapter": None, "model": path.stat().st_size},
            serving=f"llama.cpp (llama-cpp-python {llama_cpp.__version__}), {_describe(llama_cpp, llm)}",
            identity=path,
        )

    def inference(self, recipe: Recipe, fmt: PromptFormat, tokenizer: Any) -> Inference:
        if task_type(recipe.task).request == LABELS:
            label_ids = label_token_ids(fmt, tokenizer, recipe.task.labels)
            return Inference(max(len(ids) for ids in label_ids), _classifier(recipe, label_ids))
        return Inference(recipe.eval.max_new_tokens, _generator(recipe, fmt, tokenizer))

    def sizes(self, model: Served) -> tuple[int, int, int]:
        llama_cpp, llm = model._llama, model.llm
        return (
            int(llama_cpp.llama_model_size(llm.model)),
            int(llama_cpp.llama_model_n_params(llm.model)),
            0,
        )

    def instance_bytes(self, recipe: Recipe, key: str) -> int | None:
        path = gguf_as_shipped(baseline_config(recipe, key)[1].engine.model, key="engine.model")
        return path.stat().st_size


def _tokenizer(path: Path) -> Any:
    """The tokenizer transformers reads from the GGUF (saved beside a registry model's file)."""
    from transformers import AutoTokenizer

    if path.name == GGUF_FILE and (path.parent / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path.parent)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _describe(llama_cpp: Any, llm: Any) -> str:
    """What llama.cpp says the model is, e.g. `qwen2 1.5B Q4_0`."""
    import ctypes

    buffer = ctypes.create_string_buffer(256)
    llama_cpp.llama_model_desc(llm.model, buffer, len(buffer))
    return f"GGUF as shipped ({buffer.value.decode(errors='replace')})"


def _classifier(recipe: Recipe, label_ids: list[list[int]]):
    normalize = recipe.eval.length_normalize

    def classify(served: Served, prompts, batch_size, share_prefix, on_batch=None):
        rows = []
        for prompt in prompts:
            prompt = list(prompt)
            first = served.next_logprobs(prompt, reuse=share_prefix, run=2)
            row = []
            for ids in label_ids:
                # The prompt's cells are kept: each label starts from its last token.
                tail = served.label_tail(prompt, ids) if len(ids) > 1 else []
                total = first[ids[0]] + sum(tail)
                row.append(float(total / len(ids) if normalize else total))
            rows.append(row)
            if on_batch:
                on_batch(1)
        predictions, details, best = label_predictions(recipe.task.labels, rows)
        return predictions, details, [len(label_ids[b]) for b in best]

    return classify


def _generator(recipe: Recipe, fmt: PromptFormat, tokenizer: Any):
    stop, limit = stop_ids(fmt, tokenizer), recipe.eval.max_new_tokens

    def answer(served: Served, prompts, batch_size, share_prefix, on_batch=None):
        outputs = []
        for prompt in prompts:
            tokens, new = list(prompt), []
            while len(new) < limit and (not new or new[-1] not in stop):
                logprobs = served.next_logprobs(tokens + new, reuse=share_prefix or bool(new))
                new.append(int(np.argmax(logprobs)))
            outputs.append(answer_of(fmt, tokenizer, new, stop))
            if on_batch:
                on_batch(1)
        predictions, details = read_answers(recipe, [text for text, _ in outputs])
        return predictions, details, [count for _, count in outputs]

    return answer
