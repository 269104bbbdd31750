"""benchmarks/schemes/analysis.py: the study's statistics against hand-computed textbook values, brute-force
enumeration and scipy (an independent implementation)."""

from __future__ import annotations

import itertools
import math
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "schemes"))

import analysis

stats = pytest.importorskip("scipy.stats")


def test_kaplan_meier_on_a_hand_computed_example() -> None:
    # solved at 2, 3, 5; censored at 3 (tied with an event: the event counts first), 6, 8
    times = [2, 3, 3, 5, 6, 8]
    solved = [True, True, False, True, False, False]
    steps = analysis.kaplan_meier(times, solved)
    assert [(s.time, s.at_risk, s.events) for s in steps] == [(2, 6, 1), (3, 5, 1), (5, 3, 1)]
    assert [s.survival for s in steps] == pytest.approx([5 / 6, 5 / 6 * 4 / 5, 5 / 6 * 4 / 5 * 2 / 3])
    assert analysis.km_median(steps) == 5  # S(3) = 2/3 > 1/2, S(5) = 4/9 ≤ 1/2


def test_kaplan_meier_without_censoring_is_the_empirical_distribution() -> None:
    times = [4, 1, 3, 3, 2]
    steps = analysis.kaplan_meier(times, [True] * 5)
    for step in steps:
        assert step.survival == pytest.approx(sum(t > step.time for t in times) / len(times))
    assert analysis.km_median(steps) == 3


def test_a_median_that_is_never_reached_is_censored() -> None:
    steps = analysis.kaplan_meier([100, 1500, 1500, 1500], [True, False, False, False])
    assert steps[-1].survival == pytest.approx(3 / 4)
    assert analysis.km_median(steps) is None
    assert analysis.km_median(analysis.kaplan_meier([1500] * 3, [False] * 3)) is None


def test_holm_on_a_known_sequence() -> None:
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → made monotone: 0.06
    assert analysis.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert analysis.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert analysis.holm([]) == []


def test_holm_matches_its_definition_on_random_sequences() -> None:
    # scipy has no Holm: the step-down definition, written as a max over the prefix, is the reference
    generator = random.Random(7)
    for _ in range(20):
        p = [generator.random() ** 3 for _ in range(generator.randint(1, 12))]
        m = len(p)
        order = sorted(range(m), key=lambda i: p[i])
        for rank, index in enumerate(order):
            direct = max(min(1.0, (m - j) * p[order[j]]) for j in range(rank + 1))
            assert analysis.holm(p)[index] == pytest.approx(direct)


@pytest.mark.parametrize(("table", "expected"), [
    ((3, 1, 1, 3), 17 / 35),  # Fisher's tea tasting: two-sided 0.4857
    ((2, 3, 0, 5), 0.4444444),  # the v1 study's "chrono 2/5 against pytorch 0/5"
    ((10, 0, 0, 10), 2 / math.comb(20, 10)),
    ((5, 5, 5, 5), 1.0),
])
def test_fisher_exact_on_textbook_tables(table: tuple[int, int, int, int], expected: float) -> None:
    assert analysis.fisher_exact(*table) == pytest.approx(expected, rel=1e-6)


def test_fisher_exact_matches_scipy() -> None:
    for a, b, c, d in itertools.product(range(0, 11, 3), range(0, 11, 2), range(0, 11, 3), range(0, 11, 2)):
        if a + b == 0 or c + d == 0:
            continue
        expected = stats.fisher_exact([[a, b], [c, d]]).pvalue
        assert analysis.fisher_exact(a, b, c, d) == pytest.approx(expected, rel=1e-6, abs=1e-12), (a, b, c, d)


