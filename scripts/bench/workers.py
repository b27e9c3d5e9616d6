"""Measurements that run in a process of their own: `python workers.py NAME JSON_ARGS`.

Each prints one line `RESULT {json}`. A fresh process per measurement keeps peak memory
and thread state separate between the tools being compared.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def matmul_peak(args: dict[str, Any]) -> dict[str, Any]:
    """The best large-matmul rate per dtype, in FLOP/s: the machine's practical peak."""
    import torch

    seconds = args.get("seconds", 2.0)
    found: dict[str, Any] = {}
    for dtype_name, sizes in args["sizes"].items():
        dtype = getattr(torch, dtype_name)
        rates: dict[str, float] = {}
        for n in sizes:
            # A size whose single call would outlast the time given is skipped (bf16 without
            # native support runs ~100x slower; a 4096 matmul would take minutes there).
            if rates and 2 * n**3 / max(rates.values()) > seconds:
                break
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            a @ b  # first call sets up kernels
            calls, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < seconds or calls < 2:
                a @ b
                calls += 1
            rates[str(n)] = 2 * n**3 * calls / elapsed
        found[dtype_name] = {"flops_per_s": max(rates.values()), "by_size": rates}
    found["threads"] = torch.get_num_threads()
    return found


def _peft_model(base: str, adapter: str | None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def _encoded(run_dir: str, rows: list[dict[str, Any]], max_length: int) -> list[Any]:
    from transformers import AutoTokenizer

    from finetune.tasks.prompts import PromptFormat, encode

    fmt = PromptFormat.load(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(Path(run_dir) / "adapter")
    return [encode(fmt, tokenizer, r["text"], r["label"], max_length=max_length) for r in rows]


def heldout_loss(args: dict[str, Any]) -> dict[str, Any]:
    """Mean cross-entropy per answer token over held-out examples, for any adapter.

    One function scores both tools' adapters, so their losses are comparable whatever each
    trainer reports about itself.
    """
    import torch
    import torch.nn.functional as F

    rows = [json.loads(line) for line in Path(args["rows"]).read_text().splitlines()]
    encoded = _encoded(args["prompt_run"], rows, args["max_length"])
    model = _peft_model(args["base"], args["adapter"])
    total, count = 0.0, 0
    with torch.inference_mode():
        for enc in encoded:
            ids = torch.tensor([enc.input_ids])
            logits = model(input_ids=ids).logits[0, :-1].float()
            mask = torch.tensor(enc.completion_mask[1:], dtype=torch.bool)
            targets = ids[0, 1:]
            total += F.cross_entropy(logits[mask], targets[mask], reduction="sum").item()
            count += int(mask.sum())
    return {"loss": total / count, "tokens": count, "examples": len(rows)}


def training_flops(args: dict[str, Any]) -> dict[str, Any]:
    """FLOPs of one LoRA training step per non-padding token, counted by torch on real examples.

    Each example runs alone (no padding) through the forward and backward pass the workbench
    trains with: logits at the supervised positions only, so the count is the model's work.
    """
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode

    rows = [json.loads(line) for line in Path(args["rows"]).read_text().splitlines()]
    encoded = _encoded(args["prompt_run"], rows, args["max_length"])
    model = _peft_model(args["base"], None)
    model = get_peft_model(
        model,
        LoraConfig(
            r=args["r"],
            lora_alpha=args["alpha"],
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    model.train()
    flops, tokens = 0, 0
    for enc in encoded:
        ids = torch.tensor([enc.input_ids])
        mask = torch.tensor(enc.completion_mask[1:], dtype=torch.bool)
        positions = mask.nonzero().flatten()
        with FlopCounterMode(display=False) as counter:
            logits = model(input_ids=ids, logits_to_keep=positions).logits[0]
            loss = F.cross_entropy(logits.float(), ids[0, positions + 1])
            loss.backward()
        model.zero_grad(set_to_none=True)
        flops += counter.get_total_flops()
        tokens += len(enc.input_ids)
    return {"flops": flops, "tokens": tokens, "flops_per_token": flops / tokens}


LM_EVAL_TASK = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {items}
test_split: test
output_type: multiple_choice
doc_to_text: prompt
doc_to_choice: choices
doc_to_target: gold
target_delimiter: ""
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""


def _lm_eval_docs(args: dict[str, Any]) -> list[dict[str, Any]]:
    """The test items as lm-eval documents: the workbench's exact prompt text, the labels as choices."""
    from transformers import AutoTokenizer

    from finetune.tasks.prompts import PromptFormat, render_prompt

    fmt = PromptFormat.load(args["prompt_run"])
    tokenizer = AutoTokenizer.from_pretrained(Path(args["prompt_run"]) / "adapter")
    rows = [json.loads(line) for line in Path(args["rows"]).read_text().splitlines()]
    labels = args["labels"]
    return [
        {
            "id": r["id"],
            "prompt": render_prompt(fmt, tokenizer, r["text"]) + fmt.answer_prefix,
            "choices": labels,
            "gold": labels.index(r["label"]),
        }
        for r in rows
    ]


def lm_eval_items(args: dict[str, Any]) -> dict[str, Any]:
    """lm-evaluation-harness scoring the same prompts with its HF model class and `peft=`.

    The model loads before the clock starts; the timed part is `simple_evaluate`, what a
    user waits for once the model is in memory.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    task_dir = Path(args["task_dir"])
    task_dir.mkdir(parents=True, exist_ok=True)
    name = "finetune_bench"
    items = task_dir / "items.jsonl"
    items.write_text("".join(json.dumps(item) + "\n" for item in _lm_eval_docs(args)))
    (task_dir / f"{name}.yaml").write_text(LM_EVAL_TASK.format(name=name, items=items))
    lm = HFLM(
        pretrained=args["base"],
        peft=args["adapter"],
        batch_size=args["batch_size"],
        device="cpu",
        dtype=args["dtype"],
    )
    started = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[name],
        task_manager=TaskManager(include_path=str(task_dir)),
        num_fewshot=0,
        log_samples=True,
    )
    seconds = time.perf_counter() - started
    predictions = {}
    for sample in out["samples"][name]:
        scores = [resp[0] for resp in sample["filtered_resps"]]
        predictions[sample["doc"]["id"]] = sample["doc"]["choices"][scores.index(max(scores))]
    return {
        "seconds": seconds,
        "items": len(predictions),
        "items_per_s": len(predictions) / seconds,
        "accuracy": out["results"][name]["acc,none"],
        "predictions": predictions,
    }


def serving_forms(args: dict[str, Any]) -> dict[str, Any]:
    from serving import serving_forms as measure

    return measure(args)


def general_model(args: dict[str, Any]) -> dict[str, Any]:
    from engine import general_model as measure

    return measure(args)


WORKERS = {
    "general_model": general_model,
    "serving_forms": serving_forms,
    "matmul_peak": matmul_peak,
    "heldout_loss": heldout_loss,
    "training_flops": training_flops,
    "lm_eval": lm_eval_items,
}

if __name__ == "__main__":
    result = WORKERS[sys.argv[1]](json.loads(sys.argv[2]))
    print("RESULT " + json.dumps(result), flush=True)
