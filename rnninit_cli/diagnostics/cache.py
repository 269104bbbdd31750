"""Cached float64 views of the tensors, their summaries and Gram matrices."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .checks import Verdict, _unit_roundoff, check_constant
from .orthogonality import (
    _Gram,
    _orthogonal_verdict,
    _scaled_gram,
    diagonal_rules_out_orthogonal,
    diagonal_verdict,
    gram_diagonal,
    rounding_level,
    scaled_orthogonal_gain,
)
from .stats import Summary, as_float64, combine, dtype_name, safe_scale, summarize, to_array

_Key = tuple[str, int | None, int | None]
_WORTH_A_THREAD = 1 << 16  # values per block, on average, below which threads cost more than they save (many cells)


def worker_count() -> int:
    """Threads for independent blocks: the CPUs this process may use, at most four."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, available)


@functools.cache
def _allowance(dtype: str) -> float:
    """max(u of dtype, u of float32)."""
    return max(_unit_roundoff(dtype), _unit_roundoff("float32"))


class _ByName(dict):  # type: ignore[type-arg]
    """A cache whose keys start with a parameter's name (`name_of` finds it), indexed by that name: forgetting a
    parameter, or finding its blocks, costs what that parameter holds, not the whole cache (10,000 layers)."""

    def __init__(self, name_of: Callable[[Any], str] = lambda key: key[0]) -> None:
        super().__init__()
        self._name_of = name_of
        self._keys: dict[str, set[Any]] = {}

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._keys.setdefault(self._name_of(key), set()).add(key)

    def update(self, items: Iterable[tuple[Any, Any]]) -> None:  # type: ignore[override]
        for key, value in items:  # dict.update would bypass __setitem__, and the index
            self[key] = value

    def keys_of(self, name: str) -> set[Any]:
        return self._keys.get(name, set())

    def drop(self, name: str) -> None:
        for key in self._keys.pop(name, ()):
            self.pop(key, None)


