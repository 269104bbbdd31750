"""Gram matrices of blocks, computed on values scaled by a power of two: orthogonality checks and singular
values."""

from __future__ import annotations

import math

import torch

from ..stats import as_float64, power_of_two_scale
from .checks import Verdict
from .formatting import _fmt


def gram(matrix: torch.Tensor) -> torch.Tensor:
    """BᵀB for a tall (or square) block, BBᵀ for a wide one, in float64."""
    return _scaled_gram(as_float64(matrix))[0]


_Gram = tuple[torch.Tensor, torch.Tensor, float]  # (G, G / s², s) for a power of two s near max|B|


def _scaled_gram(m: torch.Tensor) -> _Gram:
    """The Gram matrix of a float64 matrix computed from B/s (s a power of two near max|B|, so B/s is exact and
    (B/s)ᵀ(B/s) cannot overflow or underflow), with G = that · s² (inf only where BᵀB really exceeds float64)."""
    scale = power_of_two_scale(m.abs().max().item()) if m.numel() else 1.0
    scaled = m / scale
    small = scaled.T @ scaled if m.shape[0] >= m.shape[1] else scaled @ scaled.T
    return small * scale * scale, small, scale


def check_orthogonal(the_gram: torch.Tensor | None, gain: float, tolerance: float) -> Verdict:
    """max|G/g² − I| ≤ tolerance for the Gram matrix G of the block (BᵀB tall, BBᵀ wide); None: not finite."""
    return _orthogonal_verdict(None if the_gram is None else (the_gram, the_gram, 1.0), gain, tolerance)


def _orthogonal_verdict(parts: _Gram | None, gain: float, tolerance: float) -> Verdict:
    """check_orthogonal on a scaled Gram matrix: (G/s²)·(s/g)² − I, so that a gain of 1e200 (G = 1e400, beyond
    float64) is checked as exactly as a gain of 1."""
    if parts is None or bool(torch.isnan(parts[1]).any()):
        return Verdict(False, True, "NaN/Inf values in the matrix")
    the_gram, small, scale = parts
    size = small.shape[0]
    if gain == 0:
        error = the_gram.abs().max().item() if size else 0.0
        return Verdict(error == 0, True, f"max |BᵀB| = {_fmt(error)} (gain 0)")
    ratio = scale / gain  # inf for hopeless cases (1e300 values, gain 1e-300): error inf, not orthogonal
    error = (small * ratio * ratio - torch.eye(size, dtype=small.dtype)).abs().max().item() if size else 0.0
    decided = size >= 2
    what = "orthogonal" + (f" with gain {_fmt(gain)}" if gain != 1 else "")
    if error > tolerance:
        return Verdict(False, True, f"not {what}: max |BᵀB/g² − I| = {_fmt(error)} > {_fmt(tolerance)}")
    return Verdict(True, decided, f"{what}: max |BᵀB/g² − I| = {_fmt(error)}")


def _spectrum(parts: _Gram | None) -> torch.Tensor | None:
    """Singular values, s·√eig(G/s²) of the scaled Gram matrix, ascending; None if the solver gives up."""
    if parts is None:
        return None
    _, small, scale = parts
    try:
        return torch.linalg.eigvalsh(small).clamp_min(0).sqrt() * scale
    except RuntimeError:  # torch.linalg.LinAlgError: no convergence (has not happened on a scaled Gram matrix)
        return None


def _scaled_orthogonal(parts: _Gram | None, tolerance: float) -> float | None:
    """The gain g if G ≈ g²I (max|G/g² − I| ≤ tolerance with g² = mean diag G), else None; needs G ≥ 2×2.
    Computed on the scaled Gram matrix (the test is scale-free), so gains of 1e-200 or 1e200 are found too."""
    if parts is None or parts[1].shape[0] < 2:
        return None
    _, small, scale = parts
    scale2 = small.diagonal().mean().item()
    if not scale2 > 0:
        return None
    error = (small / scale2 - torch.eye(small.shape[0], dtype=small.dtype)).abs().max().item()
    return math.sqrt(scale2) * scale if error <= tolerance else None
