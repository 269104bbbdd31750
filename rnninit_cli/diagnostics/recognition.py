"""Scheme recognition: which registered schemes a layer's values are consistent with, arguments estimated from
the values."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import RuleError, SchemeError
from ..init.planning import PlanEntry, plan
from ..init.schemes import SCHEMES, Scheme, format_value, parse_call
from ..layouts.discovery import Block, Layer
from .cache import _Cache
from .entry_checks import _first_failure
from .families import _LARGEST_LOG, UNDETERMINED
from .formatting import _json
from .stats import as_float64, numpy_float_dtype, quiet_floats, rounded_to

# Not "trained": a fresh layer drawn by an initializer outside the registry (speechbrain's uniform input weights
# beside an orthogonal recurrent matrix) matches no built-in scheme either.
UNKNOWN = "no built-in scheme"


@dataclass(frozen=True)
class SchemeMatch:
    """Which schemes a layer's values are consistent with.

    primary: the first match in registry order; UNDETERMINED when some block is too small to decide between
    schemes that fit; UNKNOWN ('no built-in scheme') when no scheme fits. matches: every decided match (several
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
        # lists of objects, not objects keyed by scheme: a document's keys never depend on the data
        return _json({"primary": self.primary, "matches": list(self.matches), "undetermined": list(self.undetermined),
                      "estimated": [{"scheme": parse_call(spec, "scheme")[0], "tried": spec, "arguments": arguments}
                                    for spec, arguments in self.estimated.items()],
                      "rejected": [{"scheme": parse_call(spec, "scheme")[0], "tried": spec, "reason": reason}
                                   for spec, reason in self.rejected.items()]})


def _estimate_chrono(layer: Layer, cache: _Cache) -> dict[str, float] | None:
    """tmax = exp(max b) + 1 from bias_ih.f (LSTM) or bias_ih.z (GRU); None unless those biases are ≥ 0, not all 0."""
    gate = {"lstm": "f", "gru": "z"}.get(layer.cell)
    if gate is None or "bias_ih" not in layer.params:
        return None
    block = next(b for b in layer.blocks("bias_ih") if b.gate == gate)
    summary = cache.summary(block.name, block.start, block.stop)
    if summary.nonfinite or not summary.minimum >= 0 or not 0 < summary.maximum < _LARGEST_LOG:
        return None
    return {"tmax": _round_up(math.exp(summary.maximum) + 1)}


def _round_up(value: float, digits: int = 6) -> float:
    """value rounded up to `digits` significant digits (a relative change below 1e-5, far inside the edge test)."""
    if not value > 0:
        return value
    exponent = math.floor(math.log10(value)) - digits + 1
    return max(value, float(f"{math.ceil(value / 10.0**exponent)}e{exponent}"))


def _shortest(value: float, dtype: str) -> float:
    """The shortest decimal that rounds to the same `dtype` value (0.5, not 0.5000000001), for readable arguments."""
    if numpy_float_dtype(dtype) is None:
        return value
    for digits in range(1, 18):
        candidate = float(f"{value:.{digits}g}")
        if float(rounded_to(candidate, dtype)) == value:
            return candidate
    return value


def _estimate_irnn(layer: Layer, cache: _Cache) -> dict[str, float] | None:
    """scale = the first diagonal value of weight_hh."""
    name = layer.params.get("weight_hh")
    if name is None:
        return None
    value = float(as_float64(cache.whole(name)[0, :1])[0])
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
        if (layer.family or scheme.families) and layer.family not in scheme.families:
            continue  # written for other cells: planning it would only say so
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


@quiet_floats
def recognize_layer(layer: Layer, tensors: Mapping[str, Any], *,
                    candidates: Iterable[str | Scheme] | None = None) -> SchemeMatch:
    """Plan each candidate scheme (default: every registered one) on the layer alone and check every block."""
    return _recognize(layer, _Cache(tensors), candidates)


_Plans = dict[tuple[Any, ...], tuple[PlanEntry, ...]]


def _planned(layer: Layer, target: str | Scheme, cache: _Cache, plans: _Plans) -> tuple[PlanEntry, ...]:
    """plan(...).entries of `target` on the layer alone, planned once per scheme and layer shape (10,000 equal cells
    are planned once and renamed); raises what plan() raises, with this layer's names in the message."""
    key = (target if isinstance(target, str) else id(target), layer.shape_key())
    template = plans.get(key)
    if template is None:
        sub = {name: cache.tensors[name] for name in layer.params.values()}
        entries = plan(sub, target, for_writing=False, layers=[layer]).entries
        if all(entry.name == layer.params[entry.kind] for entry in entries):
            plans[key] = entries
        return entries
    return tuple(PlanEntry(layer.params[entry.kind], entry.kind, entry.gate, entry.start, entry.stop, entry.initializer,
                           entry.args, entry.per, entry.rule, entry.source, entry.head) for entry in template)


def _recognize(layer: Layer, cache: _Cache, candidates: Iterable[str | Scheme] | None,
               plans: _Plans | None = None) -> SchemeMatch:
    plans = {} if plans is None else plans
    matches: list[str] = []
    undetermined: list[str] = []
    estimated: dict[str, dict[str, float]] = {}
    rejected: dict[str, str] = {}
    for target, spec, estimate in _scheme_specs(layer, cache, candidates):
        try:
            entries = _planned(layer, target, cache, plans)
        except (SchemeError, RuleError) as error:  # RuleError: arguments estimated from odd values (chrono's tmax)
            rejected[spec] = f"does not apply: {error}"
            continue
        entry, verdict, decided = _first_failure(entries, cache)
        if entry is not None and verdict is not None:
            rejected[spec] = f"{_where(entry)}: expected {entry.call}, {verdict.detail}"
            continue
        if estimate:
            estimated[spec] = estimate
        (matches if decided else undetermined).append(spec)
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
