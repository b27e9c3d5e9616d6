"""`finetune export --gguf` and `--adapter-gguf` with the real llama.cpp converter and runtime.

The model is tiny (2 layers, random) but speaks SmolLM2's tokenizer, which llama.cpp's
converter knows; fully fine-tuned, it tells the test reviews apart, so the round trip compares
real decisions: the exported GGUF, evaluated as an engine baseline on the run's test items,
answers as the specialist. The Modelfile's template is checked against the chat template
rendered independently; what GGUF cannot carry is refused by name."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import yaml
from conftest import build_tiny_model, evaluated_run, tiny_recipe_factory, train_from

from finetune.deploy import gguf as export
from finetune.errors import FinetuneError
from finetune.recipe import load_recipe


@pytest.fixture(scope="module")
def smol_tiny_dir(gguf, tmp_path_factory):
    """The tiny random Llama with SmolLM2-135M-Instruct's tokenizer and chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent)
    return build_tiny_model(tmp_path_factory.mktemp("smol-tiny"), tokenizer=tokenizer)


def _recipe(root, model_dir, **train):
    return tiny_recipe_factory(root, model_dir)(
        task={"type": "classification", "labels": ["fresh", "rotten"],
              "instruction": "Sentiment?", "list_labels": "never"},
        model={"base": str(model_dir), "max_length": 64, "dtype": "float32"},
        data={"split": {"train": 0.6, "validation": 0.1, "test": 0.3}},
        train={"eval_every": 30, "save_every": 60, **train},
        eval={"tfidf": {"enabled": False}, "memory": "shared"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def full_run(smol_tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-full")
    return train_from(_recipe(root, smol_tiny_dir, method="full", max_steps=60)).run_dir


@pytest.fixture(scope="module")
def lora_run(smol_tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-lora")
    return train_from(_recipe(root, smol_tiny_dir, max_steps=6)).run_dir


def test_the_exported_gguf_answers_as_the_specialist(full_run, tmp_path):
    """Evaluated as an engine baseline beside the specialist: the same label on every test
    item, and label log-likelihoods within the f16 rounding of the weights."""
    recipe = load_recipe(full_run / "recipe.yaml")
    path = export.export_gguf(recipe, full_run, tmp_path / "gguf", "f16")
    assert path.name == "model-f16.gguf" and (tmp_path / "gguf" / "Modelfile").is_file()
    data = yaml.safe_load((full_run / "recipe.yaml").read_text())
    data["eval"]["baselines"] = [{"name": "gguf", "engine": {"model": str(path)}}]
    data["tracking"]["runs_dir"] = str(tmp_path / "runs")
    copy = tmp_path / "runs" / full_run.parent.name / full_run.name
    shutil.copytree(full_run, copy, ignore=shutil.ignore_patterns("eval"))
    (copy / "recipe.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    evaluated = evaluated_run(copy / "recipe.yaml", copy)
    labels = [p["predictions"]["specialist"]["prediction"] for p in evaluated.predictions]
    assert len(set(labels)) == 2, labels  # the run decides, so agreement means something
    for record in evaluated.predictions:
        ours, theirs = record["predictions"]["specialist"], record["predictions"]["gguf"]
        assert theirs["prediction"] == ours["prediction"], record["id"]
        for label in ("fresh", "rotten"):
            assert theirs["label_logprobs"][label] == pytest.approx(
                ours["label_logprobs"][label], abs=0.02
            )


def test_q4_k_m_is_quantized_from_f16_by_llama_cpp(full_run, tmp_path):
    import llama_cpp
    from gguf import GGUFReader

    recipe = load_recipe(full_run / "recipe.yaml")
    path = export.export_gguf(recipe, full_run, tmp_path, "q4_k_m")
    reader = GGUFReader(str(path))
    file_type = reader.fields["general.file_type"]
    assert int(file_type.parts[file_type.data[0]][0]) == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    # Rows of 64 are too short for k-quants' 256-wide blocks: llama.cpp falls back per tensor.
    types = {t.tensor_type.name for t in reader.tensors}
    assert "F16" not in types and types & {"Q4_K", "Q5_0", "Q6_K", "Q8_0"}, types
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Modelfile", "model-q4_k_m.gguf"]


def test_the_modelfile_rebuilds_the_trained_prompt(full_run, tmp_path):
    """The template is the run's chat template rendered around Ollama's system prompt and
    prompt, exactly as training put the instruction and the text in the user turn."""
    from transformers import AutoTokenizer

    recipe = load_recipe(full_run / "recipe.yaml")
    text = export.modelfile(full_run, tmp_path / "model-q8_0.gguf", recipe)
    tokenizer = AutoTokenizer.from_pretrained(full_run / "model")
    template = tokenizer.apply_chat_template(
        [{"role": "user", "content": "{{ .System }}\n\n{{ .Prompt }}"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == (
        "FROM ./model-q8_0.gguf\n"
        f'TEMPLATE """{template}"""\n'
        'SYSTEM """Sentiment?"""\n'
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER temperature 0\n"
        f"PARAMETER num_predict {recipe.eval.max_new_tokens}\n"
    )


def test_the_adapter_gguf_on_the_base_gguf_gives_the_merged_models_logits(
    lora_run, smol_tiny_dir, tmp_path
):
    import llama_cpp

    recipe = load_recipe(lora_run / "recipe.yaml")
    adapter = export.export_adapter_gguf(recipe, lora_run, tmp_path)
    base = tmp_path / "base-f16.gguf"
    export.convert(smol_tiny_dir, base, "f16")
    merged = export.export_gguf(recipe, lora_run, tmp_path / "merged", "f16")
    prompt = b"<|im_start|>user\nSentiment?\n\ngreat fun<|im_end|>\n<|im_start|>assistant\n"

    def last_logits(model_path, lora=None):
        llm = llama_cpp.Llama(
            model_path=str(model_path), lora_path=lora and str(lora), n_ctx=128, logits_all=True,
            verbose=False, seed=0,
        )  # fmt: skip
        llm.eval(llm.tokenize(prompt, special=True))
        return np.array(llm.scores[llm.n_tokens - 1])

    with_adapter = last_logits(base, adapter)
    assert np.abs(with_adapter - last_logits(merged)).max() < 0.05
    assert np.abs(with_adapter - last_logits(base)).max() > 0.05  # the adapter moved them


def test_what_gguf_cannot_carry_is_refused_by_name(lora_run, tmp_path):
    recipe = load_recipe(lora_run / "recipe.yaml")
    dora = tmp_path / "dora"
    shutil.copytree(lora_run, dora)
    config = json.loads((dora / "adapter" / "adapter_config.json").read_text())
    (dora / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(FinetuneError, match=r"^lora.use_dora: DoRA's magnitude vectors"):
        export.export_adapter_gguf(recipe, dora)
    saved = {**config, "modules_to_save": ["score"]}
    (dora / "adapter" / "adapter_config.json").write_text(json.dumps(saved))
    with pytest.raises(FinetuneError, match=r"^modules_to_save \(score\): whole trained modules"):
        export.export_adapter_gguf(recipe, dora)
    (dora / "head.json").write_text(json.dumps({"head": "sequence-classification", "labels": []}))
    with pytest.raises(FinetuneError, match=r"model\.head is sequence-classification; llama\.cpp"):
        export.export_gguf(recipe, dora)
    with pytest.raises(
        FinetuneError, match=r"--quant must be one of f16, q8_0, q4_k_m; found 'q3'"
    ):
        export.export_gguf(recipe, lora_run, tmp_path / "x", "q3")


def test_rslora_is_folded_into_alpha(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"r": 16, "lora_alpha": 8, "use_rslora": True}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    plain = export._without_rslora(adapter, config, tmp_path / "copy")
    folded = json.loads((plain / "adapter_config.json").read_text())
    # rsLoRA scales by alpha/sqrt(r) = 2; plain LoRA by alpha'/r, so alpha' = 2 * 16
    assert folded["use_rslora"] is False and folded["lora_alpha"] / folded["r"] == 8 / math.sqrt(16)
    assert (
        export._without_rslora(adapter, {**config, "use_rslora": False}, tmp_path / "c2") == adapter
    )


def test_the_export_command_writes_the_card_with_llama_cpp_and_ollama_usage(lora_run, tmp_path):
    from huggingface_hub import ModelCard
    from typer.testing import CliRunner

    from finetune.cli import app

    out = tmp_path / "gguf"
    result = CliRunner().invoke(
        app,
        ["export", str(lora_run), "--gguf", "--quant", "f16", "--adapter-gguf", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "Modelfile", "README.md", "adapter-f16.gguf", "model-f16.gguf"
    ]  # fmt: skip
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "gguf" and "gguf" in card.data.tags
    assert "llama-server -m model-f16.gguf --port 8080" in card.text
    assert "ollama create tiny -f Modelfile && ollama run tiny" in card.text
    assert "llama-server -m <the base model>.gguf --lora adapter-f16.gguf" in card.text
    text = (out / "README.md").read_text()
    assert "[More Information Needed]" not in text and "{{" not in text  # no template left
