"""Every token of a label scored in one llama.cpp decode, for the engine kind.

A second llama.cpp context on the engine's weights holds the prompt in sequence 0 and the label
being scored in sequence 1, on the prompt's cells (`llama_memory_seq_cp`: shared, not copied,
in a unified key/value cache). The prompt but its last token is decoded once per item, keeping
the cells it shares with the prompt before (the system turn, instruction and shots). Each label
of two or more tokens is then one decode of the prompt's last token and the label's tokens but
its last, each with its logits; one-token labels read the distribution after the prompt from
the first of those (or from a decode of the prompt's last two tokens when every label is one
token). Before, a label of n tokens took n - 1 calls of two tokens each.

Every token, the prompt's included, runs in a run of two or more, and a run holds one sequence:
a lone token takes other kernels in llama.cpp, and a batch holding several labels' sequences at
once gave some of their tokens log-probabilities up to 0.13 nat away from llama.cpp's own
all-positions logits (measured on SmolLM2-135M's GGUF), where one sequence per decode gives
them exactly (`tests/test_engine.py`).
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import numpy as np

from finetune.errors import FinetuneError


class LabelContext:
    """The scoring context of one engine model; `scores(prompt, label_ids)` gives, for each
    label, the log-probability of each of its tokens after the prompt."""

    def __init__(self, llama_cpp: Any, llm: Any, where: str) -> None:
        self._llama, self.where = llama_cpp, where
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        # Sequence 0 holds the prompt; sequence 1, the label being scored, on the same cells.
        params.n_seq_max, params.kv_unified = 2, True
        self.ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise FinetuneError(f"{where}: llama.cpp could not create a scoring context")
        self.n_ctx, self.n_batch = int(params.n_ctx), int(params.n_batch)
        self.n_vocab = llm.n_vocab()
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.cached: list[int] = []  # sequence 0's tokens, in its cells
        weakref.finalize(self, _free, llama_cpp, self.ctx, self.batch)

    def scores(self, prompt: list[int], label_ids: list[list[int]], reuse: bool) -> list:
        """Per label, its tokens' log-probabilities; `reuse` keeps the cells the prompt shares
        with the one before."""
        longest = max(len(ids) for ids in label_ids)
        if len(prompt) + longest > self.n_ctx or longest > self.n_batch:
            raise FinetuneError(
                f"{self.where}.context: a prompt of {len(prompt)} tokens with its answer does "
                f"not fit the engine's context of {self.n_ctx}; raise it, or lower "
                "model.max_length"
            )
        self._prompt(prompt[:-1], reuse)
        rows: list[list[float] | None] = []
        first = None  # the distribution after the prompt, for the one-token labels
        for ids in label_ids:
            if len(ids) == 1:
                rows.append(None)
                continue
            after, tail = self._label(prompt, ids)
            first = after if first is None else first
            rows.append(tail)
        first = self._last_two(prompt) if first is None else first
        return [
            row if row is not None else [float(first[ids[0]])]
            for row, ids in zip(rows, label_ids, strict=True)
        ]

    def _label(self, prompt: list[int], ids: list[int]) -> tuple[np.ndarray, list[float]]:
        """One decode of the prompt's last token and the label's but its last, in sequence 1
        on the prompt's cells: the distribution after the prompt, and each token's
        log-probability."""
        n = len(prompt) - 1
        self._llama.llama_memory_seq_cp(self.memory, 0, 1, -1, -1)
        self._fill([(t, n + k, 1, True) for k, t in enumerate([prompt[-1], *ids[:-1]])])
        self._decode()
        after = self._logprobs(0)
        tail = [float(after[ids[0]])] + [
            float(self._logprobs(k)[t]) for k, t in enumerate(ids[1:], start=1)
        ]
        self._llama.llama_memory_seq_rm(self.memory, 1, -1, -1)
        return after, tail

    def _last_two(self, prompt: list[int]) -> np.ndarray:
        """The distribution after the prompt when every label is one token: its last two
        tokens run together in sequence 1 (a one-token prompt runs alone)."""
        n = len(prompt) - 1
        rows = [(prompt[-1], n, 1, True)]
        if n:
            self._llama.llama_memory_seq_cp(self.memory, 0, 1, 0, n - 1)
            rows.insert(0, (prompt[-2], n - 1, 1, False))
        self._fill(rows)
        self._decode()
        self._llama.llama_memory_seq_rm(self.memory, 1, -1, -1)
        return self._logprobs(len(rows) - 1)

    def _prompt(self, head: list[int], reuse: bool) -> None:
        """Sequence 0 holds `head`: the cells it shares with the cached tokens are kept."""
        keep = shared_prefix(self.cached, head) if reuse else 0
        if 0 < len(head) - keep < 2:  # one new token would run alone: run the one before too
            keep = max(0, len(head) - 2)
        self._llama.llama_memory_seq_rm(self.memory, 0, keep, -1)
        self.cached = self.cached[:keep]
        for start, end in _runs(keep, len(head), self.n_batch):
            chunk = head[start:end]
            self._fill([(t, start + i, 0, i == len(chunk) - 1) for i, t in enumerate(chunk)])
            self._decode()
            self.cached += chunk

    def _fill(self, rows: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        for i, (token, pos, seq, logits) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i] = token, pos, 1
            b.seq_id[i][0], b.logits[i] = seq, logits
        b.n_tokens = len(rows)

    def _decode(self) -> None:
        code = self._llama.llama_decode(self.ctx, self.batch)
        if code != 0:
            raise FinetuneError(
                f"{self.where}: llama.cpp could not score the labels (llama_decode returned "
                f"{code}: {'no room left in the context; raise its size' if code == 1 else 'an error'})"
            )

    def _logprobs(self, i: int) -> np.ndarray:
        pointer = self._llama.llama_get_logits_ith(self.ctx, i)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float64)
        shifted = logits - logits.max()
        return shifted - np.log(np.exp(shifted).sum())


def shared_prefix(cached: Any, tokens: list[int]) -> int:
    """How many leading tokens `cached` and `tokens` have in common."""
    n = min(len(cached), len(tokens))
    differ = np.nonzero(np.asarray(cached[:n]) != np.asarray(tokens[:n]))[0]
    return int(differ[0]) if differ.size else n


def _runs(start: int, end: int, size: int) -> list[tuple[int, int]]:
    """[start, end) in runs of at most `size` tokens, none of them a lone token (one that runs
    alone is computed with other kernels, and its cells would differ a little)."""
    runs = list(itertools.pairwise([*range(start, end, size), end]))
    if len(runs) > 1 and runs[-1][1] - runs[-1][0] == 1:
        (a, b), (_, d) = runs[-2], runs[-1]
        runs[-2:] = [(a, b - 1), (b - 1, d)]
    return runs


def _free(llama_cpp: Any, ctx: Any, batch: Any) -> None:
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
