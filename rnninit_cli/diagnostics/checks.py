"""Verdicts: is a block consistent with one distribution? The statistical tests and their bounds.

Statistical decisions
---------------------
Every statistical test below has a size α, its `alpha` argument: a block really drawn by the claimed initializer
fails that test with probability at most α. By default α = ALPHA = 1e-6. A block check runs at most
TESTS_PER_BLOCK = 7 such tests (five about the distribution, below, and two guards that an i.i.d. block and its
whole matrix are not orthogonal by chance, see entry_checks._structured), so a correctly drawn block is misjudged
with probability ≤ 7α, and a layer of ≤ 20 blocks with probability ≤ 1.4e-4 at ALPHA; scheme recognition
(`inspect`) works at ALPHA, one layer at a time.

`verify` controls the whole file instead (Bonferroni): with B planned blocks it runs every test at
α = `bonferroni_level(B)` = min(ALPHA, FILE_ALPHA / (TESTS_PER_BLOCK·B)), so a file really drawn as planned fails
with probability ≤ FILE_ALPHA = 1e-3 whatever its size (≤ 7e-6·B below 143 blocks, where the level stays ALPHA).
A caller's bound α' scales both terms: min(α'·ALPHA/FILE_ALPHA, α'/(TESTS_PER_BLOCK·B)). The bounds grow only with
ln(1/α): at 160,000 blocks (α ≈ 8.9e-10) the Bernstein and χ² margins are about 1.2 times their width at ALPHA,
and the edge fraction t = 1 − α^(1/n) of a 128-value block goes from 0.10 to 0.15. Every critical value computed
by bisection is cached per (n, α).

- Uniform U(lo, hi), n values, width w = hi − lo:
  * range: every value in [lo, hi] (deterministic; slack for float rounding, see `_slack`);
  * edges: P(max < hi − t·w) = (1 − t)^n, so with t = 1 − α^(1/n) a correct draw reaches within t·w of
    each end; for a symmetric bound a, max|x| ≥ a(1 − t) likewise. This is what rules out a *larger*
    bound: data whose max |x| stays below a(1 − t) were not drawn from U(−a, a);
  * mean and mean square about the centre: Bernstein's inequality for bounded i.i.d. variables,
    P(|ȳ − μ| ≥ ε) ≤ 2·exp(−nε² / (2σ² + 2bε/3)), solved for ε at α, with σ² = w²/12, b = w/2
    for x and σ² = Var((x − c)²) = w⁴/180, b = w²/6 for the square.
- Normal N(μ, σ²): q = Σ((x − μ)/σ)² ~ χ²_n with Laurent & Massart (2000) bounds
  n − 2√(nL) ≤ q ≤ n + 2√(nL) + 2L, L = ln(2/α); the mean |z̄|·√n ≤ z_α (exact normal quantile);
  the largest |z| ≤ c_hi with n·P(|Z| > c_hi) = α (union bound) and ≥ c_lo with P(|Z| < c_lo)^n = α
  (the latter separates a normal from a uniform of the same variance, whose max |z| is √3).
- Truncated normal (lecun_normal: σ'·T, T ~ N(0, 1) cut to [−2, 2]): range |x| ≤ 2σ'; edge
  max|x| ≥ m·σ' with (P(|T| < m))^n = α; mean and mean square by Bernstein with the exact moments of T.
- Goodness of fit (families only, see families.py): a block is called normal or uniform (always with a known
  initializer's parameters) only when its values also pass a goodness-of-fit test at α, since the bounds
  above barely constrain a distribution's shape (a Laplace block of 4096 values at the right σ passes them: its
  largest |z| ≈ ln(n)/√2 stays below c_hi). A block drawn by the initializer fails it with probability ≤ α,
  so at ALPHA its family is missed with probability ≤ 8e-6 (a uniform: two orthogonality guards, five checks and
  this one), and a layer's (≤ 17 blocks: an LSTM with projections) with probability ≤ 1.4e-4.
  Both run on at most GOF_SAMPLE values, every k-th of the block (k ≥ ⌈n / GOF_SAMPLE⌉, coprime with the row
  length so that every column is visited): the positions are chosen without looking at the values, so under
  the null the sample is i.i.d. from the same distribution and the size stays α; 32,768 values still reject
  kurtosis 4.5 or a Laplace block with near certainty.
  * normal: Anderson–Darling A² against N(x̄, s²) with both parameters estimated, modified to
    A*² = A²(1 + 0.75/n + 2.25/n²) and compared with the critical value solving D'Agostino & Stephens' (1986)
    p-value formula p = exp(1.2937 − 5.709·A*² + 0.0186·A*⁴) = α (see `anderson_darling_normal_critical`);
  * uniform: conditional on the smallest and the largest of n draws of U(a, b), the other n − 2 are i.i.d.
    U(min, max), so fitting the endpoints by the extremes needs no correction: the Kolmogorov–Smirnov statistic
    of the n − 2 interior values rescaled to [0, 1] against U(0, 1) is compared with the Dvoretzky–Kiefer–
    Wolfowitz bound of Massart (1990), P(√m·D > λ) ≤ 2·exp(−2λ²), at α (see `uniform_ks_critical`).
- Orthogonality and exact values are numerical, not statistical: max|BᵀB/g² − I| ≤ max(1e-3, 8u) where u is
  the unit roundoff of the stored dtype (a stored orthonormal column set has |Gram − I| ≤ 2u + u² entrywise by
  Cauchy–Schwarz; 1e-3 also admits matrices orthogonalized in float32 by other frameworks); constants and
  identities must equal the expected value up to one rounding of the stored dtype (2u·|value|).

Speed: every check reads one `Summary` of the block (stats.summarize: counts, min, max, sums and sums of squares
in float64, read in chunks without a float64 copy of the block), computed once per block and shared; only checks
about a non-zero centre read the values again.

Blocks with fewer than MIN_SAMPLES values are too small for the statistical tests to separate the known
initializers: their family is `undetermined`, and a layer holding such a block is not claimed for a scheme.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .formatting import _fmt
from .stats import (
    Summary,
    as_float64,
    power_of_two_scale,
    quiet_floats,
    spread_sample,
    squares_about,
    summarize,
    to_array,
    unit_roundoff,
)

ALPHA = 1e-6
FILE_ALPHA = 1e-3  # verify: the probability that a file drawn as planned fails, at most, whatever its size
TESTS_PER_BLOCK = 7
MIN_SAMPLES = 16
ORTHOGONAL_TOLERANCE = 1e-3
TRUNCATION = 2.0  # lecun_normal cuts T ~ N(0, 1) at ±2
GOF_SAMPLE = 32768

# ---------------------------------------------------------------------------------------------------------------
# Small math helpers


def _unit_roundoff(dtype: Any) -> float:
    """u = eps/2 of a floating dtype (numpy, ml_dtypes or torch dtype, or its name); 0 for other dtypes."""
    name = str(dtype).removeprefix("torch.")
    return unit_roundoff({"double": "float64", "float": "float32", "half": "float16"}.get(name, name))


def orthogonal_tolerance(dtype: Any) -> float:
    """max(1e-3, 8u): bound on max|BᵀB − I| for a stored orthogonal block (|Gram − I| ≤ 2u + u²)."""
    return max(ORTHOGONAL_TOLERANCE, 8 * _unit_roundoff(dtype))


def bonferroni_level(blocks: int, alpha: float = FILE_ALPHA) -> float:
    """min(α·ALPHA/FILE_ALPHA, α / (TESTS_PER_BLOCK·blocks)): the size of each test that keeps a file's false alarms
    ≤ α, never above ALPHA at FILE_ALPHA (a file of fewer than 143 blocks is judged as one of 143)."""
    return min(ALPHA * (alpha / FILE_ALPHA), alpha / (TESTS_PER_BLOCK * max(1, blocks)))


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


def anderson_darling_normal_critical(alpha: float = ALPHA) -> float:
    """Critical value of the modified Anderson–Darling statistic A*² = A²(1 + 0.75/n + 2.25/n²) for normality
    with mean and variance ESTIMATED from the sample (Stephens's case 3): the root a of
    p(a) = exp(1.2937 − 5.709·a + 0.0186·a²) = α, i.e. a = (5.709 − √(5.709² − 4·0.0186·(1.2937 − ln α))) / 0.0372.

    Source: R. B. D'Agostino and M. A. Stephens (eds.), Goodness-of-Fit Techniques, Dekker 1986, Table 4.9 (the
    upper-tail p-value formula for 0.6 ≤ A*² < 10, as used by R's nortest::ad.test), which extends the critical
    values of M. A. Stephens, "EDF statistics for goodness of fit and some comparisons", JASA 69 (1974) 730–737.
    Its slope 5.709 is below 6 = 1/(2λ₃), λ₃ = 1/12 being the largest weight left in the limiting distribution
    Σ λ_j χ²₁ once the two fitted parameters take out the first two, so the formula errs on the safe side far
    in the tail. 2.67 at α = 1e-6 (1.035 at 1 %).
    """
    if not 3.7e-24 < alpha < 0.119:  # the formula's range 0.6 ≤ A*² < 10
        raise ValueError(f"alpha {alpha} outside the range of the Anderson–Darling p-value formula")
    return (5.709 - math.sqrt(5.709**2 - 4 * 0.0186 * (1.2937 - math.log(alpha)))) / (2 * 0.0186)


def uniform_ks_critical(m: int, alpha: float = ALPHA) -> float:
    """D with P(D_m > D) ≤ α for the Kolmogorov–Smirnov distance D_m of m i.i.d. U(0, 1) draws to U(0, 1):
    D = √(ln(2/α) / 2) / √m, from the Dvoretzky–Kiefer–Wolfowitz inequality with Massart's constant,
    P(√m·D_m > λ) ≤ 2·exp(−2λ²) for every m ≥ 1 and λ ≥ √(ln 2 / 2) (P. Massart, "The tight constant in the
    Dvoretzky–Kiefer–Wolfowitz inequality", Ann. Probab. 18 (1990) 1269–1283). Used on the interior values of a
    block rescaled by its extremes, which are exactly i.i.d. uniform given the extremes (Lilliefors's correction
    for fitted endpoints is then none)."""
    return math.sqrt(math.log(2 / alpha) / 2) / math.sqrt(m)


_erfc = np.frompyfunc(math.erfc, 1, 1)


def _log_normal_cdf(z: np.ndarray) -> np.ndarray:
    """log Φ(z) = log(erfc(−z/√2) / 2), by math.erfc (relative accuracy in both tails; −inf below about −38)."""
    with np.errstate(divide="ignore"):
        return np.log(_erfc(-z / math.sqrt(2)).astype(np.float64) / 2)


def gof_sample(values: Any, limit: int = GOF_SAMPLE) -> np.ndarray:
    """At most `limit` values in float64, positions chosen without looking at the values (stats.spread_sample)."""
    return spread_sample(values, limit)


def _values(values: Any) -> np.ndarray:
    """A flat float64 array (no copy when it already is one)."""
    if isinstance(values, np.ndarray) and values.dtype == np.float64:
        return values.reshape(-1)
    return as_float64(values).reshape(-1)


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


def _nonfinite(values: Any, summary: Summary | None = None) -> Verdict | None:
    """A failing verdict counting NaN/Inf values, None when all are finite."""
    bad = (summary or summarize(values)).nonfinite
    return Verdict(False, True, f"{bad} NaN/Inf value(s)") if bad else None


_TINIEST = math.ulp(0.0)  # the smallest subnormal: a slack for bounds of 0, negligible beside any other


def _slack(u: float, magnitude: float) -> float:
    """Float rounding allowance: bounds and values may each be one rounding (u) off, 4u·|magnitude| in all."""
    return 4 * u * abs(magnitude) + _TINIEST


@quiet_floats
def check_constant(values: Any, value: float, u: float = 0.0, *, summary: Summary | None = None) -> Verdict:
    """Every value equals `value` up to one rounding of the stored dtype: |x − c| ≤ 2u·|c|."""
    stats = summary or summarize(values)
    if (bad := _nonfinite(values, stats)) is not None:
        return bad
    if stats.n == 0:
        return Verdict(True, True, "empty")
    error = max(abs(stats.minimum - value), abs(stats.maximum - value))  # |x − c| is largest at an extreme
    if error > 2 * u * abs(value):
        return Verdict(False, True, f"max |x − {_fmt(value)}| = {_fmt(error)}")
    return Verdict(True, True, f"all {_fmt(value)}")


@quiet_floats
def check_uniform(values: Any, low: float, high: float, u: float = 0.0, *,
                  summary: Summary | None = None, alpha: float = ALPHA) -> Verdict:
    """Range [lo, hi], both edges reached within t·w (t = 1 − α^(1/n)), mean and mean square (Bernstein)."""
    stats = summary or summarize(values)
    if (bad := _nonfinite(values, stats)) is not None:
        return bad
    n = stats.n
    width = high - low
    if width <= 0:
        return check_constant(values, low, u, summary=stats)
    if not math.isfinite(width):
        return Verdict(False, True, f"U({_fmt(low)}, {_fmt(high)}) is wider than float64 can hold: no draw is "
                                    "consistent with it")
    slack = _slack(u, max(abs(low), abs(high)))
    smallest, largest = stats.minimum, stats.maximum
    decided = n >= MIN_SAMPLES
    name = f"U({_fmt(low)}, {_fmt(high)})"
    if smallest < low - slack or largest > high + slack:
        return Verdict(False, True, f"values in [{_fmt(smallest)}, {_fmt(largest)}] leave the range of {name}")
    t = _edge_fraction(n, alpha)
    if smallest > low + t * width + slack or largest < high - t * width - slack:
        return Verdict(False, decided, f"values in [{_fmt(smallest)}, {_fmt(largest)}]: {n} draws of {name} "
                                       f"come within {_fmt(t * width)} of both ends")
    centre = (low + high) / 2
    if abs(low + high) <= slack:  # symmetric: max |x| ≥ a(1 − t), which rules out any larger bound
        bound = high
        largest_abs = stats.max_abs
        if largest_abs < bound * (1 - t) - slack:
            return Verdict(False, decided, f"max |x| = {_fmt(largest_abs)} < {_fmt(bound * (1 - t))}: "
                                           f"{n} draws of {name} come closer to ±{_fmt(bound)}")
    mean = stats.mean
    tolerance = _bernstein(n, width * width / 12, width / 2, alpha) + slack
    if abs(mean - centre) > tolerance:
        return Verdict(False, decided, f"mean {_fmt(mean)}, expected {_fmt(centre)} ± {_fmt(tolerance)}")
    # about a centre: from the values, since Σx² − 2cΣx + nc² cancels when |c| ≫ w
    square = stats.mean_square() if centre == 0 else squares_about(values, centre) / n
    expected = width * width / 12
    fourth = (width * width) * (width * width)  # not width**4, which raises OverflowError where this gives inf
    tolerance = _bernstein(n, fourth / 180, width * width / 6, alpha) + 3 * u * expected + 2 * slack * width
    if abs(square - expected) > tolerance:
        return Verdict(False, decided, f"std {_fmt(math.sqrt(square))}, expected {_fmt(math.sqrt(expected))} "
                                       f"for {name}")
    return Verdict(True, decided, f"consistent with {name}")


@quiet_floats
def check_normal(values: Any, mean: float, std: float, u: float = 0.0, *, summary: Summary | None = None,
                 alpha: float = ALPHA) -> Verdict:
    """χ² bound on Σz², z = (x − μ)/σ; |z̄|√n ≤ z_α; c_lo ≤ max|z| ≤ c_hi (see the module docstring)."""
    stats = summary or summarize(values)
    if (bad := _nonfinite(values, stats)) is not None:
        return bad
    if std <= 0:
        return check_constant(values, mean, u, summary=stats)
    n = stats.n
    decided = n >= MIN_SAMPLES
    name = f"N({_fmt(mean)}, {_fmt(std)}²)"
    low, high = _chi2_bounds(n, alpha)
    if mean == 0:
        ratio = stats.scale / std
        q = stats.squares * ratio * ratio
    else:
        q = squares_about(values, mean, std)
    if q < low * (1 - 4 * u) or q > high * (1 + 4 * u) + 1e-12:
        return Verdict(False, decided, f"std {_fmt(std * math.sqrt(q / n))}, expected {_fmt(std)} for {name} "
                                       f"(χ²_{n} = {_fmt(q)} outside [{_fmt(low)}, {_fmt(high)}])")
    sample_mean = stats.mean
    z_mean = (sample_mean - mean) / std * math.sqrt(n)
    if abs(z_mean) > _normal_quantile(alpha) + 4 * u * math.sqrt(n) * (1 + abs(mean) / std):
        return Verdict(False, decided, f"mean {_fmt(sample_mean)}, expected {_fmt(mean)} for {name}")
    c_low, c_high = _normal_max_bounds(n, alpha)
    largest = max(abs(stats.minimum - mean), abs(stats.maximum - mean)) / std
    if largest > c_high * (1 + 4 * u):
        return Verdict(False, True, f"max |x − μ| = {_fmt(largest)}σ, beyond {_fmt(c_high)}σ for {name}")
    if largest < c_low * (1 - 4 * u):
        return Verdict(False, decided, f"max |x − μ| = {_fmt(largest)}σ: {n} normal draws reach {_fmt(c_low)}σ "
                                       "(lighter tails than a normal)")
    return Verdict(True, decided, f"consistent with {name}")


@quiet_floats
def check_truncated_normal(values: Any, scale: float, u: float = 0.0, cut: float = TRUNCATION, *,
                           summary: Summary | None = None, alpha: float = ALPHA) -> Verdict:
    """scale·T, T ~ N(0, 1) cut to [−c, c]: |x| ≤ c·scale, max|x| ≥ m·scale, mean and mean square (Bernstein)."""
    stats = summary or summarize(values)
    if (bad := _nonfinite(values, stats)) is not None:
        return bad
    n = stats.n
    decided = n >= MIN_SAMPLES
    limit = cut * scale
    slack = _slack(u, limit)
    name = f"truncated normal (σ' = {_fmt(scale)}, cut at ±{_fmt(limit)})"
    largest = stats.max_abs
    if largest > limit + slack:
        return Verdict(False, True, f"max |x| = {_fmt(largest)} beyond the truncation ±{_fmt(limit)} of {name}")
    edge = _truncated_edge(n, cut, alpha)
    if largest < edge * scale - slack:
        return Verdict(False, decided, f"max |x| = {_fmt(largest)} < {_fmt(edge * scale)}: {n} draws of {name} "
                                       "come closer to the truncation")
    second, fourth = _truncated_moments(cut)
    tolerance = _bernstein(n, second * scale * scale, limit, alpha) + slack
    if abs(stats.mean) > tolerance:
        return Verdict(False, decided, f"mean {_fmt(stats.mean)}, expected 0 ± {_fmt(tolerance)} for {name}")
    expected = second * scale * scale
    square = stats.mean_square()
    tolerance = (_bernstein(n, (fourth - second * second) * (scale * scale) * (scale * scale),
                            max(expected, limit * limit - expected), alpha)
                 + 3 * u * expected + 2 * slack * limit)
    if abs(square - expected) > tolerance:
        return Verdict(False, decided, f"std {_fmt(math.sqrt(square))}, expected {_fmt(math.sqrt(expected))} "
                                       f"for {name}")
    return Verdict(True, decided, f"consistent with {name}")


@quiet_floats
def check_identity(matrix: Any, scale: float, u: float = 0.0, *, summary: Summary | None = None) -> Verdict:
    """B = scale·I (ones on the main diagonal for non-square blocks, as torch.nn.init.eye_) up to 2u·|scale|."""
    if (bad := _nonfinite(matrix, summary)) is not None:
        return bad
    stored = to_array(matrix)
    if stored.size == 0:
        return Verdict(True, True, f"{_fmt(scale)}·I")
    allowed = 2 * u * abs(scale)
    rows, cols = stored.shape
    # the first row decides most non-identities without converting the rest
    first = np.abs(as_float64(stored[0]) - np.where(np.arange(cols) == 0, scale, 0.0)).max()
    if first > allowed:
        return Verdict(False, True, f"max |B − {_fmt(scale)}·I| ≥ {_fmt(float(first))}")
    diagonal = np.arange(min(rows, cols))
    off = as_float64(stored)
    off[diagonal, diagonal] -= scale
    error = float(np.abs(off).max())
    if error > allowed:
        return Verdict(False, True, f"max |B − {_fmt(scale)}·I| = {_fmt(error)}")
    return Verdict(True, True, f"{_fmt(scale)}·I")


@quiet_floats
def check_chrono(values: Any, tmax: float, negate: bool = False, u: float = 0.0, *, alpha: float = ALPHA) -> Verdict:
    """±log(U[1, tmax − 1]): v = ±x in [0, log(tmax − 1)] and exp(v) passes check_uniform on [1, tmax − 1]."""
    if (bad := _nonfinite(values)) is not None:
        return bad
    v = -_values(values) if negate else _values(values)
    top = math.log(tmax - 1)
    sign = "−" if negate else ""
    slack = _slack(u, top)
    if v.size and (float(v.min()) < -slack or float(v.max()) > top + slack):
        return Verdict(False, True, f"values outside {sign}[0, log(tmax − 1) = {_fmt(top)}]")
    verdict = check_uniform(np.exp(v), 1.0, tmax - 1, u * max(1.0, top), alpha=alpha)
    return Verdict(verdict.ok, verdict.decided, f"exp({sign}b): {verdict.detail}")


def check_values(values: Any, expected: np.ndarray, u: float = 0.0, what: str = "", magnitude: float = 1.0
                 ) -> Verdict:
    """Each value equals its expected one (a deterministic init) up to one rounding of the stored dtype and float32's
    own in terms as large as `magnitude`: |x − e| ≤ 2·max(u, 2⁻²³)·max(magnitude, |e|)."""
    if (bad := _nonfinite(values)) is not None:
        return bad
    x, e = _values(values), np.asarray(expected, dtype=np.float64).reshape(-1)
    if x.size != e.size:
        return Verdict(False, True, f"{x.size} values where {e.size} were expected")
    if x.size == 0:
        return Verdict(True, True, "empty")
    error = np.abs(x - e) / np.maximum(max(1.0, magnitude), np.abs(e))
    worst = int(np.argmax(error))
    if float(error[worst]) > 2 * max(u, 2.0**-23):
        return Verdict(False, True, f"value {worst} is {_fmt(float(x[worst]))}, expected {_fmt(float(e[worst]))}"
                                    + (f" ({what})" if what else ""))
    return Verdict(True, True, f"every value as {what or 'expected'}")


@quiet_floats
def check_radius(values: Any, min_rad: float, max_rad: float, u: float = 0.0, *, alpha: float = ALPHA) -> Verdict:
    """p with a = σ(−p): a² passes check_uniform on [min_rad² + 1e-8, max_rad² + 1e-8] (the RG-LRU ring init)."""
    if (bad := _nonfinite(values)) is not None:
        return bad
    p = _values(values)
    a = 1.0 / (1.0 + np.exp(p))
    squared = a * a
    # a rounding of p by u moves a² by 2a²(1 − a)·|p|·u, which stays below u (a²(1 − a)|p| < 0.3 for every p);
    # bounding it by 2|p|·u instead would let a huge |p| (a = 0 or 1: no recurrence, or no decay) pass any range
    moved = float(np.max(squared * (1.0 - a) * np.abs(p))) if p.size else 0.0
    slack = 2 * max(u, 2.0**-23) * max(1.0, moved)
    verdict = check_uniform(squared, min_rad**2 + 1e-8, max_rad**2 + 1e-8, slack, alpha=alpha)
    return Verdict(verdict.ok, verdict.decided, f"a² = σ(−p)²: {verdict.detail}")


@quiet_floats
def check_normal_fit(values: Any, alpha: float = ALPHA, *, summary: Summary | None = None) -> Verdict:
    """Anderson–Darling test of normality with mean and std estimated from the values (at most GOF_SAMPLE of them,
    see the module docstring; `anderson_darling_normal_critical`); undecided (but ok) below 8 values, where the
    modification is not valid. `summary`: the values' Summary, when the caller has it."""
    if (bad := _nonfinite(values, summary)) is not None:
        return bad
    x = gof_sample(values)
    n = x.size
    if n < 8:
        return Verdict(True, False, f"{n} values: too few for a goodness-of-fit test")
    x = x / power_of_two_scale(float(np.abs(x).max()))
    std = float(x.std(ddof=1))
    if std == 0:
        return Verdict(False, True, "constant values are not normal")
    z = np.sort((x - x.mean()) / std)
    weights = 2 * np.arange(1, n + 1, dtype=np.float64) - 1
    logs = _log_normal_cdf(z) + _log_normal_cdf(-z)[::-1]
    statistic = (-n - float(np.dot(weights, logs)) / n) * (1 + 0.75 / n + 2.25 / (n * n))
    critical = anderson_darling_normal_critical(alpha)
    if statistic > critical:
        return Verdict(False, True, f"Anderson–Darling A*² = {_fmt(statistic)} > {_fmt(critical)} against the fitted "
                                    f"normal: not normal (α = {_fmt(alpha)})")
    return Verdict(True, True, f"Anderson–Darling A*² = {_fmt(statistic)} ≤ {_fmt(critical)}")


@quiet_floats
def check_uniform_fit(values: Any, alpha: float = ALPHA, *, summary: Summary | None = None) -> Verdict:
    """Kolmogorov–Smirnov test of uniformity on [min, max]: the m − 2 interior values (of at most GOF_SAMPLE, see
    the module docstring) rescaled to [0, 1] against U(0, 1), critical value `uniform_ks_critical` (exact size ≤ α
    for any uniform, endpoints known or not). `summary`: the values' Summary, when the caller has it."""
    if (bad := _nonfinite(values, summary)) is not None:
        return bad
    x = np.sort(gof_sample(values))
    m = x.size - 2
    if m < 1:
        return Verdict(True, False, f"{m + 2} values: too few for a goodness-of-fit test")
    low, high = float(x[0]), float(x[-1])
    if high <= low:
        return Verdict(False, True, "constant values are not uniform")
    interior = (x[1:-1] - low) / (high - low)
    steps = np.arange(1, m + 1, dtype=np.float64) / m
    distance = max(float((steps - interior).max()), float((interior - (steps - 1 / m)).max()))
    critical = uniform_ks_critical(m, alpha)
    if distance > critical:
        return Verdict(False, True, f"Kolmogorov–Smirnov D = {_fmt(distance)} > {_fmt(critical)} against "
                                    f"U({_fmt(low)}, {_fmt(high)}): not uniform (α = {_fmt(alpha)})")
    return Verdict(True, True, f"Kolmogorov–Smirnov D = {_fmt(distance)} ≤ {_fmt(critical)}")

