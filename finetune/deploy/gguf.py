"""`finetune export RUN --gguf`: a decoder run as GGUF for llama.cpp and Ollama.

The converter is llama.cpp's own `convert_hf_to_gguf.py` (and `convert_lora_to_gguf.py`), with
its `gguf-py`, taken once from the source archive of the installed llama-cpp-python, so they
match the runtime that loads the result; quantization is llama.cpp's, through the bindings.

- `--gguf [--quant f16|q8_0|q4_k_m]`: the adapter merged into the base (in float32), converted
  to f16 or q8_0, and quantized from f16 for q4_k_m. Beside it: an Ollama `Modelfile` whose
  template rebuilds the prompt the run was trained on (its chat template rendered around the
  instruction, given as the system prompt, and the text), its stop text and greedy decoding.
- `--adapter-gguf`: the LoRA as a GGUF adapter for `llama-server --lora` on the base's GGUF.

What GGUF cannot carry is refused with the recipe key that caused it: a classifier or
encoder-decoder head, and for an adapter DoRA and trained whole modules; rsLoRA's scale is
folded into alpha, which is all the adapter format stores.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from finetune import fetch
from finetune.deps import require
from finetune.errors import FinetuneError
from finetune.models import resolve
from finetune.models.heads import CAUSAL_LM, run_head
from finetune.recipe import Recipe
from finetune.tasks.prompts import PromptFormat, render_prompt
from finetune.train import export_merged

# llama.cpp's file types, by the names its bindings give them.
QUANTS = {"f16": "LLAMA_FTYPE_MOSTLY_F16", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}  # fmt: skip
CONVERTER_FILES = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")
CONVERTER_DIRS = ("gguf-py/", "conversion/")
_SYSTEM, _PROMPT = "\x01SYSTEM\x01", "\x01PROMPT\x01"


def export_gguf(
    recipe: Recipe, run_dir: Path, out: Path | None = None, quant: str = "q8_0"
) -> Path:
    """The run's model as `<out>/model-<quant>.gguf` (default `<run>/gguf/`), with a Modelfile."""
    _refuse_head(run_dir)
    if quant not in QUANTS:
        raise FinetuneError(f"--quant must be one of {', '.join(QUANTS)}; found {quant!r}")
    out = Path(out) if out else run_dir / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"model-{quant}.gguf"
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        model_dir = _full_model(run_dir, Path(tmp))
        direct = quant if quant != "q4_k_m" else "f16"
        converted = Path(tmp) / f"model-{direct}.gguf"
        convert(model_dir, converted, direct)
        if quant == "q4_k_m":
            quantize(converted, Path(tmp) / target.name, quant)
            converted = Path(tmp) / target.name
        os.replace(converted, target)
    write_modelfile(run_dir, target, recipe)
    return target


def export_adapter_gguf(recipe: Recipe, run_dir: Path, out: Path | None = None) -> Path:
    """The run's LoRA adapter as `<out>/adapter-f16.gguf`, for `llama-server --lora`."""
    _refuse_head(run_dir)
    adapter = run_dir / "adapter"
    if not adapter.is_dir():
        raise FinetuneError(f"{run_dir}: no adapter/ (train.method: full); export --gguf instead")
    config = json.loads((adapter / "adapter_config.json").read_text())
    _refuse_adapter(config)
    out = Path(out) if out else run_dir / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    target = out / "adapter-f16.gguf"
    base = Path(resolve(recipe.model.base).location)
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        plain = _without_rslora(adapter, config, Path(tmp) / "adapter")
        script = converter_dir() / "convert_lora_to_gguf.py"
        _run_converter([script, "--base", base, "--outfile", target, "--outtype", "f16", plain])
    return target


def _refuse_head(run_dir: Path) -> None:
    head = run_head(run_dir)
    if head != CAUSAL_LM:
        raise FinetuneError(
            f"{run_dir}: model.head is {head}; llama.cpp runs decoder language models only. "
            "Encoders and encoder-decoders keep their transformers format (finetune export "
            "--merge, or the run's model/ or adapter/), served with finetune serve"
        )


def _refuse_adapter(config: dict[str, Any]) -> None:
    if config.get("use_dora"):
        raise FinetuneError(
            "lora.use_dora: DoRA's magnitude vectors have no GGUF adapter form; "
            "export the merged model with --gguf instead"
        )
    if config.get("modules_to_save"):
        raise FinetuneError(
            f"modules_to_save ({', '.join(config['modules_to_save'])}): whole trained modules "
            "have no GGUF adapter form; export the merged model with --gguf instead"
        )


