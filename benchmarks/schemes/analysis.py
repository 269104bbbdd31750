"""Statistics of the scheme study, written out here (numpy only) so that each number can be traced to a formula:
Kaplan–Meier survival of "not solved yet", the exact Wilcoxon signed-rank test (ties and zeros handled exactly),
Fisher's exact test on 2×2 solve counts, Holm's step-down correction and paired bootstrap intervals.
tests/test_study_stats.py checks them against hand-computed values and scipy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SurvivalStep:
    time: float  # an event time
    at_risk: int  # runs not solved and not censored before `time`
    events: int  # runs that solved at `time`
    survival: float  # S(time) = Π (1 − events/at_risk) over event times ≤ time


def kaplan_meier(times: Sequence[float], solved: Sequence[bool]) -> list[SurvivalStep]:
    """Product-limit estimate of P(not solved by t); a censored run (never solved) counts as at risk up to its
    censoring time, events before censorings at tied times."""
    steps = []
    survival = 1.0
    for time in sorted({t for t, s in zip(times, solved, strict=True) if s}):
        at_risk = sum(t >= time for t in times)
        events = sum(t == time and s for t, s in zip(times, solved, strict=True))
        survival *= 1.0 - events / at_risk
        steps.append(SurvivalStep(time, at_risk, events, survival))
    return steps


def km_median(steps: list[SurvivalStep]) -> float | None:
    """The first time at which S(t) ≤ 1/2 (None: the estimate never gets there, the median is censored)."""
    return next((step.time for step in steps if step.survival <= 0.5 + 1e-12), None)


def km_curve(steps: list[SurvivalStep], horizon: float) -> tuple[list[float], list[float]]:
    """A step function (x, y) for plotting 1 − S(t), the fraction solved, from 0 to `horizon`."""
    xs, ys = [0.0], [0.0]
    for step in steps:
        xs += [step.time, step.time]
        ys += [ys[-1], 1.0 - step.survival]
    xs.append(horizon)
    ys.append(ys[-1])
    return xs, ys


# ---- Wilcoxon signed-rank ------------------------------------------------------------------------------


def midranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n of `values`, tied values sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


@dataclass(frozen=True)
class SignedRank:
    statistic: float  # W+ = Σ ranks of the positive differences
    p_value: float  # two-sided, exact under H0 (each nonzero difference's sign ±1 with probability 1/2)
    n: int  # nonzero differences used (zeros are dropped: Wilcoxon's own convention)
    min_p: float  # the smallest two-sided p any outcome could give at this n: what the data could possibly show


def wilcoxon_signed_rank(x: Sequence[float], y: Sequence[float]) -> SignedRank:
    """Exact two-sided signed-rank test of x − y: the distribution of W+ is enumerated over the 2^n sign patterns by
    dynamic programming on doubled midranks (integers), so ties need no normal approximation."""
    differences = [a - b for a, b in zip(x, y, strict=True) if a != b]
    n = len(differences)
    if n == 0:
        return SignedRank(0.0, 1.0, 0, 1.0)
    doubled = [round(2 * rank) for rank in midranks([abs(d) for d in differences])]
    counts = {0: 1}
    for rank in doubled:
        grown: dict[int, int] = dict(counts)
        for total, ways in counts.items():
            grown[total + rank] = grown.get(total + rank, 0) + ways
        counts = grown
    observed = sum(rank for rank, d in zip(doubled, differences, strict=True) if d > 0)
    total = sum(doubled)
    mean = total / 2
    distance = abs(observed - mean)
    extreme = sum(ways for value, ways in counts.items() if abs(value - mean) >= distance - 1e-9)
    p_value = min(1.0, extreme / 2**n)
    most = sum(ways for value, ways in counts.items() if abs(value - mean) >= total / 2 - 1e-9)
    return SignedRank(observed / 2, p_value, n, min(1.0, most / 2**n))


# ---- Fisher's exact test -------------------------------------------------------------------------------


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided p of the table [[a, b], [c, d]] (rows: groups; columns: solved, not solved): the total
    hypergeometric probability of the tables with the same margins that are no more probable than the observed."""
    row, column, n = a + b, a + c, a + b + c + d

    def probability(k: int) -> float:
        return math.comb(column, k) * math.comb(n - column, row - k) / math.comb(n, row)

    observed = probability(a)
    low, high = max(0, row + column - n), min(row, column)
    return min(1.0, sum(p for k in range(low, high + 1) if (p := probability(k)) <= observed * (1 + 1e-7)))


# ---- Holm ----------------------------------------------------------------------------------------------


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p: sorted ascending, p_(j)·(m − j + 1), made non-decreasing, capped at 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for j, index in enumerate(order):
        running = max(running, min(1.0, (m - j) * p_values[index]))
        adjusted[index] = running
    return adjusted


# ---- paired bootstrap ------------------------------------------------------------------------------------


def paired_bootstrap_ci(x: Sequence[float], y: Sequence[float], *, level: float = 0.95, resamples: int = 10_000,
                        seed: int = 0) -> tuple[float, float, float]:
    """(mean of x − y, lower, upper): percentile interval of the mean difference over resampled seeds (pairs kept
    together), from a fixed generator so that the same data give the same interval."""
    differences = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    generator = np.random.default_rng(seed)
    picks = generator.integers(0, len(differences), size=(resamples, len(differences)))
    means = differences[picks].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(differences.mean()), float(low), float(high)


# ---- the study's per-run outcome ---------------------------------------------------------------------------


def time_to_solve(steps_to_threshold: str, budget: int) -> tuple[float, bool]:
    """(time, solved): a run that never reached the threshold is censored at its budget, not dropped."""
    return (float(steps_to_threshold), True) if steps_to_threshold else (float(budget), False)


def time_score(steps_to_threshold: str, budget: int) -> float:
    """The time-to-solve endpoint for a paired rank test, lower is better: the steps a solved run took; budget + 1
    for every unsolved run, so unsolved runs tie with each other and rank behind every solved one (how close an
    unsolved run came is a different endpoint, the final metric)."""
    return float(steps_to_threshold) if steps_to_threshold else float(budget + 1)


def first_reach(steps: Sequence[int], values: Sequence[float], threshold: float, higher_is_better: bool) -> int | None:
    """The first evaluated step whose value reaches the threshold (≥ when higher is better, else ≤), or None."""
    for step, value in zip(steps, values, strict=True):
        if (value >= threshold) if higher_is_better else (value <= threshold):
            return step
    return None
