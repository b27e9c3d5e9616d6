"""The benchmark harness's own logic: peer command lines, log parsing, fits, bench data, verdicts.

The benchmarks themselves run with `make bench`; these tests keep the harness honest
(e.g. `trl sft` really receives the recipe's settings) without timing anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "bench"))

import common
import run
import training
import workers

from finetune.recipe import load_recipe


@pytest.mark.parametrize(("fast_bf16", "dtype"), [(True, "bfloat16"), (False, "float32")])
def test_trl_command_carries_the_recipe_settings(tmp_path, monkeypatch, fast_bf16, dtype):
    from trl.scripts.sft import make_parser

    from finetune import hardware

    # `model.dtype: auto` resolves by the machine; TRL must get what the workbench resolved.
    monkeypatch.setattr(hardware, "fast_bf16", lambda: fast_bf16)

    recipe = load_recipe(common.RECIPE, ["train.learning_rate=0.0005", "train.batch_size=4"])
    cmd = training.trl_command(recipe, tmp_path / "data", tmp_path / "out", 30, checkpointing=False)
    assert Path(cmd[0]).name == "trl" and cmd[1] == "sft"
    launch = cmd.index("--num_cpu_threads_per_process")
    script, sft, model, _ = make_parser().parse_args_and_config(
        cmd[2:launch] + cmd[launch + 2 :], fail_with_unknown_args=True
    )[:4]
    assert script.dataset_name == str(tmp_path / "data")
    assert sft.learning_rate == 0.0005 and sft.per_device_train_batch_size == 4
    assert sft.max_steps == 30 and sft.max_length == recipe.model.max_length
    assert sft.lr_scheduler_type == recipe.train.lr_scheduler
    assert sft.seed == sft.data_seed == recipe.seed
    assert sft.bf16 is fast_bf16 and sft.activation_checkpointing is False
    assert sft.use_cpu is not torch.cuda.is_available()
    assert sft.eval_strategy == "no" and sft.save_strategy == "no"
    assert (
        model.use_peft and model.lora_r == recipe.lora.r and model.lora_alpha == recipe.lora.alpha
    )
    assert model.lora_dropout == recipe.lora.dropout and model.lora_target_modules in (
        "all-linear",
        ["all-linear"],
    )
    assert model.dtype == dtype


def test_trl_dataset_is_prompt_completion(tmp_path):
    recipe = load_recipe(common.RECIPE, [])
    rows = [{"id": "a", "text": "Great fun.", "label": "fresh"}]
    path = training._trl_dataset(recipe, rows, tmp_path)
    (record,) = common.read_json_lines(path)
    assert record == {
        "prompt": [{"role": "user", "content": f"{recipe.task.instruction}\n\nGreat fun."}],
        "completion": [{"role": "assistant", "content": "fresh"}],
    }


def test_trl_logs_are_parsed_from_the_progress_output():
    out = (
        " 95%|#########5| 19/20 {'loss': '1.544', 'num_tokens': '1.012e+04', 'epoch': '0.95'}\n"
        "100%|##########| 20/20 {'loss': '0.9', 'num_tokens': '1.346e+04'}"
        "{'train_runtime': '181.7', 'train_samples_per_second': '0.88', 'epoch': '1'}\n"
    )
    assert [r["num_tokens"] for r in training._trl_logs(out, "num_tokens")] == [
        "1.012e+04",
        "1.346e+04",
    ]
    (final,) = training._trl_logs(out, "train_runtime")
    assert float(final["train_runtime"]) == 181.7 and final["epoch"] == "1"
    with pytest.raises(RuntimeError, match="no train_runtime"):
        training._trl_logs("{'loss': '1.0'}", "train_runtime")


def test_line_fit_matches_numpy_and_flags_curvature():
    xs, ys = [1000, 2000, 4000], [12.0, 22.5, 43.0]
    fit = common.line_fit(xs, ys)
    slope, intercept = np.polyfit(xs, ys, 1)
    assert fit["slope"] == pytest.approx(slope) and fit["intercept"] == pytest.approx(intercept)
    assert fit["r2"] > 0.999
    assert common.line_fit([1, 2, 3, 4], [1, 4, 9, 30])["r2"] < 0.95


def test_joined_reviews_keep_one_label_per_example():
    rows = [
        {"id": str(i), "text": f"t{i}", "label": "fresh" if i % 3 else "rotten"} for i in range(30)
    ]
    joined = common.joined_reviews(rows, 4, 10, "x")
    assert len(joined) == 10 and len({r["id"] for r in joined}) == 10
    by_text = {r["text"]: r["label"] for r in rows}
    for example in joined:
        parts = example["text"].split(" ")
        assert len(parts) == 4
        assert {by_text[p] for p in parts} == {example["label"]}


def _results(ours_tps=300.0, trl_tps=100.0, ours_loss=0.100, trl_loss=0.099, agree=1.0):
    trl = {"tokens_per_s": trl_tps, "heldout_loss": trl_loss, "tokens": 1000, "peak_rss_bytes": 4e9}
    return {
        "train": {
            "workbench": {
                "tokens_per_s": ours_tps,
                "heldout_loss": ours_loss,
                "tokens": 1000,
                "peak_rss_bytes": 3e9,
            },
            "peers": {"trl sft": trl},
        },
        "hardware": {
            "peak": {"float32": {"flops_per_s": 80e9}, "bfloat16": {"flops_per_s": 1e9}},
            "flops": {"flops_per_token": 4e8},
        },
        "eval": {
            "by_dtype": {
                "float32": {
                    "workbench": {"items_per_s": 15.0, "peak_rss_bytes": 1e9},
                    "peer": {"items_per_s": 4.0, "peak_rss_bytes": 2e9},
                    "agreement": agree,
                }
            }
        },
    }


def test_summary_rows_apply_the_targets():
    rows = {r["measure"]: r for r in run.summarize(_results())}
    speed = rows["training tokens/s vs trl sft"]
    assert speed["ratio"] == pytest.approx(3.0) and speed["met"] is True
    loss = rows["held-out loss vs trl sft"]
    assert loss["ratio"] == pytest.approx(0.100 / 0.099) and loss["met"] is True  # within 2%
    fp32 = rows["MFU vs float32 matmul peak (80.0 GFLOP/s)"]
    assert fp32["ratio"] == pytest.approx(4e8 * 300 / 80e9) and fp32["met"] is None
    assert rows["eval items/s vs lm-eval (float32)"]["ratio"] == pytest.approx(3.75)
    assert rows["same prediction as lm-eval (float32)"]["met"] is True

    worse = {
        r["measure"]: r for r in run.summarize(_results(ours_tps=150, ours_loss=0.103, agree=0.98))
    }
    assert worse["training tokens/s vs trl sft"]["met"] is False
    assert worse["held-out loss vs trl sft"]["met"] is False  # 4% worse
    assert worse["same prediction as lm-eval (float32)"]["met"] is False


def test_matmul_peak_skips_sizes_that_would_outlast_the_time_given():
    both = workers.matmul_peak({"sizes": {"float32": [16, 32]}, "seconds": 0.05})["float32"]
    assert set(both["by_size"]) == {"16", "32"}
    assert both["flops_per_s"] == max(both["by_size"].values()) > 0
    first = workers.matmul_peak({"sizes": {"float32": [16, 32]}, "seconds": 1e-12})["float32"]
    assert set(first["by_size"]) == {"16"}
