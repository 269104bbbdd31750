"""Block and layer statistics: what `inspect` shows for a gate block or a whole weight matrix."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..layout import Block, Layer
from ..stats import as_float64, moments
from .cache import _Cache
from .families import Family, _classify
from .formatting import _json
from .orthogonality import _Gram, _spectrum

_BARS = "▁▂▃▄▅▆▇█"


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
