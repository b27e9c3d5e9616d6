"""Number formatting shared by the tables, the verdict and the figures: one look for each unit."""

from __future__ import annotations

import math
from typing import Any

METRIC_LABELS = {
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
    "micro_f1": "micro F1",
    "exact_match": "exact match",
    "token_f1": "token F1",
    "rouge_l": "ROUGE-L",
    "judge_win_rate": "judge win rate",
}


def metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name.replace("_", " "))


def score(value: float) -> str:
    return f"{value:.3f}"


def interval(low: float, high: float) -> str:
    return f"[{low:.3f}, {high:.3f}]"


def with_ci(metric: dict[str, float]) -> str:
    """`0.910 [0.880, 0.940]`: a metric's value and its confidence interval."""
    return f"{score(metric['value'])} {interval(metric['low'], metric['high'])}"


def difference(comparison: dict[str, Any]) -> str:
    """`+0.290 [0.240, 0.340]`: specialist minus baseline with its paired-bootstrap interval."""
    c = comparison
    return f"{c['difference']:+.3f} {interval(c['low'], c['high'])}"


def p_value(p: float) -> str:
    return f"{p:.1e}" if p < 0.001 else f"{p:.2g}"


def ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 10 else f"{value:,.0f} ms"


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def size(n_bytes: float) -> str:
    """Decimal units, as file managers and model hubs show sizes on disk."""
    if n_bytes >= 1e9:
        return f"{n_bytes / 1e9:.2f} GB"
    mb = n_bytes / 1e6
    return f"{mb:.1f} MB" if mb < 100 else f"{mb:,.0f} MB"


def usd(value: float) -> str:
    """Dollars with two significant digits after the leading zeros ($0.0023), never 2.3e-03."""
    if value == 0:
        return "$0"
    if value >= 1:
        return f"${value:,.2f}"
    decimals = max(2, 1 - math.floor(math.log10(value)))
    return f"${value:.{decimals}f}"


def ratio(value: float, reference: float) -> str:
    """`2.4x`: how many times `reference` the `value` is (`-` when undefined)."""
    if not reference:
        return "-"
    return f"{value / reference:.2f}x" if value / reference < 10 else f"{value / reference:.0f}x"


def factor(value: float) -> str:
    """`0.26`, `2.38`, `2,666`: a ratio's value; whole above 100, where decimals say nothing."""
    return f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def count(n: int) -> str:
    return f"{n:,}"
