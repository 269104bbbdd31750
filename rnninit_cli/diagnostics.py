"""Diagnostics: per-block statistics, initializer-family and scheme recognition, warnings, verify, diff.

Library code only (no printing, no exit codes). Every result is a dataclass with `as_dict()` giving a
JSON-serializable dict (non-finite floats become None).

Statistical decisions
---------------------
Every statistical test below has size ALPHA = 1e-6: a block really drawn by the claimed initializer fails
one test with probability at most ALPHA. A block check runs at most five such tests, so a correctly drawn
block is misjudged with probability ≤ 5e-6, and a layer of ≤ 20 blocks with probability ≤ 1e-4.

- Uniform U(lo, hi), n values, width w = hi − lo:
  * range: every value in [lo, hi] (deterministic; slack for float rounding, see `_slack`);
  * edges: P(max < hi − t·w) = (1 − t)^n, so with t = 1 − ALPHA^(1/n) a correct draw reaches within t·w of
    each end; for a symmetric bound a, max|x| ≥ a(1 − t) likewise. This is what rules out a *larger*
    bound: data whose max |x| stays below a(1 − t) were not drawn from U(−a, a);
  * mean and mean square about the centre: Bernstein's inequality for bounded i.i.d. variables,
    P(|ȳ − μ| ≥ ε) ≤ 2·exp(−nε² / (2σ² + 2bε/3)), solved for ε at ALPHA, with σ² = w²/12, b = w/2
    for x and σ² = Var((x − c)²) = w⁴/180, b = w²/6 for the square.
- Normal N(μ, σ²): q = Σ((x − μ)/σ)² ~ χ²_n with Laurent & Massart (2000) bounds
  n − 2√(nL) ≤ q ≤ n + 2√(nL) + 2L, L = ln(2/ALPHA); the mean |z̄|·√n ≤ z_ALPHA (exact normal quantile);
  the largest |z| ≤ c_hi with n·P(|Z| > c_hi) = ALPHA (union bound) and ≥ c_lo with P(|Z| < c_lo)^n = ALPHA
  (the latter separates a normal from a uniform of the same variance, whose max |z| is √3).
- Truncated normal (lecun_normal: σ'·T, T ~ N(0, 1) cut to [−2, 2]): range |x| ≤ 2σ'; edge
  max|x| ≥ m·σ' with (P(|T| < m))^n = ALPHA; mean and mean square by Bernstein with the exact moments of T.
- Orthogonality and exact values are numerical, not statistical: max|BᵀB/g² − I| ≤ max(1e-3, 8u) where u is
  the unit roundoff of the stored dtype (a stored orthonormal column set has |Gram − I| ≤ 2u + u² entrywise by
  Cauchy–Schwarz; 1e-3 also admits matrices orthogonalized in float32 by other frameworks); constants and
  identities must equal the expected value up to one rounding of the stored dtype (2u·|value|).

Blocks with fewer than MIN_SAMPLES values are too small for the statistical tests to separate the known
initializers: their family is `undetermined`, and a layer holding such a block is not claimed for a scheme.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import NothingToDoError, RuleError, SchemeError, UsageError
from .initializers import TRUNCATED_NORMAL_STD, _gain
from .layout import KINDS, Block, Layer, article, find_layers
from .planning import KEEP, PlanEntry, plan
from .report import as_float64, moments, power_of_two_scale
from .schemes import SCHEMES, Rule, Scheme, format_value, parse_call

ALPHA = 1e-6
MIN_SAMPLES = 16
ORTHOGONAL_TOLERANCE = 1e-3
UNKNOWN = "unknown / trained"
UNDETERMINED = "undetermined"
TRUNCATION = 2.0  # lecun_normal cuts T ~ N(0, 1) at ±2
_BARS = "▁▂▃▄▅▆▇█"
_LARGEST_LOG = 709.0  # math.exp overflows (OverflowError) just above 709.78
_WEIGHTS = ("weight_ih", "weight_hh", "weight_hr")


# ---------------------------------------------------------------------------------------------------------------
# Small math helpers


def _unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps/2 of `dtype` (0 for non-float dtypes)."""
    return torch.finfo(dtype).eps / 2 if dtype.is_floating_point else 0.0


def orthogonal_tolerance(dtype: torch.dtype) -> float:
    """max(1e-3, 8u): bound on max|BᵀB − I| for a stored orthogonal block (|Gram − I| ≤ 2u + u²)."""
    return max(ORTHOGONAL_TOLERANCE, 8 * _unit_roundoff(dtype))


def _bisect(function: Callable[[float], float], low: float, high: float, target: float) -> float:
    """x in [low, high] with function(x) = target, for an increasing function (60 halvings)."""
    for _ in range(200):
        middle = (low + high) / 2
        if function(middle) < target:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _edge_fraction(n: int, alpha: float = ALPHA) -> float:
    """t = 1 − α^(1/n): a U(0, 1) sample of n stays below 1 − t with probability α."""
    return -math.expm1(math.log(alpha) / n)


def _bernstein(n: int, variance: float, bound: float, alpha: float = ALPHA) -> float:
    """ε with 2·exp(−nε²/(2σ² + 2bε/3)) = α: ε = (2bL/3 + √((2bL/3)² + 8nσ²L)) / 2n, L = ln(2/α)."""
    log_term = math.log(2 / alpha)
    linear = 2 * bound * log_term / 3
    return (linear + math.sqrt(linear * linear + 8 * n * variance * log_term)) / (2 * n)


@functools.lru_cache(maxsize=4096)
def _normal_quantile(alpha: float = ALPHA) -> float:
    """z with P(|Z| > z) = erfc(z/√2) = α."""
    return _bisect(lambda z: -math.erfc(z / math.sqrt(2)), 0.0, 40.0, -alpha)


