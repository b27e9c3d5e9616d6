"""Failure behaviour: kills and resumes, atomic outputs, full disks, out of memory, models too
large for the machine, remote code, secrets, no network and extreme rows. Each test causes the
fault for real where it can (SIGKILL, /dev/full, a failed allocation, an unreachable host)."""

from __future__ import annotations

import ast
import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, finetune_process, in_warm_process, run_cli
from safetensors.torch import load_file

from finetune.errors import FinetuneError, explain_resource_error
from finetune.files import read_jsonl, write_atomic
from finetune.recipe import load_recipe
from finetune.runs import is_complete
from finetune.train import last_checkpoint, train
from finetune.train.callbacks import SEAL_FILE, read_log


def faulty_run(
    recipe_path: Path, kill_step: int, where: str, resume: Path | None, cwd: Path
) -> None:
    """A training process in `cwd` that SIGKILLs itself: at the end of a step ("step"), or
    half-way through writing a checkpoint's trainer_state.json ("checkpoint"), optionally
    resuming a run first. Run in a process of its own (`in_warm_process`)."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import TrainerState

    class KillAtStepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if where == "step" and state.global_step == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)

    save_state = TrainerState.save_to_json

    def torn_save(self, path):
        if where == "checkpoint" and self.global_step == kill_step:
            with open(path, "w") as handle:
                handle.write('{"global_step": ')
                handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        save_state(self, path)

    TrainerState.save_to_json = torn_save
    os.chdir(cwd)
    recipe = load_recipe(recipe_path)
    train(recipe, recipe_path=recipe_path, resume=resume, callbacks=[KillAtStepEnd()])


def _killed(tmp_path: Path, recipe: Path, step: int, where: str, resume: Path | None = None):
    log = tmp_path / f"killed-{where}-{step}.log"
    code = in_warm_process(faulty_run, recipe, step, where, resume, tmp_path, log=log)
    assert code == -signal.SIGKILL, log.read_text()[-3000:]
    (partial,) = (tmp_path / "runs" / "tiny").glob("*.partial")
    assert not is_complete(partial)
    assert json.loads((partial / "provenance.json").read_text())["status"] == "running"
    assert [p for p in (tmp_path / "runs" / "tiny").iterdir() if p != partial] == [], (
        "nothing but the partial run exists"
    )
    return partial


def test_three_kills_in_a_row_then_resume_ends_like_an_uninterrupted_run(tiny_recipe, tmp_path):
    recipe = tiny_recipe(
        train={"max_steps": 12, "eval_every": 2, "save_every": 2}, lora={"dropout": 0.1}
    )
    partial = _killed(tmp_path, recipe, 3, "step")
    assert last_checkpoint(partial).name == "checkpoint-2"

    # Killed half-way through writing checkpoint-6: it exists, unsealed, and is not used.
    assert _killed(tmp_path, recipe, 6, "checkpoint", resume=partial) == partial
    assert (partial / "checkpoints" / "checkpoint-6").is_dir()
    assert not (partial / "checkpoints" / "checkpoint-6" / SEAL_FILE).exists()
    assert last_checkpoint(partial).name == "checkpoint-4"
    # Steps 5 and 6 were logged past that checkpoint: the resume drops them and logs them again.
    assert max(r["step"] for r in read_log(partial)) == 6

    _killed(tmp_path, recipe, 9, "step", resume=partial)
    assert last_checkpoint(partial).name == "checkpoint-8"

    resumed = finetune_process("train", "--resume", str(partial), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Without a terminal the progress is one line per log, then the one-screen summary.
    progress = ("step 10/12  loss ", " tok/s  elapsed ", "ETA", "training summary")
    summary = ("parameters", "tokens seen", "throughput", "peak memory", "eval loss", "written to")
    for text in (*progress, *summary):
        assert text in resumed.stderr, text
    finished = partial.with_name(partial.name.removesuffix(".partial"))
    assert is_complete(finished) and not partial.exists()
    provenance = json.loads((finished / "provenance.json").read_text())
    assert len(provenance["resumed"]) == 3

    uninterrupted = train(load_recipe(recipe), recipe_path=recipe).run_dir
    assert [r["step"] for r in read_log(finished)] == [r["step"] for r in read_log(uninterrupted)]
    for key in ("train/loss", "eval/loss"):
        got = [r[key] for r in read_log(finished) if key in r]
        want = [r[key] for r in read_log(uninterrupted) if key in r]
        assert got == pytest.approx(want, abs=1e-6)
    a, b = (
        load_file(d / "adapter" / "adapter_model.safetensors") for d in (finished, uninterrupted)
    )
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-6)


# --- atomic outputs ----------------------------------------------------------------------------

KILLED_WRITE = """
import os, signal, sys
import finetune.files as files
def die(fd):
    os.kill(os.getpid(), signal.SIGKILL)
