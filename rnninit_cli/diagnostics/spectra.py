"""Extreme singular values of large matrices by Lanczos on their Gram operator (BᵀB, or BBᵀ when wide), applied
as products with B chunk by chunk: neither the Gram matrix nor its eigendecomposition is formed.

Accuracy. Each estimate is a Ritz value: σ max is a lower bound of the true σ max, σ min an upper bound of the true
σ min (up to rounding). The iteration runs until σ max is converged: its residual bound r (some eigenvalue of the
Gram matrix lies within r of θ = σ²) shows a relative error of σ at most ACCURACY (1e-3), or r is at the noise of the
products (a rank-deficient or exactly orthogonal matrix) — in practice 1 to 50 steps, MAX_STEPS at most. σ min
gets the same steps: where the smallest singular values stand apart (orthogonal, scaled, identity, few distinct
values, tall blocks) it converges as well (`Extremes.low_converged`); where they crowd near zero, as in a square
random block (σ min ≈ σ max / n), no Krylov method resolves it in few steps, and the estimate stays an upper bound
(a square 2048 × 2048 PyTorch-initialized block: a few % of σ max for a true 0.02 %).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .stats import power_of_two_scale, quiet_floats

ACCURACY = 1e-3  # relative error of a converged σ estimate
MAX_STEPS = 100  # Lanczos steps at most (each a pass over the matrix): σ max converges long before
_CHUNK_VALUES = 1 << 17  # values per row chunk: both products with it run from the CPU's cache
RUNS = 2  # Lanczos runs side by side, from independent starts: one may miss the top eigenvector, both hardly
_START_SEED = 20240622  # the start vectors: fixed, so the same matrix gives the same estimates
_NOISE_UNITS = 8.0  # the noise of a product with the Gram operator: this many unit roundoffs · √size · ‖G‖
_SAFE_EXPONENT = {np.dtype(np.float32): 40, np.dtype(np.float64): 400}  # |values| within 2^±e: no scaling needed

_Operator = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Extremes:
    """The smallest and largest singular values (σ min an upper bound, σ max a lower bound), whether σ min met the
    stated accuracy, and the Lanczos steps taken."""

    low: float
    high: float
    low_converged: bool
    steps: int


def working_matrix(values: np.ndarray, largest: float | None = None) -> tuple[np.ndarray, float]:
    """(M, s) with B = s·M, M in float32 (float32 and narrower floats, exactly) or float64 (everything else), s a
    power of two: 1 unless B's largest magnitude (`largest`, when the caller knows it) is so large or small that
    products could overflow or underflow."""
    array = values.real if np.iscomplexobj(values) else values
    narrow = str(array.dtype).startswith(("float", "bfloat")) and array.dtype.itemsize <= 4  # exact in float32
    working = np.dtype(np.float32 if narrow else np.float64)
    matrix = np.asarray(array, dtype=working)
    if largest is None:
        largest = float(np.abs(matrix).max()) if matrix.size else 0.0
    if largest == 0 or 2.0**-_SAFE_EXPONENT[working] <= largest <= 2.0**_SAFE_EXPONENT[working]:
        return matrix, 1.0
    scale = power_of_two_scale(largest)
    return np.ldexp(matrix, -(math.frexp(scale)[1] - 1)), scale  # exact: a power of two (subnormals rounded)


def gram_operator(matrix: np.ndarray) -> tuple[int, _Operator]:
    """(n, X ↦ GX) for G = MᵀM (n columns, M tall or square) or MMᵀ (n rows, M wide), X a vector or n × p: Σ Cᵀ(CX)
    over row chunks C of M (of a contiguous copy of Mᵀ when M is wide: column chunks are strided and cost twice as
    much), each chunk read from memory once per product."""
    tall = np.ascontiguousarray(matrix if matrix.shape[0] >= matrix.shape[1] else matrix.T)
    rows, size = tall.shape
    step = max(1, _CHUNK_VALUES // max(1, size))
    chunks = [tall[start:start + step] for start in range(0, rows, step)]

    def apply(x: np.ndarray) -> np.ndarray:
        total = np.zeros(x.shape, dtype=tall.dtype)
        for chunk in chunks:
            total += chunk.T @ (chunk @ x)
        return total

    return size, apply


def lanczos_extremes(apply: _Operator, size: int, dtype: np.dtype, *, runs: int = RUNS, max_steps: int = MAX_STEPS,
                     accuracy: float = ACCURACY) -> tuple[float, float, bool, bool, int]:
    """(θ min, θ max, converged low, converged high, steps) of the symmetric positive semidefinite G behind `apply`:
    `runs` Lanczos iterations with full reorthogonalization from fixed random starts, side by side (one pass over
    the matrix per step serves all), until every run's θ max is converged; θ min is the least of the runs', θ max
    the greatest. θ are Ritz values (λ min ≤ θ min, θ max ≤ λ max); one is converged when its residual r =
    β·|last component of its Ritz vector| (some eigenvalue lies within r of θ) is ≤ 2·accuracy·θ (√θ then within
    `accuracy` of √λ, relatively), or ≤ the noise of a product with G (`_NOISE_UNITS`·u·√size·θ max). A run whose start
    is nearly orthogonal to the top eigenvector converges to the next eigenvalue first (rare, but one 300 × 300 block
    of the tests does it, 1 % off); both runs doing so, about the square of that."""
    steps = min(max_steps, size)
    basis = np.zeros((runs, steps + 1, size), dtype=dtype)
    basis[:, 0] = _starts(runs, size)
    alphas, betas = np.zeros((runs, steps)), np.zeros((runs, steps))
    noise = _NOISE_UNITS * float(np.finfo(dtype).eps) * math.sqrt(size)
    ritz: list[np.ndarray] = [np.zeros(0)] * runs
    converged = np.zeros((runs, 2), dtype=bool)
    ended = np.zeros(runs, dtype=bool)  # an invariant subspace reached: the run's Ritz values are final
    for step in range(steps):
        products = apply(np.ascontiguousarray(basis[:, step].T)).T.copy()
        for run in np.flatnonzero(~ended):
            product, known = products[run], basis[run, :step + 1]
            alphas[run, step] = float(basis[run, step] @ product)
            for _ in range(2):  # twice is enough (Kahan, Parlett): orthogonal to working precision
                product -= known.T @ (known @ product)
            betas[run, step] = float(np.linalg.norm(product))
            previous, ritz[run] = ritz[run], np.linalg.eigvalsh(_tridiagonal(alphas[run, :step + 1], betas[run, :step]))
            floor = noise * float(ritz[run][-1])
            if not betas[run, step] > floor:  # an invariant subspace: its eigenvalues are G's, every one it holds
                converged[run] = ended[run] = True
                continue
            ends = _last_components(ritz[run], previous)
            converged[run] = (betas[run, step] * ends[0] <= max(2 * accuracy * ritz[run][0], floor),
                              betas[run, step] * ends[1] <= max(2 * accuracy * ritz[run][-1], floor))
            basis[run, step + 1] = product / betas[run, step]
        if converged[:, 1].all():
            steps = step + 1
            break
    lowest = min(range(runs), key=lambda run: ritz[run][0])
    highest = max(float(values[-1]) for values in ritz)
    return max(float(ritz[lowest][0]), 0.0), highest, bool(converged[lowest, 0]), bool(converged[:, 1].all()), steps


def _starts(runs: int, size: int) -> np.ndarray:
    """`runs` unit start vectors of length `size`: random, the same every time (_START_SEED)."""
    starts = np.random.default_rng(_START_SEED).standard_normal((runs, size))
    return starts / np.linalg.norm(starts, axis=1, keepdims=True)


def _tridiagonal(alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """The symmetric tridiagonal matrix with `alphas` on its diagonal and `betas` beside it."""
    return np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)


@quiet_floats
def _last_components(ritz: np.ndarray, previous: np.ndarray) -> tuple[float, float]:
    """|last component| of the unit eigenvectors of Tₖ for its smallest and largest eigenvalues θ, from Tₖ's
    eigenvalues θ and Tₖ₋₁'s μ (which interlace them): s² = Πⱼ(θ − μⱼ) / Π_{l≠i}(θ − θₗ) (the characteristic
    polynomials' ratio), each factor paired into a ratio in [0, 1]; 1 (not converged) where the ratio is undefined
    (equal Ritz values in floating point)."""
    if ritz.size == 1:
        return 1.0, 1.0
    low = np.prod((ritz[0] - previous) / (ritz[0] - ritz[1:]))
    high = np.prod((ritz[-1] - previous) / (ritz[-1] - ritz[:-1]))
    return tuple(math.sqrt(float(s)) if 0 <= s <= 1 else 1.0 for s in (low, high))  # type: ignore[return-value]


def extreme_singular_values(values: np.ndarray, largest: float | None = None, *, max_steps: int = MAX_STEPS,
                            accuracy: float = ACCURACY) -> Extremes:
    """σ min and σ max of a finite, non-empty 2-D array (any real dtype; see the module's docstring); `largest`: its
    largest magnitude, when the caller knows it."""
    matrix, scale = working_matrix(values, largest)
    size, apply = gram_operator(matrix)
    low, high, low_converged, _, steps = lanczos_extremes(apply, size, matrix.dtype, max_steps=max_steps,
                                                          accuracy=accuracy)
    return Extremes(math.sqrt(low) * scale, math.sqrt(high) * scale, low_converged, steps)