@functools.lru_cache(maxsize=4096)
def _chi2_bounds(n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Laurent–Massart: P(q ≤ n − 2√(nL)) and P(q ≥ n + 2√(nL) + 2L) are each ≤ α/2 for L = ln(2/α)."""
    log_term = math.log(2 / alpha)
    root = 2 * math.sqrt(n * log_term)
    return n - root, n + root + 2 * log_term


@functools.lru_cache(maxsize=4096)
def _normal_max_bounds(n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """(c_lo, c_hi): P(max|Z| < c_lo) = erf(c_lo/√2)^n = α and n·erfc(c_hi/√2) = α."""
    target = math.exp(math.log(alpha) / n)
    low = _bisect(lambda c: math.erf(c / math.sqrt(2)), 0.0, 40.0, target)
    high = _bisect(lambda c: -math.erfc(c / math.sqrt(2)), 0.0, 40.0, -alpha / n)
    return low, high


@functools.lru_cache(maxsize=4096)
def _truncated_edge(n: int, cut: float = TRUNCATION, alpha: float = ALPHA) -> float:
    """m with P(max|T| < m) = (erf(m/√2) / erf(c/√2))^n = α for n draws of T ~ N(0, 1) cut to [−c, c]."""
    mass = math.erf(cut / math.sqrt(2))
    return _bisect(lambda m: math.erf(m / math.sqrt(2)) / mass, 0.0, cut, math.exp(math.log(alpha) / n))


@functools.lru_cache(maxsize=4096)
def _truncated_moments(cut: float = TRUNCATION) -> tuple[float, float]:
    """E[T²] = 1 − 2cφ(c)/Z and E[T⁴] = 3E[T²] − 2c³φ(c)/Z for T ~ N(0, 1) cut to [−c, c], Z = erf(c/√2)."""
    mass = math.erf(cut / math.sqrt(2))
    density = math.exp(-cut * cut / 2) / math.sqrt(2 * math.pi)
    second = 1 - 2 * cut * density / mass
    return second, 3 * second - 2 * cut**3 * density / mass


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _json(value: Any) -> Any:
    """Non-finite floats → None, recursively through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------------------------------
# Verdicts: is a block consistent with one distribution?


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check: `ok` (consistent), `decided` (the sample was big enough), and why."""

    ok: bool
    decided: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "decided": self.decided, "detail": self.detail}


def _nonfinite(values: torch.Tensor) -> Verdict | None:
    """A failing verdict counting NaN/Inf values, None when all are finite (a finite float64 sum says so in one
    pass: a NaN or Inf makes the sum non-finite, and float64 cannot overflow on stored float weights)."""
    if math.isfinite(values.double().sum().item()):
        return None
    bad = int((~torch.isfinite(values)).sum())
    return Verdict(False, True, f"{bad} NaN/Inf value(s)") if bad else None


def _slack(u: float, magnitude: float) -> float:
    """Float rounding allowance: bounds and values may each be one rounding (u) off, 4u·|magnitude| in all."""
    return 4 * u * abs(magnitude) + 1e-300


def check_constant(values: torch.Tensor, value: float, u: float = 0.0) -> Verdict:
    """Every value equals `value` up to one rounding of the stored dtype: |x − c| ≤ 2u·|c|."""
    if (bad := _nonfinite(values)) is not None:
        return bad
    if values.numel() == 0:
        return Verdict(True, True, "empty")
    error = (values - value).abs().max().item()
    if error > 2 * u * abs(value):
        return Verdict(False, True, f"max |x − {_fmt(value)}| = {_fmt(error)}")
    return Verdict(True, True, f"all {_fmt(value)}")


def check_uniform(values: torch.Tensor, low: float, high: float, u: float = 0.0) -> Verdict:
    """Range [lo, hi], both edges reached within t·w (t = 1 − α^(1/n)), mean and mean square (Bernstein)."""
    if (bad := _nonfinite(values)) is not None:
        return bad
    x = values.reshape(-1)
    n = x.numel()
    width = high - low
    if width <= 0:
        return check_constant(x, low, u)
    slack = _slack(u, max(abs(low), abs(high)))
    smallest, largest = x.min().item(), x.max().item()
    decided = n >= MIN_SAMPLES
    name = f"U({_fmt(low)}, {_fmt(high)})"
    if smallest < low - slack or largest > high + slack:
        return Verdict(False, True, f"values in [{_fmt(smallest)}, {_fmt(largest)}] leave the range of {name}")
    t = _edge_fraction(n)
    if smallest > low + t * width + slack or largest < high - t * width - slack:
        return Verdict(False, decided, f"values in [{_fmt(smallest)}, {_fmt(largest)}]: {n} draws of {name} "
                                       f"come within {_fmt(t * width)} of both ends")
    centre = (low + high) / 2
    if abs(low + high) <= slack:  # symmetric: max |x| ≥ a(1 − t), which rules out any larger bound
        bound = high
        largest_abs = x.abs().max().item()
        if largest_abs < bound * (1 - t) - slack:
            return Verdict(False, decided, f"max |x| = {_fmt(largest_abs)} < {_fmt(bound * (1 - t))}: "
                                           f"{n} draws of {name} come closer to ±{_fmt(bound)}")
    mean = x.mean().item()
    tolerance = _bernstein(n, width * width / 12, width / 2) + slack
    if abs(mean - centre) > tolerance:
        return Verdict(False, decided, f"mean {_fmt(mean)}, expected {_fmt(centre)} ± {_fmt(tolerance)}")
    square = ((x - centre) ** 2).mean().item()
    expected = width * width / 12
    fourth = (width * width) * (width * width)  # not width**4, which raises OverflowError where this gives inf
    tolerance = _bernstein(n, fourth / 180, width * width / 6) + 3 * u * expected + 2 * slack * width
    if abs(square - expected) > tolerance:
        return Verdict(False, decided, f"std {_fmt(math.sqrt(square))}, expected {_fmt(math.sqrt(expected))} "
                                       f"for {name}")
    return Verdict(True, decided, f"consistent with {name}")


def check_normal(values: torch.Tensor, mean: float, std: float, u: float = 0.0) -> Verdict:
    """χ² bound on Σz², z = (x − μ)/σ; |z̄|√n ≤ z_α; c_lo ≤ max|z| ≤ c_hi (see the module docstring)."""
    if (bad := _nonfinite(values)) is not None:
        return bad
    if std <= 0:
        return check_constant(values, mean, u)
    x = values.reshape(-1)
    n = x.numel()
    decided = n >= MIN_SAMPLES
    name = f"N({_fmt(mean)}, {_fmt(std)}²)"
    z = (x - mean) / std
    low, high = _chi2_bounds(n)
    q = (z * z).sum().item()
    if q < low * (1 - 4 * u) or q > high * (1 + 4 * u) + 1e-12:
        return Verdict(False, decided, f"std {_fmt(std * math.sqrt(q / n))}, expected {_fmt(std)} for {name} "
                                       f"(χ²_{n} = {_fmt(q)} outside [{_fmt(low)}, {_fmt(high)}])")
    z_mean = z.mean().item() * math.sqrt(n)
    if abs(z_mean) > _normal_quantile() + 4 * u * math.sqrt(n) * (1 + abs(mean) / std):
        return Verdict(False, decided, f"mean {_fmt(x.mean().item())}, expected {_fmt(mean)} for {name}")
    c_low, c_high = _normal_max_bounds(n)
    largest = z.abs().max().item()
    if largest > c_high * (1 + 4 * u):
        return Verdict(False, True, f"max |x − μ| = {_fmt(largest)}σ, beyond {_fmt(c_high)}σ for {name}")
    if largest < c_low * (1 - 4 * u):
        return Verdict(False, decided, f"max |x − μ| = {_fmt(largest)}σ: {n} normal draws reach {_fmt(c_low)}σ "
                                       "(lighter tails than a normal)")
    return Verdict(True, decided, f"consistent with {name}")


def check_truncated_normal(values: torch.Tensor, scale: float, u: float = 0.0, cut: float = TRUNCATION) -> Verdict:
    """scale·T, T ~ N(0, 1) cut to [−c, c]: |x| ≤ c·scale, max|x| ≥ m·scale, mean and mean square (Bernstein)."""
    if (bad := _nonfinite(values)) is not None:
        return bad
    x = values.reshape(-1)
    n = x.numel()
    decided = n >= MIN_SAMPLES
    limit = cut * scale
    slack = _slack(u, limit)
    name = f"truncated normal (σ' = {_fmt(scale)}, cut at ±{_fmt(limit)})"
    largest = x.abs().max().item()
    if largest > limit + slack:
        return Verdict(False, True, f"max |x| = {_fmt(largest)} beyond the truncation ±{_fmt(limit)} of {name}")
    edge = _truncated_edge(n, cut)
    if largest < edge * scale - slack:
        return Verdict(False, decided, f"max |x| = {_fmt(largest)} < {_fmt(edge * scale)}: {n} draws of {name} "
                                       "come closer to the truncation")
    second, fourth = _truncated_moments(cut)
    tolerance = _bernstein(n, second * scale * scale, limit) + slack
    if abs(x.mean().item()) > tolerance:
        return Verdict(False, decided, f"mean {_fmt(x.mean().item())}, expected 0 ± {_fmt(tolerance)} for {name}")
    expected = second * scale * scale
    square = (x * x).mean().item()
    tolerance = (_bernstein(n, (fourth - second * second) * (scale * scale) * (scale * scale),
                            max(expected, limit * limit - expected))
                 + 3 * u * expected + 2 * slack * limit)
    if abs(square - expected) > tolerance:
        return Verdict(False, decided, f"std {_fmt(math.sqrt(square))}, expected {_fmt(math.sqrt(expected))} "
                                       f"for {name}")
    return Verdict(True, decided, f"consistent with {name}")


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


def check_identity(matrix: torch.Tensor, scale: float, u: float = 0.0) -> Verdict:
    """B = scale·I (ones on the main diagonal for non-square blocks, as torch.nn.init.eye_) up to 2u·|scale|."""
    if (bad := _nonfinite(matrix)) is not None:
        return bad
    eye = torch.eye(*matrix.shape, dtype=torch.float64) * scale
    error = (matrix.double() - eye).abs().max().item() if matrix.numel() else 0.0
    if error > 2 * u * abs(scale):
        return Verdict(False, True, f"max |B − {_fmt(scale)}·I| = {_fmt(error)}")
    return Verdict(True, True, f"{_fmt(scale)}·I")


def check_chrono(values: torch.Tensor, tmax: float, negate: bool = False, u: float = 0.0) -> Verdict:
    """±log(U[1, tmax − 1]): v = ±x in [0, log(tmax − 1)] and exp(v) passes check_uniform on [1, tmax − 1]."""
    if (bad := _nonfinite(values)) is not None:
        return bad
    v = -values.reshape(-1).double() if negate else values.reshape(-1).double()
    top = math.log(tmax - 1)
    sign = "−" if negate else ""
    slack = _slack(u, top)
    if v.numel() and (v.min().item() < -slack or v.max().item() > top + slack):
        return Verdict(False, True, f"values outside {sign}[0, log(tmax − 1) = {_fmt(top)}]")
    verdict = check_uniform(torch.exp(v), 1.0, tmax - 1, u * max(1.0, top))
    return Verdict(verdict.ok, verdict.decided, f"exp({sign}b): {verdict.detail}")


# ---------------------------------------------------------------------------------------------------------------
# Cached float64 views of the tensors


class _Cache:
    """float64 CPU copies of parameters, their blocks and Gram matrices, computed once."""

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        self.tensors = tensors
        self._whole: dict[str, torch.Tensor] = {}
        self._grams: dict[tuple[str, int | None, int | None], _Gram | None] = {}

    def whole(self, name: str) -> torch.Tensor:
        if name not in self._whole:
            self._whole[name] = as_float64(self.tensors[name])
        return self._whole[name]

    def block(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self.whole(name)[start:stop]

    def u(self, name: str) -> float:
        """Rounding allowance: the stored dtype's u, at least float32's (initializers draw in float32, and a
        checkpoint cast up to float64 keeps float32 values)."""
        return max(_unit_roundoff(torch.as_tensor(self.tensors[name]).dtype), _unit_roundoff(torch.float32))

    def dtype(self, name: str) -> torch.dtype:
        return torch.as_tensor(self.tensors[name]).dtype

    def gram(self, name: str, start: int | None = None, stop: int | None = None) -> torch.Tensor | None:
        """Gram matrix of rows [start, stop) (the whole parameter when None); None if not 2-D or not finite."""
        parts = self.gram_parts(name, start, stop)
        return None if parts is None else parts[0]

    def gram_parts(self, name: str, start: int | None = None, stop: int | None = None) -> _Gram | None:
        """(G, G/s², s) for rows [start, stop) (see `_scaled_gram`); None if not 2-D, empty or not finite."""
        key = (name, start, stop)
        if key not in self._grams:
            values = self.whole(name) if start is None else self.block(name, start, stop or 0)
            ok = values.dim() == 2 and values.numel() > 0 and bool(torch.isfinite(values).all())
            self._grams[key] = _scaled_gram(values) if ok else None
        return self._grams[key]


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


# ---------------------------------------------------------------------------------------------------------------
# Checking planned entries (shared by verify and scheme recognition)


@dataclass(frozen=True)
class _Scope:
    """The fans of the tensor an initializer saw: the block (per gate) or the whole parameter (per matrix)."""

    fan_in: int
    fan_out: int


def _scope(entry: PlanEntry, cache: _Cache) -> _Scope:
    whole = cache.whole(entry.name)
    rows = whole.shape[0] if entry.per == "matrix" else entry.stop - entry.start
    return _Scope(int(whole.shape[1]), int(rows))


def _check_energy(block: torch.Tensor, gain: float, rows: int, u: float) -> Verdict:
    """Rows of a per-matrix orthogonal Q (R rows) carry energy E[q²] = g²/R: χ² bound on Σq²·R/g² (the sphere
    and orthogonality constraints make the true spread smaller than χ², so the bound is conservative)."""
    n = block.numel()
    q = ((block / gain) ** 2).sum().item() * rows  # divided first: squares of 1e200 values would overflow
    low, high = _chi2_bounds(n)
    decided = n >= MIN_SAMPLES
    if q < low * (1 - 4 * u) or q > high * (1 + 4 * u):
        rms = math.sqrt(q / n) * gain / math.sqrt(rows)
        return Verdict(False, decided, f"rms {_fmt(rms)}, expected {_fmt(gain / math.sqrt(rows))} for a gate "
                                       f"block of {article(f'{rows}-row')} orthogonal matrix")
    return Verdict(True, decided, "block energy consistent")


def _check_orthogonal_matrix(entry: PlanEntry, group: Sequence[PlanEntry], cache: _Cache) -> Verdict:
    """Per-matrix orthogonal: the rows drawn together must be (a slice of) g·Q with orthonormal columns or rows."""
    gain = float(dict(entry.args).get("gain", 1.0))
    whole = cache.whole(entry.name)
    rows, cols = whole.shape
    tolerance = orthogonal_tolerance(cache.dtype(entry.name))
    block = cache.block(entry.name, entry.start, entry.stop)
    if (bad := _nonfinite(block)) is not None:
        return bad
    if gain == 0:
        return check_constant(block, 0.0)
    covered = sum(e.stop - e.start for e in group)
    if covered == rows:
        whole_verdict = _orthogonal_verdict(cache.gram_parts(entry.name), gain, tolerance)
        if whole_verdict.ok:
            return Verdict(True, whole_verdict.decided, f"whole {entry.kind} {whole_verdict.detail}")
    else:
        whole_verdict = Verdict(True, False, "only part of the matrix is planned")
    if rows <= cols:  # wide: rows orthonormal, so every row block is orthogonal on its own
        own = _orthogonal_verdict(cache.gram_parts(entry.name, entry.start, entry.stop), gain, tolerance)
        if not own.ok:
            return Verdict(False, True, f"rows of a wide orthogonal matrix: {own.detail}")
    else:
        own = _check_energy(block, gain, rows, cache.u(entry.name))
        if not own.ok:
            return own
    if not whole_verdict.ok:
        others = [e for e in group if e is not entry]
        peers_ok = all(_block_energy_ok(e, gain, rows, cols, tolerance, cache) for e in others)
        if peers_ok:  # nothing singles out another block: this one shares the blame
            return Verdict(False, True, f"whole {entry.kind} {whole_verdict.detail}")
        return Verdict(True, own.decided, f"block consistent; whole {entry.kind} {whole_verdict.detail} "
                                          "because of another block")
    return own


def _block_energy_ok(entry: PlanEntry, gain: float, rows: int, cols: int, tolerance: float, cache: _Cache) -> bool:
    if rows <= cols:
        return _orthogonal_verdict(cache.gram_parts(entry.name, entry.start, entry.stop), gain, tolerance).ok
    block = cache.block(entry.name, entry.start, entry.stop)
    return _nonfinite(block) is None and _check_energy(block, gain, rows, cache.u(entry.name)).ok


def check_entry(entry: PlanEntry, tensors: Mapping[str, Any], group: Sequence[PlanEntry] = ()) -> Verdict:
    """Whether the block of `entry` is consistent with its planned initializer, arguments and scope.

    `group`: the entries of the same parameter drawn together with it (same rule, per matrix); default the entry.
    """
    return _check_entry(entry, _Cache(tensors), group or (entry,), ())


def _check_entry(entry: PlanEntry, cache: _Cache, group: Sequence[PlanEntry],
                 chrono_peers: Sequence[PlanEntry]) -> Verdict:
    init = entry.initializer
    args = dict(entry.args)
    if init == KEEP:
        return Verdict(True, True, "kept as it was")
    block = cache.block(entry.name, entry.start, entry.stop)
    u = cache.u(entry.name)
    if (bad := _nonfinite(block)) is not None:
        return bad
    if block.numel() == 0:  # e.g. a (rows, 0) weight: nothing to check, and min()/max() would fail
        return Verdict(True, True, "empty")
    if init in ("zeros", "ones", "constant"):
        return check_constant(block, {"zeros": 0.0, "ones": 1.0}.get(init, float(args.get("value", 0.0))), u)
    if init == "identity":
        return check_identity(block, float(args.get("scale", 1.0)), u)
    if init == "chrono":
        return _check_chrono_entry(entry, block, u, cache, chrono_peers)
    if init == "orthogonal":
        if entry.per == "matrix":
            return _check_orthogonal_matrix(entry, group, cache)
        tolerance = orthogonal_tolerance(cache.dtype(entry.name))
        parts = cache.gram_parts(entry.name, entry.start, entry.stop)
        return _orthogonal_verdict(parts, float(args["gain"]), tolerance)
    if init in _IID and (structure := _structured(entry, cache)):
        return Verdict(False, True, f"{structure}; {init} draws i.i.d. values, which never are")
    if init == "uniform":
        return check_uniform(block, float(args["a"]), float(args["b"]), u)
    if init == "normal":
        return check_normal(block, float(args["mean"]), float(args["std"]), u)
    if init == "pytorch":
        bound = 1 / math.sqrt(int(args["hidden_size"]))
        return check_uniform(block, -bound, bound, u)
    if init in ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "lecun_normal"):
        fans = _scope(entry, cache)
        if init == "xavier_uniform":
            bound = float(args["gain"]) * math.sqrt(6 / (fans.fan_in + fans.fan_out))
            return check_uniform(block, -bound, bound, u)
        if init == "xavier_normal":
            return check_normal(block, 0.0, float(args["gain"]) * math.sqrt(2 / (fans.fan_in + fans.fan_out)), u)
        if init == "lecun_normal":
            return check_truncated_normal(block, math.sqrt(1 / fans.fan_in) / TRUNCATED_NORMAL_STD, u)
        fan = fans.fan_in if args["mode"] == "fan_in" else fans.fan_out
        gain = _gain(str(args["nonlinearity"]), float(args["a"]))
        if init == "kaiming_uniform":
            bound = gain * math.sqrt(3 / fan)
            return check_uniform(block, -bound, bound, u)
        return check_normal(block, 0.0, gain / math.sqrt(fan), u)
    return Verdict(True, False, f"no check is known for initializer {init!r}")


_IID = ("uniform", "normal", "pytorch", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
        "lecun_normal")


def _structured(entry: PlanEntry, cache: _Cache) -> str:
    """'block is orthogonal' / 'whole matrix is orthogonal' when G ≈ g²I for a Gram matrix of size ≥ 3, else ''.

    An i.i.d. continuous draw meets the k(k+1)/2 − 1 ≥ 5 constraints of scaled orthogonality within 1e-3 with
    negligible probability (≈ 1e-3 per constraint), so an orthogonal block rules out every i.i.d. initializer
    (e.g. an orthogonal 16×16 block has the variance 1/16 of lecun_normal and could pass its moment tests).
    """
    tolerance = orthogonal_tolerance(cache.dtype(entry.name))
    for parts, what in ((cache.gram_parts(entry.name, entry.start, entry.stop), "block is orthogonal"),
                        (cache.gram_parts(entry.name), "whole matrix is orthogonal")):
        if parts is not None and parts[1].shape[0] >= 3 and _scaled_orthogonal(parts, tolerance) is not None:
            return what
    return ""


def _check_chrono_entry(entry: PlanEntry, block: torch.Tensor, u: float, cache: _Cache,
                        peers: Sequence[PlanEntry]) -> Verdict:
    """Range/uniformity of exp(±b), then b_i = −b_f: chrono blocks of one parameter share their draws."""
    args = dict(entry.args)
    tmax, negate = float(args["tmax"]), bool(args.get("negate", False))
    verdict = check_chrono(block, tmax, negate, u)
    if not verdict.ok:
        return verdict
    sign = -1.0 if negate else 1.0
    for peer in peers:
        if peer is entry or peer.stop - peer.start != entry.stop - entry.start:
            continue
        peer_sign = -1.0 if dict(peer.args).get("negate", False) else 1.0
        other = cache.block(peer.name, peer.start, peer.stop)
        error = (sign * block - peer_sign * other).abs().max().item()
        if not error <= 2 * u * max(1.0, math.log(tmax)):
            relation = "−" if sign != peer_sign else ""
            return Verdict(False, True, f"gate {entry.gate} ≠ {relation}gate {peer.gate} (max diff {_fmt(error)}): "
                                        "chrono draws once per unit, b_i = −b_f")
        break
    return verdict


def _groups(entries: Sequence[PlanEntry]) -> tuple[dict[int, list[PlanEntry]], dict[int, list[PlanEntry]]]:
    """Per entry: the entries drawn as one matrix with it (same parameter and rule, per matrix), and its chrono
    peers (chrono entries of the same parameter and tmax)."""
    by_matrix: dict[tuple[str, str], list[PlanEntry]] = {}
    by_chrono: dict[tuple[str, float], list[PlanEntry]] = {}
    for entry in entries:
        if entry.per == "matrix":
            by_matrix.setdefault((entry.name, entry.rule), []).append(entry)
        if entry.initializer == "chrono":
            by_chrono.setdefault((entry.name, float(dict(entry.args)["tmax"])), []).append(entry)
    matrix = {id(e): group for group in by_matrix.values() for e in group}
    chrono = {id(e): group for group in by_chrono.values() for e in group}
    return matrix, chrono


def _check_all(entries: Sequence[PlanEntry], cache: _Cache) -> list[Verdict]:
    matrix, chrono = _groups(entries)
    return [_check_entry(e, cache, matrix.get(id(e), [e]), chrono.get(id(e), [])) for e in entries]


# ---------------------------------------------------------------------------------------------------------------
# Families: which known initializer a block looks like, without a plan


@dataclass(frozen=True)
class Family:
    """The initializer families a block is consistent with: `label` is the most specific, `candidates` all."""

    label: str
    candidates: tuple[str, ...]
    decided: bool

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "candidates": list(self.candidates), "decided": self.decided}


def _merge(named: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """Join known parameters that coincide (e.g. PyTorch 1/√h = Glorot per matrix when d = 2h for an LSTM)."""
    merged: list[tuple[float, str]] = []
    for value, name in named:
        for index, (seen, names) in enumerate(merged):
            if math.isclose(seen, value, rel_tol=1e-9):
                merged[index] = (seen, f"{names} = {name}")
                break
        else:
            merged.append((value, name))
    return merged


def _named_uniform(layer: Layer, kind: str, shape: tuple[int, ...], whole_rows: int) -> list[tuple[float, str]]:
    """Known uniform bounds: PyTorch 1/√h; Glorot √(6/(fan_in + h)) per gate and √(6/(fan_in + G·h)) per matrix."""
    named = [(1 / math.sqrt(layer.hidden_size), "PyTorch 1/√h")]
    if len(shape) == 2:
        fan_in, rows = shape[1], shape[0]
        if kind == "weight_hr" or rows == whole_rows:
            named.append((math.sqrt(6 / (fan_in + whole_rows)), "Glorot"))
        else:
            named.append((math.sqrt(6 / (fan_in + rows)), "Glorot per gate"))
            named.append((math.sqrt(6 / (fan_in + whole_rows)), "Glorot per matrix"))
    return _merge(named)


def _named_normal(kind: str, shape: tuple[int, ...], whole_rows: int) -> list[tuple[float, str]]:
    """Known normal σ: Glorot √(2/(fan_in + h)) per gate, √(2/(fan_in + G·h)) per matrix; IRNN 0.001."""
    if len(shape) != 2:
        return []
    fan_in, rows = shape[1], shape[0]
    if kind == "weight_hr" or rows == whole_rows:
        named = [(math.sqrt(2 / (fan_in + whole_rows)), "Glorot normal")]
    else:
        named = [(math.sqrt(2 / (fan_in + rows)), "Glorot normal per gate"),
                 (math.sqrt(2 / (fan_in + whole_rows)), "Glorot normal per matrix")]
    return _merge([*named, (0.001, "IRNN 0.001")])


def classify_block(layer: Layer, block: Block, tensors: Mapping[str, Any]) -> Family:
    """The families the block's values are consistent with, most specific first (see the module docstring)."""
    return _classify(layer, block, _Cache(tensors))


def _classify(layer: Layer, block: Block, cache: _Cache) -> Family:
    values = cache.block(block.name, block.start, block.stop)
    u = cache.u(block.name)
    n = values.numel()
    if n == 0:
        return Family(UNDETERMINED, (), False)
    if _nonfinite(values) is not None:
        return Family("unknown (NaN/Inf)", (), True)
    first = values.reshape(-1)[0].item()
    if bool((values == 0).all()):
        return Family("zeros", ("zeros",), True)
    if bool((values == first).all()):
        return Family(f"constant({_fmt(first)})", (f"constant({_fmt(first)})",), True)
    exact: list[str] = []
    whole = cache.whole(block.name)
    single = whole.shape[0] == block.stop - block.start
    if values.dim() == 2:
        scale = values[0, 0].item()
        if scale != 0 and check_identity(values, scale, u).ok:
            return Family(f"identity({_fmt(scale)})", (f"identity({_fmt(scale)})",), True)
        tolerance = orthogonal_tolerance(cache.dtype(block.name))
        own = _scaled_orthogonal(cache.gram_parts(block.name, block.start, block.stop), tolerance)
        entire = None if single else _scaled_orthogonal(cache.gram_parts(block.name), tolerance)
        gate_label = "orthogonal" if single else "orthogonal per gate"
        if own is not None:
            exact.append(gate_label + ("" if math.isclose(own, 1, abs_tol=tolerance) else f" (gain {_fmt(own)})"))
        if entire is not None:
            # Stacking G square (or tall) orthogonal gate blocks gives WᵀW = G·I: orthogonal with gain √G, but
            # per gate is what drew it. Only when the gains agree (a wide W: its row blocks inherit orthonormal
            # rows) is per matrix the more specific description.
            matrix = "orthogonal per matrix" + ("" if math.isclose(entire, 1, abs_tol=tolerance)
                                                else f" (gain {_fmt(entire)})")
            first = own is None or math.isclose(own, entire, rel_tol=tolerance)
            exact.insert(0 if first else len(exact), matrix)
    if exact:
        return Family(exact[0], tuple(exact), True)
    if n < MIN_SAMPLES:
        return Family(UNDETERMINED, (), False)
    shape = tuple(values.shape)
    candidates: list[str] = []
    if values.dim() == 1:
        signed = values.min().item() >= 0 or values.max().item() <= 0
        top = values.abs().max().item()
        if signed and 0 < top < _LARGEST_LOG:
            tmax = math.exp(top) + 1
            negate = values.max().item() <= 0
            if check_chrono(values, tmax, negate, u).ok:
                candidates.append(("−" if negate else "") + f"chrono(tmax≈{_fmt(tmax)})")
    for bound, name in _named_uniform(layer, block.kind, shape, int(whole.shape[0])):
        if check_uniform(values, -bound, bound, u).ok:
            candidates.append(f"uniform(±{_fmt(bound)}) [{name}]")
    if values.dim() == 2:
        lecun = math.sqrt(1 / shape[1])
        if check_truncated_normal(values, lecun / TRUNCATED_NORMAL_STD, u).ok:
            candidates.append(f"normal({_fmt(lecun)}) [LeCun truncated, Flax]")
    for std, name in _named_normal(block.kind, shape, int(whole.shape[0])):
        if check_normal(values, 0.0, std, u).ok:
            candidates.append(f"normal({_fmt(std)}) [{name}]")
    # The fits below are scale-free: run them on values divided by a power of two (exact), so that widths,
    # squares and sums of values near float64's limits neither overflow nor underflow.
    scale = power_of_two_scale(values.abs().max().item())
    scaled = values / scale
    low, high = scaled.min().item(), scaled.max().item()
    t = _edge_fraction(n) * (high - low)
    if abs(low + high) <= t:
        bound = max(-low, high)
        if check_uniform(scaled, -bound, bound, u).ok:
            candidates.append(f"uniform(±{_fmt(bound * scale)})")
    elif check_uniform(scaled, low, high, u).ok:
        candidates.append(f"uniform({_fmt(low * scale)}, {_fmt(high * scale)})")
    mean, std = moments(scaled)
    if check_normal(scaled, mean, std, u).ok:
        mean, std = mean * scale, std * scale
        centre = "" if abs(mean) <= 5 * std / math.sqrt(n) else f"{_fmt(mean)}, "
        candidates.append(f"normal({centre}{_fmt(std)})")
    return Family(candidates[0] if candidates else "unknown", tuple(candidates), True)


# ---------------------------------------------------------------------------------------------------------------
# Scheme recognition


@dataclass(frozen=True)
class SchemeMatch:
    """Which schemes a layer's values are consistent with.

    primary: the first match in registry order; UNDETERMINED when some block is too small to decide between
    schemes that fit; UNKNOWN ('unknown / trained') when no scheme fits. matches: every decided match (several
    when schemes coincide, e.g. keras and keras-gate on a plain RNN). undetermined: schemes that fit but could not
    be decided. estimated: arguments read from the values (chrono's tmax, irnn's scale). rejected: per scheme, the
    first block that rules it out.
    """

    primary: str
    matches: tuple[str, ...]
    undetermined: tuple[str, ...]
    estimated: dict[str, dict[str, float]]
    rejected: dict[str, str]

    @property
    def claimed(self) -> bool:
        return self.primary not in (UNKNOWN, UNDETERMINED)

    @property
    def names(self) -> tuple[str, ...]:
        """The matching schemes' names without arguments."""
        return tuple(parse_call(spec, "scheme")[0] for spec in self.matches)

    def as_dict(self) -> dict[str, Any]:
        return _json({"primary": self.primary, "matches": list(self.matches), "undetermined": list(self.undetermined),
                      "estimated": self.estimated, "rejected": self.rejected})


def _estimate_chrono(layer: Layer, cache: _Cache) -> dict[str, float] | None:
    """tmax = exp(max b) + 1 from bias_ih.f (LSTM) or bias_ih.z (GRU); None unless those biases are ≥ 0, not all 0."""
    gate = {"lstm": "f", "gru": "z"}.get(layer.cell)
    if gate is None or "bias_ih" not in layer.params:
        return None
    block = next(b for b in layer.blocks("bias_ih") if b.gate == gate)
    values = cache.block(block.name, block.start, block.stop)
    if _nonfinite(values) is not None or values.min().item() < 0 or not 0 < values.max().item() < _LARGEST_LOG:
        return None
    return {"tmax": _round_up(math.exp(values.max().item()) + 1)}


def _round_up(value: float, digits: int = 6) -> float:
    """value rounded up to `digits` significant digits (a relative change below 1e-5, far inside the edge test)."""
    if not value > 0:
        return value
    exponent = math.floor(math.log10(value)) - digits + 1
    return max(value, float(f"{math.ceil(value / 10.0**exponent)}e{exponent}"))


def _shortest(value: float, dtype: torch.dtype) -> float:
    """The shortest decimal that rounds to the same `dtype` value (0.5, not 0.5000000001), for readable arguments."""
    if not dtype.is_floating_point:
        return value
    for digits in range(1, 18):
        candidate = float(f"{value:.{digits}g}")
        if torch.tensor(candidate, dtype=dtype).item() == value:
            return candidate
    return value


def _estimate_irnn(layer: Layer, cache: _Cache) -> dict[str, float] | None:
    """scale = the first diagonal value of weight_hh."""
    name = layer.params["weight_hh"]
    value = cache.whole(name)[0, 0].item()
    return {"scale": _shortest(value, cache.dtype(name))} if math.isfinite(value) and value != 0 else None


ESTIMATORS: dict[str, Callable[[Layer, _Cache], dict[str, float] | None]] = {
    "chrono": _estimate_chrono, "irnn": _estimate_irnn,
}


def _scheme_specs(layer: Layer, cache: _Cache, candidates: Iterable[str | Scheme] | None
                  ) -> list[tuple[str | Scheme, str, dict[str, float]]]:
    """(what to plan, its label, estimated arguments) per candidate. A registered scheme given by name (or the
    default: all of them) gets the arguments its estimator reads from the values; texts with arguments and
    unregistered Scheme objects are planned as given."""
    specs: list[tuple[str | Scheme, str, dict[str, float]]] = []
    for candidate in SCHEMES.values() if candidates is None else candidates:
        if isinstance(candidate, Scheme):
            if SCHEMES.get(candidate.name) is not candidate:
                specs.append((candidate, candidate.name, {}))
                continue
            name = candidate.name
        else:
            name = parse_call(candidate, "scheme")[0]
            if "(" in candidate or name not in SCHEMES:
                specs.append((candidate.strip(), candidate.strip(), {}))
                continue
        scheme = SCHEMES[name]
        estimate = ESTIMATORS[name](layer, cache) if name in ESTIMATORS else None
        defaults = dict(scheme.params)
        if estimate is None:
            if any(value is None for value in defaults.values()):
                continue  # a required argument that the values do not reveal
            specs.append((name, name, {}))
        elif all(defaults.get(key) == value for key, value in estimate.items()):
            specs.append((name, name, {}))
        else:
            arguments = ", ".join(f"{key}={format_value(float(value))}" for key, value in estimate.items())
            specs.append((f"{name}({arguments})", f"{name}({arguments})", estimate))
    return specs


def recognize_layer(layer: Layer, tensors: Mapping[str, Any], *,
                    candidates: Iterable[str | Scheme] | None = None) -> SchemeMatch:
    """Plan each candidate scheme (default: every registered one) on the layer alone and check every block."""
    return _recognize(layer, _Cache(tensors), candidates)


def _recognize(layer: Layer, cache: _Cache, candidates: Iterable[str | Scheme] | None) -> SchemeMatch:
    sub = {name: cache.tensors[name] for name in layer.params.values()}
    matches: list[str] = []
    undetermined: list[str] = []
    estimated: dict[str, dict[str, float]] = {}
    rejected: dict[str, str] = {}
    for target, spec, estimate in _scheme_specs(layer, cache, candidates):
        try:
            the_plan = plan(sub, target, for_writing=False, layers=[layer])
        except (SchemeError, RuleError) as error:  # RuleError: arguments estimated from odd values (chrono's tmax)
            rejected[spec] = f"does not apply: {error}"
            continue
        verdicts = _check_all(the_plan.entries, cache)
        failed = next(((e, v) for e, v in zip(the_plan.entries, verdicts, strict=True) if not v.ok), None)
        if failed is not None:
            entry, verdict = failed
            rejected[spec] = f"{_where(entry)}: expected {entry.call}, {verdict.detail}"
            continue
        if estimate:
            estimated[spec] = estimate
        (matches if all(v.decided for v in verdicts) else undetermined).append(spec)
    if matches and not undetermined:
        primary = matches[0]
    elif matches or undetermined:
        primary = UNDETERMINED
    else:
        primary = UNKNOWN
    return SchemeMatch(primary, tuple(matches), tuple(undetermined), estimated, rejected)


def _where(entry: PlanEntry | Block) -> str:
    gate = f" gate {entry.gate}" if entry.gate else ""
    return f"{entry.name}[{entry.start}:{entry.stop}]{gate}"


# ---------------------------------------------------------------------------------------------------------------
# Block and layer statistics


def sparkline(values: Any, bins: int = 8) -> str:
    """Histogram of the finite values in `bins` equal bins over [min, max] as ▁▂▃▄▅▆▇█ (height ∝ count, ceil to
    eighths of the fullest bin; empty bins are spaces); all-equal values give one full bar in the middle."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    data = as_float64(values).reshape(-1)
    data = data[torch.isfinite(data)]
    if data.numel() == 0:
        return ""
    low, high = data.min().item(), data.max().item()
    if high == low:
        return " " * ((bins - 1) // 2) + _BARS[-1] + " " * (bins - 1 - (bins - 1) // 2)
    # halves first: high − low overflows for values of both signs near float64's maximum
    index = ((data / 2 - low / 2) / (high / 2 - low / 2) * bins).floor().long().clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).tolist()
    top = max(counts)
    return "".join(" " if c == 0 else _BARS[-(-c * len(_BARS) // top) - 1] for c in counts)


@dataclass(frozen=True)
class BlockStats:
    """One gate block: moments over its finite values, NaN/Inf counts, 2-D geometry, and its family.

    orthogonality_error = max|BᵀB − I| (tall) or max|BBᵀ − I| (wide); sv_min/sv_max the extreme singular values;
    identity_error = max|B − I| (square blocks only); histogram a sparkline of the values, spectrum one of the
    singular values.
    """

    name: str
    kind: str
    gate: str | None
    start: int
    stop: int
    shape: tuple[int, ...]
    dtype: str
    count: int
    mean: float
    std: float
    min: float
    max: float
    max_abs: float
    nan: int
    inf: int
    orthogonality_error: float | None
    sv_min: float | None
    sv_max: float | None
    identity_error: float | None
    family: Family
    histogram: str
    spectrum: str | None

    def as_dict(self) -> dict[str, Any]:
        return _json({
            "name": self.name, "kind": self.kind, "gate": self.gate, "rows": [self.start, self.stop],
            "shape": list(self.shape), "dtype": self.dtype, "count": self.count, "mean": self.mean, "std": self.std,
            "min": self.min, "max": self.max, "max_abs": self.max_abs, "nan": self.nan, "inf": self.inf,
            "orthogonality_error": self.orthogonality_error, "sv_min": self.sv_min, "sv_max": self.sv_max,
            "identity_error": self.identity_error, "family": self.family.label,
            "families": list(self.family.candidates), "decided": self.family.decided,
            "histogram": self.histogram, "spectrum": self.spectrum,
        })


@dataclass(frozen=True)
class MatrixStats:
    """A whole weight parameter: orthogonality error max|WᵀW − I| (or WWᵀ) and its extreme singular values."""

    name: str
    kind: str
    shape: tuple[int, ...]
    orthogonality_error: float | None
    sv_min: float | None
    sv_max: float | None
    spectrum: str | None

    def as_dict(self) -> dict[str, Any]:
        return _json({"name": self.name, "kind": self.kind, "shape": list(self.shape),
                      "orthogonality_error": self.orthogonality_error, "sv_min": self.sv_min,
                      "sv_max": self.sv_max, "spectrum": self.spectrum})


def value_stats(values: torch.Tensor) -> dict[str, float | int]:
    """count, mean, std (population), min, max, max_abs over the finite values; nan and inf counts."""
    data = as_float64(values).reshape(-1)
    finite = data[torch.isfinite(data)]
    nan = int(torch.isnan(data).sum())
    stats: dict[str, float | int] = {"count": data.numel(), "nan": nan, "inf": data.numel() - finite.numel() - nan}
    if finite.numel() == 0:
        return {**stats, **dict.fromkeys(("mean", "std", "min", "max", "max_abs"), math.nan)}
    mean, std = moments(finite)
    return {**stats, "mean": mean, "std": std, "min": finite.min().item(), "max": finite.max().item(),
            "max_abs": finite.abs().max().item()}


def _geometry(parts: _Gram | None) -> tuple[float | None, float | None, float | None, str | None]:
    if parts is None:
        return None, None, None, None
    the_gram = parts[0]
    error = (the_gram - torch.eye(the_gram.shape[0], dtype=the_gram.dtype)).abs().max().item()
    spectrum = _spectrum(parts)
    if spectrum is None:
        return error, None, None, None
    return error, spectrum[0].item(), spectrum[-1].item(), sparkline(spectrum)


def block_statistics(layer: Layer, block: Block, tensors: Mapping[str, Any]) -> BlockStats:
    """Everything `inspect` shows for one gate block (see BlockStats)."""
    return _block_stats(layer, block, _Cache(tensors))


def _block_stats(layer: Layer, block: Block, cache: _Cache) -> BlockStats:
    values = cache.block(block.name, block.start, block.stop)
    stats = value_stats(values)
    error = sv_min = sv_max = identity = None
    spectrum = None
    if values.dim() == 2:
        error, sv_min, sv_max, spectrum = _geometry(cache.gram_parts(block.name, block.start, block.stop))
        if values.shape[0] == values.shape[1] and stats["nan"] == stats["inf"] == 0:
            identity = (values - torch.eye(values.shape[0], dtype=values.dtype)).abs().max().item()
    return BlockStats(
        block.name, block.kind, block.gate, block.start, block.stop, tuple(values.shape),
        str(cache.dtype(block.name)).removeprefix("torch."), int(stats["count"]), float(stats["mean"]),
        float(stats["std"]), float(stats["min"]), float(stats["max"]), float(stats["max_abs"]), int(stats["nan"]),
        int(stats["inf"]), error, sv_min, sv_max, identity, _classify(layer, block, cache), sparkline(values),
        spectrum,
    )


@dataclass(frozen=True)
class LayerDiagnosis:
    """One layer (direction) or cell: its blocks, whole matrices, effective bias and the schemes it matches."""

    layer: Layer
    blocks: tuple[BlockStats, ...]
    matrices: tuple[MatrixStats, ...]
    effective_bias: tuple[dict[str, Any], ...]
    scheme: SchemeMatch

    @property
    def title(self) -> str:
        return self.layer.title

    def as_dict(self) -> dict[str, Any]:
        layer = self.layer
        return _json({
            "title": layer.title, "prefix": layer.prefix, "cell": layer.cell, "is_cell": layer.is_cell,
            "layer": layer.layer, "direction": layer.direction, "input_size": layer.input_size,
            "hidden_size": layer.hidden_size, "proj_size": layer.proj_size, "bias": layer.bias,
            "blocks": [b.as_dict() for b in self.blocks], "matrices": [m.as_dict() for m in self.matrices],
            "effective_bias": list(self.effective_bias), "scheme": self.scheme.as_dict(),
        })


@dataclass(frozen=True)
class DiagnosticWarning:
    """A one-line warning naming the mistake and its consequence. code: non-finite, double-forget-bias,
    double-chrono, mixed-scope, mixed-schemes."""

    code: str
    message: str

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Diagnosis:
    """`diagnose()`'s result: every selected layer and the warnings."""

    layers: tuple[LayerDiagnosis, ...]
    warnings: tuple[DiagnosticWarning, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"layers": [layer.as_dict() for layer in self.layers],
                "warnings": [warning.as_dict() for warning in self.warnings]}


def _select_layers(layers: Iterable[Layer], only: str | None) -> list[tuple[Layer, list[str]]]:
    """(layer, kinds whose parameter name matches `only`) for each layer with at least one such kind."""
    try:
        pattern = re.compile(only) if only is not None else None
    except re.error as error:
        raise UsageError(f"--only {only!r} is not a valid regular expression: {error}") from None
    selected = []
    for layer in layers:
        kinds = [k for k in KINDS if k in layer.params and (pattern is None or pattern.search(layer.params[k]))]
        if kinds:
            selected.append((layer, kinds))
    return selected


def diagnose(tensors: Mapping[str, Any], *, only: str | None = None,
             candidates: Iterable[str | Scheme] | None = None, layers: Sequence[Layer] | None = None) -> Diagnosis:
    """Statistics, families, scheme matches and warnings for every recurrent layer of `tensors`.

    `only` (a regex on parameter names) selects layers and the parameters shown; scheme recognition always looks
    at whole layers. `candidates`: schemes to try (default every registered scheme, arguments estimated).
    Raises NothingToDoError when no recurrent layer is found or selected. `layers`: these layers (found before, by
    `layout.discover`), whose parameters `tensors` holds by their effective names, instead of searching `tensors`.
    """
    from .report import effective_bias

    layers = find_layers(tensors) if layers is None else list(layers)
    if not layers:
        raise NothingToDoError("no recurrent parameters found (names like weight_ih_l0, weight_hh_l0, "
                               "bias_ih_l0 of nn.RNN/GRU/LSTM, or weight_ih/weight_hh of a cell)")
    selected = _select_layers(layers, only)
    if not selected:
        raise NothingToDoError(f"--only {only!r} matches no recurrent parameter")
    cache = _Cache(tensors)
    candidate_list = None if candidates is None else list(candidates)
    results: list[LayerDiagnosis] = []
    for layer, kinds in selected:
        blocks = tuple(_block_stats(layer, block, cache) for kind in kinds for block in layer.blocks(kind))
        matrices = []
        for kind in kinds:
            if kind in _WEIGHTS:
                name = layer.params[kind]
                error, sv_min, sv_max, spectrum = _geometry(cache.gram_parts(name))
                matrices.append(MatrixStats(name, kind, tuple(cache.whole(name).shape), error, sv_min, sv_max,
                                            spectrum))
        bias = tuple({"gate": gate, **stats} for gate, stats in effective_bias(layer, tensors))
        results.append(LayerDiagnosis(layer, blocks, tuple(matrices), bias,
                                      _recognize(layer, cache, candidate_list)))
    return Diagnosis(tuple(results), tuple(find_warnings(results, cache.tensors, _cache=cache)))


# ---------------------------------------------------------------------------------------------------------------
# Warnings


def find_warnings(layers: Sequence[LayerDiagnosis], tensors: Mapping[str, Any], *,
                  _cache: _Cache | None = None) -> list[DiagnosticWarning]:
    """The classic mistakes: NaN/Inf, a forget constant in both biases (effective 2×), chrono drawn into both
    biases, per-matrix and per-gate scopes mixed in one GRU/LSTM layer, a direction or layer left at another scheme."""
    cache = _cache or _Cache(tensors)
    found: list[DiagnosticWarning] = []
    for diagnosis in layers:
        layer = diagnosis.layer
        found += _nonfinite_warnings(layer, cache)
        found += _double_bias_warnings(layer, cache)
        found += _scope_warnings(layer, cache)
    found += _scheme_warnings(layers)
    return found


def _nonfinite_warnings(layer: Layer, cache: _Cache) -> list[DiagnosticWarning]:
    found = []
    for name in layer.params.values():
        values = cache.whole(name)
        nan, inf = int(torch.isnan(values).sum()), int(torch.isinf(values).sum())
        if nan or inf:
            found.append(DiagnosticWarning("non-finite", f"{name}: {nan} NaN and {inf} Inf value(s): every output "
                                                         "of this layer becomes NaN and training cannot recover"))
    return found


def _double_bias_warnings(layer: Layer, cache: _Cache) -> list[DiagnosticWarning]:
    gate = {"lstm": "f", "gru": "z"}.get(layer.cell)
    if gate is None or not {"bias_ih", "bias_hh"} <= layer.params.keys():
        return []
    what = "forget" if gate == "f" else "update"
    blocks = {kind: next(b for b in layer.blocks(kind) if b.gate == gate) for kind in ("bias_ih", "bias_hh")}
    ih, hh = (cache.block(b.name, b.start, b.stop) for b in blocks.values())
    if _nonfinite(ih) is not None or _nonfinite(hh) is not None or ih.numel() == 0:
        return []
    c = ih[0].item()
    where = f"{layer.title}: bias_ih.{gate} and bias_hh.{gate}"
    if c != 0 and bool((ih == c).all()) and bool((hh == c).all()):
        return [DiagnosticWarning("double-forget-bias", f"{where} are both {_fmt(c)}: the effective {what} bias "
                                                        f"is {_fmt(2 * c)}, not {_fmt(c)}; write it into one vector")]
    constant = bool((ih == c).all()) or bool((hh == hh[0]).all())
    signed = all(v.min().item() >= 0 and v.max().item() > 0 for v in (ih, hh))
    if not constant and signed and ih.numel() >= 2:
        return [DiagnosticWarning("double-chrono", f"{where} both hold positive random values (chrono drawn into "
                                                   f"both?): the effective {what} bias is their sum, not "
                                                   "log U[1, T−1]; draw once into one vector")]
    return []


def _param_scope(layer: Layer, kind: str, cache: _Cache) -> tuple[str | None, str]:
    """('gate' | 'matrix' | None, description) from orthogonality or Glorot bounds of a GRU/LSTM weight."""
    blocks = layer.blocks(kind)
    name = layer.params[kind]
    values = [cache.block(b.name, b.start, b.stop) for b in blocks]
    if any(_nonfinite(v) is not None for v in values):
        return None, ""
    tolerance = orthogonal_tolerance(cache.dtype(name))
    gains = [_scaled_orthogonal(cache.gram_parts(b.name, b.start, b.stop), tolerance) for b in blocks]
    entire = _scaled_orthogonal(cache.gram_parts(name), tolerance)
    per_gate = all(gain is not None for gain in gains)
    # Stacked orthogonal gate blocks are orthogonal as a whole with gain √G: that is still per gate.
    whole = entire is not None and not (per_gate and any(not math.isclose(g or 0, entire, rel_tol=tolerance)
                                                         for g in gains))
    if whole and not per_gate:
        return "matrix", f"{kind} is orthogonal per matrix (its gate blocks are not orthogonal)"
    if per_gate and not whole:
        return "gate", f"{kind} is orthogonal per gate"
    if any(v.numel() < MIN_SAMPLES for v in values):
        return None, ""
    rows, cols = cache.whole(name).shape
    h = blocks[0].stop - blocks[0].start
    u = cache.u(name)
    gate_bound, matrix_bound = math.sqrt(6 / (cols + h)), math.sqrt(6 / (cols + rows))
    gate_ok = all(check_uniform(v, -gate_bound, gate_bound, u).ok for v in values)
    matrix_ok = all(check_uniform(v, -matrix_bound, matrix_bound, u).ok for v in values)
    if gate_ok and not matrix_ok:
        return "gate", f"{kind} is Glorot uniform per gate"
    if matrix_ok and not gate_ok:
        return "matrix", f"{kind} is Glorot uniform per matrix"
    return None, ""


def _scope_warnings(layer: Layer, cache: _Cache) -> list[DiagnosticWarning]:
    if layer.cell == "rnn":
        return []
    scopes = {kind: _param_scope(layer, kind, cache) for kind in ("weight_ih", "weight_hh")}
    kinds = {scope: (kind, text) for kind, (scope, text) in scopes.items() if scope}
    if "gate" not in kinds or "matrix" not in kinds:
        return []
    return [DiagnosticWarning("mixed-scope", f"{layer.title}: {kinds['matrix'][1]} but {kinds['gate'][1]}: "
                                             "per-matrix and per-gate initialization mixed (orthogonal_ or "
                                             "xavier_ on the whole matrix believed to be per gate, or the reverse)")]


def _scheme_warnings(layers: Sequence[LayerDiagnosis]) -> list[DiagnosticWarning]:
    by_module: dict[str, list[LayerDiagnosis]] = {}
    for diagnosis in layers:
        if not diagnosis.layer.is_cell:
            by_module.setdefault(diagnosis.layer.prefix, []).append(diagnosis)
    found = []
    for prefix, group in by_module.items():
        decided = [d for d in group if d.scheme.primary != UNDETERMINED]
        if len(decided) < 2 or not any(d.scheme.claimed for d in decided):
            continue
        sets = [set(d.scheme.names) for d in decided]
        if set.intersection(*sets):
            continue
        labels: dict[str, list[str]] = {}
        for d in decided:
            label = d.scheme.primary if d.scheme.claimed else "no known scheme"
            labels.setdefault(label, []).append(f"layer {d.layer.layer} {d.layer.direction}")
        parts = "; ".join(f"{', '.join(where)}: {label}" for label, where in labels.items())
        found.append(DiagnosticWarning("mixed-schemes", f"{prefix or '(top level)'}: directions or layers differ "
                                                        f"({parts}): one was probably left at another scheme "
                                                        "(forgotten _reverse or _l1 parameters)"))
    return found


# ---------------------------------------------------------------------------------------------------------------
# verify


@dataclass(frozen=True)
class VerifyBlock:
    """One planned block: what was expected (rule, initializer call, scope), what was found, and the status
    ('ok', 'fail', or 'weak': consistent but too small for the statistical tests to mean much)."""

    name: str
    kind: str
    gate: str | None
    start: int
    stop: int
    rule: str
    expected: str
    per: str
    status: str
    found: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "gate": self.gate, "rows": [self.start, self.stop],
                "rule": self.rule, "expected": self.expected, "per": self.per, "status": self.status,
                "found": self.found, "detail": self.detail}


