"""The lock file agrees with pyproject.toml, and the installed environment is the lock's.

`make setup` installs `requirements.lock` (pip-compile's output, `make lock`); these checks fail
when someone edits a requirement in pyproject.toml without locking again, or when .venv holds
versions other than the locked ones.
"""

from __future__ import annotations

import importlib.metadata
import re

import pytest
import tomllib
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOCK = REPO / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)\s*(?:#\s*via (.*))?$")


def _makefile(name: str) -> str:
    match = re.search(rf"^{name} [?:]?= (.+)$", (REPO / "Makefile").read_text(), re.M)
    assert match, f"Makefile sets no {name}"
    return match.group(1).strip()


def _pins(text: str) -> dict[str, tuple[Version, str]]:
    """{name: (pinned version, what it is there for)} from pip-compile's line annotations."""
    pins = {}
    for line in text.splitlines():
        if match := PIN.match(line):
            name, version, via = match.groups()
            pins[canonicalize_name(name)] = (Version(version), via or "")
    return pins


def _direct() -> list[Requirement]:
    """The project's requirements with the extras `make setup` installs."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = _makefile("EXTRAS").split(",")
    specs = project["dependencies"] + [
        s for e in extras for s in project["optional-dependencies"][e]
    ]
    return [Requirement(s) for s in specs]


def problems(requirements: list[Requirement], pins: dict, torch_spec: str) -> list[str]:
    """Every way the lock and the requirements disagree, one line each."""
    found = []
    for req in requirements:
        name = canonicalize_name(req.name)
        if name == "torch":  # not in the lock: TORCH_SPEC pins it
            (pinned,) = Requirement(torch_spec).specifier
            version = Version(pinned.version)
            if version not in req.specifier:
                found.append(f"TORCH_SPEC {torch_spec} is outside pyproject's {req}")
        elif name not in pins:
            found.append(f"{req} is not in the lock")
        elif pins[name][0] not in req.specifier:
            found.append(f"{req}: the lock pins {pins[name][0]}")
    wanted = {canonicalize_name(r.name) for r in requirements}
    for name, (_, via) in pins.items():
        if "finetune (pyproject.toml)" in via and name not in wanted:
            found.append(f"{name} is locked for pyproject.toml, which no longer asks for it")
    return found


def test_the_lock_satisfies_pyproject_and_holds_nothing_it_dropped():
    pins = _pins(LOCK.read_text())
    assert problems(_direct(), pins, _makefile("TORCH_SPEC")) == [], "run `make lock`"
    assert "torch" not in pins and "nvidia-cublas" not in pins


@pytest.mark.parametrize(
    ("requirement", "expected"),
    [
        ("peft>=0.22", ["peft>=0.22: the lock pins 0.21.2"]),
        ("rich>=13", []),
        ("tomli-w>=1", ["tomli-w>=1 is not in the lock"]),
        ("torch>=2.14", ["TORCH_SPEC torch==2.13.0 is outside pyproject's torch>=2.14"]),
    ],
)
def test_a_disagreement_is_named(requirement, expected):
    pins = _pins("peft==0.21.2  # via trl\nrich==15.0.0  # via typer\n")
    assert problems([Requirement(requirement)], pins, "torch==2.13.0") == expected


def test_a_dropped_requirement_is_named():
    pins = _pins("peft==0.21.2  # via finetune (pyproject.toml), trl\n")
    assert problems([], pins, "torch==2.13.0") == [
        "peft is locked for pyproject.toml, which no longer asks for it"
    ]


def test_the_environment_is_the_lock():
    installed = {
        canonicalize_name(d.metadata["Name"]): Version(d.version)
        for d in importlib.metadata.distributions()
    }
    pins = _pins(LOCK.read_text())
    differ = {
        name: (str(version), str(installed.get(name)))
        for name, (version, _) in pins.items()
        if installed.get(name) != version and name != "setuptools"  # the venv's own copy
    }
    assert differ == {}, "(locked, installed): run `make setup` again"
