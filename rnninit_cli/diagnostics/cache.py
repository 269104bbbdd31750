"""Cached float64 views of the tensors, their summaries and Gram matrices."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..stats import as_float64, dtype_name
from .checks import Summary, _unit_roundoff, summarize
from .orthogonality import _Gram, _scaled_gram, diagonal_rules_out_orthogonal, gram_diagonal, scaled_orthogonal_gain

_Key = tuple[str, int | None, int | None]


class _Cache:
    """float64 copies of parameters, their blocks' summaries and Gram matrices, computed once (see `forget`)."""

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        self.tensors = tensors
        self._whole: dict[str, np.ndarray] = {}
        self._grams: dict[_Key, _Gram | None] = {}
        self._summaries: dict[_Key, Summary] = {}
        self._gains: dict[tuple[_Key, float], float | None] = {}

    def whole(self, name: str) -> np.ndarray:
        if name not in self._whole:
            self._whole[name] = as_float64(self.tensors[name])
        return self._whole[name]

    def block(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.whole(name)[start:stop]

    def forget(self, names: Iterable[str]) -> None:
        """Drop what was computed for these parameters (a diagnosis goes layer by layer: memory stays one layer's)."""
        gone = set(names)
        for name in gone:
            self._whole.pop(name, None)
        for store in (self._grams, self._summaries):
            for key in [key for key in store if key[0] in gone]:
                del store[key]
        for key in [key for key in self._gains if key[0][0] in gone]:
            del self._gains[key]

    def summary(self, name: str, start: int | None = None, stop: int | None = None) -> Summary:
        """Count, NaN/Inf count, min, max, Σx, Σx² of rows [start, stop) (the whole parameter when None)."""
        key = (name, start, stop)
        if key not in self._summaries:
            values = self.whole(name) if start is None else self.block(name, start, stop or 0)
            self._summaries[key] = summarize(values)
        return self._summaries[key]

    def u(self, name: str) -> float:
        """Rounding allowance: the stored dtype's u, at least float32's (initializers draw in float32, and a
        checkpoint cast up to float64 keeps float32 values)."""
        return max(_unit_roundoff(self.dtype(name)), _unit_roundoff("float32"))

    def dtype(self, name: str) -> str:
        """The stored dtype's name ('float32', 'bfloat16', ...)."""
        return dtype_name(self.tensors[name])

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
            self._grams[key] = _scaled_gram(values) if ok else None
        return self._grams[key]

    def orthogonal_gain(self, name: str, start: int | None, stop: int | None, tolerance: float) -> float | None:
        """`scaled_orthogonal_gain` of rows [start, stop), its Gram matrix computed only when the column (row)
        norms do not already rule orthogonality out (the same decision, in O(size) for most trained blocks)."""
        key = ((name, start, stop), tolerance)
        if key not in self._gains:
            values = self._values(name, start, stop)
            impossible = values.ndim != 2 or min(values.shape) < 2 or self.summary(name, start, stop).nonfinite
            ruled_out = not impossible and key[0] not in self._grams \
                and diagonal_rules_out_orthogonal(
                gram_diagonal(values, self.summary(name, start, stop).max_abs), tolerance)
            self._gains[key] = None if impossible or ruled_out else \
                scaled_orthogonal_gain(self.gram_parts(name, start, stop), tolerance)
        return self._gains[key]