@dataclass(frozen=True)
class VerifyReport:
    """`verify()`'s result. ok: no block fails. failures: the failing blocks; weak: consistent but undecided."""

    scheme: str
    rules: tuple[str, ...]
    only: str | None
    blocks: tuple[VerifyBlock, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> tuple[VerifyBlock, ...]:
        return tuple(b for b in self.blocks if b.status == "fail")

    @property
    def weak(self) -> tuple[VerifyBlock, ...]:
        return tuple(b for b in self.blocks if b.status == "weak")

    def as_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "rules": list(self.rules), "only": self.only, "ok": self.ok,
                "checked": len(self.blocks), "failures": [b.as_dict() for b in self.failures],
                "weak": [b.as_dict() for b in self.weak], "blocks": [b.as_dict() for b in self.blocks]}


def verify(tensors: Mapping[str, Any], scheme: str | Scheme, *, rules: Iterable[str | Rule] = (),
           only: str | None = None, layers: Sequence[Layer] | None = None) -> VerifyReport:
    """Plan `scheme` (+ `rules`, `only`) with planning.plan and check each planned block against its initializer.

    Raises what plan() raises (SchemeError, RuleError, NothingToDoError, LayoutError).
    """
    the_plan = plan(tensors, scheme, rules=rules, only=only, for_writing=False, layers=layers)
    cache = _Cache(tensors)
    layer_of = {name: layer for layer in the_plan.layers for name in layer.params.values()}
    blocks = []
    for entry, verdict in zip(the_plan.entries, _check_all(the_plan.entries, cache), strict=True):
        status = "fail" if not verdict.ok else ("ok" if verdict.decided else "weak")
        found = ""
        if status == "fail":
            layer = layer_of[entry.name]
            block = next(b for b in layer.blocks(entry.kind) if b.start == entry.start)
            found = _classify(layer, block, cache).label
        expected = entry.call + (" per matrix" if entry.per == "matrix" else "")
        blocks.append(VerifyBlock(entry.name, entry.kind, entry.gate, entry.start, entry.stop, entry.rule, expected,
                                  entry.per, status, found, verdict.detail))
    return VerifyReport(the_plan.scheme, the_plan.rules, only, tuple(blocks))


