"""Gram matrices of blocks, computed on values scaled by a power of two: orthogonality checks and singular
values."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .checks import Verdict, _unit_roundoff
from .formatting import _at_rounding, _fmt
from .stats import CHUNK, as_float64, power_of_two_scale, quiet_floats, safe_scale

_FLOAT32_U = 2.0**-24


@quiet_floats
def gram(matrix: Any) -> np.ndarray:
    """BᵀB for a tall (or square) block, BBᵀ for a wide one, in float64."""
    return _scaled_gram(as_float64(matrix))[0]


_Gram = tuple[np.ndarray, np.ndarray, float]  # (G, G / s², s) for a power of two s near max|B|


def _scaled_gram(m: np.ndarray) -> _Gram:
    """The Gram matrix of a float64 matrix computed from B/s (s a power of two near max|B|, so B/s is exact and
    (B/s)ᵀ(B/s) cannot overflow or underflow), with G = that · s² (inf only where BᵀB really exceeds float64)."""
    scale = power_of_two_scale(float(np.abs(m).max())) if m.size else 1.0
    scaled = m / scale
    small = scaled.T @ scaled if m.shape[0] >= m.shape[1] else scaled @ scaled.T
    with np.errstate(over="ignore"):
        return small * scale * scale, small, scale


def gram_diagonal(m: np.ndarray, largest: float) -> np.ndarray:
    """diag(BᵀB) (tall) or diag(BBᵀ) (wide) of a finite matrix (any float dtype) with max|B| = `largest`: the
    squared column (row) norms in float64, O(size) instead of the Gram matrix's O(size · min side), read a few
    rows at a time; scaled by a power of two only where squares would overflow or underflow (ratios of these
    sums are what is used, so the scale does not matter)."""
    scale = safe_scale(largest)
    tall = m.shape[0] >= m.shape[1]
    step = max(1, CHUNK // max(1, m.shape[1]))
    parts = []
    for start in range(0, m.shape[0], step):
        rows = as_float64(m[start:start + step])
        if scale != 1.0:
            rows /= scale
        squares = np.square(rows, out=rows)
        parts.append(squares.sum(axis=0 if tall else 1))
    if tall:
        return np.sum(parts, axis=0) if parts else np.zeros(m.shape[1])
    return np.concatenate(parts) if parts else np.zeros(0)


class LowerBound(float):
    """A value known only from below (`inspect --wide` shows it as ≥ x): max|G − I| of a large block whose column
    norms already put it far from orthogonal, where the exact value would cost the Gram matrix (m·n² operations)."""


FAR_FROM_ORTHOGONAL = 0.1  # max|G − I| at least this from the column norms alone: no block this far is orthogonal


@quiet_floats
def diagonal_lower_bound(diagonal: np.ndarray, scale: float) -> LowerBound | None:
    """max|dᵢs² − 1| ≤ max|G − I| (the diagonal is part of G − I), where it reaches FAR_FROM_ORTHOGONAL; else None."""
    if diagonal.size == 0:
        return None
    bound = float(np.abs(diagonal * (scale * scale) - 1).max())
    return LowerBound(bound) if bound >= FAR_FROM_ORTHOGONAL else None


@quiet_floats
def error_from_diagonal(diagonal: np.ndarray, scale: float) -> float | None:
    """max|G − I| from d = diag(G)/s² alone (`gram_diagonal`'s sums, s its scale) where that is provably the max:
    |Gᵢⱼ| ≤ √(dᵢdⱼ)·s² for i ≠ j (Cauchy–Schwarz), so max|dᵢs² − 1| above the product of the two largest √dᵢ·s² is
    the largest entry (a PyTorch-initialized block: column norms² near 1/3, error 2/3 > 1/3). None: the off-diagonal
    entries may be larger, and only the Gram matrix can tell."""
    if diagonal.size == 0:
        return None
    error = float(np.abs(diagonal * (scale * scale) - 1).max())
    if diagonal.size == 1:
        return error
    second, first = np.sqrt(np.partition(diagonal, diagonal.size - 2)[-2:])
    bound = float(first) * float(second) * scale * scale
    return error if error > bound * (1 + 1e-9) else None  # a margin for the Gram matrix's own rounding


@quiet_floats
def check_orthogonal(the_gram: Any | None, gain: float, tolerance: float) -> Verdict:
    """max|G/g² − I| ≤ tolerance for the Gram matrix G of the block (BᵀB tall, BBᵀ wide); None: not finite."""
    if the_gram is None:
        return _orthogonal_verdict(None, gain, tolerance)
    matrix = as_float64(the_gram)
    return _orthogonal_verdict((matrix, matrix, 1.0), gain, tolerance)


def _minus_identity_max(matrix: np.ndarray, factor: float) -> float:
    """max|factor·M − I| for a square M, without building I."""
    if not matrix.size:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = matrix * factor
        diagonal = np.arange(matrix.shape[0])
        scaled[diagonal, diagonal] -= 1
        return float(np.abs(scaled).max())


def rounding_level(dtype: Any, shape: tuple[int, ...]) -> float:
    """The largest max|BᵀB/g² − I| that rounding alone leaves in a g·Q of this dtype and shape: 2u + u² for the stored
    values (u at least float32's: a float64 checkpoint may hold float32 draws) plus 8·u₃₂·(√k + √L) for float32 QR's
    own error (k, L the short and long sides; measured at most 3.3·u₃₂·(√k + √L) from 2×2 to 65536×4, with MKL's
    default and compatible code paths). Below it an error's digits are rounding noise, which differs between CPUs."""
    u = max(_unit_roundoff(dtype), _FLOAT32_U)
    short, long = (min(shape), max(shape)) if shape else (1, 1)
    return 2 * u + u * u + 8 * _FLOAT32_U * (math.sqrt(short) + math.sqrt(long))


def _describe(gain: float) -> str:
    return "orthogonal" + (f" with gain {_fmt(gain)}" if gain != 1 else "")


def diagonal_verdict(diagonal: np.ndarray, scale: float, gain: float, tolerance: float) -> Verdict | None:
    """The failing verdict of `_orthogonal_verdict` when the squared column (row) norms d = diag(G/s²) alone show
    it: max|d·(s/g)² − 1| is a lower bound of max|G/g² − I|, so beyond the tolerance (by more than rounding) the
    block is not g·Q whatever the rest of its Gram matrix holds. None: the Gram matrix must decide."""
    if gain == 0 or diagonal.size == 0:
        return None
    ratio = scale / gain
    deviation = float(np.abs(diagonal * (ratio * ratio) - 1).max())
    if not (math.isfinite(deviation) and deviation > tolerance * (1 + 1e-9) + 1e-12):
        return None
    return Verdict(False, True, f"not {_describe(gain)}: max |BᵀB/g² − I| ≥ {_fmt(deviation)} > {_fmt(tolerance)} "
                                "(a column or row norm alone)")


def _orthogonal_verdict(parts: _Gram | None, gain: float, tolerance: float, rounding: float = 0.0) -> Verdict:
    """check_orthogonal on a scaled Gram matrix: (G/s²)·(s/g)² − I, so that a gain of 1e200 (G = 1e400, beyond
    float64) is checked as exactly as a gain of 1. An error at most `rounding` (`rounding_level`) is written as its
    bound, not its digits."""
    if parts is None or bool(np.isnan(parts[1]).any()):
        return Verdict(False, True, "NaN/Inf values in the matrix")
    the_gram, small, scale = parts
    size = small.shape[0]
    if gain == 0:
        error = float(np.abs(the_gram).max()) if size else 0.0
        return Verdict(error == 0, True, f"max |BᵀB| = {_fmt(error)} (gain 0)")
    ratio = scale / gain  # inf for hopeless cases (1e300 values, gain 1e-300): error inf, not orthogonal
    error = _minus_identity_max(small, ratio * ratio)
    decided = size >= 2
    what = _describe(gain)
    if not error <= tolerance:
        return Verdict(False, True, f"not {what}: max |BᵀB/g² − I| = {_fmt(error)} > {_fmt(tolerance)}")
    shown = _at_rounding(error, rounding) or f"= {_fmt(error)}"
    return Verdict(True, decided, f"{what}: max |BᵀB/g² − I| {shown}")


def _spectrum(parts: _Gram | None) -> np.ndarray | None:
    """Singular values, s·√eig(G/s²) of the scaled Gram matrix, ascending; None if the solver gives up."""
    if parts is None:
        return None
    _, small, scale = parts
    try:
        return np.sqrt(np.clip(np.linalg.eigvalsh(small), 0, None)) * scale
    except np.linalg.LinAlgError:  # no convergence (has not happened on a scaled Gram matrix)
        return None


def scaled_orthogonal_gain(parts: _Gram | None, tolerance: float) -> float | None:
    """The gain g if G ≈ g²I (max|G/g² − I| ≤ tolerance with g² = mean diag G), else None; needs G ≥ 2×2.
    Computed on the scaled Gram matrix (the test is scale-free), so gains of 1e-200 or 1e200 are found too."""
    if parts is None or parts[1].shape[0] < 2:
        return None
    _, small, scale = parts
    scale2 = float(np.diagonal(small).mean())
    if not scale2 > 0:
        return None
    error = _minus_identity_max(small, 1 / scale2)
    return math.sqrt(scale2) * scale if error <= tolerance else None


def orthogonality_decidable(shape: tuple[int, ...], tolerance: float, alpha: float = 1e-6) -> bool:
    """Whether passing max|G/g² − I| ≤ tolerance shows structure: i.i.d. columns of length L (the long side) have
    normalized inner products and norm deviations of about 1/√L, so each of the m = k(k+1)/2 − 1 constraints of a
    k-wide block holds by chance with probability about p = min(1, 0.8·tolerance·√L), all of them with p^m; the
    block is evidence of orthogonality only when p^m < alpha. (bfloat16's tolerance 8u = 0.031 is met by chance by
    the 2048-long columns of a (2048, 3) block, not by a 128×128 one.)"""
    if len(shape) != 2 or min(shape) < 2:
        return False
    chance = min(1.0, 0.8 * tolerance * math.sqrt(max(shape)))
    constraints = min(shape) * (min(shape) + 1) // 2 - 1
    return chance < 1 and constraints * math.log(chance) < math.log(alpha)


def diagonal_rules_out_orthogonal(diagonal: np.ndarray, tolerance: float) -> bool:
    """True when the squared column (row) norms alone show G ≉ g²I: some |dᵢ/mean d − 1| exceeds the tolerance by
    more than rounding (the Gram matrix's own diagonal may differ from these sums in the last bits)."""
    if diagonal.size < 2:
        return False
    mean = float(diagonal.mean())
    if not mean > 0:
        return False  # decided by the Gram matrix itself
    return float(np.abs(diagonal / mean - 1).max()) > tolerance * (1 + 1e-9) + 1e-12
