"""Run directories: `<runs_dir>/<recipe name>/<run id>/` with the resolved recipe, provenance and logs.

A run is created as `<run id>.partial` and renamed to `<run id>` only when it completes,
so a crash never leaves something that looks like a finished run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from finetune.errors import FinetuneError
from finetune.files import write_atomic, write_json
from finetune.models import ModelSource
from finetune.recipe import Recipe, recipe_to_dict

if TYPE_CHECKING:
    from finetune.data import PreparedData

PARTIAL_SUFFIX = ".partial"
TRACKED_PACKAGES = (
    "finetune",
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "accelerate",
    "bitsandbytes",
    "wandb",
)
log = logging.getLogger("finetune")


@dataclass
class Run:
    """A run directory being written. `path` is the partial directory until `finish()`."""

    path: Path
    final_path: Path
    provenance: dict[str, Any] = field(default_factory=dict)
    _log_handler: logging.Handler | None = None

    def record(self, **facts: Any) -> None:
        """Add facts to the provenance (data fingerprint, base-model identity, ...) and save it."""
        self.provenance.update(facts)
        write_json(self.path / "provenance.json", self.provenance)

    def finish(self) -> Path:
        self.record(status="complete", end_time=_now())
        self._close_log()
        os.rename(self.path, self.final_path)
        self.path = self.final_path
        return self.final_path

    def fail(self, error: BaseException) -> None:
        try:
            self.record(status="failed", end_time=_now(), error=f"{type(error).__name__}: {error}")
        except OSError as exc:  # a full disk must not hide the error that stopped the run
            log.warning("could not record the failure in %s: %s", self.path, exc)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_handler is not None:
            for name in ("finetune", "transformers", "peft", "trl"):
                logging.getLogger(name).removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None


def record_inputs(
    run: Run, prepared: PreparedData, model: ModelSource, teacher: dict | None = None
) -> None:
    """Pin what a run was made from: the prepared data's fingerprint, the base model's identity
    and, when a teacher labelled the training rows, its card (`data.teacher.teacher_card`)."""
    if teacher is not None:
        run.record(teacher=teacher)
    run.record(
        data={
            "name": prepared.card["name"],
            "path": str(prepared.path),
            "fingerprint": prepared.fingerprint,
            "rows": prepared.card["rows"],
        },
        base_model={"ref": model.ref, "kind": model.kind, **model.identity},
    )


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def start_run(
    recipe: Recipe, *, recipe_path: str | Path, overrides: list[str] = (), run_id: str | None = None
) -> Run:
    """Create `<run id>.partial` with the resolved recipe, provenance and a log file."""
    run_id = run_id or new_run_id()
    parent = Path(recipe.tracking.runs_dir) / recipe.name
    final = parent / run_id
    path = parent / f"{run_id}{PARTIAL_SUFFIX}"
    (path / "logs").mkdir(parents=True, exist_ok=False)
    write_atomic(path / "recipe.yaml", yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    run = Run(path=path, final_path=final)
    run.record(**_provenance(recipe, recipe_path, overrides, run_id))
    run._log_handler = _attach_log_file(path / "logs" / "run.log")
    log.info("run %s started in %s", run_id, path)
    return run


@contextlib.contextmanager
def open_run(
    recipe: Recipe, *, recipe_path: str | Path, overrides: list[str] = ()
) -> Iterator[Run]:
    """Start a run; rename it complete on success, mark it failed (still partial) on any error."""
    run = start_run(recipe, recipe_path=recipe_path, overrides=overrides)
    try:
        yield run
    except BaseException as exc:
        run.fail(exc)
        raise
    run.finish()


def reopen_run(path: str | Path) -> Run:
    """Continue an interrupted (`.partial`) run in place; its provenance notes each resumption."""
    path = Path(path)
    if is_complete(path):
        raise FinetuneError(f"{path}: this run is complete; there is nothing to resume")
    if not path.name.endswith(PARTIAL_SUFFIX) or not (path / "provenance.json").is_file():
        raise FinetuneError(
            f"{path}: not an interrupted run directory (expected <runs_dir>/<recipe>/<run id>{PARTIAL_SUFFIX})"
        )
    provenance = json.loads((path / "provenance.json").read_text())
    run = Run(
        path=path,
        final_path=path.with_name(path.name.removesuffix(PARTIAL_SUFFIX)),
        provenance=provenance,
    )
    resumed = [*provenance.get("resumed", []), {"time": _now(), "command": sys.argv}]
    run.record(
        status="running", error=None, end_time=None, resumed=resumed, git_at_resume=git_state()
    )
    run._log_handler = _attach_log_file(path / "logs" / "run.log")
    log.info("run %s resumed in %s", provenance.get("run_id"), path)
    return run


def is_complete(path: str | Path) -> bool:
    path = Path(path)
    if path.name.endswith(PARTIAL_SUFFIX) or not (path / "provenance.json").is_file():
        return False
    return json.loads((path / "provenance.json").read_text()).get("status") == "complete"


def latest_run(recipe: Recipe) -> Path:
    """The recipe's most recently finished run in `<runs_dir>/<recipe name>/`, as `make eval`
    takes it; a clear error naming the directory when there is none."""
    parent = Path(recipe.tracking.runs_dir) / recipe.name
    finished = [p for p in parent.glob("*") if p.is_dir() and is_complete(p)]
    if not finished:
        raise FinetuneError(
            f"no finished run of recipe '{recipe.name}' in {parent}; train one with "
            f"`finetune train RECIPE`, or give one with --run RUN_DIR"
        )
    return max(finished, key=_finished_at)


def _finished_at(path: Path) -> tuple[str, str]:
    """(end time, run id): ISO times in UTC sort as text; the id breaks a same-second tie."""
    provenance = json.loads((path / "provenance.json").read_text())
    return provenance.get("end_time") or "", path.name


def data_fingerprint(path: str | Path) -> str | None:
    """The fingerprint of the prepared data the run was trained on (None if not recorded)."""
    provenance = json.loads((Path(path) / "provenance.json").read_text())
    return provenance.get("data", {}).get("fingerprint")


def check_same_base(run_dir: str | Path, identity: dict[str, Any]) -> None:
    """The base model loading now must be the one the run was trained on (adapters fit only it)."""
    provenance = json.loads((Path(run_dir) / "provenance.json").read_text())
    trained_on = {
        k: v for k, v in provenance.get("base_model", {}).items() if k not in ("ref", "kind")
    }
    if trained_on and trained_on != identity:
        raise FinetuneError(
            f"{run_dir}: the adapter was trained on base model {trained_on}, but {identity} is what loads now; "
            "restore that base model (or its cache) to use this run"
        )


def _provenance(
    recipe: Recipe, recipe_path: str | Path, overrides: list[str], run_id: str
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "recipe": recipe.name,
        "recipe_path": str(recipe_path),
        "overrides": list(overrides),
        "command": sys.argv,
        "status": "running",
        "seed": recipe.seed,
        "start_time": _now(),
        "end_time": None,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git": git_state(),
        "packages": package_versions(),
    }


def git_state() -> dict[str, Any]:
    """Commit of the workbench's source tree and whether it has uncommitted changes."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Each installed package's version (None when it is not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _attach_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("finetune", "transformers", "peft", "trl"):
        logging.getLogger(name).addHandler(handler)
    # The libraries keep their own verbosity (warnings); the workbench's own steps go in at INFO.
    logging.getLogger("finetune").setLevel(logging.INFO)
    return handler


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