# ---------------------------------------------------------------------------------------------------------------
# diff


@dataclass(frozen=True)
class BlockDiff:
    """One gate block in both checkpoints: changed (any value differs; NaN = NaN), max |b − a|, the number of
    changed values, and statistics of a (before) and b (after)."""

    name: str
    kind: str
    gate: str | None
    start: int
    stop: int
    changed: bool
    changed_count: int
    max_abs_delta: float
    before: dict[str, float | int]
    after: dict[str, float | int]
    dtype_a: str
    dtype_b: str

    def as_dict(self) -> dict[str, Any]:
        return _json({"name": self.name, "kind": self.kind, "gate": self.gate, "rows": [self.start, self.stop],
                      "changed": self.changed, "changed_count": self.changed_count,
                      "max_abs_delta": self.max_abs_delta, "before": self.before, "after": self.after,
                      "dtype_a": self.dtype_a, "dtype_b": self.dtype_b})


@dataclass(frozen=True)
class LayerDiff:
    """A layer present in both: its blocks, and parameters present in one side only or with different shapes."""

    title: str
    blocks: tuple[BlockDiff, ...]
    params_only_in_a: tuple[str, ...]
    params_only_in_b: tuple[str, ...]
    shape_changes: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.params_only_in_a or self.params_only_in_b or self.shape_changes
                    or any(b.changed for b in self.blocks))

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "changed": self.changed, "blocks": [b.as_dict() for b in self.blocks],
                "params_only_in_a": list(self.params_only_in_a), "params_only_in_b": list(self.params_only_in_b),
                "shape_changes": list(self.shape_changes)}


