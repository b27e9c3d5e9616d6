"""Confidence intervals and paired significance tests for systems scored on the same items.

- `bootstrap_ci`: percentile bootstrap over items. Resamples are drawn exactly as
  `scipy.stats.bootstrap(method='percentile')` draws them from the same seeded Generator, so
  the two give the same interval (the tests check this).
- `paired_bootstrap_ci`: the same for the difference between two systems; both are scored on
  the same resampled items, so item difficulty cancels out.
- `non_inferiority`: whether A keeps B's quality, a one-sided paired bootstrap bound above
  -margin.
- `mcnemar_exact`: exact McNemar test on per-item correctness, in integer arithmetic.
- `sign_test`: the same exact binomial test on a judge's wins and losses.

A statistic is `statistic(idx) -> float`: the metric on the items at `idx` (with repeats);
`finetune.tasks.metrics.indexed_metric` builds one for any registered metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

Statistic = Callable[[np.ndarray], float]


def _resample_indices(n: int, samples: int, seed: int) -> np.ndarray:
    if n < 1:
        raise ValueError(f"bootstrap needs at least one item; found n={n}")
    if samples < 1:
        raise ValueError(f"bootstrap needs at least one resample; found samples={samples}")
    # All at once, as scipy.stats.bootstrap does: the same seed gives the same resamples.
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def bootstrap_ci(
    statistic: Statistic,
    n: int,
    *,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """(low, high) percentile bootstrap interval of `statistic` over `n` items."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1; found {confidence}")
    indices = _resample_indices(n, samples, seed)
    values = np.fromiter((statistic(idx) for idx in indices), dtype=float, count=samples)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])  # linear interpolation, like scipy
    return float(low), float(high)


