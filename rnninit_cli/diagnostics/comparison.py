"""diff: the recurrent layers of two checkpoints compared gate block by gate block, streamed a chunk at a time."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import NothingToDoError
from ..layouts.discovery import Block, Layer, find_layers
from .blocks import value_stats
from .cache import _WORTH_A_THREAD, worker_count
from .diagnosis import _select_layers
from .formatting import _json
from .progress import OnProgress, Tally, byte_size
from .stats import (
    CHUNK,
    Accumulator,
    Summary,
    dtype_name,
    quiet_floats,
    second_pass_scale,
    summarize,
    to_array,
)


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
    head: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return _json({"name": self.name, "kind": self.kind, "gate": self.gate, "rows": [self.start, self.stop],
                      "changed": self.changed, "changed_count": self.changed_count,
                      "max_abs_delta": self.max_abs_delta, "before": self.before, "after": self.after,
                      "dtype_a": self.dtype_a, "dtype_b": self.dtype_b, "head": self.head})


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


class _Rows:
    """One checkpoint's parameter, open for comparison: its shape, the dtype of its values as numpy holds them
    (float32 for bfloat16, as `stats.to_array` gives them) and its stored dtype's name, and its rows CHUNK values at
    a time. A parameter that can be read a block of rows at a time (`pieces`, a file's FileArray) is streamed, unless
    it is small (read whole in one go); any other (a numpy array, a torch tensor, a view composed when read) is held
    whole while it is compared."""

    def __init__(self, values: Any) -> None:
        stream = getattr(values, "pieces", None)
        self._stream, self._array = None, None
        if stream is not None and values.nbytes > _READ_WHOLE:
            self._stream = stream
            self.dtype_name = dtype_name(values)
            self._bits = self.dtype_name == "bfloat16"  # its pieces are the stored bits
            self.dtype = np.dtype(np.float32) if self._bits else np.dtype(values.stored)
            self.shape = tuple(values.shape)
        else:
            whole = values.read() if hasattr(values, "read") else values  # a tensor read when asked: read it
            self._array = to_array(whole)
            self.dtype_name = dtype_name(whole)
            self.dtype = self._array.dtype
            self.shape = tuple(self._array.shape)
        self.is_complex = self.dtype_name.startswith("complex")

    @property
    def small(self) -> np.ndarray | None:
        """The parameter flattened, when it is held whole and fits one chunk (None otherwise)."""
        return None if self._array is None or self._array.size > CHUNK else self._array.reshape(-1)

    def pieces(self, start: int, stop: int, raw: np.ndarray, wide: np.ndarray) -> Iterator[np.ndarray]:
        """The values of rows [start, stop), flattened, CHUNK at a time (aligned as `float64_chunks` cuts them), read
        into `raw` (and bfloat16 decoded into `wide`, CHUNK uint32); each piece is valid until the next."""
        if self._stream is not None:
            for piece in self._stream(start, stop, CHUNK, raw):
                yield _bfloat16_values(piece, wide) if self._bits else piece
            return
        assert self._array is not None
        flat = self._array[start:stop].reshape(-1)
        for first in range(0, flat.size, CHUNK):
            yield flat[first:first + CHUNK]


_READ_WHOLE = 1 << 20  # bytes up to which a file's parameter is read whole, in one read (many small layers)


def _bfloat16_values(bits: np.ndarray, wide: np.ndarray) -> np.ndarray:
    """The float32 values of bfloat16 bits, as `bfloat16.bfloat16_to_float32` decodes them (bits·2¹⁶), in `wide`."""
    words = wide[:bits.size]
    np.copyto(words, bits)
    words <<= 16
    return words.view(np.float32)


class _Workspace:
    """One thread's buffers, reused block after block: a fresh 2 MiB array per chunk would cost the kernel
    about 500 page faults, more than the arithmetic on it."""

    def __init__(self) -> None:
        # what the files' pieces are read into: room for a chunk of the widest dtype (complex128), of which only
        # the pages a piece reaches are ever resident
        self.raw_a, self.raw_b = np.empty(CHUNK * 16, dtype=np.uint8), np.empty(CHUNK * 16, dtype=np.uint8)
        self.wide_a, self.wide_b = np.empty(CHUNK, dtype=np.uint32), np.empty(CHUNK, dtype=np.uint32)
        self.a64, self.b64, self.delta, self.scratch = (np.empty(CHUNK) for _ in range(4))
        self.unequal = np.empty(CHUNK, dtype=bool)


def _block_diff(block: Block, a: _Rows, b: _Rows, work: _Workspace) -> BlockDiff:
    """One block of both sides in one pass over their values, a chunk of each at a time: both summaries (as
    `stats.summarize` computes them) and the comparison."""
    same_dtype = a.dtype == b.dtype
    exact = same_dtype and a.dtype.kind in "iub"  # integers beyond 2^53: compare as stored
    native = same_dtype and a.dtype in _NUMPY_FLOATS  # floats numpy compares as fast as it converts them
    before, after = Accumulator(1.0, work.scratch), Accumulator(1.0, work.scratch)
    changed, largest = 0, 0.0
    pieces_a = a.pieces(block.start, block.stop, work.raw_a, work.wide_a)
    pieces_b = b.pieces(block.start, block.stop, work.raw_b, work.wide_b)
    for old, new in zip(pieces_a, pieces_b, strict=True):  # same shapes: same pieces
        if same_dtype and _same_bytes(old, new):
            part = before.part(_float64(old, work.a64))  # equal values: measured once
            before.merge(part)
            after.merge(part)
            continue
        old64, new64 = _float64(old, work.a64), _float64(new, work.b64)
        before.add(old64)
        after.add(new64)
        if exact:
            count, delta = _changes(old, new, exact=True)
        elif a.is_complex or b.is_complex:  # the float64 chunks hold real parts only
            count, delta = _changes(old.astype(np.complex128), new.astype(np.complex128), exact=False)
        else:
            count, delta = _float_changes(old64, new64, (old, new) if native else (old64, new64), work)
        if count:
            changed += count
            largest = max(largest, delta)
    summary_a = _finish(before, a, block, work.raw_a, work.wide_a, work)
    summary_b = _finish(after, b, block, work.raw_b, work.wide_b, work)
    return BlockDiff(block.name, block.kind, block.gate, block.start, block.stop, changed > 0, changed, largest,
                     value_stats(None, summary_a), value_stats(None, summary_b), a.dtype_name, b.dtype_name,
                     block.head)


_NUMPY_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _float64(piece: np.ndarray, buffer: np.ndarray) -> np.ndarray:
    """A piece of at most CHUNK values as the float64 chunk `float64_chunks` makes of it (real parts of complex
    values), in `buffer` unless it already is float64."""
    if piece.dtype.kind == "c":
        piece = piece.real
    if piece.dtype == np.float64:
        return piece
    converted = buffer[:piece.size]
    np.copyto(converted, piece, casting="unsafe")
    return converted


def _same_bytes(old: np.ndarray, new: np.ndarray) -> bool:
    """Whether two pieces of one dtype hold the same bytes (then their values are the same, NaN payloads and
    signs of zero included)."""
    if old.nbytes <= _SMALL_PIECE:
        return old.tobytes() == new.tobytes()
    old_bits, new_bits = old.view(np.uint8), new.view(np.uint8)
    if old.nbytes % 8 == 0:
        old_bits, new_bits = old_bits.view(np.uint64), new_bits.view(np.uint64)
    return bool(np.array_equal(old_bits[:8], new_bits[:8])) and bool(np.array_equal(old_bits, new_bits))


_SMALL_PIECE = 1 << 16  # bytes up to which copying two pieces to compare them costs less than numpy's calls


def _changes(old: np.ndarray, new: np.ndarray, *, exact: bool) -> tuple[int, float]:
    """(how many values differ, max |new − old| over them): NaN = NaN, NaN against a number counts as inf;
    `exact`: integers (or bools), compared as stored and subtracted in float64."""
    same = (old == new) if exact else (old == new) | (np.isnan(old) & np.isnan(new))
    count = same.size - int(np.count_nonzero(same))
    if not count:
        return 0, 0.0
    changed_old, changed_new = old[~same], new[~same]
    if exact:
        changed_old, changed_new = changed_old.astype(np.float64), changed_new.astype(np.float64)
    delta = np.abs(changed_new - changed_old)
    return count, float(np.where(np.isnan(delta), math.inf, delta).max())


def _float_changes(old64: np.ndarray, new64: np.ndarray, compared: tuple[np.ndarray, np.ndarray],
                   work: _Workspace) -> tuple[int, float]:
    """`_changes` of two float64 chunks in a few passes over buffers: when no |new − old| is NaN (no NaN, and no
    infinity on both sides), every equal pair has difference 0 and every other is ≥ 0, so the largest difference of
    all is the largest of the changed values'. `compared`: the chunks in their stored dtype, or in float64."""
    size = old64.size
    delta = np.subtract(new64, old64, out=work.delta[:size])
    np.abs(delta, out=delta)
    largest = float(delta.max())
    if math.isnan(largest):
        return _changes(old64, new64, exact=False)
    return int(np.count_nonzero(np.not_equal(*compared, out=work.unequal[:size]))), largest


def _small_blocks(blocks: list[Block], a: _Rows, b: _Rows, old: np.ndarray, new: np.ndarray) -> list[BlockDiff]:
    """`_block_diff` of the blocks of a small parameter held whole (many small layers): the comparison of all its
    values in one go, then per block two counts and each side's `summarize` (the same Summary as one pass)."""
    same_dtype = a.dtype == b.dtype
    if same_dtype and a.dtype.kind in "iub":
        unequal = old != new
        delta = np.abs(new.astype(np.float64) - old.astype(np.float64))
    else:
        kind = np.complex128 if a.is_complex or b.is_complex else np.float64
        old_values, new_values = old.astype(kind), new.astype(kind)
        unequal = ~((old_values == new_values) | (np.isnan(old_values) & np.isnan(new_values)))
        delta = np.abs(new_values - old_values)
    changed_deltas = np.where(unequal, np.where(np.isnan(delta), math.inf, delta), -math.inf)
    row = math.prod(a.shape[1:])
    found = []
    for block in blocks:
        first, stop = block.start * row, block.stop * row
        count = int(np.count_nonzero(unequal[first:stop]))
        largest = float(changed_deltas[first:stop].max()) if count else 0.0
        summary_a = summarize(old[first:stop])
        same = same_dtype and not count and old[first:stop].tobytes() == new[first:stop].tobytes()
        summary_b = summary_a if same else summarize(new[first:stop])
        found.append(BlockDiff(block.name, block.kind, block.gate, block.start, block.stop, count > 0, count,
                               largest, value_stats(None, summary_a), value_stats(None, summary_b), a.dtype_name,
                               b.dtype_name, block.head))
    return found


def _finish(accumulator: Accumulator, side: _Rows, block: Block, raw: np.ndarray, wide: np.ndarray,
            work: _Workspace) -> Summary:
    """The block's Summary: the one pass's, or (values beyond 2^±500, see `stats.summarize`) a second, scaled pass
    over that side's values."""
    summary = accumulator.summary()
    scale = second_pass_scale(summary)
    if scale == 1.0:
        return summary
    again = Accumulator(scale, work.scratch)
    for piece in side.pieces(block.start, block.stop, raw, wide):
        again.add(_float64(piece, work.a64))
    return again.summary()


class _Comparer:
    """`_block_diff` of a parameter's blocks, on up to four threads when its blocks are large (each block alone: the
    results do not depend on it), on this thread when they are small (a handoff would cost more than the block)."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()

    def __enter__(self) -> _Comparer:
        return self

    def __exit__(self, *_exception: object) -> None:
        if self._pool is not None:  # after an error or Ctrl-C: only what runs is waited for
            self._pool.shutdown(wait=True, cancel_futures=True)

    def blocks(self, blocks: list[Block], a: _Rows, b: _Rows) -> list[BlockDiff]:
        whole_a, whole_b = a.small, b.small
        if whole_a is not None and whole_b is not None:
            found = _small_blocks(blocks, a, b, whole_a, whole_b)
            self._tally.add(sum(_both_sides(block, a, b) for block in blocks))
            return found
        values = sum((block.stop - block.start) * math.prod(a.shape[1:]) for block in blocks)
        workers = worker_count()
        if workers < 2 or len(blocks) < 2 or values < _WORTH_A_THREAD * len(blocks):
            found = []
            for block in blocks:
                found.append(_block_diff(block, a, b, self._workspace()))
                self._tally.add(_both_sides(block, a, b))
            return found
        if self._pool is None:
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="rnninit-diff")
        found = []
        for block, result in zip(blocks, self._pool.map(lambda block: self._on_worker(block, a, b), blocks),
                                 strict=True):
            found.append(result)
            self._tally.add(_both_sides(block, a, b))
        return found

    @quiet_floats  # on the worker threads, where the caller's np.errstate does not reach
    def _on_worker(self, block: Block, a: _Rows, b: _Rows) -> BlockDiff:
        return _block_diff(block, a, b, self._workspace())

    def _workspace(self) -> _Workspace:
        work = getattr(self._local, "work", None)
        if work is None:
            work = self._local.work = _Workspace()
        return work


def _both_sides(block: Block, a: _Rows, b: _Rows) -> int:
    """The bytes of `block` in both checkpoints."""
    row = math.prod(a.shape[1:])
    return (block.stop - block.start) * row * (a.dtype.itemsize + b.dtype.itemsize)


@quiet_floats
def diff(tensors_a: Mapping[str, Any], tensors_b: Mapping[str, Any], *, only: str | None = None,
         layers_a: Sequence[Layer] | None = None, layers_b: Sequence[Layer] | None = None,
         on_progress: OnProgress | None = None) -> DiffReport:
    """Compare the recurrent layers of two checkpoints gate block by gate block (a = before, b = after).

    Layers are matched by (prefix, cell or layer index, direction); `only` (regex on parameter names) selects.
    The values are read one parameter at a time, and streamed a chunk at a time where a tensor can be read a block
    of rows at a time (`formats.lazy.FileArray`): memory stays a few MB per thread however large the checkpoints.
    `on_progress(done, total)`: the bytes of both sides' compared parameters gone through.
    Raises NothingToDoError when neither side has a selected recurrent layer.
    """
    found_a = find_layers(tensors_a) if layers_a is None else layers_a
    found_b = find_layers(tensors_b) if layers_b is None else layers_b
    side_a = {_layer_key(layer): (layer, kinds) for layer, kinds in _select_layers(found_a, only)}
    side_b = {_layer_key(layer): (layer, kinds) for layer, kinds in _select_layers(found_b, only)}
    if not side_a and not side_b:
        raise NothingToDoError("no recurrent parameters found (or selected) in either checkpoint")
    common = [(key, layer_a, kinds_a, *side_b[key]) for key, (layer_a, kinds_a) in side_a.items() if key in side_b]
    sizes = [sum(byte_size(tensors_a[layer_a.params[kind]]) + byte_size(tensors_b[layer_b.params[kind]])
                 for kind in kinds_a if kind in kinds_b) for _, layer_a, kinds_a, layer_b, kinds_b in common]
    tally = Tally(sum(sizes), on_progress)
    done = 0
    layers = []
    with _Comparer(tally) as comparer:
        for (_key, layer_a, kinds_a, layer_b, kinds_b), size in zip(common, sizes, strict=True):
            blocks: list[BlockDiff] = []
            shape_changes = []
            for kind in (k for k in kinds_a if k in kinds_b):
                name_a, name_b = layer_a.params[kind], layer_b.params[kind]
                a, b = _Rows(tensors_a[name_a]), _Rows(tensors_b[name_b])
                if a.shape != b.shape or name_a != name_b:
                    shape_changes.append(f"{name_a}: {list(a.shape)} → {list(b.shape)}")
                    continue
                blocks += comparer.blocks(list(layer_a.blocks(kind)), a, b)
            done += size
            tally.reach(done)
            layers.append(LayerDiff(layer_a.title, tuple(blocks),
                                    tuple(layer_a.params[k] for k in kinds_a if k not in kinds_b),
                                    tuple(layer_b.params[k] for k in kinds_b if k not in kinds_a),
                                    tuple(shape_changes)))
    only_a = tuple(layer.title for key, (layer, _) in side_a.items() if key not in side_b)
    only_b = tuple(layer.title for key, (layer, _) in side_b.items() if key not in side_a)
    return DiffReport(tuple(layers), only_a, only_b)