@dataclass(frozen=True)
class DiffReport:
    """`diff()`'s result: layers in both (block by block) and layers present on one side only."""

    layers: tuple[LayerDiff, ...]
    only_in_a: tuple[str, ...]
    only_in_b: tuple[str, ...]

    @property
    def identical(self) -> bool:
        return not (self.only_in_a or self.only_in_b or any(layer.changed for layer in self.layers))

    @property
    def changed_blocks(self) -> tuple[BlockDiff, ...]:
        return tuple(b for layer in self.layers for b in layer.blocks if b.changed)

    def as_dict(self) -> dict[str, Any]:
        return {"identical": self.identical, "layers": [layer.as_dict() for layer in self.layers],
                "only_in_a": list(self.only_in_a), "only_in_b": list(self.only_in_b),
                "changed_blocks": len(self.changed_blocks)}


def _layer_key(layer: Layer) -> tuple[str, bool, int, str]:
    return layer.prefix, layer.is_cell, layer.layer, layer.direction


def _block_diff(block: Block, a: _Cache, b: _Cache) -> BlockDiff:
    before, after = a.block(block.name, block.start, block.stop), b.block(block.name, block.start, block.stop)
    old, new = before, after
    if a.dtype(block.name).is_complex or b.dtype(block.name).is_complex:  # the float64 views hold real parts only
        old, new = (torch.as_tensor(side.tensors[block.name]).detach()[block.start:block.stop].to(torch.complex128)
                    for side in (a, b))
    same = (old == new) | (torch.isnan(old) & torch.isnan(new))
    changed = int((~same).sum())
    delta = (new - old).abs()[~same]
    largest = 0.0 if changed == 0 else delta.nan_to_num(nan=math.inf).max().item()
    return BlockDiff(block.name, block.kind, block.gate, block.start, block.stop, changed > 0, changed, largest,
                     value_stats(before), value_stats(after), str(a.dtype(block.name)).removeprefix("torch."),
                     str(b.dtype(block.name)).removeprefix("torch."))