class _Cache:
    """The parameters as numpy arrays in their stored dtypes (no float64 copies: see stats.float64_chunks), their
    blocks' summaries and Gram matrices, computed once (see `forget`)."""

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        self.tensors = tensors
        self._whole: dict[str, np.ndarray] = {}
        self._grams: _ByName[_Key, _Gram | None] = _ByName()
        self._summaries: _ByName[_Key, Summary] = _ByName()
        self._gains: _ByName[tuple[_Key, float], float | None] = _ByName(lambda key: key[0][0])
        self._diagonals: _ByName[_Key, np.ndarray] = _ByName()
        self._dtypes: dict[str, str] = {}  # asked for per block and per check: 10,000 layers ask millions of times

    def whole(self, name: str) -> np.ndarray:
        """The parameter as a numpy array in its stored dtype."""
        if name not in self._whole:
            self._whole[name] = to_array(self.tensors[name])
        return self._whole[name]

    def block(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.whole(name)[start:stop]

    def forget(self, names: Iterable[str]) -> None:
        """Drop what was computed for these parameters (a diagnosis goes layer by layer: memory stays one layer's)."""
        for name in set(names):
            self._whole.pop(name, None)
            for store in (self._grams, self._summaries, self._diagonals, self._gains):
                store.drop(name)

    def summary(self, name: str, start: int | None = None, stop: int | None = None) -> Summary:
        """Count, NaN/Inf count, min, max, Σx, Σx² of rows [start, stop) (the whole parameter when None)."""
        key = (name, start, stop)
        if key not in self._summaries:
            known = self._whole_from_blocks(name) if start is None else None
            self._summaries[key] = known or summarize(self._values(name, start, stop))
        return self._summaries[key]

    def prefetch(self, keys: Iterable[_Key], on_summary: Callable[[_Key], None] | None = None) -> None:
        """Summaries of these row ranges, and the column (row) norms of the 2-D ones and of their whole parameters,
        computed on up to four threads at once (numpy releases the GIL on large arrays; each result is computed
        alone, so the values do not depend on the thread count). `on_summary(key)` is called (on this thread) as
        each range's summary is known; a Ctrl-C cancels what has not started."""
        keys = list(dict.fromkeys(keys))
        missing = [key for key in keys if key not in self._summaries]
        workers = worker_count()
        if len(missing) < 2 or workers < 2 or \
                sum(self._values(*key).size for key in missing) < _WORTH_A_THREAD * len(missing):
            return  # computed when asked for, on this thread: for small blocks a pool costs more than it saves
        pool = ThreadPoolExecutor(workers, thread_name_prefix="rnninit-summary")
        try:
            for key, result in zip(missing, pool.map(lambda key: summarize(self._values(*key)), missing),
                                   strict=True):
                self._summaries[key] = result
                if on_summary is not None:
                    on_summary(key)
            matrices = [key for key in keys if self._values(*key).ndim == 2]
            matrices += list(dict.fromkeys((name, None, None) for name, _, _ in matrices))
            wanted = [key for key in matrices if key not in self._diagonals and not self.summary(*key).nonfinite]
            self._diagonals.update(zip(wanted, pool.map(self._diagonal, wanted), strict=True))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # after an error or Ctrl-C: only what runs is waited for

    def _whole_from_blocks(self, name: str) -> Summary | None:
        """The whole parameter's Summary merged from its blocks' when they cover its rows (no second pass)."""
        spans = sorted((key[1], key[2]) for key in self._summaries.keys_of(name) if key[1] is not None)
        reached, parts = 0, []
        for start, stop in spans:
            if start == reached and stop is not None and stop > start:
                parts.append(self._summaries[(name, start, stop)])
                reached = stop
        rows = len(self.whole(name))
        return combine(parts) if parts and reached == rows else None

    def u(self, name: str) -> float:
        """Rounding allowance: the stored dtype's u, at least float32's (initializers draw in float32, and a
        checkpoint cast up to float64 keeps float32 values)."""
        return _allowance(self.dtype(name))

    def dtype(self, name: str) -> str:
        """The stored dtype's name ('float32', 'bfloat16', ...)."""
        known = self._dtypes.get(name)
        if known is None:
            known = self._dtypes[name] = dtype_name(self.tensors[name])
        return known

    def is_complex(self, name: str) -> bool:
        return self.dtype(name).startswith("complex")

    def gram(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray | None:
        """Gram matrix of rows [start, stop) (the whole parameter when None); None if not 2-D or not finite."""
        parts = self.gram_parts(name, start, stop)
        return None if parts is None else parts[0]

    def _values(self, name: str, start: int | None, stop: int | None) -> np.ndarray:
        return self.whole(name) if start is None else self.block(name, start, stop or 0)

    def gram_parts(self, name: str, start: int | None = None, stop: int | None = None) -> _Gram | None:
        """(G, G/s², s) for rows [start, stop) (see `_scaled_gram`); None if not 2-D, empty or not finite."""
        key = (name, start, stop)
        if key not in self._grams:
            values = self._values(name, start, stop)
            ok = values.ndim == 2 and values.size > 0 and self.summary(name, start, stop).nonfinite == 0
            self._grams[key] = _scaled_gram(as_float64(values)) if ok else None
        return self._grams[key]

    def _diagonal(self, key: _Key) -> np.ndarray:
        """The squared column (row) norms of rows [start, stop) (see `gram_diagonal`)."""
        if key not in self._diagonals:
            self._diagonals[key] = gram_diagonal(self._values(*key), self.summary(*key).max_abs)
        return self._diagonals[key]

    def orthogonal_verdict(self, name: str, start: int | None, stop: int | None, gain: float,
                           tolerance: float) -> Verdict:
        """`_orthogonal_verdict` of rows [start, stop) against g·Q: decided from the column (row) norms when they
        already fail it (the same decision, in O(size)), from the Gram matrix otherwise."""
        values = self._values(name, start, stop)
        key = (name, start, stop)
        if gain == 0:  # 0·Q = 0: exactly, not through BᵀB, which underflows to 0 for entries of 1e-170
            return check_constant(values, 0.0, summary=self.summary(*key))
        if key not in self._grams and values.ndim == 2 and values.size and not self.summary(*key).nonfinite:
            verdict = diagonal_verdict(self._diagonal(key), safe_scale(self.summary(*key).max_abs), gain, tolerance)
            if verdict is not None:
                return verdict
        return _orthogonal_verdict(self.gram_parts(name, start, stop), gain, tolerance,
                                   rounding_level(self.dtype(name), values.shape))

    def orthogonal_gain(self, name: str, start: int | None, stop: int | None, tolerance: float) -> float | None:
        """`scaled_orthogonal_gain` of rows [start, stop), its Gram matrix computed only when the column (row)
        norms do not already rule orthogonality out (the same decision, in O(size) for most trained blocks)."""
        key = ((name, start, stop), tolerance)
        if key not in self._gains:
            values = self._values(name, start, stop)
            impossible = values.ndim != 2 or min(values.shape) < 2 or self.summary(name, start, stop).nonfinite
            ruled_out = not impossible and key[0] not in self._grams \
                and diagonal_rules_out_orthogonal(self._diagonal(key[0]), tolerance)
            self._gains[key] = None if impossible or ruled_out else \
                scaled_orthogonal_gain(self.gram_parts(name, start, stop), tolerance)
        return self._gains[key]