files.os.fsync = die  # the new bytes are written to the temporary file, not yet renamed
files.write_atomic(sys.argv[1], "new and much longer content " * 1000)
"""


def test_a_kill_during_a_write_leaves_the_previous_good_file(tmp_path):
    target = tmp_path / "predictions.jsonl"
    write_atomic(target, '{"id": 1}\n')
    done = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(target)], capture_output=True)
    assert done.returncode == -signal.SIGKILL
    assert target.read_text() == '{"id": 1}\n'
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert all(name.startswith(".predictions.jsonl.") for name in leftovers), leftovers


KILLED_PREPARE = """
import os, signal, sys
import finetune.files as files
from finetune.data import prepare
from finetune.recipe import load_recipe
replace, calls = files.os.replace, []
def replace_then_die(src, dst):
    calls.append(dst)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    replace(src, dst)
files.os.replace = replace_then_die
prepare(load_recipe(sys.argv[1]))
"""


def test_a_rebuild_of_prepared_data_killed_half_way_is_never_used(tiny_recipe, tmp_path):
    from conftest import write_reviews

    from finetune.data import prepare

    recipe_path = tiny_recipe()
    old = prepare(load_recipe(recipe_path))
    old_validation = (old.path / "validation.jsonl").read_bytes()
    write_reviews(tmp_path / "reviews.jsonl", n=120)  # the source changes: a rebuild is due
    done = subprocess.run([sys.executable, "-c", KILLED_PREPARE, str(recipe_path)], cwd=tmp_path)
    assert done.returncode == -signal.SIGKILL
    # Killed after renaming train.jsonl: the other files are whole (the old ones) and the card,
    # which marks a finished build, is gone, so the mix is never used.
    assert (old.path / "validation.jsonl").read_bytes() == old_validation
    assert not (old.path / "card.json").exists()
    rebuilt = prepare(load_recipe(recipe_path))
    clean = prepare(
        load_recipe(recipe_path).model_copy(
            update={
                "data": load_recipe(recipe_path).data.model_copy(
                    update={"prepared_dir": str(tmp_path / "clean")}
                )
            }
        )
    )
    assert rebuilt.card["rows"]["total"] == 120 and rebuilt.fingerprint == clean.fingerprint
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl"):
        assert (rebuilt.path / name).read_bytes() == (clean.path / name).read_bytes()


def test_a_torn_last_log_line_is_dropped_on_resume_and_nowhere_else(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "tra')
    assert read_log(tmp_path) == [{"step": 1, "train/loss": 2.0}]
    with pytest.raises(json.JSONDecodeError):
        read_jsonl(log)  # other JSONL files (splits, predictions) are never appended to


# --- resources ---------------------------------------------------------------------------------


def _real_disk_full_errors() -> list[BaseException]:
    """What Python and torch raise when a write hits a full disk (/dev/full always is one)."""
    caught = []
    try:
        with open("/dev/full", "w") as handle:
            handle.write("x" * 100)
    except OSError as exc:
        caught.append(exc)
    try:
        torch.save({"w": torch.zeros(1000)}, "/dev/full")
    except RuntimeError as exc:
        caught.append(exc)
    return caught


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_explained_for_python_and_torch_writes():
    errors = _real_disk_full_errors()
    assert len(errors) == 2
    for exc in errors:
        message = explain_resource_error(exc)
        assert message is not None and "the disk is full" in message, exc
        assert "tracking.runs_dir" in message and "--resume" in message


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_cli_reports_a_full_disk_without_a_traceback(tiny_recipe, monkeypatch, capsys):
    import finetune.files

    (disk_full,) = [e for e in _real_disk_full_errors() if isinstance(e, OSError)]

    def full(fd):
        raise disk_full

    monkeypatch.setattr(finetune.files.os, "fsync", full)
    code, output = run_cli(monkeypatch, capsys, "prepare", str(tiny_recipe()))
    assert code == 2 and "Traceback" not in output
    assert output.startswith("error: the disk is full writing '")
    assert "No space left on device" in output


def test_out_of_memory_in_training_says_what_to_change(tiny_recipe, tmp_path, monkeypatch, capsys):
    from finetune.train.loss import SupervisedSFTTrainer

    def allocate_too_much(self, *args, **kwargs):
        return torch.empty(1 << 50)  # a real allocator failure: 4 PiB of float32

    monkeypatch.setattr(SupervisedSFTTrainer, "compute_loss", allocate_too_much)
    code, output = run_cli(monkeypatch, capsys, "train", str(tiny_recipe()))
    assert code == 2 and "Traceback" not in output
    assert "error: out of memory (" in output and "can't allocate memory" in output
    for fix in (
        "train.batch_size",
        "model.max_length",
        "train.gradient_checkpointing",
        "model.quantization",
    ):
        assert fix in output
    (partial,) = (tmp_path / "runs" / "tiny").glob("*.partial")
    assert json.loads((partial / "provenance.json").read_text())["status"] == "failed"
    assert f"resume with: finetune train --resume {partial}" in output


def _huge_config_dir(path: Path) -> Path:
    """A model directory holding only the config of a 70B-parameter Llama: no weights at all."""
    from transformers import LlamaConfig

    path.mkdir()
    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
    )
    config.save_pretrained(path)
    return path


def test_a_model_too_large_for_the_machine_is_refused_from_its_config(
    tiny_recipe, tmp_path, monkeypatch, capsys
):
    huge = _huge_config_dir(tmp_path / "huge")
    started = time.monotonic()
    code, output = run_cli(
        monkeypatch, capsys, "train", str(tiny_recipe(model={"base": str(huge)}))
    )
    assert code == 2 and "Traceback" not in output
    assert (
        f"model.base: '{huge}' has 70.55B parameters; its weights alone need at least 262.8 GiB"
        in output
    )
    assert "Use a smaller model" in output and "model.check_memory: false" in output
    assert time.monotonic() - started < 60
    assert not (tmp_path / "runs").exists(), "refused before a run directory was opened"


def test_full_fine_tuning_counts_gradients_and_optimizer_state(tiny_model_dir, monkeypatch):
    from finetune import hardware
    from finetune.models import check_fits, parameter_count, resolve

    source = resolve(str(tiny_model_dir))
    params = parameter_count(source)
    from transformers import AutoModelForCausalLM

    assert params == AutoModelForCausalLM.from_pretrained(tiny_model_dir).num_parameters()
    monkeypatch.setattr(hardware, "free_memory", lambda: (params * 4 * 2, "a test machine"))
    check_fits(source, dtype=torch.float32, training="lora")
    with pytest.raises(
        FinetuneError, match="gradients and AdamW state for full fine-tuning need at least"
    ):
        check_fits(source, dtype=torch.float32, training="full")
    check_fits(source, dtype=torch.bfloat16, training="full")


# --- security ----------------------------------------------------------------------------------


CUSTOM_CODE = """
from pathlib import Path
Path({marker!r}).write_text("ran")
from transformers import LlamaConfig, LlamaForCausalLM

