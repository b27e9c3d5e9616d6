"""The report stage on a synthetic evaluated run: files, self-contained HTML, escaping, verdict
sentences, the terminal table, W&B logging, the missing-input error and the screenshot script."""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import screenshot
from rich.console import Console
from wandb_files import read_run

from finetune.errors import FinetuneError
from finetune.report import ReportPaths, headline_table, verdict, write_report
from finetune.report.verdict import cautions, timing_call

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GB = 2**30


# Per-round timing noise (median exactly 1): the specialist and the baselines vary differently,
# so their round-by-round ratios spread as real ones do.
SPECIALIST_NOISE = [0.97, 0.99, 1.0, 1.0, 1.02, 1.04]
BASELINE_NOISE = [1.01, 0.98, 1.0, 1.0, 1.03, 0.97]


def _spread(rounds: list[float]) -> dict:
    return {"low": min(rounds), "high": max(rounds), "rounds": rounds}


def _system(name, role, accuracy, ci, latency, throughput, peak_gib, model_mb, cost, **extra):
    low, high = ci
    confusion = extra.pop("confusion", [[180, 20], [16, 184]])
    noise = SPECIALIST_NOISE if role == "specialist" else BASELINE_NOISE
    return {
        "name": name,
        "role": role,
        "model": extra.pop("model", "smollm2-135m-instruct"),
        "shots": extra.pop("shots", 0),
        "prompt_style": "chat",
        "metrics": {
            "accuracy": {"value": accuracy, "low": low, "high": high},
            "macro_f1": {"value": accuracy - 0.01, "low": low - 0.01, "high": high - 0.01},
        },
        "per_class": [
            {"label": "fresh", "precision": 0.9, "recall": 0.92, "f1": 0.91, "support": 200},
            {"label": "rotten", "precision": 0.92, "recall": 0.9, "f1": 0.91, "support": 200},
        ],
        "confusion": confusion,
        "latency_ms": {
            "p50": latency,
            "p95": latency * 1.5,
            "items": 16,
            **_spread([latency * f for f in noise]),
        },
        "throughput_items_per_s": throughput,
        "throughput": {"items": 64, **_spread([throughput / f for f in noise])},
        "resident": True,
        "load": [
            {
                "seconds": 2.0,
                "others_cores": 0.01,
                "steal_share": 0.0,
                "loadavg": 2.0,
                "busy": False,
            }
        ]
        * 6,
        "peak_memory_bytes": int(peak_gib * GB),
        "weights_bytes": int(model_mb * 1e6),
        "parameters": {"total": 139399488, "trainable": extra.pop("trainable", 0)},
        "disk_bytes": {"adapter": extra.pop("adapter", None), "model": int(model_mb * 1e6)},
        "tokens": {"input_per_item": 83.2, "output_per_item": 1.0},
        "cost_per_1k": {
            "usd": cost,
            "basis": "machine time at $0.10/h",
            **_spread([cost * f for f in noise]),
        },
        "truncated_items": 0,
        "eval_seconds": 41.0,
    }


def _comparison(baseline, base_value, diff, ci, significant, p):
    return {
        "baseline": baseline,
        "metric": "accuracy",
        "specialist": 0.91,
        "baseline_value": base_value,
        "difference": diff,
        "low": ci[0],
        "high": ci[1],
        "significant": significant,
        "mcnemar": {"specialist_only": 130, "baseline_only": 14, "p_value": p},
    }


def retime(results: dict) -> dict:
    """The comparisons' round-by-round ratios, recomputed from the systems' rounds."""
    from finetune.evaluate.timing import paired_ratio

    rounds = {
        s["name"]: {
            "latency": s["latency_ms"]["rounds"],
            "throughput": s["throughput"]["rounds"],
            "cost": s["cost_per_1k"]["rounds"],
        }
        for s in results["systems"]
    }
    special = rounds[results["systems"][0]["name"]]
    for c in results["comparisons"]:
        c["timing"] = {
            k: paired_ratio(special[k], rounds[c["baseline"]][k], results["confidence"])
            for k in special
        }
    return results


def set_rounds(system: dict, figure: str, values: list[float]) -> None:
    """Give one system's figure new per-round values, and their median as the figure."""
    import statistics

    entry = {"latency": system["latency_ms"], "cost": system["cost_per_1k"]}[figure]
    entry |= _spread(values)
    entry["p50" if figure == "latency" else "usd"] = statistics.median(values)


