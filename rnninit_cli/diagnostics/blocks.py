"""Block and layer statistics: what `inspect` shows for a gate block or a whole weight matrix."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..layouts.discovery import Block, Layer
from .cache import _Cache, worker_count
from .families import Family, _classify
from .formatting import _json
from .orthogonality import (
    LowerBound,
    _Gram,
    _minus_identity_max,
    _spectrum,
    diagonal_lower_bound,
    error_from_diagonal,
    rounding_level,
    scaled_orthogonal_gain,
)
from .spectra import Extremes, extreme_singular_values
from .stats import Summary, as_float64, float64_chunks, quiet_floats, safe_scale, spread_sample, summarize

_BARS = "▁▂▃▄▅▆▇█"
SPARKLINE_SAMPLE = 1 << 18  # larger blocks are drawn from this many of their values (stats.spread_sample)


@quiet_floats
def sparkline(values: Any, bins: int = 8, summary: Summary | None = None) -> str:
    """Histogram of the finite values in `bins` equal bins over [min, max] as ▁▂▃▄▅▆▇█ (height ∝ count, ceil to
    eighths of the fullest bin; empty bins are spaces); all-equal values give one full bar in the middle. Blocks
    of more than SPARKLINE_SAMPLE values are drawn from that many of them, spread over every column.
    `summary`: the values' Summary, when the caller has it."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    described = summary or summarize(values)
    if described.finite == 0:
        return ""
    low, high = described.minimum, described.maximum
    if high == low:
        return " " * ((bins - 1) // 2) + _BARS[-1] + " " * (bins - 1 - (bins - 1) // 2)
    counts = np.zeros(bins, dtype=np.int64)
    sample = spread_sample(values, SPARKLINE_SAMPLE) if described.n > SPARKLINE_SAMPLE else values
    # halved: high − low overflows for values of both signs near float64's maximum (halving is exact for normal
    # numbers, so the bins are the same either way; only tiny values would lose bits, and they need no halving)
    halve = max(abs(low), abs(high)) > 2.0**1000
    origin, width = (low / 2, high / 2 - low / 2) if halve else (low, high - low)
    for chunk in float64_chunks(sample):
        if described.nonfinite:
            chunk = chunk[np.isfinite(chunk)]
        position = (chunk / 2 if halve else chunk) - origin
        position /= width  # divided, not multiplied by bins / width, which overflows for subnormal widths
        position *= bins
        np.clip(position, 0, bins - 1, out=position)
        counts += np.bincount(position.astype(np.int64), minlength=bins)  # truncation = floor on [0, bins − 1]
    top = int(counts.max())
    return "".join(" " if c == 0 else _BARS[-(-c * len(_BARS) // top) - 1] for c in counts.tolist())


@dataclass(frozen=True)
class BlockStats:
    """One gate block: moments over its finite values, NaN/Inf counts, 2-D geometry, and its family.

    orthogonality_error = max|BᵀB − I| (tall) or max|BBᵀ − I| (wide), a LowerBound where only that is known (beyond
    EXACT_SIDE, far from orthogonal); sv_min/sv_max the extreme singular values
    (estimated beyond EXACT_SIDE: see `_estimated_geometry`); identity_error = max|B − I| (square blocks only);
    histogram a sparkline of the values, spectrum one of the singular values (None where only the extreme ones are
    known). The orthogonality and identity errors and the singular values are None unless asked for (`geometry`:
    `inspect --wide`), since they cost a Gram matrix and its eigenvalues (or a Lanczos iteration) per block.
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
    head: int | None = None  # the head whose rows these are (per-head cells)

    def as_dict(self) -> dict[str, Any]:
        return _json({
            "name": self.name, "kind": self.kind, "gate": self.gate, "rows": [self.start, self.stop],
            "shape": list(self.shape), "dtype": self.dtype, "count": self.count, "mean": self.mean, "std": self.std,
            "min": self.min, "max": self.max, "max_abs": self.max_abs, "nan": self.nan, "inf": self.inf,
            "orthogonality_error": self.orthogonality_error,
            "orthogonality_error_is_bound": isinstance(self.orthogonality_error, LowerBound),
            "sv_min": self.sv_min, "sv_max": self.sv_max, "identity_error": self.identity_error,
            "family": self.family.label, "families": list(self.family.candidates), "decided": self.family.decided,
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
                      "orthogonality_error": self.orthogonality_error,
                      "orthogonality_error_is_bound": isinstance(self.orthogonality_error, LowerBound),
                      "sv_min": self.sv_min,
                      "sv_max": self.sv_max, "spectrum": self.spectrum})


@quiet_floats
def value_stats(values: Any, summary: Summary | None = None) -> dict[str, float | int]:
    """count, mean, std (population), min, max, max_abs over the finite values; nan and inf counts."""
    described = summary or summarize(values)
    stats: dict[str, float | int] = {"count": described.n, "nan": described.nan,
                                     "inf": described.nonfinite - described.nan}
    if described.finite == 0:
        return {**stats, **dict.fromkeys(("mean", "std", "min", "max", "max_abs"), math.nan)}
    mean, std = described.moments()
    return {**stats, "mean": mean, "std": std, "min": described.minimum, "max": described.maximum,
            "max_abs": described.max_abs}


_Geometry = tuple[float | None, float | None, float | None, str | None]
_Key = tuple[str, int | None, int | None]
EXACT_SIDE = 256  # blocks with a side this short or shorter: Gram matrix and all its eigenvalues (exact, cheap)


def layer_geometry(cache: _Cache, keys: Iterable[_Key]) -> dict[_Key, _Geometry]:
    """`_geometry` of each row range (name, start, stop), the Lanczos runs of the large ones on up to four threads
    at once (numpy releases the GIL in its products; each run alone, so results do not depend on the thread count);
    a Ctrl-C cancels what has not started."""
    keys = list(dict.fromkeys(keys))
    large = [key for key in keys if _estimated(cache, key)]
    inputs = [(cache._values(*key), cache.summary(*key).max_abs) for key in large]  # cached here, not in threads
    workers = min(worker_count(), len(large))
    if workers < 2:
        found = [extreme_singular_values(values, largest) for values, largest in inputs]
    else:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="rnninit-spectra")
        try:
            found = list(pool.map(lambda pair: extreme_singular_values(*pair), inputs))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    extremes = dict(zip(large, found, strict=True))
    return {key: _geometry(cache, *key, extremes=extremes.get(key)) for key in keys}


def _estimated(cache: _Cache, key: _Key) -> bool:
    """Whether rows [start, stop) get estimated singular values: 2-D, finite, both sides beyond EXACT_SIDE."""
    values = cache._values(*key)
    return values.ndim == 2 and min(values.shape) > EXACT_SIDE and not cache.summary(*key).nonfinite


def _geometry(cache: _Cache, name: str, start: int | None = None, stop: int | None = None, *,
              extremes: Extremes | None = None) -> _Geometry:
    """max|G − I|, the extreme singular values and their sparkline for rows [start, stop) of a parameter (the whole
    when None); Nones where it is not 2-D, empty or finite. Exact (`_exact_geometry`) where a side is at most
    EXACT_SIDE, estimated (`_estimated_geometry`; `extremes`: its Lanczos result, when known) beyond."""
    values = cache._values(name, start, stop)
    if values.ndim != 2 or values.size == 0 or cache.summary(name, start, stop).nonfinite:
        return None, None, None, None
    rounding = rounding_level(cache.dtype(name), values.shape)
    if min(values.shape) <= EXACT_SIDE:
        return _exact_geometry(cache.gram_parts(name, start, stop), rounding)
    return _estimated_geometry(cache, (name, start, stop), rounding, extremes)


def _exact_geometry(parts: _Gram | None, rounding: float) -> _Geometry:
    """max|G − I|, the extreme singular values and their sparkline: one bar where they are equal up to `rounding`
    (`rounding_level`), whose bars would only show the CPU's last bits."""
    if parts is None:
        return None, None, None, None
    largest = _minus_identity_max(parts[0], 1.0)
    spectrum = _spectrum(parts)
    if spectrum is None:
        return largest, None, None, None
    flat = scaled_orthogonal_gain(parts, rounding) is not None
    return largest, float(spectrum[0]), float(spectrum[-1]), sparkline(spectrum[-1:] if flat else spectrum)


def _estimated_geometry(cache: _Cache, key: _Key, rounding: float, extremes: Extremes | None) -> _Geometry:
    """max|G − I|: exactly from the column (row) norms where they decide it (`error_from_diagonal`); a LowerBound
    from them where they put it at FAR_FROM_ORTHOGONAL or more (the stacked matrices of PyTorch's draws, whose
    columns have norms² near 4/3); from the Gram matrix elsewhere (near-orthogonal blocks, m·n² operations);
    σ min and σ max by Lanczos (`spectra`: σ max within 1e-3, σ min an upper bound, within 1e-3 where its iteration
    converges); the sparkline one bar where the singular values are equal up to `rounding`, else None (the spectrum
    between σ min and σ max is not computed)."""
    summary = cache.summary(*key)
    diagonal, scale = cache._diagonal(key), safe_scale(summary.max_abs)
    error = error_from_diagonal(diagonal, scale)
    if error is None:  # far from orthogonal by the norms alone: a lower bound, not m·n² operations for the digits
        error = diagonal_lower_bound(diagonal, scale)
    parts = cache.gram_parts(*key) if error is None else None
    if parts is not None:
        error = _minus_identity_max(parts[0], 1.0)
    if extremes is None:
        extremes = extreme_singular_values(cache._values(*key), summary.max_abs)
    if parts is not None:
        flat = scaled_orthogonal_gain(parts, rounding) is not None
    else:
        ratio = extremes.low / extremes.high if extremes.high else 1.0  # a zero matrix: one bar, as all-equal values
        flat = extremes.low_converged and 1 - ratio * ratio <= 2 * rounding
    return error, extremes.low, extremes.high, sparkline([extremes.high]) if flat else None


@quiet_floats
def block_statistics(layer: Layer, block: Block, tensors: Mapping[str, Any], *, geometry: bool = True) -> BlockStats:
    """Everything `inspect` shows for one gate block (see BlockStats); `geometry=False` leaves out the orthogonality
    and identity errors and the singular values (None), which cost a Gram matrix and its eigenvalues (or a Lanczos
    iteration)."""
    return _block_stats(layer, block, _Cache(tensors), geometry=geometry)


def _block_stats(layer: Layer, block: Block, cache: _Cache, *, geometry: bool,
                 known: Mapping[_Key, _Geometry] | None = None) -> BlockStats:
    values = cache.block(block.name, block.start, block.stop)
    summary = cache.summary(block.name, block.start, block.stop)
    stats = value_stats(values, summary)
    error = sv_min = sv_max = identity = None
    spectrum = None
    if values.ndim == 2 and geometry:
        key = (block.name, block.start, block.stop)
        error, sv_min, sv_max, spectrum = known[key] if known and key in known else _geometry(cache, *key)
        if values.shape[0] == values.shape[1] and stats["nan"] == stats["inf"] == 0:
            difference = as_float64(values)
            diagonal = np.arange(values.shape[0])
            difference[diagonal, diagonal] -= 1
            identity = float(np.abs(difference).max()) if difference.size else 0.0
    return BlockStats(
        block.name, block.kind, block.gate, block.start, block.stop, tuple(values.shape),
        cache.dtype(block.name), int(stats["count"]), float(stats["mean"]),
        float(stats["std"]), float(stats["min"]), float(stats["max"]), float(stats["max_abs"]), int(stats["nan"]),
        int(stats["inf"]), error, sv_min, sv_max, identity, _classify(layer, block, cache),
        sparkline(values, summary=summary),
        spectrum,
        block.head,
    )
