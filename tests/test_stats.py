"""Bootstrap intervals and the exact McNemar test, checked against scipy and statsmodels."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar

from finetune.stats import (
    McNemar,
    bootstrap_ci,
    mcnemar_exact,
    non_inferiority,
    paired_bootstrap_ci,
)
from finetune.tasks.metrics import indexed_metric


def _correct(n: int, rate: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < rate).astype(float)


# scipy draws rng.integers(0, n, (n_resamples, n)) in one batch, as we do, so with the same seed
# the bootstrap distributions are identical: our interval equals numpy's quantiles of scipy's
# distribution exactly. scipy >= 1.15 then interpolates with its own `stats.quantile`, whose
# arithmetic can differ from numpy's in the last bits, so scipy's interval is compared to 1e-12.


def _assert_same_interval(ours: tuple[float, float], ref, confidence: float) -> None:
    alpha = (1 - confidence) / 2
    assert ours == tuple(np.quantile(ref.bootstrap_distribution, [alpha, 1 - alpha]))
    assert ours == pytest.approx(tuple(ref.confidence_interval), rel=1e-12, abs=0)


def test_bootstrap_ci_equals_scipy_percentile_bootstrap():
    x = _correct(300, 0.7, seed=1)
    ours = bootstrap_ci(lambda idx: x[idx].mean(), x.size, samples=2000, confidence=0.9, seed=5)
    ref = scipy_stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=2000,
        confidence_level=0.9,
        method="percentile",
        rng=np.random.default_rng(5),
    )
    _assert_same_interval(ours, ref, 0.9)


def test_paired_bootstrap_ci_equals_scipy_paired_bootstrap():
    a, b = _correct(250, 0.75, seed=2), _correct(250, 0.65, seed=3)
    diff, low, high = paired_bootstrap_ci(
        lambda idx: a[idx].mean(), lambda idx: b[idx].mean(), a.size, samples=1500, seed=11
    )
    ref = scipy_stats.bootstrap(
        (a, b),
        lambda x, y, axis=-1: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        paired=True,
        n_resamples=1500,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(11),
    )
    assert diff == a.mean() - b.mean()
    _assert_same_interval((low, high), ref, 0.95)


def test_a_clearly_better_system_gets_an_interval_above_zero():
    better, worse = _correct(400, 0.85, seed=4), _correct(400, 0.55, seed=5)
    diff, low, high = paired_bootstrap_ci(
        lambda idx: better[idx].mean(), lambda idx: worse[idx].mean(), 400
    )
    assert 0 < low < diff < high


def test_identical_systems_differ_by_exactly_zero():
    labels = ["a", "b", "c"]
    golds = [labels[i % 3] for i in range(60)]
    preds = [labels[(i * 7) % 3] for i in range(60)]
    statistic = indexed_metric("classification", "macro_f1", golds, preds, labels)
    assert paired_bootstrap_ci(statistic, statistic, 60, samples=500) == (0.0, 0.0, 0.0)


def test_bootstrap_is_reproducible_and_seeded():
    x = _correct(100, 0.5, seed=6)
    first = bootstrap_ci(lambda idx: x[idx].mean(), 100, samples=300, seed=1)
    assert bootstrap_ci(lambda idx: x[idx].mean(), 100, samples=300, seed=1) == first
    assert bootstrap_ci(lambda idx: x[idx].mean(), 100, samples=300, seed=2) != first


def test_bootstrap_of_macro_f1_on_400_items_is_fast():
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c", "d", "e"]
    golds = [labels[i] for i in rng.integers(0, 5, 400)]
    preds = [g if rng.random() < 0.7 else labels[rng.integers(0, 5)] for g in golds]
    statistic = indexed_metric("classification", "macro_f1", golds, preds, labels)
    start = time.perf_counter()
    low, high = bootstrap_ci(statistic, 400, samples=2000)
    elapsed = time.perf_counter() - start
    assert low < statistic(np.arange(400)) < high
    assert elapsed < 1.0, f"2000 resamples took {elapsed:.2f}s"


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 0}, {"n": 10, "samples": 0}, {"n": 10, "confidence": 1.0}, {"n": 10, "confidence": 0}],
)
def test_bootstrap_rejects_bad_arguments(kwargs):
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match="found"):
        bootstrap_ci(lambda idx: 0.0, n, **kwargs)


def _pairs(a_only: int, b_only: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-item correctness with 5 items both right, 4 both wrong and the given discordant ones."""
    a = [True] * 5 + [False] * 4 + [True] * a_only + [False] * b_only
    b = [True] * 5 + [False] * 4 + [False] * a_only + [True] * b_only
    return np.array(a), np.array(b)