def make_results() -> dict:
    """Specialist beats base zero-shot and 4-shot; no significant difference from Qwen."""
    return retime({
        "recipe": "rt-sentiment-smollm2-lora",
        "run_dir": "runs/rt-sentiment-smollm2-lora/synthetic",
        "task": "classification",
        "labels": ["fresh", "rotten"],
        "metrics": ["accuracy", "macro_f1"],
        "test_items": 400,
        "confidence": 0.95,
        "bootstrap_samples": 2000,
        "hardware": {"device": "cpu", "description": "AMD EPYC (2 cores)", "dtype": "float32"},
        "batch_size": 16,
        "prices": {
            "machine_per_hour": 0.10,
            "per_million_input_tokens": {},
            "per_million_output_tokens": {},
        },
        "constraints": {"max_p50_ms": 1000.0, "max_usd_per_1k": None, "max_memory_gb": 8.0},
        "created_at": "2026-11-23T12:00:00+00:00",
        "timing": {
            "rounds": 6, "rounds_requested": 6, "stopped_early": False, "max_minutes": 10.0,
            "seconds": 95.0, "latency_items": 16, "throughput_items": 64,
            "orders": [["specialist", "base zero-shot", "base 4-shot", "qwen2.5-0.5b zero-shot"]] * 6,
            "resident": ["specialist", "base zero-shot", "base 4-shot", "qwen2.5-0.5b zero-shot"],
            "interval": "sign-test interval for the median of the per-round ratios",
            "disturbed": [],
        },
        "systems": [
            _system(
                "specialist", "specialist", 0.91, (0.88, 0.94), 95.0, 12.3, 1.77, 540, 0.0023,
                adapter=19_600_000, trainable=4884480, model="smollm2-135m-instruct + LoRA adapter",
            ),
            _system(
                "base zero-shot", "baseline", 0.62, (0.57, 0.67), 40.0, 14.0, 1.70, 540, 0.0020,
                confusion=[[190, 10], [142, 58]],
            ),
            _system(
                "base 4-shot", "baseline", 0.85, (0.81, 0.89), 210.0, 5.0, 1.9, 540, 0.0056, shots=4
            ),
            _system(
                "qwen2.5-0.5b zero-shot", "baseline", 0.90, (0.87, 0.93), 480.0, 3.1, 3.2, 988,
                0.0090, model="qwen2.5-coder-0.5b-instruct",
            ),
        ],
        "comparisons": [
            _comparison("base zero-shot", 0.62, 0.29, (0.24, 0.34), True, 1.2e-24),
            _comparison("base 4-shot", 0.85, 0.06, (0.03, 0.09), True, 0.0004),
            _comparison("qwen2.5-0.5b zero-shot", 0.90, 0.01, (-0.02, 0.04), False, 0.45),
        ],
    })  # fmt: skip


def write_run(run_dir: Path, results: dict, *, wandb_mode: str = "disabled") -> Path:
    """An evaluated run directory: results, predictions, training summary and log, recipe."""
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval" / "results.json").write_text(json.dumps(results))
    names = [s["name"] for s in results["systems"]]
    predictions = [
        {"id": f"rt-{i}", "text": "a review", "gold": "fresh",
         "predictions": {n: {"prediction": "fresh", "score": 1.0} for n in names}}
        for i in range(4)
    ]  # fmt: skip
    (run_dir / "eval" / "predictions.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in predictions)
    )
    summary = {
        "method": "lora", "steps": 80, "train_seconds": 386.7, "tokens_per_second": 138.1,
        "first_train_loss": 1.7557, "final_train_loss": 0.1086, "first_eval_loss": 2.5737,
        "final_eval_loss": 0.1023, "trainable_parameters": 4884480, "total_parameters": 139399488,
    }  # fmt: skip
    (run_dir / "train_summary.json").write_text(json.dumps(summary))
    log = [{"step": 0, "eval/loss": 2.57}] + [
        {"step": s, "train/loss": 2.0 / s} for s in range(5, 85, 5)
    ]
    (run_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    recipe = yaml.safe_load((REPO / "recipes" / "rt-sentiment-smollm2-lora.yaml").read_text())
    recipe["tracking"] = {"wandb": {"mode": wandb_mode, "project": "report-test"}}
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return run_dir


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return write_run(tmp_path / "run", make_results())


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, ReportPaths, str]:
    """One report written for the read-only checks, with what it printed to a 100-column console."""
    run = write_run(tmp_path_factory.mktemp("report") / "run", make_results())
    console = Console(record=True, width=100)
    return run, write_report(run, console=console), console.export_text()


def test_report_files_are_written(written):
    run, paths, printed = written
    assert paths.markdown == run / "report.md" and paths.html == run / "report.html"
    assert [p.name for p in paths.figures] == [
        "quality_vs_latency.png",
        "quality_vs_cost.png",
        "confusion.png",
        "loss_curve.png",  # redrawn from train_log.jsonl: the run has no loss_curve.png
    ]
    for path in paths.figures:
        assert path.parent == run / "report" and path.read_bytes().startswith(PNG_MAGIC)
    assert not list(run.rglob(".*.tmp"))  # every write went through write_atomic
    markdown = paths.markdown.read_text()
    for section in (
        "## Setup",
        "## Verdict",
        "## Headline",
        "## Paired comparisons",
        "## Training",
    ):
        assert section in markdown
    assert "![" in markdown and "(report/confusion.png)" in markdown
    assert "Trace any number to items: `eval/predictions.jsonl`." in markdown
    assert "1.7557 → 0.1086" in markdown
    assert "19.6 MB adapter + 540 MB base" in markdown
    assert "Bottom line:" in printed and f"HTML report (open in a browser): {paths.html}" in printed