class CustomConfig(LlamaConfig):
    model_type = "tiny-custom"

class CustomModel(LlamaForCausalLM):
    config_class = CustomConfig
"""


def test_model_code_never_runs_unless_the_recipe_trusts_it(tiny_model_dir, tmp_path):
    import shutil

    from finetune.models import load_language_model, resolve

    model_dir = tmp_path / "remote-code-model"
    shutil.copytree(tiny_model_dir, model_dir)
    marker = tmp_path / "code-ran"
    (model_dir / "custom_model.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    config = json.loads((model_dir / "config.json").read_text())
    config["model_type"] = "tiny-custom"
    config["auto_map"] = {
        "AutoConfig": "custom_model.CustomConfig",
        "AutoModelForCausalLM": "custom_model.CustomModel",
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        FinetuneError, match=r"Set model\.trust_remote_code: true only if you trust"
    ):
        load_language_model(resolve(str(model_dir)))
    assert not marker.exists()
    # The same model with the recipe's consent: its code runs (so the refusal above was real).
    model = load_language_model(resolve(str(model_dir)), trust_remote_code=True)
    assert marker.read_text() == "ran" and type(model).__name__ == "CustomModel"


def test_no_code_path_imports_or_evaluates_strings_from_a_recipe():
    """The package never calls eval/exec/__import__, and imports by name only in `deps.require`,
    always with a literal module name: no recipe value can choose code to run."""
    offenders = []
    for path in sorted((REPO / "finetune").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = (
                node.func.attr
                if isinstance(node.func, ast.Attribute)
                else getattr(node.func, "id", "")
            )
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if name in ("eval", "exec", "__import__", "compile") and isinstance(
                node.func, ast.Name
            ):
                offenders.append(f"{where} calls {name}")
            if name == "import_module" and path.name != "deps.py":
                offenders.append(f"{where} imports by name")
            if name == "require" and not (node.args and isinstance(node.args[0], ast.Constant)):
                offenders.append(f"{where} requires a computed module name")
    assert offenders == []


SECRETS = {
    "WANDB_API_KEY": "planted-wandb-0123456789abcdef0123456789abcdef",
    "HF_TOKEN": "hf_plantedPLANTEDplanted0123456789",
    "OPENAI_API_KEY": "sk-planted-0123456789abcdefghij",
}


# What library noise looks like on a command's stderr: warnings, deprecations, notices from
# libraries, progress-bar frames. finetune/quiet.py is the one place that silences it.
LIBRARY_NOISE = re.compile(r"Warning|warnings\.warn|deprecat|Skipping|Failed to load|\r")


def test_keys_in_the_environment_are_written_nowhere_and_stderr_has_no_library_noise(
    tiny_recipe, tmp_path
):
    recipe = tiny_recipe(
        train={"max_steps": 2},
        eval={
            "baselines": [{"name": "base zero-shot"}],
            "bootstrap_samples": 50,
            "latency_items": 2,
            "timing": {"rounds": 6, "throughput_items": 4},
        },
        tracking={"runs_dir": str(tmp_path / "runs"), "wandb": {"mode": "offline", "project": "p"}},
    )
    env = {**os.environ, **SECRETS}
    outputs = []
    for args in (
        ["train", str(recipe)],
        ["eval", str(recipe)],  # without --run: the recipe's latest finished run
        ["report", "{run}"],
    ):
        run = next((tmp_path / "runs" / "tiny").glob("2*"), None)
        args = [a.replace("{run}", str(run)) for a in args]
        done = finetune_process(*args, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert [line for line in done.stderr.splitlines() if LIBRARY_NOISE.search(line)] == []
        outputs += [done.stdout, done.stderr]
    assert f"evaluating the latest finished run of tiny: {run}" in outputs[3]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files) and any(p.name == "report.html" for p in files)
    for secret in SECRETS.values():
        assert not [str(p) for p in files if secret.encode() in p.read_bytes()]
        assert not [o for o in outputs if secret in o]


# --- no network ----------------------------------------------------------------------------------

NO_HUB = {
    "offline mode": {"HF_HUB_OFFLINE": "1"},
    # A reserved address (TEST-NET-1) that nothing answers: the look-up must time out, not hang.
    "unreachable hub": {
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": "http://192.0.2.1",
        "HF_HUB_ETAG_TIMEOUT": "3",
        "HF_HUB_DOWNLOAD_TIMEOUT": "3",
    },
}
HUB_CASES = {
    "model": (
        "train",
        {"model": {"base": "someone/no-such-model"}},
        "model.base: could not load 'someone/no-such-model' from the Hugging Face Hub",
        "Sources that work offline: the registry models (smollm2-135m-instruct, ",
    ),
    "dataset": (
        "prepare",
        {"data": {"source": "someone/no-such-dataset"}},
        "data.source: could not load Hub dataset 'someone/no-such-dataset'",
        "Sources that work offline: the built-in datasets (bbc-news, rotten-tomatoes, ",
    ),
}


@pytest.mark.parametrize("network", NO_HUB)
@pytest.mark.parametrize("kind", HUB_CASES)
def test_hub_look_ups_without_the_hub_fail_fast_naming_offline_sources(
    tiny_recipe, tmp_path, network, kind
):
    command, sections, message, sources = HUB_CASES[kind]
    recipe = tiny_recipe(**sections)
    started = time.monotonic()
    done = finetune_process(
        command, str(recipe), cwd=tmp_path, env={**os.environ, **NO_HUB[network]}, timeout=300
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert message in done.stderr and sources in done.stderr
    assert time.monotonic() - started < 45, "huggingface_hub alone retries for ~35 s here"
    assert not (tmp_path / "runs").exists()


def test_without_the_hub_a_cached_hub_model_loads_from_the_cache(
    tiny_model_dir, tmp_path, monkeypatch
):
    import shutil

    from huggingface_hub import constants

    from finetune.models import load_language_model, resolve

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--someone--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    started = time.monotonic()
    source = resolve("someone/tiny")
    assert source.kind == "hub" and source.location == str(repo / "snapshots" / "abc123")
    assert source.identity == {"hub_id": "someone/tiny"}, "the same identity as when fetched"
    assert load_language_model(source).config.num_hidden_layers == 2
    assert time.monotonic() - started < 30


def test_wandb_online_without_a_reachable_server_falls_back_to_offline(
    tiny_recipe, monkeypatch, caplog
):
    from finetune import tracking

    monkeypatch.setenv("WANDB_API_KEY", SECRETS["WANDB_API_KEY"])
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(tracking, "ONLINE_WAIT", 5)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="finetune.tracking"):
        run = train(
            load_recipe(
                path := tiny_recipe(train={"max_steps": 1}, tracking={"wandb": {"mode": "online"}})
            ),
            recipe_path=path,
        ).run_dir
    assert "W&B online is unavailable" in caplog.text and "logging offline instead" in caplog.text
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert time.monotonic() - started < 90


# --- extreme rows --------------------------------------------------------------------------------


def test_rows_longer_than_the_csv_field_limit_are_read_and_cut_to_max_length(tiny_recipe, tmp_path):
    from finetune.data import load_split

    long_text = "a delight " * 30_000  # 300 KB: over the csv module's default 128 KiB field limit
    rows = [
        f"r{i},{'fresh and funny' if i % 2 else 'dull and lifeless'} {i},{('rotten', 'fresh')[i % 2]}"
        for i in range(40)
    ]
    train_csv, test_csv = tmp_path / "train.csv", tmp_path / "test.csv"
    train_csv.write_text(
        "\n".join(["id,text,label", f'long,"{long_text}",fresh', *rows[:30]]) + "\n"
    )
    test_csv.write_text("\n".join(["id,text,label", *rows[30:]]) + "\n")
    recipe = tiny_recipe(
        data={"source": None, "split_files": {"train": str(train_csv), "test": str(test_csv)}},
        train={"max_steps": 1},
    )
    loaded = load_recipe(recipe)
    texts = {
        r["id"]: r["text"] for split in ("train", "validation") for r in load_split(loaded, split)
    }
    assert texts["long"] == long_text and len(texts) == 31
    summary = train(loaded, recipe_path=recipe).summary
    assert summary["truncated_examples"] == 1  # in train or validation, cut to model.max_length


def test_write_atomic_names_the_file_on_a_full_disk(tmp_path, monkeypatch):
    import finetune.files

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(finetune.files.os, "fsync", full)
    with pytest.raises(OSError) as info:
        write_atomic(tmp_path / "x.json", "{}")
    assert info.value.filename == str(tmp_path / "x.json")
    assert list(tmp_path.iterdir()) == [], "the temporary file is removed"
