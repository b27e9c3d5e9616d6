"""An experiment whose learning-curve metric is a judge's win rate (`judge_against`).

Each cell's evaluation judged its specialist against the general systems (`eval.judge`). Read
against one of them, the cell becomes two systems on one scale: the specialist at its win rate
(ties as half, with its bootstrap interval) and the general system at 0.5. Item by item, a win
counts as the specialist alone right, a loss as the general system alone right and a tie as
both, so the crossover's exact McNemar test on the items only one of them "got right" is the
exact sign test on the judge's decisive items; unjudged items are left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.report.results import JUDGE_METRIC

EVEN = {"value": 0.5, "low": 0.5, "high": 0.5}


def judged_view(
    results: dict[str, Any], run_dir: Path, against: str
) -> tuple[dict[str, Any], dict[str, dict[str, bool]]]:
    """(the cell's results as the specialist and `against` on the judge's win rate, their
    per-item outcomes as right/wrong flags by system name)."""
    pair = next(p for p in results["judge"]["pairs"] if p["baseline"] == against)
    win = {"value": pair["win_rate"], "low": pair["low"], "high": pair["high"]}
    # A specialist the judge could not judge on any item has no place on the curve.
    judged = pair["win_rate"] is not None
    systems = []
    for system in results["systems"]:
        if (system["role"] == "specialist" and judged) or system["name"] == against:
            rate = win if system["role"] == "specialist" else EVEN
            systems.append({**system, "metrics": {JUDGE_METRIC: rate}})
    view = {**results, "metrics": [JUDGE_METRIC], "systems": systems}
    specialist = next(s["name"] for s in results["systems"] if s["role"] == "specialist")
    return view, _flags(run_dir / "eval" / "judgments.jsonl", against, specialist)


def unjudged_cells(cells: list[Any], against: str | None) -> list[str]:
    """A note naming the evaluated cells whose judge gave no verdict on any item against
    `against`: their specialists are left off the curve."""
    if against is None:
        return []
    unjudged = []
    for cell in cells:
        path = cell.run_dir() / "eval" / "results.json"
        if path.is_file():
            pairs = json.loads(path.read_text())["judge"]["pairs"]
            if all(p["win_rate"] is None for p in pairs if p["baseline"] == against):
                unjudged.append(str(cell.index))
    if not unjudged:
        return []
    return [
        f"The judge gave no parsable verdict against {against} in cells {', '.join(unjudged)} "
        "(see each cell's eval/judgments.jsonl): their specialists are not on the curve."
    ]


def _flags(path: Path, against: str, specialist: str) -> dict[str, dict[str, bool]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    judged = [r for r in rows if r["against"] == against and r["outcome"] != "unparsable"]
    return {
        specialist: {r["id"]: r["outcome"] in ("win", "tie") for r in judged},
        against: {r["id"]: r["outcome"] in ("loss", "tie") for r in judged},
    }