def test_html_is_self_contained(written):
    _, paths, _ = written
    page = paths.html.read_text()
    for reference in ("http://", "https://", 'src="file', "<script", "<link", "@import", "url("):
        assert reference not in page
    images = re.findall(r"<img [^>]*>", page)
    assert len(images) == len(paths.figures)
    for tag in images:
        (data,) = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', tag)
        assert base64.b64decode(data).startswith(PNG_MAGIC)
    assert '<section class="verdict">' in page and "<style>" in page


def test_loss_curve_of_the_training_run_is_copied(run_dir):
    png = (REPO / "finetune" / "report" / "__init__.py").read_bytes()  # any bytes will do
    (run_dir / "loss_curve.png").write_bytes(PNG_MAGIC + png)
    paths = write_report(run_dir)
    assert (run_dir / "report" / "loss_curve.png").read_bytes() == PNG_MAGIC + png
    assert len(paths.figures) == 4


def test_names_from_results_are_escaped(tmp_path):
    results = make_results()
    evil = "<script>alert(1)</script>"
    results["systems"][3]["name"] = evil
    results["comparisons"][2]["baseline"] = evil
    paths = write_report(write_run(tmp_path / "run", results))
    page = paths.html.read_text()
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in paths.markdown.read_text()
    results["systems"][2]["name"] = "[red]base[/red]"  # shown as written, not as rich markup
    console = Console(record=True, width=100)
    console.print(headline_table(results))
    assert "[red]base[/red]" in console.export_text()


def test_verdict_win_tie_and_loss_sentences():
    results = make_results()
    sentences = verdict(results)
    assert sentences[0] == (
        "The specialist beats base zero-shot on accuracy: 0.910 vs 0.620, "
        "+0.290 [0.240, 0.340], McNemar p = 1.2e-24."
    )
    assert sentences[2] == (
        "No significant difference between the specialist and qwen2.5-0.5b zero-shot on "
        "accuracy (+0.010 [-0.020, 0.040], p = 0.45)."
    )
    results["comparisons"][2] |= {
        "baseline_value": 0.95, "difference": -0.04, "low": -0.07, "high": -0.01,
        "significant": True,
        "mcnemar": {"specialist_only": 5, "baseline_only": 21, "p_value": 0.0025},
    }  # fmt: skip
    assert verdict(results)[2] == (
        "The specialist loses to qwen2.5-0.5b zero-shot on accuracy: 0.910 vs 0.950, "
        "-0.040 [-0.070, -0.010], McNemar p = 0.0025."
    )


def test_verdict_other_dimensions_name_the_lowest_and_the_factor():
    _, latency, memory, size, cost, _ = verdict(make_results())[2:]
    # Ratios per round: 2.375 x SPECIALIST_NOISE / BASELINE_NOISE, from 0.96 to 1.07 of it.
    assert latency == (
        "p50 latency at batch size 1, median of 6 rounds: the specialist 95 ms; faster than "
        "base 4-shot (210 ms, ratio 0.45 [0.43, 0.49]) and qwen2.5-0.5b zero-shot (480 ms, "
        "ratio 0.20 [0.19, 0.21]); slower than base zero-shot (40 ms, ratio 2.38 [2.28, 2.55]); "
        "95% intervals over rounds."
    )
    assert memory.startswith("Lowest peak memory while serving: base zero-shot, 1.70 GiB;")
    assert size == (
        "Smallest size on disk: base zero-shot, 540 MB; the specialist needs 560 MB, 1.04x that; "
        "the specialist's 19.6 MB adapter is all it adds where its 540 MB base model is already "
        "deployed."
    )
    assert cost == (
        "Cost per 1k requests, median of 6 rounds: the specialist $0.0023; cheaper than base "
        "4-shot ($0.0056, ratio 0.41 [0.39, 0.44]) and qwen2.5-0.5b zero-shot ($0.0090, ratio "
        "0.26 [0.25, 0.27]); dearer than base zero-shot ($0.0020, ratio 1.15 [1.10, 1.23]); 95% "
        "intervals over rounds."
    )


