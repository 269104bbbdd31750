"""Plan (which rule hits which block) and apply (draw and write the values).

A `Plan` is a plain value: it can be printed, compared, serialized and used as a dry run. Applying it
draws each block from its own generator, seeded from (seed, parameter name, block), so the values of
a parameter depend only on the seed, the rules and that parameter's name and shape: not on the other
parameters, nor on the thread count (blocks are drawn at one torch thread each, several at once).
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..errors import (
    DtypeError,
    LayoutError,
    NothingToDoError,
    RuleError,
    SchemeError,
    UsageError,
    naming_arguments,
    resolve_name,
    suggestion,
)
from ..layouts.discovery import Discovery, Layer, Skipped, article, discover
from ..layouts.patterns import UserPattern, compile_user_pattern
from ..layouts.views import View
from .arguments import _bind_args, _check_arguments, _check_dims, _try_arguments
from .distributed import (
    refuse_meta,
    refuse_sharded_views,
    refuse_unseeded_shards,
    refuse_unsharded_fsdp,
    shard_rows,
)
from .drawing import _batches, _covered_rows, _draw_scope, _drawn_in_place, _dtype_name, _scope_size, draw_seed
from .onethread import one_thread_pool
from .schemes import (
    GATE_WORDS,
    KEEP,
    SCHEMES,
    Rule,
    Scheme,
    Value,
    format_value,
    get_scheme,
    parse_rules,
    scheme_label,
)

if TYPE_CHECKING:
    from concurrent.futures import Future

    import torch

    from ..layouts.declared import Declaration

@dataclass(frozen=True)
class PlanEntry:
    """One gate block and what will be written into it."""

    name: str
    kind: str
    gate: str | None
    start: int
    stop: int
    initializer: str
    args: tuple[tuple[str, Value], ...]
    per: str  # "gate" (the block alone) or "matrix" (the whole parameter as one matrix)
    rule: str
    source: str  # "scheme" or "rule"
    head: int | None = None  # the head whose rows these are (per-head cells)

    @property
    def label(self) -> str:
        """The gate as tables show it: `f`, `f.h1` (head 1), `-` (no gates)."""
        return (self.gate or "-") + (f".h{self.head}" if self.head is not None else "")

    @property
    def call(self) -> str:
        args = [f"{k}={format_value(v)}" for k, v in self.args]
        return self.initializer + (f"({', '.join(args)})" if args else "")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "gate": self.gate, "rows": [self.start, self.stop],
                "initializer": self.initializer, "args": dict(self.args), "per": self.per,
                "rule": self.rule, "source": self.source, "head": self.head}


@dataclass(frozen=True)
class Plan:
    """Every selected block, in storage order, with the initializer that will fill it."""

    scheme: str
    rules: tuple[str, ...]
    only: str | None
    layers: tuple[Layer, ...]
    entries: tuple[PlanEntry, ...]
    seed: int | None = None
    views: tuple[View, ...] = ()  # how parameters stored in another form are assembled (see `views`)
    skipped: tuple[Skipped, ...] = ()  # groups that looked recurrent but were left alone, and why

    @property
    def writes(self) -> tuple[PlanEntry, ...]:
        return tuple(e for e in self.entries if e.initializer != KEEP)

    @property
    def discovery(self) -> Discovery:
        return Discovery(self.layers, self.views, self.skipped)

    def stored(self, names: Iterable[str]) -> list[str]:
        """The stored tensors behind the named (effective) parameters."""
        views = {view.name: view for view in self.views}
        return list(dict.fromkeys(source for name in names
                                  for source in (views[name].sources if name in views else (name,))))

    @property
    def sources(self) -> list[str]:
        """Every stored tensor behind the planned layers (what must be read to apply or report the plan)."""
        return self.discovery.sources

    @property
    def written_sources(self) -> list[str]:
        """The stored tensors that applying the plan rewrites."""
        return self.stored(entry.name for entry in self.writes)

    def entries_for(self, layer: Layer) -> list[PlanEntry]:
        positions = self._positions_by_name
        found = sorted(index for name in set(layer.params.values()) for index in positions.get(name, ()))
        return [self.entries[index] for index in found]

    @cached_property
    def _positions_by_name(self) -> dict[str, list[int]]:
        """Where each parameter's entries are in `entries`: `entries_for` runs once per layer, and scanning every
        entry each time made printing a 10,000-layer plan quadratic."""
        positions: dict[str, list[int]] = {}
        for index, entry in enumerate(self.entries):
            positions.setdefault(entry.name, []).append(index)
        return positions

    def __str__(self) -> str:
        lines = [f"scheme {self.scheme}" + (f", rules {' '.join(self.rules)}" if self.rules else "")
                 + (f", seed {self.seed}" if self.seed is not None else "")]
        lines += [f"  where {view.describe}" for view in self.views]
        for entry in self.entries:
            gate = entry.gate or "-"
            lines.append(f"  {entry.name}[{entry.start}:{entry.stop}] {gate}: {entry.call}"
                         f"{' per matrix' if entry.per == 'matrix' else ''}  <- {entry.rule}")
        return "\n".join(lines)


def _select(layer: Layer, pattern: UserPattern | None) -> list[str]:
    return [kind for kind, name in layer.params.items()
            if pattern is None or any(pattern.search(n) for n in (name, *layer.sources.get(kind, ())))]


def refuse_skipped(skipped: Sequence[Skipped]) -> None:
    """LayoutError listing every skipped group (for `strict`)."""
    if skipped:
        raise naming_arguments(LayoutError, f"{len(skipped)} group(s) of tensors could not be understood ({{strict}}): "
                               + "; ".join(str(item) for item in skipped))


def plan(
    tensors: Mapping[str, Any],
    scheme: str | Scheme = "keras",
    *,
    rules: Iterable[str | Rule] = (),
    only: str | None = None,
    for_writing: bool = True,
    layouts: Sequence[Declaration] = (),
    strict: bool = False,
    layers: Sequence[Layer] | None = None,
    skipped: Sequence[Skipped] = (),
    probe: bool = True,
) -> Plan:
    """Resolve `scheme` and then `rules` (later rules win) on every recurrent block of `tensors` (stored tensors by
    name: parameters stored in another form, such as weight_norm's g and v, are planned as the effective parameter,
    see `views`). `layouts` declare cells of other layouts (see `declared`).

    Groups that look recurrent but cannot be understood are skipped and listed in `Plan.skipped`; `strict` makes
    that a LayoutError. Raises DtypeError when a block to be written belongs to a tensor that cannot hold the drawn
    values (integer, bool or complex dtype). `for_writing=False` plans them anyway, for checking what they hold.
    `layers`: plan these (found before, e.g. by `discover`) instead of searching; `tensors` then holds their
    parameters by the names the layers give (effective parameters). `skipped`: what the caller already left alone
    (packed weights), reported and refused by `strict` with the rest. Quantized tensors are never planned: those a
    recurrent layer would hold are skipped too (see `set_aside_quantized`). `probe=False` checks the rules' arguments
    without drawing (no torch: a dry run), as `for_writing=False` does."""
    scheme_obj, scheme_rules = get_scheme(scheme)
    user_rules = parse_rules(rules)
    all_rules = [(rule, "scheme") for rule in scheme_rules] + [(rule, "rule") for rule in user_rules]
    for rule, _ in all_rules:
        _check_dims(rule)
        if for_writing and probe:
            _try_arguments(rule)
        else:  # checking values only: no torch needed, and no draw to fail
            _check_arguments(rule)
    if layers is None:
        tensors, quantized = set_aside_quantized(tensors, layouts=layouts, only=only)
        skipped = (*skipped, *quantized)
    found = discover(tensors, layouts=layouts, only=only) if layers is None else Discovery(tuple(layers))
    if skipped:
        found = replace(found, skipped=(*skipped, *found.skipped))
    if strict:
        refuse_skipped(found.skipped)
    pattern = compile_user_pattern(only, "only") if only is not None else None
    if not found.layers:
        every = discover(tensors, layouts=layouts).layers if only is not None and layers is None else ()
        if every:
            raise only_matches_nothing(only, [name for layer in every for name in layer.params.values()])
        raise naming_arguments(NothingToDoError, no_layers_message(found))
    selected = [(layer, kinds) for layer in found.layers if (kinds := _select(layer, pattern))]
    if not selected:
        raise only_matches_nothing(only, [name for layer in found.layers for name in layer.params.values()])
    user_rules = tuple(_gate_as_spelled(rule, selected) for rule in user_rules)
    all_rules = [(rule, "scheme") for rule in scheme_rules] + [(rule, "rule") for rule in user_rules]

    entries: list[PlanEntry] = []
    hit = [False] * len(user_rules)
    winners: dict[tuple[str, str, str | None], tuple[Rule, str] | None] = {}
    bound: dict[tuple[Rule, tuple[Any, ...]], tuple[str, tuple[tuple[str, Value], ...]]] = {}  # alike layers
    for layer, kinds in selected:
        _check_scheme_fits(scheme_obj, layer)
        for kind in kinds:
            for block in layer.blocks(kind):
                gate_key = (layer.family, kind, block.gate)
                if gate_key not in winners:
                    winner = None
                    for index, (rule, source) in enumerate(all_rules):
                        if rule.hits(kind, block.gate, layer.family):
                            winner = (rule, source)
                            if source == "rule":
                                hit[index - len(scheme_rules)] = True
                    winners[gate_key] = winner
                winner = winners[gate_key]
                if winner is None:
                    continue
                rule, source = winner
                key = (rule, layer.shape_key())
                if key not in bound:
                    bound[key] = _bind_args(rule, layer)
                per, args = bound[key]
                entries.append(PlanEntry(block.name, kind, block.gate, block.start, block.stop,
                                         rule.initializer, args, per, str(rule), source, block.head))
    for rule, was_hit in zip(user_rules, hit, strict=False):
        if not was_hit:
            raise RuleError(_hits_nothing(rule, selected))
    chosen = tuple(layer for layer, _ in selected)
    used = {name for layer in chosen for name in layer.params.values()}
    result = Plan(scheme_label(scheme), tuple(str(r) for r in user_rules), only, chosen, tuple(entries),
                  views=tuple(view for view in found.views if view.name in used), skipped=found.skipped)
    if for_writing:
        refuse_non_floating(tensors, result.written_sources)
        refuse_unholdable(result, tensors)
    return result


ONLY_EXAMPLES = 3  # parameter names an error about `only` quotes


def only_matches_nothing(only: str | None, names: Sequence[str]) -> NothingToDoError:
    """`only='enc'` matches none of the N recurrent parameters: a few of them, and the closest part of a name."""
    parts = {part for name in names for part in re.split(r"[./]", name) if part}
    close = difflib.get_close_matches(only or "", sorted({*parts, *names}), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    examples = ", ".join(names[:ONLY_EXAMPLES]) + (", ..." if len(names) > ONLY_EXAMPLES else "")
    return naming_arguments(NothingToDoError, f"{{only=}}{only!r} matches none of the {len(names)} recurrent "
                                              f"parameter(s) ({examples}){hint}")


def _gate_as_spelled(rule: Rule, selected: Sequence[tuple[Layer, Sequence[str]]]) -> Rule:
    """`rule` with its gate spelled as the selected layers spell it, where only case differs (`bias_ih.F`)."""
    if rule.gate is None:
        return rule
    gates = {block.gate for layer, kinds in selected for kind in kinds if kind in rule.kinds
             for block in layer.blocks(kind) if block.gate}
    if rule.gate in gates:
        return rule
    spelled = resolve_name(rule.gate, sorted(gates))
    return rule if spelled is None else replace(rule, gate=spelled)


def _hits_nothing(rule: Rule, selected: Sequence[tuple[Layer, Sequence[str]]]) -> str:
    """Why a rule hits no selected block: no such parameter, or no such gate (with the closest gate)."""
    families = sorted({layer.family for layer, _ in selected if layer.family})
    if rule.family is not None and rule.family not in families:
        return (f"rule {rule} hits no block: no selected layer is of family {rule.family} ("
                + (f"theirs: {', '.join(families)}" if families else "they name no family") + ")")
    kinds = sorted({kind for _, layer_kinds in selected for kind in layer_kinds})
    if not set(rule.kinds) & set(kinds):
        return f"rule {rule} hits no block: no selected layer has {rule.target}; they have {', '.join(kinds)}"
    gates = list(dict.fromkeys(block.gate for layer, layer_kinds in selected for kind in layer_kinds
                               if kind in rule.kinds for block in layer.blocks(kind) if block.gate))
    if not gates:
        return f"rule {rule} hits no block: the selected {rule.target} blocks have no gates; write {rule.target}=INIT"
    word = GATE_WORDS.get((rule.gate or "").casefold())
    hint = f"; did you mean {rule.target}.{word}?" if word in gates else suggestion(rule.gate or "", gates)
    return (f"rule {rule} hits no block: no selected {rule.target} block has gate {rule.gate!r}{hint} (they are "
            + ", ".join(f"{rule.target}.{gate}" for gate in gates) + ")")


def no_layers_message(found: Discovery) -> str:
    """Why nothing was found: no recurrent names at all, or only groups that were skipped."""
    if found.skipped:
        return (f"no recurrent layer could be understood; skipped {len(found.skipped)} group(s): "
                + "; ".join(str(item) for item in found.skipped))
    return ("no recurrent parameters found (names like weight_ih_l0, weight_hh_l0, bias_ih_l0 of nn.RNN/GRU/LSTM, "
            "or weight_ih/weight_hh of a cell; other layouts can be declared with {layouts})")


def _check_scheme_fits(scheme: Scheme, layer: Layer) -> None:
    if layer.family or scheme.families:
        _check_family_fits(scheme, layer)
        return
    if layer.cell == "custom":
        return  # a declared cell with its own gates: the scheme's rules apply by kind, gate rules where gates match
    if layer.cell not in scheme.cells:
        raise naming_arguments(SchemeError, f"scheme {scheme.name} applies to {'/'.join(sorted(scheme.cells)).upper()} "
                               f"layers, but {layer.title} is {article(layer.cell.upper())}; select other layers "
                               "with {only} or choose another scheme")
    if scheme.needs_bias and "bias_ih" not in layer.params:  # the scheme's gate biases go into bias_ih
        why = "has no bias_ih (its layout declares none)" if layer.declared else "has no bias (bias=False)"
        raise SchemeError(f"scheme {scheme.name} sets gate biases, but {layer.title} {why}")


def _check_family_fits(scheme: Scheme, layer: Layer) -> None:
    """Per-head cells take only the schemes written for their family, and those schemes only such cells: an LSTM
    scheme's fans and forget bias mean nothing for an exponentially gated sLSTM or a diagonal RG-LRU."""
    if layer.family in scheme.families:
        return
    if layer.family:
        fitting = sorted(name for name, other in SCHEMES.items() if layer.family in other.families)
        use = f"use --scheme {' or '.join(fitting)}" if fitting else "give rules for it with --rule"
        raise naming_arguments(SchemeError, f"scheme {scheme.name} {_scheme_target(scheme)}, but {layer.title} is "
                               f"{article(layer.label)} cell (family {layer.family}), which it does not define: "
                               f"{use}, or leave the layer out with {{only}}")
    raise naming_arguments(SchemeError, f"scheme {scheme.name} {_scheme_target(scheme)}, but {layer.title} is "
                           f"{article(layer.label or layer.cell.upper())}; select other layers with {{only}} or "
                           "choose another scheme")


