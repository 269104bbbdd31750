"""Warnings: the classic mistakes a diagnosis names (NaN/Inf, a forget constant in both biases, chrono drawn
into both biases, per-matrix and per-gate scopes mixed, a direction or layer left at another scheme)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..layouts.discovery import Layer
from .cache import _Cache
from .checks import MIN_SAMPLES, check_uniform, orthogonal_tolerance
from .families import UNDETERMINED
from .formatting import _fmt
from .orthogonality import orthogonality_decidable
from .recurrences import slstm_mistakes
from .stats import as_float64, quiet_floats

if TYPE_CHECKING:
    from .layer_diagnosis import LayerDiagnosis



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


@quiet_floats
def find_warnings(layers: Sequence[LayerDiagnosis], tensors: Mapping[str, Any], *,
                  _cache: _Cache | None = None) -> list[DiagnosticWarning]:
    """The classic mistakes: NaN/Inf, a forget constant in both biases (effective 2×), chrono drawn into both
    biases, per-matrix and per-gate scopes mixed in one GRU/LSTM layer, a direction or layer left at another scheme."""
    cache = _cache or _Cache(tensors)
    found: list[DiagnosticWarning] = []
    for diagnosis in layers:
        found += layer_warnings(diagnosis.layer, cache)
    return found + scheme_warnings(layers)


def layer_warnings(layer: Layer, cache: _Cache) -> list[DiagnosticWarning]:
    """The mistakes one layer shows on its own: NaN/Inf, both biases, mixed scopes."""
    return [*_nonfinite_warnings(layer, cache), *_double_bias_warnings(layer, cache), *_scope_warnings(layer, cache),
            *(DiagnosticWarning(code, text) for code, text in slstm_mistakes(layer, cache))]


def _nonfinite_warnings(layer: Layer, cache: _Cache) -> list[DiagnosticWarning]:
    found = []
    for name in layer.params.values():
        summary = cache.summary(name)
        if not summary.nonfinite:
            continue
        nan, inf = summary.nan, summary.nonfinite - summary.nan
        found.append(DiagnosticWarning("non-finite", f"{name}: {nan} NaN and {inf} Inf value(s): every output "
                                                     "of this layer becomes NaN and training cannot recover"))
    return found


def _double_bias_warnings(layer: Layer, cache: _Cache) -> list[DiagnosticWarning]:
    gate = {"lstm": "f", "gru": "z"}.get(layer.cell)
    if gate is None or not {"bias_ih", "bias_hh"} <= layer.params.keys():
        return []
    what = "forget" if gate == "f" else "update"
    blocks = {kind: next(b for b in layer.blocks(kind) if b.gate == gate) for kind in ("bias_ih", "bias_hh")}
    ih, hh = (as_float64(cache.block(b.name, b.start, b.stop)) for b in blocks.values())
    if any(cache.summary(b.name, b.start, b.stop).nonfinite for b in blocks.values()) or ih.size == 0:
        return []
    c = float(ih[0])
    where = f"{layer.title}: bias_ih.{gate} and bias_hh.{gate}"
    if c != 0 and bool((ih == c).all()) and bool((hh == c).all()):
        return [DiagnosticWarning("double-forget-bias", f"{where} are both {_fmt(c)}: the effective {what} bias "
                                                        f"is {_fmt(2 * c)}, not {_fmt(c)}; write it into one vector")]
    constant = bool((ih == c).all()) or bool((hh == hh[0]).all())
    signed = all(float(v.min()) >= 0 and float(v.max()) > 0 for v in (ih, hh))
    if not constant and signed and ih.size >= 2:
        return [DiagnosticWarning("double-chrono", f"{where} both hold positive random values (chrono drawn into "
                                                   f"both?): the effective {what} bias is their sum, not "
                                                   "log U[1, T−1]; draw once into one vector")]
    return []


def _param_scope(layer: Layer, kind: str, cache: _Cache) -> tuple[str | None, str]:
    """('gate' | 'matrix' | None, description) from orthogonality or Glorot bounds of a GRU/LSTM weight."""
    blocks = layer.blocks(kind)
    name = layer.params[kind]
    values = [cache.block(b.name, b.start, b.stop) for b in blocks]
    summaries = [cache.summary(b.name, b.start, b.stop) for b in blocks]
    if any(summary.nonfinite for summary in summaries):
        return None, ""
    tolerance = orthogonal_tolerance(cache.dtype(name))
    gains = [cache.orthogonal_gain(b.name, b.start, b.stop, tolerance)
             if orthogonality_decidable(v.shape, tolerance) else None for b, v in zip(blocks, values, strict=True)]
    whole_shape = cache.whole(name).shape
    entire = cache.orthogonal_gain(name, None, None, tolerance) if orthogonality_decidable(whole_shape, tolerance) \
        else None
    per_gate = all(gain is not None for gain in gains)
    # Stacked orthogonal gate blocks are orthogonal as a whole with gain √G: that is still per gate.
    whole = entire is not None and not (per_gate and any(not math.isclose(g or 0, entire, rel_tol=tolerance)
                                                         for g in gains))
    if whole and not per_gate:
        return "matrix", f"{kind} is orthogonal per matrix (its gate blocks are not orthogonal)"
    if per_gate and not whole:
        return "gate", f"{kind} is orthogonal per gate"
    if any(v.size < MIN_SAMPLES for v in values):
        return None, ""
    rows, cols = cache.whole(name).shape
    h = blocks[0].stop - blocks[0].start
    u = cache.u(name)
    gate_bound, matrix_bound = math.sqrt(6 / (cols + h)), math.sqrt(6 / (cols + rows))
    gate_ok = all(check_uniform(v, -gate_bound, gate_bound, u, summary=summary).ok
                  for v, summary in zip(values, summaries, strict=True))
    matrix_ok = all(check_uniform(v, -matrix_bound, matrix_bound, u, summary=summary).ok
                    for v, summary in zip(values, summaries, strict=True))
    if gate_ok and not matrix_ok:
        return "gate", f"{kind} is Glorot uniform per gate"
    if matrix_ok and not gate_ok:
        return "matrix", f"{kind} is Glorot uniform per matrix"
    return None, ""


def _scope_warnings(layer: Layer, cache: _Cache) -> list[DiagnosticWarning]:
    if layer.cell == "rnn" or layer.family or not {"weight_ih", "weight_hh"} <= layer.params.keys():
        return []
    scopes = {kind: _param_scope(layer, kind, cache) for kind in ("weight_ih", "weight_hh")}
    kinds = {scope: (kind, text) for kind, (scope, text) in scopes.items() if scope}
    if "gate" not in kinds or "matrix" not in kinds:
        return []
    return [DiagnosticWarning("mixed-scope", f"{layer.title}: {kinds['matrix'][1]} but {kinds['gate'][1]}: "
                                             "per-matrix and per-gate initialization mixed (orthogonal_ or "
                                             "xavier_ on the whole matrix believed to be per gate, or the reverse)")]


def scheme_warnings(layers: Sequence[LayerDiagnosis]) -> list[DiagnosticWarning]:
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