def test_a_timing_difference_is_called_only_when_its_interval_excludes_1():
    results = make_results()
    # The same cost as base zero-shot give or take the noise: ratios on both sides of 1.
    set_rounds(results["systems"][0], "cost", [0.0019, 0.0021, 0.0020, 0.0020, 0.0022, 0.0019])
    retime(results)
    ratio = results["comparisons"][0]["timing"]["cost"]
    assert ratio["low"] < 1 < ratio["high"] and not ratio["clear"]
    # Ratios 0.94, 1.07, 1.0, 1.0, 1.07, 0.98: median 1.00, [min, max] the 95% interval.
    assert verdict(results)[6].endswith(
        "no clear difference from base zero-shot ($0.0020, ratio 1.00 [0.94, 1.07]); 95% "
        "intervals over rounds."
    )
    # One round out of line widens the interval: [min, max] of 6 rounds covers the median ratio
    # with probability 1 - 2/64.
    results = make_results()
    set_rounds(results["systems"][0], "latency", [95.0 * f for f in [2.5, 1, 1, 1, 1, 1]])
    retime(results)
    assert timing_call(results["comparisons"][0], "latency") == "higher"  # 2.4x even so
    set_rounds(results["systems"][1], "latency", [40.0 * f for f in [2.5, 1, 1, 1, 1, 1]])
    set_rounds(results["systems"][0], "latency", [40.0 * f for f in [5, 1, 1.01, 0.99, 1, 1]])
    retime(results)
    assert timing_call(results["comparisons"][0], "latency") == "unclear"
    # With fewer rounds than the confidence needs there is no interval, and no call.
    results["confidence"] = 0.99
    retime(results)
    ratio = results["comparisons"][1]["timing"]["latency"]
    assert ratio["low"] is None and not ratio["clear"]
    assert timing_call(results["comparisons"][1], "latency") == "untested"
    latency = verdict(results)[3]
    assert "base 4-shot (210 ms, ratio 0.19) and" in latency
    assert "too few rounds to test against base zero-shot" in latency
    assert "no clear difference from base 4-shot" not in latency


def test_disturbed_rounds_are_named_in_the_verdict_box(tmp_path):
    results = make_results()
    results["timing"]["disturbed"] = [
        {
            "system": "specialist",
            "round": 1,
            "figures": ["latency", "throughput", "cost"],
            "reasons": [
                "machine busy: other processes used 1.85 cores",
                "latency 2.31x its median",
            ],
            "busy": True,
            "load": {},
        }
    ]
    (note,) = cautions(results)
    assert note == (
        "Timing interference for specialist (round 1: machine busy: other processes used 1.85 "
        "cores, latency 2.31x its median). Affected: its latency, throughput and cost. Figures "
        "are medians over 6 rounds and ratios are paired within rounds, so a disturbed round "
        "shifts them little; round 1 is left out of its ratios to the others (machine busy); "
        "re-run `finetune eval` on a quiet machine to confirm."
    )
    results["timing"] |= {"stopped_early": True, "rounds": 4}
    assert cautions(results)[0].startswith("Timing stopped after 4 of 6 rounds")
    paths = write_report(write_run(tmp_path / "run", results))
    page = paths.html.read_text()
    box = page[page.index('<section class="verdict">') : page.index("</section>")]
    assert '<p class="caution">Timing interference for specialist (round 1' in box
    assert "> **Caution:** Timing interference for specialist" in paths.markdown.read_text()


def _bottom_line(results: dict) -> str:
    line = verdict(results)[-1]
    assert line.startswith("Bottom line: ")
    return line


def test_bottom_line_deploys_a_specialist_better_than_every_baseline():
    results = make_results()
    results["comparisons"][2] |= {"significant": True, "low": 0.005}
    results["comparisons"][2]["mcnemar"]["p_value"] = 0.03
    assert _bottom_line(results) == (
        "Bottom line: deploy the specialist: it is significantly better on accuracy than every "
        "baseline that meets the constraints, the runner-up included (0.910 vs 0.900, p = 0.03); "
        "runner-up: qwen2.5-0.5b zero-shot (accuracy 0.900; 3.91x the cost per 1k requests, "
        "$0.0090; 5.05x the p50 latency, 480 ms)."
    )


def test_a_tie_on_quality_goes_to_the_clearly_cheaper_then_the_clearly_faster():
    # No significant difference from qwen (p = 0.45), and the specialist is clearly cheaper:
    # per round 0.0023 / 0.0090 x SPECIALIST_NOISE / BASELINE_NOISE, 0.245 to 0.274.
    assert _bottom_line(make_results()) == (
        "Bottom line: deploy the specialist: it ties qwen2.5-0.5b zero-shot on accuracy (0.910 "
        "vs 0.900, p = 0.45) and is clearly cheaper per 1k requests (ratio 0.26 [0.25, 0.27]); "
        "ties on accuracy are broken by cost, then p50 latency; runner-up: qwen2.5-0.5b "
        "zero-shot (accuracy 0.900; 3.91x the cost per 1k requests, $0.0090; 5.05x the p50 "
        "latency, 480 ms)."
    )
    # qwen at $0.0010 is clearly cheaper (the specialist's ratio to it 2.21 to 2.47): qwen.
    results = make_results()
    set_rounds(results["systems"][3], "cost", [0.0010 * f for f in BASELINE_NOISE])
    retime(results)
    assert _bottom_line(results) == (
        "Bottom line: deploy qwen2.5-0.5b zero-shot: it ties the specialist on accuracy (0.900 "
        "vs 0.910, p = 0.45) and is clearly cheaper per 1k requests (ratio 0.43 [0.41, 0.45]); "
        "ties on accuracy are broken by cost, then p50 latency; runner-up: the specialist "
        "(accuracy 0.910; 2.30x the cost per 1k requests, $0.0023; 0.20x the p50 latency, 95 ms)."
    )
    # The same cost give or take the noise (ratios on both sides of 1): latency decides.
    set_rounds(results["systems"][3], "cost", [0.0023 * f for f in reversed(BASELINE_NOISE)])
    set_rounds(results["systems"][3], "latency", [50.0 * f for f in BASELINE_NOISE])
    retime(results)
    assert _bottom_line(results) == (
        "Bottom line: deploy qwen2.5-0.5b zero-shot: it ties the specialist on accuracy (0.900 "
        "vs 0.910, p = 0.45) and costs no clearly different amount but is clearly faster at p50 "
        "(ratio 0.53 [0.49, 0.55]); ties on accuracy are broken by cost, then p50 latency; "
        "runner-up: the specialist (accuracy 0.910; 1.00x the cost per 1k requests, $0.0023; "
        "1.90x the p50 latency, 95 ms)."
    )
    # Neither differs clearly: the higher point accuracy, the specialist's, decides.
    set_rounds(results["systems"][3], "latency", [95.0 * f for f in reversed(BASELINE_NOISE)])
    retime(results)
    assert _bottom_line(results).startswith(
        "Bottom line: deploy the specialist: it ties qwen2.5-0.5b zero-shot on accuracy (0.910 "
        "vs 0.900, p = 0.45) and neither cost nor p50 latency clearly differs, so the higher "
        "point accuracy decides; ties on accuracy are broken by cost, then p50 latency; "
    )