def _scheme_target(scheme: Scheme) -> str:
    if scheme.families:
        return f"is defined for {'/'.join(sorted(scheme.families))} cells only"
    return "is for torch.nn-style RNN/GRU/LSTM gates"


def _overlaps(tensor: torch.Tensor) -> bool:
    """Whether elements of `tensor` share memory (an expand()ed or as_strided view): writing distinct
    values into it is impossible. Dimensions sorted by stride must each step past the ones before."""
    if tensor.numel() == 0:
        return False
    extent = 0
    for size, stride in sorted(((size, stride) for size, stride in zip(tensor.shape, tensor.stride(), strict=True)
                                if size > 1), key=lambda pair: pair[1]):
        if stride <= extent:
            return True
        extent += (size - 1) * stride
    return False


def refuse_non_floating(tensors: Mapping[str, Any], names: Iterable[str]) -> None:
    """DtypeError naming every tensor to be written whose dtype is not a real floating type: initializer values
    cast into integers or bools would be truncated (int8 weights all 0, bools all True), into complex numbers
    they would lose the imaginary part."""
    wrong = []
    for name in dict.fromkeys(names):
        dtype = getattr(tensors[name], "dtype", None)
        # a torch.dtype: False for complex dtypes too; a shape record's dtype is torch's name ("bfloat16")
        floating = dtype.startswith(("float", "bfloat")) if isinstance(dtype, str) else \
            getattr(dtype, "is_floating_point", None)
        if floating is False:
            wrong.append(f"{name} ({str(dtype).removeprefix('torch.')})")
    if wrong:
        raise naming_arguments(DtypeError, f"{len(wrong)} parameter(s) to rewrite are not floating point: "
                         f"{', '.join(wrong)}; "
                         "their dtype cannot hold the drawn values (integers and bools would truncate them, "
                         "complex numbers would lose a part), so nothing was written. Convert them to a float "
                         "dtype first, or leave them out with {only} or a rule such as weight_hh=keep")