def paired_bootstrap_ci(
    statistic_a: Statistic,
    statistic_b: Statistic,
    n: int,
    *,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(difference on all items, low, high) of `statistic_a - statistic_b`, same items for both."""
    low, high = bootstrap_ci(
        lambda idx: statistic_a(idx) - statistic_b(idx),
        n,
        samples=samples,
        confidence=confidence,
        seed=seed,
    )
    everything = np.arange(n)
    return float(statistic_a(everything) - statistic_b(everything)), low, high


@dataclass(frozen=True)
class NonInferiority:
    """Whether A keeps B's quality: the one-sided lower confidence bound of A - B is above
    -margin."""

    difference: float  # A - B on all items
    lower: float  # one-sided lower bound at the confidence level
    margin: float
    non_inferior: bool


def non_inferiority(
    statistic_a: Statistic,
    statistic_b: Statistic,
    n: int,
    *,
    margin: float,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> NonInferiority:
    """A paired non-inferiority test by the percentile bootstrap: A is non-inferior to B when
    the (1 - confidence) quantile of the resampled differences A - B is above -margin (the
    low end of the two-sided interval at 2 * confidence - 1)."""
    difference, lower, _ = paired_bootstrap_ci(
        statistic_a, statistic_b, n, samples=samples, confidence=2 * confidence - 1, seed=seed
    )
    return NonInferiority(difference, lower, margin, lower > -margin)


@dataclass(frozen=True)
class McNemar:
    a_only: int  # items system A got right and system B got wrong
    b_only: int  # items system B got right and system A got wrong
    p_value: float  # exact two-sided


def _as_correct(values: Sequence[bool] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one flag per item; found shape {array.shape}")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must hold only True/False (or 1/0); found {np.unique(array)}")
    return array.astype(bool)


def _binomial_two_sided_half(b: int, c: int) -> float:
    """min(1, 2 P[X <= min(b, c)]) for X ~ Binomial(b + c, 1/2), exact until the final division."""
    n = b + c
    if n == 0:
        return 1.0
    term = tail = 1  # C(n, 0)
    for k in range(min(b, c)):
        term = term * (n - k) // (k + 1)  # C(n, k + 1), exact: the product is divisible
        tail += term
    # int / int is correctly rounded in Python, however large 2**n is: no overflow.
    return min(1.0, 2 * tail / 2**n)


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test of wins against losses (ties left out): the probability, were
    each decisive item a fair coin, of a split at least this uneven."""
    return _binomial_two_sided_half(wins, losses)


def mcnemar_exact(
    a_correct: Sequence[bool] | np.ndarray, b_correct: Sequence[bool] | np.ndarray
) -> McNemar:
    """Exact McNemar test: a two-sided binomial test (p = 1/2) on the discordant items."""
    a, b = _as_correct(a_correct, "a_correct"), _as_correct(b_correct, "b_correct")
    if a.shape != b.shape:
        raise ValueError(
            f"a_correct and b_correct must pair up item by item; found {a.size} and {b.size}"
        )
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    return McNemar(a_only=a_only, b_only=b_only, p_value=_binomial_two_sided_half(a_only, b_only))


def rounds_for_interval(confidence: float) -> int:
    """The fewest rounds whose median has a distribution-free interval at `confidence`:
    [min, max] of n values covers the median with probability 1 - 2 (1/2)^n."""
    n = 1
    while 2 * 0.5**n > 1 - confidence:
        n += 1
    return n


def median_interval(values: Sequence[float], confidence: float) -> tuple[float, float] | None:
    """A distribution-free interval for the median of `values` (the sign-test interval).

    [x_(k), x_(n+1-k)] of the sorted values covers the median with probability
    1 - 2 P[Binomial(n, 1/2) < k] whatever the distribution; k is the largest that keeps this at
    `confidence` or above. Unlike a t-interval it is not pulled by one round that something
    else on the machine slowed down. None when there are too few values for `confidence`.
    """
    x = sorted(values)
    n = len(x)
    k = _depth((math.comb(n, j) for j in range(n + 1)), 2**n, confidence)
    if k == 0:
        return None
    return float(x[k - 1]), float(x[n - k])


def _depth(counts: Iterable[int], total: int, confidence: float) -> int:
    """How far in from each end a distribution-free interval starts: the largest k with
    2 (counts[0] + ... + counts[k-1]) <= (1 - confidence) total, for the null distribution's
    counts of its statistic (exact, in integers)."""
    k, below = 0, 0
    for count in counts:
        below += count
        if 2 * below > (1 - confidence) * total:
            break
        k += 1
    return k


def _rank_sum_counts(m: int, n: int) -> list[int]:
    """counts[u]: how many of the C(m+n, m) orderings of two samples of sizes m and n give the
    Mann-Whitney count U = u (pairs with the first sample's value above the second's)."""
    size = m * n + 1
    # table[j][u] for i of the first sample's values against j of the second's, built up in i.
    table = [[1] + [0] * (size - 1) for _ in range(n + 1)]  # i = 0: U = 0 whatever j is
    for _ in range(m):
        row = [[1] + [0] * (size - 1)]  # j = 0: U = 0
        for j in range(1, n + 1):
            # The largest value is the first sample's (it beats all j) or the second's.
            row.append([(table[j][u - j] if u >= j else 0) + row[j - 1][u] for u in range(size)])
        table = row
    return table[n]


def shift_interval(
    a: Sequence[float], b: Sequence[float], confidence: float
) -> tuple[float, float | None, float | None]:
    """The shift between two independent samples, a - b: the Hodges-Lehmann estimate (the
    median of all pairwise differences) and Moses' distribution-free interval, the k-th smallest
    to the k-th largest of those differences, k the largest with 2 P[U < k] <= 1 - confidence
    for the Mann-Whitney count U (exact). For figures timed apart, where no round pairs them.
    (estimate, None, None) when there are too few values for `confidence`."""
    if not a or not b:
        raise ValueError(f"both samples need values; found {len(a)} and {len(b)}")
    d = sorted(x - y for x in a for y in b)
    total = math.comb(len(a) + len(b), len(a))
    k = _depth(_rank_sum_counts(len(a), len(b)), total, confidence)
    estimate = float(np.median(d))
    if k == 0:
        return estimate, None, None
    return estimate, float(d[k - 1]), float(d[len(d) - k])