@pytest.mark.parametrize(
    ("a_only", "b_only"),
    [(0, 0), (1, 0), (10, 3), (3, 10), (7, 7), (150, 140), (500, 430), (5000, 4000)],
)
def test_mcnemar_exact_matches_statsmodels_and_scipy(a_only, b_only):
    a, b = _pairs(a_only, b_only)
    result = mcnemar_exact(a, b)
    assert (result.a_only, result.b_only) == (a_only, b_only)
    table = [[5, a_only], [b_only, 4]]  # rows: A right / wrong; columns: B right / wrong
    assert result.p_value == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-9)
    if a_only + b_only:  # scipy's binomtest needs at least one trial
        binomial = scipy_stats.binomtest(a_only, a_only + b_only, 0.5).pvalue
        assert result.p_value == pytest.approx(binomial, rel=1e-9)
    assert 0 < result.p_value <= 1


def test_mcnemar_exact_by_hand():
    # 10 vs 3 discordant: 2 * (C(13,0) + C(13,1) + C(13,2) + C(13,3)) / 2^13
    #                   = 2 * (1 + 13 + 78 + 286) / 8192 = 756 / 8192
    assert mcnemar_exact(*_pairs(10, 3)) == McNemar(a_only=10, b_only=3, p_value=756 / 8192)
    # no discordant pairs: no evidence either way
    assert mcnemar_exact([True, False], [True, False]) == McNemar(0, 0, 1.0)
    # 1/0 scores are accepted as correctness flags
    assert mcnemar_exact([1, 1, 0], [0, 1, 0]).a_only == 1


def test_mcnemar_rejects_unpaired_or_non_binary_input():
    with pytest.raises(ValueError, match="pair up item by item; found 2 and 3"):
        mcnemar_exact([True, False], [True, False, True])
    with pytest.raises(ValueError, match="b_correct must hold only True/False"):
        mcnemar_exact([1, 0], [0.5, 1])


@pytest.mark.parametrize("m, n", [(1, 1), (2, 3), (4, 4), (6, 6), (3, 7)])
def test_rank_sum_counts_equal_a_count_over_every_ordering(m, n):
    from collections import Counter
    from itertools import combinations

    from finetune.stats import _rank_sum_counts

    positions = range(m + n)  # the first sample holds `first`, the second the rest
    brute = Counter(
        sum(x > y for x in first for y in set(positions) - set(first))
        for first in combinations(positions, m)
    )
    assert _rank_sum_counts(m, n) == [brute[u] for u in range(m * n + 1)]


def test_the_shift_interval_holds_the_shifts_an_exact_mann_whitney_test_accepts():
    from finetune.stats import shift_interval

    rng = np.random.default_rng(4)
    a, b = rng.normal(1.0, 1.0, 7), rng.normal(0.0, 1.0, 6)
    estimate, low, high = shift_interval(list(a), list(b), 0.95)
    assert estimate == pytest.approx(np.median(np.subtract.outer(a, b)))
    eps = 1e-9
    for shift, rejected in (
        (low - eps, True),
        (low + eps, False),
        (high - eps, False),
        (high + eps, True),
    ):
        p = scipy_stats.mannwhitneyu(a - shift, b, method="exact").pvalue
        assert (p <= 0.05) == rejected, (shift, p)
    # Too few values for any interval at 95%: 2 against 2 can never reach p < 0.05.
    assert shift_interval([1.0, 2.0], [0.0, 0.5], 0.95)[1:] == (None, None)


def test_non_inferiority_on_hand_computed_paired_outcomes():
    """100 items: the student right on 80, the teacher on 82, the two splitting 10 items 4 to
    6. The lower bound is the 5% quantile of the resampled differences, drawn here again."""
    student = np.array([1] * 76 + [1] * 4 + [0] * 6 + [0] * 14, dtype=float)
    teacher = np.array([1] * 76 + [0] * 4 + [1] * 6 + [0] * 14, dtype=float)
    idx = np.random.default_rng(7).integers(0, 100, size=(2000, 100))
    lower = float(np.quantile(student[idx].mean(axis=1) - teacher[idx].mean(axis=1), 0.05))
    call = non_inferiority(
        lambda i: student[i].mean(), lambda i: teacher[i].mean(), 100, margin=0.02, seed=7
    )
    assert call.difference == pytest.approx(-0.02) and call.lower == pytest.approx(lower)
    assert lower < -0.02 and not call.non_inferior  # two points down, and unsure by more
    wide = non_inferiority(
        lambda i: student[i].mean(), lambda i: teacher[i].mean(), 100, margin=0.1, seed=7
    )
    assert wide.non_inferior and wide.lower == call.lower
    # Identical answers: every resample differs by 0, inside any margin but none.
    same = non_inferiority(
        lambda i: student[i].mean(), lambda i: student[i].mean(), 100, margin=0.02
    )
    assert (same.lower, same.non_inferior) == (0.0, True)
    assert not non_inferiority(
        lambda i: student[i].mean(), lambda i: student[i].mean(), 100, margin=0.0
    ).non_inferior