def refuse_unholdable(the_plan: Plan, tensors: Mapping[str, Any]) -> None:
    """DtypeError naming every tensor to be written whose dtype cannot hold what its rule draws (see
    `initializers.cannot_hold`: no sign, no zero, powers of two only, out of range, too coarse for an orthogonal
    block, packed or quantized), before anything is written."""
    from .initializers import cannot_hold

    reasons: dict[tuple[str, str, tuple[tuple[str, Value], ...]], str | None] = {}
    found: dict[str, dict[str, None]] = {}  # reason → {"name (dtype) by call"}, in plan order
    sources = {view.name: view.sources for view in the_plan.views}
    refused: dict[str, None] = {}
    for entry in the_plan.writes:
        for source in sources.get(entry.name, (entry.name,)):
            dtype = _dtype_name(tensors[source])
            key = (dtype, entry.initializer, entry.args)
            if key not in reasons:
                reasons[key] = cannot_hold(dtype, entry.initializer, dict(entry.args))
            reason = reasons[key]
            if reason is not None:
                found.setdefault(reason, {})[f"{source} ({dtype}) by {entry.call}"] = None
                refused[source] = None
    if found:
        listed = "; ".join(f"{', '.join(whats)}: {reason}" for reason, whats in found.items())
        raise naming_arguments(DtypeError, f"{len(refused)} parameter(s) to rewrite cannot hold the values their "
                               "rules draw, so nothing "
                         f"was written: {listed}. Convert them to a wider float dtype first, choose another rule, or "
                         "leave them out with {only} or a rule such as weight_hh=keep")