def test_wilcoxon_exact_matches_scipy_without_ties() -> None:
    generator = random.Random(3)
    for n in (5, 8, 10, 12):
        for _ in range(5):
            x = [generator.gauss(0.3, 1) for _ in range(n)]
            y = [generator.gauss(0, 1) for _ in range(n)]
            ours = analysis.wilcoxon_signed_rank(x, y)
            theirs = stats.wilcoxon(x, y, method="exact")
            assert ours.p_value == pytest.approx(float(theirs.pvalue), rel=1e-9)
            assert min(ours.statistic, n * (n + 1) / 2 - ours.statistic) == pytest.approx(float(theirs.statistic))


def test_wilcoxon_smallest_p_at_ten_pairs() -> None:
    result = analysis.wilcoxon_signed_rank([float(i) for i in range(1, 11)], [0.0] * 10)
    assert result.p_value == pytest.approx(2 / 2**10) == pytest.approx(result.min_p)


def brute_force_signed_rank_p(x: list[float], y: list[float]) -> float:
    differences = [a - b for a, b in zip(x, y, strict=True) if a != b]
    ranks = analysis.midranks([abs(d) for d in differences])
    observed = sum(r for r, d in zip(ranks, differences, strict=True) if d > 0)
    mean = sum(ranks) / 2
    hits = sum(abs(sum(r for r, s in zip(ranks, signs, strict=True) if s) - mean) >= abs(observed - mean) - 1e-9
               for signs in itertools.product((False, True), repeat=len(ranks)))
    return hits / 2 ** len(ranks)


def test_wilcoxon_with_ties_and_zeros_is_the_exact_permutation_p() -> None:
    # censored runs tie at the budget, and equal outcomes give zero differences (dropped)
    x = [1500, 1500, 300, 450, 1500, 200, 250, 1500, 600, 350]
    y = [1500, 800, 900, 450, 1500, 700, 900, 1000, 1500, 350]
    ours = analysis.wilcoxon_signed_rank(x, y)
    assert ours.n == 6
    assert ours.p_value == pytest.approx(brute_force_signed_rank_p(x, y))
    assert analysis.midranks([3, 1, 3, 2]) == [3.5, 1, 3.5, 2]


def test_paired_bootstrap_interval() -> None:
    x = [0.9, 0.8, 0.95, 0.7, 0.85, 0.9, 0.88, 0.92, 0.8, 0.75]
    y = [0.7, 0.75, 0.8, 0.6, 0.8, 0.7, 0.85, 0.9, 0.7, 0.7]
    mean, low, high = analysis.paired_bootstrap_ci(x, y)
    assert mean == pytest.approx(sum(a - b for a, b in zip(x, y, strict=True)) / len(x))
    assert low < mean < high and low > 0
    assert analysis.paired_bootstrap_ci(x, y) == (mean, low, high)  # fixed generator: same data, same interval
    assert analysis.paired_bootstrap_ci([1.0, 2.0], [0.5, 1.5]) == pytest.approx((0.5, 0.5, 0.5))


def test_time_score_ties_unsolved_runs_behind_solved_ones() -> None:
    assert analysis.time_score("1500", 1500) == 1500.0
    assert analysis.time_score("", 1500) == analysis.time_score("", 1500) == 1501.0
    assert analysis.time_score("250", 1500) < analysis.time_score("", 1500)
    assert analysis.time_to_solve("", 1500) == (1500.0, False)
    assert analysis.time_to_solve("250", 1500) == (250.0, True)


def test_first_reach_on_both_directions_and_at_exactly_the_threshold() -> None:
    steps = [0, 25, 50, 75]
    assert analysis.first_reach(steps, [0.1, 0.5, 0.9, 0.95], 0.9, True) == 50  # exactly 0.9 counts
    assert analysis.first_reach(steps, [0.1, 0.5, 0.89999, 0.95], 0.9, True) == 75
    assert analysis.first_reach(steps, [0.2, 0.1, 0.02, 0.01], 0.02, False) == 50
    assert analysis.first_reach(steps, [0.2, 0.1, 0.05, 0.03], 0.02, False) is None