def test_a_constraint_rules_out_the_most_accurate_system_and_says_which():
    results = make_results()
    results["systems"][3]["metrics"]["accuracy"]["value"] = 0.95
    results["comparisons"][2] |= {
        "baseline_value": 0.95, "difference": -0.04, "low": -0.07, "high": -0.01,
        "significant": True,
        "mcnemar": {"specialist_only": 5, "baseline_only": 21, "p_value": 0.0025},
    }  # fmt: skip
    assert _bottom_line(results) == (
        "Bottom line: deploy qwen2.5-0.5b zero-shot: it is significantly better than the "
        "specialist on accuracy (0.950 vs 0.910, p = 0.0025); runner-up: the specialist "
        "(accuracy 0.910; 0.26x the cost per 1k requests, $0.0023; 0.20x the p50 latency, 95 ms)."
    )
    results["constraints"]["max_p50_ms"] = 300.0
    assert _bottom_line(results) == (
        "Bottom line: deploy the specialist: it is significantly better on accuracy than every "
        "baseline that meets the constraints, the runner-up included (0.910 vs 0.850, p = "
        "4.0e-04); runner-up: base 4-shot (accuracy 0.850; 2.43x the cost per 1k requests, "
        "$0.0056; 2.21x the p50 latency, 210 ms); ruled out by eval.constraints: qwen2.5-0.5b "
        "zero-shot (accuracy 0.950, p50 latency 480 ms > 300 ms)."
    )
    # The specialist itself over a limit: the rest by accuracy alone, which the sentence says.
    results["constraints"]["max_p50_ms"] = 1000.0
    results["systems"][0]["peak_memory_bytes"] = 9_000_000_000
    assert _bottom_line(results) == (
        "Bottom line: deploy qwen2.5-0.5b zero-shot: it has the highest accuracy of the systems "
        "that meet the constraints (0.950; baselines are not tested against one another); "
        "runner-up: base 4-shot (accuracy 0.850; 0.62x the cost per 1k requests, $0.0056; 0.44x "
        "the p50 latency, 210 ms); ruled out by eval.constraints: the specialist (accuracy "
        "0.910, peak memory 9 GB > 8 GB)."
    )
    results["constraints"] |= {"max_p50_ms": 100.0, "max_memory_gb": 3.0}
    assert _bottom_line(results) == (
        "Bottom line: deploy base zero-shot: it is the only system that meets the constraints; "
        "ruled out by eval.constraints: the specialist (accuracy 0.910, peak memory 9 GB > 3 "
        "GB), base 4-shot (accuracy 0.850, p50 latency 210 ms > 100 ms) and qwen2.5-0.5b "
        "zero-shot (accuracy 0.950, p50 latency 480 ms > 100 ms, peak memory 3.44 GB > 3 GB)."
    )
    results["constraints"]["max_usd_per_1k"] = 0.001
    assert _bottom_line(results).startswith(
        "Bottom line: no system meets eval.constraints: the specialist (accuracy 0.910, cost per "
        "1k requests $0.0023 > $0.0010, peak memory 9 GB > 3 GB), base zero-shot (accuracy "
        "0.620, cost per 1k requests $0.0020 > $0.0010)"
    )


def test_headline_table_is_readable_at_100_columns():
    console = Console(record=True, width=100)
    console.print(headline_table(make_results()))
    text = console.export_text()
    for name in ("specialist", "base zero-shot", "base 4-shot", "qwen2.5-0.5b zero-shot"):
        assert name in text
    for ci in ("[0.880, 0.940]", "[0.570, 0.670]", "[0.870, 0.930]"):
        assert ci in text
    assert "19.6 MB adapter" in text and "$0.0023" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "…" not in text  # nothing cut off