def set_aside_quantized(tensors: Mapping[str, Any], *, layouts: Sequence[Declaration] = (),
                        only: str | None = None) -> tuple[Mapping[str, Any], tuple[Skipped, ...]]:
    """`tensors` without its quantized tensors (never planned: they hold integers with a scale and zero point), and
    one Skipped naming those that a recurrent layer would hold; the others are simply not recurrent."""
    from ..formats.unpickle.records import QUANTIZED_DTYPES

    quantized = {name: dtype for name, tensor in tensors.items() if (dtype := _dtype_name(tensor)) in QUANTIZED_DTYPES}
    if not quantized:
        return tensors, ()
    held = [name for name in discover(tensors, layouts=layouts, only=only).sources if name in quantized]
    kept = {name: tensor for name, tensor in tensors.items() if name not in quantized}
    if not held:
        return kept, ()
    dtypes = ", ".join(sorted({quantized[name] for name in held}))
    return kept, (Skipped(tuple(held), f"quantized tensor(s) ({dtypes}): rnninit draws floating-point values and "
                                       "cannot write them into a quantized tensor; kept as stored"),)


def refuse_overlapping(tensors: Mapping[str, Any], names: Iterable[str]) -> None:
    """LayoutError for a tensor to be written whose elements share memory (e.g. saved expand()ed)."""
    for name in dict.fromkeys(names):
        tensor = tensors[name]
        if _overlaps(tensor):
            raise LayoutError(f"{name} has elements that share memory (shape {list(tensor.shape)}, strides "
                              f"{list(tensor.stride())}), so it cannot hold distinct values; save it as a "
                              "plain tensor (.contiguous()) first")


