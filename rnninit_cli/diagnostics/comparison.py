"""diff: the recurrent layers of two checkpoints compared gate block by gate block."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import NothingToDoError
from ..layouts.discovery import Block, Layer, find_layers
from .blocks import value_stats
from .cache import _Cache, worker_count
from .diagnosis import _select_layers
from .formatting import _json
from .progress import OnProgress, Tally, byte_size, rows_bytes
from .stats import float64_chunks, quiet_floats, to_array


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


@quiet_floats  # also on the worker threads, where the caller's np.errstate does not reach
def _block_diff(block: Block, a: _Cache, b: _Cache) -> BlockDiff:
    before, after = a.block(block.name, block.start, block.stop), b.block(block.name, block.start, block.stop)
    exact = before.dtype == after.dtype and before.dtype.kind in "iub"  # integers beyond 2^53: compare as stored
    if exact:
        pairs: Any = [(before.reshape(-1), after.reshape(-1))]
    elif a.is_complex(block.name) or b.is_complex(block.name):  # the float64 chunks hold real parts only
        pairs = [tuple(to_array(side.tensors[block.name])[block.start:block.stop].astype(np.complex128).ravel()
                       for side in (a, b))]
    else:
        pairs = zip(float64_chunks(before), float64_chunks(after), strict=True)  # same shapes: same chunks
    changed, largest = 0, 0.0
    for old, new in pairs:
        same = (old == new) if exact else (old == new) | (np.isnan(old) & np.isnan(new))
        count = same.size - int(np.count_nonzero(same))
        if count:
            changed_old, changed_new = old[~same], new[~same]
            if exact:
                changed_old, changed_new = changed_old.astype(np.float64), changed_new.astype(np.float64)
            delta = np.abs(changed_new - changed_old)
            largest = max(largest, float(np.where(np.isnan(delta), math.inf, delta).max()))  # NaN vs number: inf
        changed += count
    return BlockDiff(block.name, block.kind, block.gate, block.start, block.stop, changed > 0, changed, largest,
                     value_stats(before, a.summary(block.name, block.start, block.stop)),
                     value_stats(after, b.summary(block.name, block.start, block.stop)),
                     a.dtype(block.name), b.dtype(block.name))


def _block_diffs(blocks: list[Block], a: _Cache, b: _Cache, tally: Tally) -> list[BlockDiff]:
    """`_block_diff` of each block, on up to four threads (each block alone: the results do not depend on it);
    `tally` counts the bytes of both sides' blocks: once for their summaries, once compared."""
    keys = [(block.name, block.start, block.stop) for block in blocks]
    for side in (a, b):
        side.prefetch(keys, on_summary=lambda key, side=side: tally.add(rows_bytes(side.tensors[key[0]], key[1] or 0,
                                                                                   key[2] or 0)))
    workers = worker_count()
    if workers < 2 or len(blocks) < 2:
        found = []
        for block in blocks:
            found.append(_block_diff(block, a, b))
            tally.add(_both_sides(block, a, b))
        return found
    pool = ThreadPoolExecutor(workers, thread_name_prefix="rnninit-diff")
    try:
        found = []
        for block, result in zip(blocks, pool.map(lambda block: _block_diff(block, a, b), blocks), strict=True):
            found.append(result)
            tally.add(_both_sides(block, a, b))
        return found
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an error or Ctrl-C: only what runs is waited for


def _both_sides(block: Block, a: _Cache, b: _Cache) -> int:
    """The bytes of `block` in both checkpoints."""
    return sum(rows_bytes(side.tensors[block.name], block.start, block.stop) for side in (a, b))


@quiet_floats
def diff(tensors_a: Mapping[str, Any], tensors_b: Mapping[str, Any], *, only: str | None = None,
         layers_a: Sequence[Layer] | None = None, layers_b: Sequence[Layer] | None = None,
         on_progress: OnProgress | None = None) -> DiffReport:
    """Compare the recurrent layers of two checkpoints gate block by gate block (a = before, b = after).

    Layers are matched by (prefix, cell or layer index, direction); `only` (regex on parameter names) selects.
    `on_progress(done, total)`: the bytes of both sides' compared parameters gone through (twice each: summaries,
    then the comparison; each pass counts half).
    Raises NothingToDoError when neither side has a selected recurrent layer.
    """
    found_a = find_layers(tensors_a) if layers_a is None else layers_a
    found_b = find_layers(tensors_b) if layers_b is None else layers_b
    side_a = {_layer_key(layer): (layer, kinds) for layer, kinds in _select_layers(found_a, only)}
    side_b = {_layer_key(layer): (layer, kinds) for layer, kinds in _select_layers(found_b, only)}
    if not side_a and not side_b:
        raise NothingToDoError("no recurrent parameters found (or selected) in either checkpoint")
    a, b = _Cache(tensors_a), _Cache(tensors_b)
    common = [(key, layer_a, kinds_a, *side_b[key]) for key, (layer_a, kinds_a) in side_a.items() if key in side_b]
    sizes = [sum(byte_size(tensors_a[layer_a.params[kind]]) + byte_size(tensors_b[layer_b.params[kind]])
                     for kind in kinds_a if kind in kinds_b) for _, layer_a, kinds_a, layer_b, kinds_b in common]
    tally = Tally(sum(sizes), on_progress, passes=2)
    done = 0
    layers = []
    for (_key, layer_a, kinds_a, layer_b, kinds_b), size in zip(common, sizes, strict=True):
        blocks: list[BlockDiff] = []
        shape_changes = []
        for kind in (k for k in kinds_a if k in kinds_b):
            name_a, name_b = layer_a.params[kind], layer_b.params[kind]
            shape_a, shape_b = tuple(a.whole(name_a).shape), tuple(b.whole(name_b).shape)
            if shape_a != shape_b or name_a != name_b:
                shape_changes.append(f"{name_a}: {list(shape_a)} → {list(shape_b)}")
                continue
            blocks += _block_diffs(list(layer_a.blocks(kind)), a, b, tally)
        a.forget(layer_a.params.values())  # one layer's float64 copies at a time
        b.forget(layer_b.params.values())
        done += 2 * size
        tally.reach(done)
        layers.append(LayerDiff(layer_a.title, tuple(blocks),
                                tuple(layer_a.params[k] for k in kinds_a if k not in kinds_b),
                                tuple(layer_b.params[k] for k in kinds_b if k not in kinds_a), tuple(shape_changes)))
    only_a = tuple(layer.title for key, (layer, _) in side_a.items() if key not in side_b)
    only_b = tuple(layer.title for key, (layer, _) in side_b.items() if key not in side_a)
    return DiffReport(tuple(layers), only_a, only_b)