def test_wandb_offline_run_holds_the_report_tables(tmp_path):
    results = make_results()
    run = write_run(tmp_path / "run", results, wandb_mode="offline")
    paths = write_report(run)
    logged = read_run(run)
    assert logged["config"]["recipe"] == results["recipe"]
    assert logged["config"]["test_items"] == 400 and "systems" not in logged["config"]
    rows = {k: v for row in logged["history"] for k, v in row.items()}
    for key in ("headline", "metrics", "comparisons", "timing", "timing_ratios"):
        assert rows[f"report/{key}/_type"] == "table-file"
    for figure in paths.figures:
        assert rows[f"report/{figure.stem}/_type"] == "image-file"
    (files,) = run.glob("wandb/offline-run-*/files")
    table = json.loads((files / rows["report/headline/path"]).read_text())
    assert table["columns"][:2] == ["system", "accuracy [95% CI]"]
    assert [r[0] for r in table["data"]] == [s["name"] for s in results["systems"]]
    assert table["data"][0][1] == "0.910 [0.880, 0.940]"


def test_disabled_tracking_writes_no_wandb_files(run_dir):
    write_report(run_dir)
    assert not (run_dir / "wandb").exists()


def test_missing_results_is_a_clear_error(tmp_path):
    with pytest.raises(FinetuneError) as info:
        write_report(tmp_path)
    assert str(info.value) == (
        f"{tmp_path}: no eval/results.json; run `finetune eval RECIPE --run {tmp_path}` first"
    )


def test_qa_report_has_no_confusion_matrix_and_no_mcnemar(tmp_path):
    results = copy.deepcopy(make_results())
    results |= {"task": "qa", "labels": [], "metrics": ["token_f1", "exact_match"]}
    for s in results["systems"]:
        s["metrics"] = {
            "token_f1": s["metrics"]["accuracy"],
            "exact_match": s["metrics"]["macro_f1"],
        }
        s |= {"per_class": [], "confusion": None}
    for c in results["comparisons"]:
        c |= {"metric": "token_f1", "mcnemar": None}
    paths = write_report(write_run(tmp_path / "run", results))
    assert "confusion.png" not in [p.name for p in paths.figures]
    assert verdict(results)[2] == (
        "No significant difference between the specialist and qwen2.5-0.5b zero-shot on "
        "token F1 (+0.010 [-0.020, 0.040])."
    )
    assert "Per-class" not in paths.markdown.read_text()


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs chromium (apt-get install chromium)"
)
def test_screenshot_script_captures_the_report(written):
    run, _, _ = written
    width, height = screenshot(run, run / "shot.png")
    assert width >= 1200 and height > 1000


def test_incomplete_results_name_every_missing_field(run_dir):
    results = make_results()
    del results["confidence"], results["systems"][2]["latency_ms"]
    (run_dir / "eval" / "results.json").write_text(json.dumps(results))
    with pytest.raises(FinetuneError, match=r"missing confidence, systems\[2\]\.latency_ms; run"):
        write_report(run_dir)


def test_bottom_line_deploys_a_baseline_better_than_the_specialist():
    results = make_results()
    results["systems"][1]["metrics"]["accuracy"]["value"] = 0.95
    results["comparisons"][0] |= {"baseline_value": 0.95, "difference": -0.04, "low": -0.07}
    results["comparisons"][0] |= {"high": -0.01}
    assert _bottom_line(results) == (
        "Bottom line: deploy base zero-shot: it is significantly better than the specialist on "
        "accuracy (0.950 vs 0.910, p = 1.2e-24); runner-up: the specialist (accuracy 0.910; "
        "1.15x the cost per 1k requests, $0.0023; 2.38x the p50 latency, 95 ms)."
    )
    # Without McNemar (QA, extraction) the evidence is the difference's interval, its sign
    # that of the deployed system over the other.
    for c in results["comparisons"]:
        c["mcnemar"] = None
    assert "(0.950 vs 0.910, +0.040 [0.010, 0.070]); runner-up" in _bottom_line(results)


def _retime_busy(results: dict, busy: dict[str, list[bool]], rounds: int) -> dict:
    """The comparisons' ratios as the evaluator takes them over the first `rounds` rounds,
    `busy` naming the rounds in which a system was timed on a busy machine."""
    from finetune.evaluate.timing import round_ratio

    figures = {
        s["name"]: {
            "latency": s["latency_ms"]["rounds"][:rounds],
            "throughput": s["throughput"]["rounds"][:rounds],
            "cost": s["cost_per_1k"]["rounds"][:rounds],
        }
        for s in results["systems"]
    }
    quiet = [False] * rounds
    mine = figures["specialist"]
    for c in results["comparisons"]:
        flags = (busy.get("specialist", quiet), busy.get(c["baseline"], quiet))
        c["timing"] = {
            k: round_ratio(mine[k], figures[c["baseline"]][k], 0.95, flags, [*range(1, rounds + 1)])
            for k in mine
        }
    results["timing"]["rounds"] = rounds
    return results