def apply_plan(
    the_plan: Plan,
    tensors: MutableMapping[str, Any],
    *,
    seed: int | None = None,
    on_entry: Callable[[PlanEntry], None] | None = None,
) -> Plan:
    """Write every block of `the_plan` into `tensors` in place; return the plan with its seed."""
    import torch

    seed = the_plan.seed if seed is None else seed
    if seed is None:
        refuse_unseeded_shards(tensors, the_plan.written_sources)
    seed = draw_seed() if seed is None else seed
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    refuse_non_floating(tensors, the_plan.written_sources)
    refuse_unholdable(the_plan, tensors)
    refuse_meta(tensors, the_plan.written_sources)
    refuse_overlapping(tensors, the_plan.written_sources)
    views = {view.name: view for view in the_plan.views if any(entry.name == view.name for entry in the_plan.writes)}
    refuse_sharded_views(tensors, views.values())
    # DTensors: this rank draws only the scopes that overlap its rows and writes only those rows (see `distributed`).
    shards = shard_rows(tensors, (entry.name for entry in the_plan.writes if entry.name not in views))
    writes = [entry for entry in the_plan.writes
              if entry.name not in shards or shards[entry.name].overlaps(entry.start, entry.stop)]
    targets: Mapping[str, Any] = {**tensors, **{name: view.compose(tensors) for name, view in views.items()}}
    # One draw per scope: a block alone, or a whole parameter whose per=matrix entries are adjacent.
    scopes: list[PlanEntry] = []
    scope_of: list[int] = []
    previous = None
    for entry in writes:
        key = (entry.name, entry.rule) if entry.per == "matrix" else None
        if key is None or key != previous:
            scopes.append(entry)
        scope_of.append(len(scopes) - 1)
        previous = key
    # Scopes are drawn at once on one-thread workers (the values do not depend on the thread count) and written in
    # plan order. Small scopes go to a worker together (10,000 cells: a hand-off per block costs more than its draw);
    # at most `ahead` batches (one per worker, and the one being written) wait in memory.
    batches = _batches([_scope_size(first, targets[first.name]) for first in scopes])
    batch_of = [number for number, batch in enumerate(batches) for _ in batch]
    workers = max(1, min(torch.get_num_threads(), len(batches)))
    ahead = workers + 1
    pending: dict[int, Future[list[torch.Tensor]]] = {}

    covered = _covered_rows(writes, scopes, scope_of)
    in_place = [_drawn_in_place(first, targets[first.name], covered[index], shards, views)
                for index, first in enumerate(scopes)]

    def draw(batch: range) -> list[torch.Tensor]:
        return [_draw_scope(scopes[index], targets[scopes[index].name], seed, in_place[index]) for index in batch]

    with torch.no_grad(), one_thread_pool(workers) as pool:
        drawn, current, batch_drawn, current_batch = None, -1, [], -1
        for entry, scope in zip(writes, scope_of, strict=True):
            if scope != current:
                if batch_of[scope] != current_batch:
                    current_batch = batch_of[scope]
                    for number in range(len(pending) + current_batch, min(current_batch + ahead, len(batches))):
                        pending[number] = pool.submit(draw, batches[number])
                    batch_drawn = pending.pop(current_batch).result()
                drawn, current = batch_drawn[scope - batches[current_batch].start], scope
            values = drawn[entry.start:entry.stop] if entry.per == "matrix" else drawn
            if in_place[scope] is not None:
                pass  # drawn where it belongs
            elif entry.name in shards:
                shards[entry.name].write(entry.start, entry.stop, values)
            else:
                targets[entry.name][entry.start:entry.stop].copy_(values)
            if on_entry is not None:
                on_entry(entry)
        for name, view in views.items():
            for source, value in view.decompose(targets[name], tensors).items():
                if value is not tensors[source]:
                    tensors[source].copy_(value)
    return replace(the_plan, seed=seed)


