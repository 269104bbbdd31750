"""Families: which known initializer a block looks like, without a plan."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..init.initializers import TRUNCATED_NORMAL_STD
from ..layouts.discovery import Block, Layer
from .cache import _Cache
from .checks import (
    MIN_SAMPLES,
    check_chrono,
    check_identity,
    check_normal,
    check_normal_fit,
    check_truncated_normal,
    check_uniform,
    check_uniform_fit,
    orthogonal_tolerance,
)
from .formatting import _fmt
from .orthogonality import orthogonality_decidable
from .recurrences import powerlaw_position
from .stats import as_float64, quiet_floats

UNDETERMINED = "undetermined"
_LARGEST_LOG = 709.0  # math.exp overflows (OverflowError) just above 709.78


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


def _named_normal(layer: Layer, kind: str, shape: tuple[int, ...], whole_rows: int) -> list[tuple[float, str]]:
    """Known normal σ: Glorot √(2/(fan_in + h)) per gate, √(2/(fan_in + G·h)) per matrix; IRNN 0.001. Per-head
    cells: xLSTM's small_init √(2/(5E)) and Griffin's √(0.01/fan_in) (whole-matrix fans mean nothing there)."""
    if len(shape) != 2:
        return []
    fan_in, rows = shape[1], shape[0]
    if layer.row_blocks:
        return _merge([(math.sqrt(2 / (5 * layer.input_size)), "xLSTM small_init"),
                       (math.sqrt(0.01 / fan_in), "Griffin √(0.01/fan_in)")])
    if kind == "weight_hr" or rows == whole_rows:
        named = [(math.sqrt(2 / (fan_in + whole_rows)), "Glorot normal")]
    else:
        named = [(math.sqrt(2 / (fan_in + rows)), "Glorot normal per gate"),
                 (math.sqrt(2 / (fan_in + whole_rows)), "Glorot normal per matrix")]
    return _merge([*named, (0.001, "IRNN 0.001")])


@quiet_floats
def classify_block(layer: Layer, block: Block, tensors: Mapping[str, Any]) -> Family:
    """The families the block's values are consistent with, most specific first (see the docstring of checks.py)."""
    return _classify(layer, block, _Cache(tensors))