def test_a_gap_too_few_rounds_quiet_for_both_can_test_is_called_unpaired():
    from finetune.report.document import timing_text
    from finetune.report.tables import timing_ratios

    results = make_results()
    # base zero-shot 500x cheaper; busy rounds (the specialist's 1 and 2, its 3) leave 3 rounds
    # quiet for both: no paired interval. Over each one's own quiet rounds (4 and 5) the
    # Hodges-Lehmann ratio is 510 with Moses' interval [485, 531] (test_timing checks both
    # against a brute-force count of the rank orderings).
    set_rounds(results["systems"][1], "cost", [0.0023 / 500 * f for f in BASELINE_NOISE])
    busy = {"specialist": [True, True, False, False, False, False]}
    busy["base zero-shot"] = [False, False, True, False, False, False]
    _retime_busy(results, busy, 6)
    assert timing_call(results["comparisons"][0], "cost") == "higher"
    assert verdict(results)[6].endswith(
        "dearer than base zero-shot ($0.0000046, ratio 510 [485, 531], unpaired); 95% intervals "
        "over rounds."
    )
    assert timing_ratios(results).rows[0][3] == "510x [485, 531] (unpaired)"
    assert "(marked 'unpaired')" in timing_text(results)
    # 3 rounds in all, none busy: 3 against 3 cannot reach 95% unpaired either (2/20 = 0.1 at
    # the most extreme ordering), so the gap stays untested, paired.
    results = make_results()
    set_rounds(results["systems"][1], "cost", [0.0023 / 500 * f for f in BASELINE_NOISE])
    _retime_busy(results, {}, 3)
    assert timing_call(results["comparisons"][0], "cost") == "untested"
    assert verdict(results)[6] == (
        "Cost per 1k requests, median of 3 rounds: the specialist $0.0023; too few rounds to "
        "test against base zero-shot ($0.0000046, ratio 500), base 4-shot ($0.0056, ratio 0.41) "
        "and qwen2.5-0.5b zero-shot ($0.0090, ratio 0.26); 95% intervals over rounds."
    )
    assert "unpaired" not in timing_text(results)
    # Every round of the specialist's busy: nothing to test, which is not "no clear difference".
    results = _retime_busy(make_results(), {"specialist": [True] * 6}, 6)
    assert timing_call(results["comparisons"][0], "cost") == "untested"
    cost = verdict(results)[6]
    assert "too few rounds to test against base zero-shot ($0.0020, every round busy), " in cost


def test_the_report_shows_the_constraints_the_bottom_line_applied(tmp_path):
    from finetune.report.document import constraints_paragraph

    paths = write_report(write_run(tmp_path / "run", make_results()))
    text = (
        "Deployment constraints (`eval.constraints`): p50 latency at most 1,000 ms; peak memory "
        "at most 8 GB. The bottom line recommends only systems within them; between systems "
        "with no significant difference in quality, the clearly cheaper one, else the clearly "
        "faster one."
    )
    assert text in paths.markdown.read_text()
    html = text.replace("`eval.constraints`", "<code>eval.constraints</code>")
    assert html in paths.html.read_text()
    # Results written before evaluations recorded their constraints: the defaults, said so.
    old = make_results()
    del old["constraints"]
    assert constraints_paragraph(old).startswith(
        "Deployment constraints (`eval.constraints`) (the defaults; this evaluation predates "
        "them): p50 latency at most 1,000 ms; peak memory at most 8 GB."
    )


def _with_floor(results: dict, *, significant: bool, p: float) -> dict:
    floor_ci = {"value": 0.5, "low": 0.45, "high": 0.55}
    results["floor"] = {
        "label": "fresh",
        "train_share": 0.52,
        "train_rows": 3892,
        "metrics": {"accuracy": floor_ci, "macro_f1": {"value": 0.33, "low": 0.3, "high": 0.36}},
        "specialist_vs": {
            **_comparison("floor", 0.5, 0.41, (0.36, 0.46), significant, p),
            "other_value": 0.5,
        },
    }
    return results


def test_the_majority_class_floor_is_a_row_and_a_sentence_of_every_classification_report():
    from finetune.report.tables import headline, metrics

    results = _with_floor(make_results(), significant=True, p=1e-30)
    for table in (headline(results), metrics(results)):
        row = table.rows[-1]
        assert row[:2] == ["floor: always 'fresh'", "0.500 [0.450, 0.550]"]
        assert len(row) == len(table.columns)
    sentences = verdict(results)
    assert sentences[0] == (
        "The specialist is above the floor of always answering 'fresh' (the majority class, 52% "
        "of 3,892 training rows), which scores 0.500: +0.410 [0.360, 0.460], McNemar p = 1.0e-30."
    )


def test_a_specialist_no_better_than_the_floor_is_not_deployed():
    results = _with_floor(make_results(), significant=False, p=0.3)
    assert verdict(results)[0].startswith(
        "The specialist is not significantly better than always answering 'fresh'"
    )
    assert _bottom_line(results) == (
        "Bottom line: do not deploy the specialist as it is; it is not significantly better on "
        "accuracy than always answering 'fresh'; the specialist is significantly better than 2 "
        "of 3 baselines on accuracy (no significant difference from qwen2.5-0.5b zero-shot)."
    )


