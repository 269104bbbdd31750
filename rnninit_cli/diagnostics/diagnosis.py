"""`diagnose()`: statistics, families, scheme matches and warnings for every selected recurrent layer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import NothingToDoError
from ..init.planning import only_matches_nothing
from ..init.schemes import Scheme
from ..layouts.discovery import KINDS, Layer, find_layers
from ..layouts.patterns import compile_user_pattern
from .blocks import MatrixStats, _block_stats, layer_geometry
from .cache import _Cache
from .layer_diagnosis import LayerDiagnosis
from .mistakes import DiagnosticWarning, layer_warnings, scheme_warnings
from .progress import OnProgress, Tally, byte_size, rows_bytes
from .recognition import _recognize
from .recurrences import recurrence_notes
from .stats import effective_bias, quiet_floats

_WEIGHTS = ("weight_ih", "weight_hh", "weight_hr")


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
    pattern = compile_user_pattern(only, "only") if only is not None else None
    selected = []
    for layer in layers:
        kinds = [k for k in KINDS if k in layer.params and (pattern is None or pattern.search(layer.params[k]))]
        if kinds:
            selected.append((layer, kinds))
    return selected


@quiet_floats
def diagnose(tensors: Mapping[str, Any], *, only: str | None = None,
             candidates: Iterable[str | Scheme] | None = None, layers: Sequence[Layer] | None = None,
             geometry: bool = False, on_progress: OnProgress | None = None) -> Diagnosis:
    """Statistics, families, scheme matches and warnings for every recurrent layer of `tensors`.

    `only` (a regex on parameter names) selects layers and the parameters shown; scheme recognition always looks
    at whole layers. `candidates`: schemes to try (default every registered scheme, arguments estimated).
    Raises NothingToDoError when no recurrent layer is found or selected. `layers`: these layers (found before, by
    `layout.discover`), whose parameters `tensors` holds by their effective names, instead of searching `tensors`.
    `geometry`: also every block's and weight's orthogonality error and singular values (`inspect --wide`: a Gram
    matrix and its eigenvalues each, a Lanczos iteration and a Gram matrix only where the column norms do not
    decide the error beyond 256 × 256: `blocks._geometry`); without it they are None, and Gram matrices are formed
    only for blocks whose column norms leave orthogonality possible. `on_progress(done, total)`: the bytes of the
    layers' values gone through (twice each: a summary pass, then the checks; each pass counts half).
    """
    layers = find_layers(tensors) if layers is None else list(layers)
    if not layers:
        raise NothingToDoError("no recurrent parameters found (names like weight_ih_l0, weight_hh_l0, "
                               "bias_ih_l0 of nn.RNN/GRU/LSTM, or weight_ih/weight_hh of a cell)")
    selected = _select_layers(layers, only)
    if not selected:
        raise only_matches_nothing(only, [name for layer in layers for name in layer.params.values()])
    cache = _Cache(tensors)
    candidate_list = None if candidates is None else list(candidates)
    results: list[LayerDiagnosis] = []
    warnings: list[DiagnosticWarning] = []
    layer_bytes = [sum(byte_size(tensors[name]) for name in layer.params.values()) for layer, _ in selected]
    tally = Tally(sum(layer_bytes), on_progress, passes=2)
    done = 0
    plans: dict = {}  # scheme plans by layer shape, shared by the layers
    for (layer, kinds), size in zip(selected, layer_bytes, strict=True):
        cache.prefetch(((block.name, block.start, block.stop) for kind in layer.params for block in layer.blocks(kind)),
                       on_summary=lambda key: tally.add(rows_bytes(tensors[key[0]], key[1] or 0, key[2] or 0)))
        weights = [layer.params[kind] for kind in kinds if kind in _WEIGHTS]
        known = layer_geometry(cache, [*((b.name, b.start, b.stop) for kind in kinds for b in layer.blocks(kind)),
                                       *((name, None, None) for name in weights)]) if geometry else {}
        blocks = []
        for kind in kinds:
            for block in layer.blocks(kind):
                blocks.append(_block_stats(layer, block, cache, geometry=geometry, known=known))
                tally.add(rows_bytes(tensors[block.name], block.start, block.stop))
        matrices = []
        for kind in kinds:
            if kind in _WEIGHTS:
                name = layer.params[kind]
                error = sv_min = sv_max = spectrum = None
                if geometry:
                    error, sv_min, sv_max, spectrum = known[(name, None, None)]
                matrices.append(MatrixStats(name, kind, tuple(cache.whole(name).shape), error, sv_min, sv_max,
                                            spectrum))
        bias = tuple({"gate": gate, **stats} for gate, stats in effective_bias(layer, tensors))
        results.append(LayerDiagnosis(layer, tuple(blocks), tuple(matrices), bias,
                                      _recognize(layer, cache, candidate_list, plans), recurrence_notes(layer, cache)))
        warnings += layer_warnings(layer, cache)
        cache.forget(layer.params.values())  # one layer's float64 copies and Gram matrices at a time
        done += 2 * size
        tally.reach(done)
    return Diagnosis(tuple(results), tuple(warnings + scheme_warnings(results)))