def _classify(layer: Layer, block: Block, cache: _Cache) -> Family:
    values = cache.block(block.name, block.start, block.stop)
    summary = cache.summary(block.name, block.start, block.stop)
    u = cache.u(block.name)
    n = values.size
    if n == 0:
        return Family(UNDETERMINED, (), False)
    if summary.nonfinite:
        return Family("unknown (NaN/Inf)", (), True)
    if summary.minimum == summary.maximum:
        first = summary.minimum
        if first == 0:
            return Family("zeros", ("zeros",), True)
        return Family(f"constant({_fmt(first)})", (f"constant({_fmt(first)})",), True)
    exact: list[str] = []
    whole = cache.whole(block.name)
    single = whole.shape[0] == block.stop - block.start
    if values.ndim == 2:
        scale = float(as_float64(values[0, :1])[0])
        if scale != 0 and check_identity(values, scale, u, summary=summary).ok:
            return Family(f"identity({_fmt(scale)})", (f"identity({_fmt(scale)})",), True)
        tolerance = orthogonal_tolerance(cache.dtype(block.name))
        # in low precision (float8, thin bfloat16 blocks) i.i.d. values meet the tolerance by chance: no claim
        own = cache.orthogonal_gain(block.name, block.start, block.stop, tolerance) \
            if orthogonality_decidable(values.shape, tolerance) else None
        entire = None if single or not orthogonality_decidable(whole.shape, tolerance) else \
            cache.orthogonal_gain(block.name, None, None, tolerance)
        gate_label = "orthogonal" if single else "orthogonal per gate"
        if own is not None:
            exact.append(gate_label + ("" if math.isclose(own, 1, abs_tol=tolerance) else f" (gain {_fmt(own)})"))
        if entire is not None:
            # Stacking G square (or tall) orthogonal gate blocks gives WᵀW = G·I: orthogonal with gain √G, but
            # per gate is what drew it. Only when the gains agree (a wide W: its row blocks inherit orthonormal
            # rows) is per matrix the more specific description.
            matrix = "orthogonal per matrix" + ("" if math.isclose(entire, 1, abs_tol=tolerance)
                                                else f" (gain {_fmt(entire)})")
            first_place = own is None or math.isclose(own, entire, rel_tol=tolerance)
            exact.insert(0 if first_place else len(exact), matrix)
    if values.ndim == 1 and n >= 3:  # deterministic vectors: xLSTM's power-law forget bias, linspace biases
        flat = as_float64(values).reshape(-1)
        position = powerlaw_position(flat, u)
        if position is not None:
            exact.append(f"xLSTM power law (r = {abs(position) if abs(position) < 0.005 else position:.2f})")
        steps = np.diff(flat)
        if float(np.abs(steps - steps.mean()).max()) <= 4 * max(u, 2.0**-23) * max(1.0, float(np.abs(flat).max())):
            exact.append(f"linspace({_fmt(float(flat[0]))}, {_fmt(float(flat[-1]))})")
    if exact:
        return Family(exact[0], tuple(exact), True)
    if n < MIN_SAMPLES:
        return Family(UNDETERMINED, (), False)
    shape = tuple(values.shape)
    candidates: list[str] = []
    # A family is named only when the block's shape passes a goodness-of-fit test too: the parameter checks alone
    # accept heavy-tailed blocks of the right scale (a Laplace block's max |z| stays below the union bound).
    # The fits are computed only once a parameter check passes (most trained blocks fail those first).
    uniform_fit = _Lazy(lambda: check_uniform_fit(values, summary=summary).ok)
    normal_fit = _Lazy(lambda: check_normal_fit(values, summary=summary).ok)
    if values.ndim == 1:
        signed = summary.minimum >= 0 or summary.maximum <= 0
        top = summary.max_abs
        if signed and 0 < top < _LARGEST_LOG:
            tmax = math.exp(top) + 1
            negate = summary.maximum <= 0
            if check_chrono(values, tmax, negate, u).ok and check_uniform_fit(np.exp(np.abs(as_float64(values)))).ok:
                candidates.append(("−" if negate else "") + f"chrono(tmax≈{_fmt(tmax)})")
    for bound, name in _named_uniform(layer, block.kind, shape, int(whole.shape[0])):
        if check_uniform(values, -bound, bound, u, summary=summary).ok and uniform_fit():
            candidates.append(f"uniform(±{_fmt(bound)}) [{name}]")
    if values.ndim == 2:
        lecun = math.sqrt(1 / shape[1])
        if check_truncated_normal(values, lecun / TRUNCATED_NORMAL_STD, u, summary=summary).ok:
            candidates.append(f"normal({_fmt(lecun)}) [LeCun truncated, Flax]")
    for std, name in _named_normal(layer, block.kind, shape, int(whole.shape[0])):
        if check_normal(values, 0.0, std, u, summary=summary).ok and normal_fit():
            candidates.append(f"normal({_fmt(std)}) [{name}]")
    # No family with parameters fitted to the values (normal(x̄, s), uniform(min, max)): after a few hundred Adam
    # steps a trained block is a sum of many small updates, close enough to a normal to pass any goodness-of-fit
    # test at ALPHA, so such a label cannot tell a trained block from a fresh draw. Only known initializers'
    # parameters are named (chrono's tmax is read from the values, as its scheme does).
    return Family(candidates[0] if candidates else "unknown", tuple(candidates), True)


class _Lazy:
    """A boolean computed on first use, then remembered."""

    def __init__(self, compute: Callable[[], bool]) -> None:
        self._compute = compute
        self._value: bool | None = None

    def __call__(self) -> bool:
        if self._value is None:
            self._value = self._compute()
        return self._value
