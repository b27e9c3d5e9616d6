"""Experiment tracking behind one small interface; Weights & Biases is the implementation.

`open_tracker(recipe, run_dir, ...)` returns a `Tracker`. The W&B mode comes from the recipe
(`tracking.wandb.mode`): `online` only when `WANDB_API_KEY` is set and the server answers
within ONLINE_WAIT seconds (else offline, with a warning); `offline` writes run files under
`<run dir>/wandb/` for a later `wandb sync`; `disabled` logs nothing. The key is read from the
environment by wandb itself; the workbench never passes it, prints it or writes it anywhere.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

from finetune.deps import require

log = logging.getLogger(__name__)
ONLINE_WAIT = 20  # seconds W&B may take to reach its server before the run goes offline


class Tracker(Protocol):
    """What the stages log: scalars by step, images, tables and directories as artifacts."""

    run_id: str | None

    def log(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_image(self, key: str, path: str | Path) -> None: ...

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None: ...

    def log_artifact(self, name: str, kind: str, path: str | Path) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def finish(self, ok: bool = True) -> None: ...


class NullTracker:
    """Tracking disabled (or not the main process): every call does nothing."""

    run_id = None

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_image(self, key: str, path: str | Path) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def log_artifact(self, name: str, kind: str, path: str | Path) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def finish(self, ok: bool = True) -> None:
        pass


class WandbTracker:
    def __init__(self, run: Any):
        self._run = run
        self._wandb = require("wandb", needed_for="tracking.wandb")
        self.run_id = run.id

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._run.log(metrics, step=step)

    def log_image(self, key: str, path: str | Path) -> None:
        self._run.log({key: self._wandb.Image(str(path))})

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        self._run.log({key: self._wandb.Table(columns=columns, data=rows)})

    def log_artifact(self, name: str, kind: str, path: str | Path) -> None:
        artifact = self._wandb.Artifact(name=name, type=kind)
        path = Path(path)
        if path.is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self._run.log_artifact(artifact)

    def summary(self, values: dict[str, Any]) -> None:
        self._run.summary.update(values)

    def finish(self, ok: bool = True) -> None:
        """End the W&B run; a stage that raised marks it failed (exit code 1)."""
        self._run.finish(exit_code=0 if ok else 1)


def wandb_mode(requested: str) -> str:
    """The mode actually used: `online` needs a key in the environment; nothing ever prompts for one."""
    if requested == "online" and not os.environ.get("WANDB_API_KEY"):
        log.warning(
            "tracking.wandb.mode is online but WANDB_API_KEY is not set: logging offline instead"
        )
        return "offline"
    return requested


def open_tracker(
    recipe: Any,
    run_dir: str | Path,
    *,
    job_type: str,
    config: dict[str, Any],
    name: str,
    resume_id: str | None = None,
    main_process: bool = True,
) -> Tracker:
    """Start tracking a stage of a run (`job_type`: train or eval) with `config` as the run config."""
    settings = recipe.tracking.wandb
    mode = wandb_mode(settings.mode)
    if mode == "disabled" or not main_process:
        return NullTracker()
    wandb = require(
        "wandb", needed_for="tracking.wandb (set tracking.wandb.mode: disabled to skip)"
    )
    quiet = wandb.Settings(
        console="off", silent=True, show_warnings=False, login_timeout=0, init_timeout=ONLINE_WAIT
    )
    wandb.setup(settings=quiet)  # terminal output is configured at setup, not init
    init = {
        "project": settings.project,
        "entity": settings.entity,
        "tags": list(settings.tags),
        "group": settings.group,
        "name": name,
        "job_type": job_type,
        "dir": str(run_dir),
        "config": config,
        "id": resume_id,
        "resume": "allow" if resume_id else None,
        # Our progress bar owns the terminal and W&B must never wait for a login prompt. Its
        # warnings (such as "URL not available in offline run" each time TRL writes a model
        # card) go to its debug log under <run dir>/wandb/ instead of the terminal.
        "settings": quiet,
    }
    try:
        run = wandb.init(mode=mode, **init)
    except Exception as exc:
        if mode != "online":
            raise
        # No network, a blocked host or a bad key: the run goes on and can be synced later.
        log.warning(
            "W&B online is unavailable (%s: %s); logging offline instead (`wandb sync` later)",
            type(exc).__name__,
            str(exc).splitlines()[0][:200] if str(exc) else "",
        )
        mode = "offline"
        run = wandb.init(mode=mode, **init)
    log.info("tracking with W&B (%s) in %s", mode, run.dir)
    return WandbTracker(run)