def diff(tensors_a: Mapping[str, Any], tensors_b: Mapping[str, Any], *, only: str | None = None,
         layers_a: Sequence[Layer] | None = None, layers_b: Sequence[Layer] | None = None) -> DiffReport:
    """Compare the recurrent layers of two checkpoints gate block by gate block (a = before, b = after).

    Layers are matched by (prefix, cell or layer index, direction); `only` (regex on parameter names) selects.
    Raises NothingToDoError when neither side has a selected recurrent layer.
    """
    found_a = find_layers(tensors_a) if layers_a is None else layers_a
    found_b = find_layers(tensors_b) if layers_b is None else layers_b
    side_a = {_layer_key(layer): (layer, kinds) for layer, kinds in _select_layers(found_a, only)}
    side_b = {_layer_key(layer): (layer, kinds) for layer, kinds in _select_layers(found_b, only)}
    if not side_a and not side_b:
        raise NothingToDoError("no recurrent parameters found (or selected) in either checkpoint")
    a, b = _Cache(tensors_a), _Cache(tensors_b)
    layers = []
    for key, (layer_a, kinds_a) in side_a.items():
        if key not in side_b:
            continue
        layer_b, kinds_b = side_b[key]
        blocks: list[BlockDiff] = []
        shape_changes = []
        for kind in (k for k in kinds_a if k in kinds_b):
            name_a, name_b = layer_a.params[kind], layer_b.params[kind]
            shape_a, shape_b = tuple(a.whole(name_a).shape), tuple(b.whole(name_b).shape)
            if shape_a != shape_b or name_a != name_b:
                shape_changes.append(f"{name_a}: {list(shape_a)} → {list(shape_b)}")
                continue
            blocks += [_block_diff(block, a, b) for block in layer_a.blocks(kind)]
        layers.append(LayerDiff(layer_a.title, tuple(blocks),
                                tuple(layer_a.params[k] for k in kinds_a if k not in kinds_b),
                                tuple(layer_b.params[k] for k in kinds_b if k not in kinds_a), tuple(shape_changes)))
    only_a = tuple(layer.title for key, (layer, _) in side_a.items() if key not in side_b)
    only_b = tuple(layer.title for key, (layer, _) in side_b.items() if key not in side_a)
    return DiffReport(tuple(layers), only_a, only_b)


__all__ = [
    "ALPHA",
    "MIN_SAMPLES",
    "UNDETERMINED",
    "UNKNOWN",
    "BlockDiff",
    "BlockStats",
    "Diagnosis",
    "DiagnosticWarning",
    "DiffReport",
    "Family",
    "LayerDiagnosis",
    "LayerDiff",
    "MatrixStats",
    "SchemeMatch",
    "Verdict",
    "VerifyBlock",
    "VerifyReport",
    "block_statistics",
    "check_chrono",
    "check_constant",
    "check_entry",
    "check_identity",
    "check_normal",
    "check_orthogonal",
    "check_truncated_normal",
    "check_uniform",
    "classify_block",
    "diagnose",
    "diff",
    "find_warnings",
    "gram",
    "orthogonal_tolerance",
    "recognize_layer",
    "sparkline",
    "value_stats",
    "verify",
]
