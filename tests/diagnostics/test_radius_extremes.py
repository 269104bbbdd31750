"""check_radius against radii whose |p| is huge: a = σ(−p) is then exactly 0 or 1 (no recurrence, or no decay),
which no ring draw on [min_rad, max_rad] can give, whatever the dtype's rounding of p."""

from __future__ import annotations

import numpy as np
import pytest

from rnninit_cli.diagnostics.checks import check_radius

BF16_U = 2.0**-8  # bfloat16's unit roundoff


def _ring(n: int, seed: int) -> np.ndarray:
    """p = log(1/√u − 1) for u ~ U(0.81, 0.998001): Griffin's RG-LRU init (a² uniform), in float64."""
    u = np.random.default_rng(seed).uniform(0.81 + 1e-8, 0.998001 + 1e-8, n)
    return np.log(1 / np.sqrt(u) - 1)


def _bf16(values: np.ndarray) -> np.ndarray:
    """Round to bfloat16 (nearest even) and back, with numpy alone."""
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("seed", range(5))
def test_a_ring_draw_passes_in_float32_and_bfloat16(seed: int) -> None:
    p = _ring(256, seed)
    assert check_radius(p.astype(np.float32), 0.9, 0.999).ok
    assert check_radius(_bf16(p), 0.9, 0.999, BF16_U).ok


@pytest.mark.parametrize("value", [1e6, -1e6, 1e30, -1e30])
def test_a_huge_constant_p_fails_in_float32(value: float) -> None:
    assert not check_radius(np.full(64, value, dtype=np.float32), 0.9, 0.999).ok


@pytest.mark.parametrize("value", [200.0, -200.0])
def test_a_large_constant_p_fails_in_bfloat16(value: float) -> None:
    assert not check_radius(_bf16(np.full(64, value)), 0.9, 0.999, BF16_U).ok


def test_one_huge_p_among_a_ring_draw_fails() -> None:
    p = _ring(256, 0).astype(np.float32)
    p[7] = -1e6  # a = 1: that channel never forgets
    assert not check_radius(p, 0.9, 0.999).ok
