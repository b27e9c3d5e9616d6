"""llama.cpp's way of serving several LoRA runs of one base, measured against one model per run.

`shared`: one base GGUF in memory with two adapters loaded beside it, the active one set per
request (`llama_set_adapters_lora`); `separate`: one `Llama` per run, each with its adapter.
Prints the process's resident memory and the median time of one prompt's forward pass. One
form per process, so the two do not share pages:

    python scripts/bench/llama_adapters.py BASE.gguf ADAPTER.gguf shared
    python scripts/bench/llama_adapters.py BASE.gguf ADAPTER.gguf separate

(`finetune export RUN --adapter-gguf` writes the adapter; the base is the run's base model
converted with `finetune.deploy.gguf.convert`.) The same adapter file stands for both runs.
"""

from __future__ import annotations

import ctypes
import json
import statistics
import sys
import time

import llama_cpp
import psutil

PROMPT = (
    b"<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    b"<|im_end|>\n<|im_start|>user\nIs this movie review fresh (positive) or rotten (negative)? "
    b"Answer with one word: fresh or rotten.\n\na moving, funny film with a great cast"
    b"<|im_end|>\n<|im_start|>assistant\n"
)


def forward_ms(llm: llama_cpp.Llama, switch=None) -> float:
    """Median of ten timed forward passes over the prompt (two more first, untimed)."""
    tokens, times = llm.tokenize(PROMPT, special=True), []
    for i in range(12):
        if switch:
            switch(i % 2)
        llm.reset()
        start = time.perf_counter()
        llm.eval(tokens)
        times.append(1000 * (time.perf_counter() - start))
    return round(statistics.median(times[2:]), 1)


def shared(base: str, adapter: str) -> float:
    llm = llama_cpp.Llama(model_path=base, n_ctx=256, verbose=False, use_mmap=False)
    loaded = [llama_cpp.llama_adapter_lora_init(llm._model.model, adapter.encode()) for _ in "ab"]

    def switch(i: int) -> None:
        chosen = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(loaded[i])
        scale = (ctypes.c_float * 1)(1.0)
        assert llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, chosen, 1, scale) == 0

    return forward_ms(llm, switch)


def separate(base: str, adapter: str) -> float:
    llms = [
        llama_cpp.Llama(model_path=base, lora_path=adapter, n_ctx=256, verbose=False) for _ in "ab"
    ]
    return forward_ms(llms[0])


if __name__ == "__main__":
    base, adapter, form = sys.argv[1:4]
    ms = {"shared": shared, "separate": separate}[form](base, adapter)
    rss = psutil.Process().memory_info().rss
    print(json.dumps({"form": form, "rss_gib": round(rss / 2**30, 3), "forward_ms": ms}))