def test_a_runner_up_far_below_the_deployed_system_reads_as_a_fraction():
    from finetune.report.verdict import _share

    assert [_share(0.0000025, 0.0055), _share(3.91, 1.0), _share(0.26, 1.0)] == [
        "1/2,200",
        "3.91x",
        "0.26x",
    ]


def _cascade(results: dict, accuracy: float, cost: float, difference: float, p: float) -> dict:
    """A cascade from the specialist to Qwen, escalating 14% of test items, added to `results`
    with the specialist's paired comparison against it."""
    casc = _system("casc", "cascade", accuracy, (accuracy - 0.03, accuracy + 0.02), 120.0, 10.0,
                   4.9, 1528, cost)  # fmt: skip
    versus = [
        {"system": name, "difference": d, "significant": p < 0.05, "mcnemar": {"p_value": p}}
        for name, d in (("specialist", -difference), ("qwen2.5-0.5b zero-shot", 0.01))
    ]
    casc["cascade"] = {
        "first": "specialist",
        "fallback": "qwen2.5-0.5b zero-shot",
        "confidence": "probability",
        "threshold": 0.8,
        "temperature": 1.2,
        "calibrated": True,
        "pick": "max_escalated",
        "max_escalated": 0.15,
        "margin": 0.0,
        "validation": {"items": 96, "escalated": 0.15},
        "test": {"escalated": 0.14, "curve": []},
        "versus": versus,
    }
    results["systems"].append(casc)
    results["comparisons"].append(
        _comparison(
            "casc", accuracy, difference, (difference - 0.02, difference + 0.02), p < 0.05, p
        )
    )
    return retime(results)


def test_bottom_line_deploys_a_cascade_better_than_the_specialist_saying_what_it_does():
    results = _cascade(make_results(), 0.95, 0.0036, -0.04, 0.001)
    sentences = verdict(results)
    assert _bottom_line(results).startswith(
        "Bottom line: deploy the specialist, escalating 14% of items to qwen2.5-0.5b zero-shot "
        "(cascade casc): accuracy 0.950 [0.920, 0.970] at 40% of qwen2.5-0.5b zero-shot's cost "
        "per 1k requests; it is significantly better than the specialist on accuracy "
    )
    # One sentence says what the cascade does; it is not repeated as a baseline's.
    assert not any(s.startswith("The specialist loses to casc") for s in sentences)
    (said,) = [s for s in sentences if s.startswith("Cascade casc: ")]
    assert said.startswith(
        "Cascade casc: the specialist answers and escalates 14% of test items to "
        "qwen2.5-0.5b zero-shot (its probability below 0.800, chosen on 96 validation items, "
        "where it escalated 15%): accuracy 0.950 [0.920, 0.970]; against the specialist +0.040, "
        "significantly better (McNemar p = 0.001)"
    )


def test_a_cascade_that_only_ties_the_specialist_is_not_deployed_over_it():
    results = _cascade(make_results(), 0.92, 0.0036, -0.01, 0.4)
    line = _bottom_line(results)
    assert line.startswith("Bottom line: deploy the specialist: ")
    assert "runner-up: " in line


def test_a_cascades_table_curve_and_calibration_reach_the_report_and_wandb(tmp_path):
    results = _cascade(make_results(), 0.95, 0.0036, -0.04, 0.001)
    info = results["systems"][-1]["cascade"]
    info["test"]["curve"] = [
        {"threshold": t, "escalated": e, "value": v, "cost": 0.0023 + e * 0.009}
        for t, e, v in ((0.0, 0.0, 0.91), (0.7, 0.1, 0.94), (0.8, 0.14, 0.95), (1.0, 1.0, 0.90))
    ]
    bins = [{"low": 0.9, "high": 1.0, "items": 400, "confidence": 0.95, "accuracy": 0.91}]
    results["calibration"] = {
        "bins": 10,
        "items": 400,
        "systems": [{"name": "specialist", "system": "specialist", "temperature": 1.0,
                     "ece": 0.04, "nll": 0.3, "bins": bins}],
    }  # fmt: skip
    run = write_run(tmp_path / "run", results, wandb_mode="offline")
    paths = write_report(run)
    text = paths.markdown.read_text()
    assert (
        "| casc | specialist's probability &lt; 0.800 (T = 1.20; at most 15% of validation escalated) | 15.0% / 14.0% |"
        in text
    )
    assert "| specialist | 1.00 | 0.040 | 0.300 | 400 |" in text
    assert {f.stem for f in paths.figures} >= {"cascade_0", "reliability"}
    rows = {k: v for row in read_run(run)["history"] for k, v in row.items()}
    for key in ("cascades", "calibration", "cascade_curve_0", "reliability"):
        assert rows[f"report/{key}/_type"] in ("table-file", "image-file")
