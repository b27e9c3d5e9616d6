"""The real `finetune` command line, run as a subprocess the way a user runs it."""

from pathlib import Path

import pytest
import torch
from conftest import REPO, finetune_process

SHIPPED = sorted(str(p) for p in (REPO / "recipes").glob("*.yaml"))
EXPERIMENTS = sorted(str(p) for p in (REPO / "experiments").glob("*.yaml"))


def finetune(*args, cwd=REPO):
    return finetune_process(*args, cwd=cwd, timeout=120)


def test_validate_all_shipped_recipes():
    result = finetune("validate", *SHIPPED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == len(SHIPPED)


def test_shipped_experiments_validate_and_list_their_cells():
    result = finetune("validate", *EXPERIMENTS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (experiment ") == len(EXPERIMENTS) == 6
    cells_of = {
        "bbc-topics-models-ranks": 6,
        "construction-faq-judged-curve": 4,
        "rt-sentiment-cascade": 2,
        "rt-sentiment-learning-curve": 36,
        "rt-sentiment-teacher-soft": 6,
        "rt-sentiment-teacher": 16,
    }
    assert sorted(Path(p).stem for p in EXPERIMENTS) == sorted(cells_of)
    for path in EXPERIMENTS:
        cells = cells_of[Path(path).stem]
        dry = finetune("experiment", path, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f": {cells} cells on " in dry.stdout
        assert dry.stdout.count("  cell ") == cells


def test_validate_reports_typo_with_file_key_and_suggestion(write_recipe):
    path = write_recipe(
        "name: x\ntask: {type: classification, labels: [a, b]}\ndata: {source: d}\nmodel: {base: m}\nlora: {rnak: 8}\n"
    )
    result = finetune("validate", str(path))
    assert result.returncode == 2
    assert f"{path}: lora.rnak: unknown key 'rnak' (did you mean lora.r?)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_validate_mixed_good_and_bad_checks_all_and_exits_2(write_recipe):
    bad = write_recipe("name: x\n", "bad.yaml")
    result = finetune("validate", SHIPPED[0], str(bad))
    assert result.returncode == 2
    assert ": ok (" in result.stdout
    assert f"{bad}: task: required key is missing" in result.stderr
    assert f"{bad}: model: required key is missing" in result.stderr


def test_validate_applies_overrides():
    result = finetune("validate", SHIPPED[0], "lora.r=zero")
    assert result.returncode == 2
    assert "command line (lora.r=zero): lora.r: input should be a valid integer" in result.stderr


def test_validate_missing_file_is_clean():
    result = finetune("validate", "recipes/missing.yaml")
    assert result.returncode == 2
    assert "recipe file 'recipes/missing.yaml' does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "command", ["validate", "prepare", "models", "train", "export", "eval", "report"]
)
def test_every_subcommand_has_help(command):
    result = finetune(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_top_level_help_lists_the_stages():
    result = finetune("--help")
    assert result.returncode == 0
    for command in ["validate", "prepare", "train", "eval", "report"]:
        assert command in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="4-bit training is allowed on CUDA")
def test_4bit_recipe_on_a_cpu_exits_2_before_anything_starts(tmp_path):
    recipe = REPO / "recipes" / "bbc-topics-qwen1.5b-qlora.yaml"
    result = finetune("train", str(recipe), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "error: 1 recipe problem:\n"
        f"  {recipe}: model.quantization: 4-bit (QLoRA) training needs a CUDA GPU: on a CPU bitsandbytes "
        "computes no gradients through 4-bit layers, so the adapters would silently never learn. "
        "Use quantization: 8bit or none on this machine\n"
    )
    assert not (tmp_path / "runs").exists()


def test_train_without_recipe_or_resume_says_what_to_give():
    result = finetune("train")
    assert result.returncode == 2
    assert (
        "give a recipe file, e.g. `finetune train recipes/rt-sentiment-smollm2-lora.yaml`, or --resume RUN_DIR"
        in result.stderr
    )


def test_eval_of_a_missing_run_and_report_of_an_unevaluated_run_say_what_to_do(tmp_path):
    result = finetune("eval", SHIPPED[0], "--run", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr == f"error: --run: '{tmp_path / 'nope'}' does not exist\n"
    result = finetune("report", str(tmp_path))
    assert result.returncode == 2
    assert "no eval/results.json; run `finetune eval RECIPE --run" in result.stderr