def init_(
    target: Any,
    scheme: str | Scheme = "keras",
    *,
    seed: int | None = None,
    rules: Iterable[str | Rule] = (),
    only: str | None = None,
    layouts: Sequence[Declaration | str] | str = (),
    strict: bool = False,
) -> Plan:
    """Initialize every recurrent parameter of an `nn.Module` or a dict of tensors, in place.

    Weight-normalized and weight-dropped parameters are written so that the effective weight follows the scheme.
    `layouts`: declarations (or `--layout` texts, built-in names) for cells of other layouts. Groups that cannot be
    understood are skipped with a warning (RnnInitWarning), or raise LayoutError with `strict`.

    Sharded modules (FSDP2 `fully_shard`, or DTensor parameters placed with Shard(0) / Replicate()): call it on every
    rank with the same seed; each rank writes only its local shard, with no communication, and the assembled
    tensors (`full_tensor()`) are bit for bit what a single process writes into an unsharded copy. A rank draws only
    the gate blocks that overlap its rows (about 1/ranks of the work), but a per=matrix rule (keras's weight_ih and
    weight_hh, every weight_hr) draws the whole parameter on each rank that holds part of it: the whole parameter's
    time and memory (a float32 copy, plus the initializer's own, e.g. orthogonal's QR) on each of those ranks.
    Other placements (Shard(1), strided or partial) raise PlacementError. Parameters on the meta device raise
    MetaDeviceError: call `module.to_empty(device=...)` first."""
    import torch

    if isinstance(target, torch.nn.Module):
        refuse_unsharded_fsdp(target)
        tensors: MutableMapping[str, Any] = dict(target.named_parameters())
    elif isinstance(target, MutableMapping):
        tensors = target
    else:
        raise UsageError(f"init_ takes an nn.Module or a dict of tensors, not {type(target).__name__}")
    declarations = _declarations(layouts)
    the_plan = plan(tensors, scheme, rules=rules, only=only, layouts=declarations, strict=strict)
    for item in the_plan.skipped:
        warnings.warn(str(item), RnnInitWarning, stacklevel=2)
    return apply_plan(the_plan, tensors, seed=seed)


class RnnInitWarning(UserWarning):
    """A group of tensors that looked recurrent was left alone."""


def _declarations(layouts: Sequence[Declaration | str] | str) -> list[Declaration]:
    """Declarations from `init_`'s `layouts`: texts as `--layout` takes them (one text alone too), or
    Declaration values; each distinct layout once, like the CLI."""
    if not layouts:
        return []
    from ..layouts.declared import layouts_from_options

    items = [layouts] if isinstance(layouts, str) else list(layouts)
    texts = [i for i in items if isinstance(i, str)]
    result: list[Declaration] = []
    named = "layouts" if isinstance(layouts, str) else "layouts[{}]"  # how messages name a text: the argument
    for item in [*layouts_from_options(texts, (), named=named, first=0),
                 *(i for i in items if not isinstance(i, str))]:
        if not any(item.same_layout(kept) for kept in result):
            result.append(item)
    return result

