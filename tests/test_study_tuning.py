"""benchmarks/schemes/study.py: how the learning-rate grid picks rates, on hand-made score tables."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "schemes"))

import study


@pytest.mark.parametrize(("rate", "up", "expected"), [
    (1e-3, True, 3e-3), (3e-3, True, 1e-2), (3e-2, True, 1e-1), (1e-1, True, 3e-1),
    (1e-3, False, 3e-4), (3e-4, False, 1e-4), (1e-2, False, 3e-3),
])
def test_ladder_steps_one_three_ten(rate: float, up: bool, expected: float) -> None:
    assert study.ladder(rate, up) == pytest.approx(expected, rel=1e-12)


def test_a_winner_on_the_lower_edge_extends_the_grid_downwards() -> None:
    scores = {1e-3: 0.5, 3e-3: 0.6, 1e-2: 0.7, 3e-2: 0.9}
    assert study.edge_extension(scores) == pytest.approx(3e-4)


def test_a_winner_on_the_upper_edge_extends_the_grid_upwards() -> None:
    scores = {1e-3: 0.9, 3e-3: 0.8, 1e-2: 0.7, 3e-2: 0.5}
    assert study.edge_extension(scores) == pytest.approx(0.1)


def test_an_inner_winner_needs_no_extension() -> None:
    assert study.edge_extension({1e-3: 0.9, 3e-3: 0.5, 1e-2: 0.7, 3e-2: 0.9}) is None


def test_the_extension_stops_at_the_limits() -> None:
    scores = {1e-4: 0.5, 3e-4: 0.6, 1e-3: 0.6, 3e-3: 0.6, 1e-2: 0.6, 3e-2: 0.6}
    assert study.edge_extension(scores) is None  # 1e-4 is LR_LIMITS[0] and two rates below the grid are used
    assert study.edge_extension({1e-3: math.inf, 3e-3: math.inf}) is None


def test_a_flat_grid_does_not_decide() -> None:
    assert not study.grid_decides({1e-3: 1.0, 3e-3: 1.0, 1e-2: 0.999, 3e-2: 1.001})
    assert not study.grid_decides({1e-3: 1.60, 3e-3: 1.59, 1e-2: 1.58, 3e-2: math.inf})  # 0.6 % below the median


def test_a_winner_two_percent_below_the_median_decides() -> None:
    assert study.grid_decides({1e-3: 1.0, 3e-3: 1.0, 1e-2: 0.97, 3e-2: 1.0})
    assert study.grid_decides({1e-3: 0.9, 3e-3: 0.5, 1e-2: math.inf})  # inf ignored: median of 0.9 and 0.5 is 0.7
    assert not study.grid_decides({1e-3: math.inf, 3e-3: math.inf})


def test_shared_rate_is_best_for_the_median_scheme() -> None:
    scores = {
        ("t", "lstm", "a"): {1e-3: 0.1, 1e-2: 0.9},
        ("t", "lstm", "b"): {1e-3: 0.8, 1e-2: 0.5},
        ("t", "lstm", "c"): {1e-3: 0.7, 1e-2: 0.6},
    }  # medians: 1e-3 → 0.7, 1e-2 → 0.6
    assert study.shared_rate(scores, "t", "lstm") == 1e-2


def test_summary_gives_a_flat_grid_the_shared_rate() -> None:
    scores = {
        ("t", "lstm", "decided"): {1e-3: 0.9, 1e-2: 0.5, 1e-1: 0.9},
        ("t", "lstm", "flat"): {1e-3: 1.0, 1e-2: 1.0, 1e-1: 1.0},
        ("t", "lstm", "other"): {1e-3: 0.95, 1e-2: 0.6, 1e-1: 0.7},
    }
    entries = {entry["scheme"]: entry for entry in study.summarize_tuning(scores)["entries"]}
    assert entries["decided"]["tuned_lr"] == 1e-2 and entries["decided"]["grid_decides"]
    flat = entries["flat"]
    assert flat["grid_best_lr"] == 1e-3  # the tie rule's pick, not used
    assert not flat["grid_decides"] and not flat["on_edge"]
    assert flat["tuned_lr"] == flat["shared_lr"] == 1e-2