def _without_rslora(adapter: Path, config: dict[str, Any], copy: Path) -> Path:
    """The adapter as plain LoRA: rsLoRA scales by alpha/sqrt(r), the GGUF adapter by alpha/r,
    so alpha becomes alpha*sqrt(r) in a copy; other adapters are used as they are."""
    if not config.get("use_rslora"):
        return adapter
    shutil.copytree(adapter, copy)
    config = {
        **config,
        "use_rslora": False,
        "lora_alpha": config["lora_alpha"] * math.sqrt(config["r"]),
    }
    (copy / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return copy


def _full_model(run_dir: Path, tmp: Path) -> Path:
    """A transformers directory of the whole model: the merged adapter, or a full run's model."""
    if (run_dir / "adapter").is_dir():
        return export_merged(run_dir, tmp / "merged", dtype="float32")
    return run_dir / "model"


def convert(model_dir: Path, out: Path, outtype: str) -> None:
    script = converter_dir() / "convert_hf_to_gguf.py"
    _run_converter([script, model_dir, "--outfile", out, "--outtype", outtype])


def _run_converter(args: list[Any]) -> None:
    """One of llama.cpp's converters, in a child process, with its own gguf-py first."""
    here = converter_dir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here / "gguf-py"), str(here)])}
    done = subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise FinetuneError(f"llama.cpp's {Path(str(args[0])).name} failed:\n{tail}")


def quantize(source: Path, target: Path, quant: str) -> None:
    llama_cpp = require("llama_cpp", package="llama-cpp-python", needed_for="GGUF quantization")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    code = llama_cpp.llama_model_quantize(
        str(source).encode(), str(target).encode(), ctypes.byref(params)
    )
    if code != 0:
        raise FinetuneError(f"llama.cpp could not quantize {source.name} to {quant} (code {code})")


def converter_dir() -> Path:
    """llama.cpp's converters and gguf-py from the installed llama-cpp-python's source archive,
    extracted once into the cache."""
    from filelock import FileLock

    version = importlib.metadata.version("llama_cpp_python")
    target = fetch.cache_dir() / f"llama.cpp-converter-{version}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / CONVERTER_FILES[0]).is_file():
            _extract(fetch.sdist_for(f"llama-cpp-python=={version}"), target)
    return target


def _extract(archive: Path, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            _, _, inside = member.name.partition("/vendor/llama.cpp/")
            wanted = inside in CONVERTER_FILES or inside.startswith(CONVERTER_DIRS)
            if member.isfile() and wanted and ".." not in Path(inside).parts:
                path = tmp / inside
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(tar.extractfile(member).read())
    if not (tmp / CONVERTER_FILES[0]).is_file():
        shutil.rmtree(tmp)
        raise FinetuneError(f"{archive.name} holds no vendor/llama.cpp/{CONVERTER_FILES[0]}")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def modelfile(run_dir: Path, gguf: Path, recipe: Recipe) -> str:
    """An Ollama Modelfile that rebuilds the run's trained prompt: the instruction as the
    system prompt, the user's text as the prompt, and generation stopping at the answer's end."""
    from transformers import AutoTokenizer

    fmt = PromptFormat.load(run_dir)
    marked = PromptFormat(**{**fmt.__dict__, "instruction": _SYSTEM})
    tokenizer = AutoTokenizer.from_pretrained(
        run_dir / "adapter" if (run_dir / "adapter").is_dir() else run_dir / "model"
    )
    template = render_prompt(marked, tokenizer, _PROMPT) + fmt.answer_prefix
    template = template.replace(_SYSTEM, "{{ .System }}").replace(_PROMPT, "{{ .Prompt }}")
    stops = {s for s in (fmt.answer_suffix.strip(), tokenizer.eos_token) if s}
    lines = [
        f"FROM ./{gguf.name}",
        f'TEMPLATE """{template}"""',
        f'SYSTEM """{fmt.instruction}"""',
        *(f'PARAMETER stop "{s}"' for s in sorted(stops)),
        "PARAMETER temperature 0",
        f"PARAMETER num_predict {recipe.eval.max_new_tokens}",
    ]
    return "\n".join(lines) + "\n"


def write_modelfile(run_dir: Path, gguf: Path, recipe: Recipe) -> Path:
    path = gguf.parent / "Modelfile"
    path.write_text(modelfile(run_dir, gguf, recipe), encoding="utf-8")
    return path
