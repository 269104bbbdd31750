"""Cached float64 views of the tensors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..stats import as_float64
from .checks import _unit_roundoff
from .orthogonality import _Gram, _scaled_gram


class _Cache:
    """float64 CPU copies of parameters, their blocks and Gram matrices, computed once."""

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        self.tensors = tensors
        self._whole: dict[str, torch.Tensor] = {}
        self._grams: dict[tuple[str, int | None, int | None], _Gram | None] = {}

    def whole(self, name: str) -> torch.Tensor:
        if name not in self._whole:
            self._whole[name] = as_float64(self.tensors[name])
        return self._whole[name]

    def block(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self.whole(name)[start:stop]

    def u(self, name: str) -> float:
        """Rounding allowance: the stored dtype's u, at least float32's (initializers draw in float32, and a
        checkpoint cast up to float64 keeps float32 values)."""
        return max(_unit_roundoff(torch.as_tensor(self.tensors[name]).dtype), _unit_roundoff(torch.float32))

    def dtype(self, name: str) -> torch.dtype:
        return torch.as_tensor(self.tensors[name]).dtype

    def gram(self, name: str, start: int | None = None, stop: int | None = None) -> torch.Tensor | None:
        """Gram matrix of rows [start, stop) (the whole parameter when None); None if not 2-D or not finite."""
        parts = self.gram_parts(name, start, stop)
        return None if parts is None else parts[0]

    def gram_parts(self, name: str, start: int | None = None, stop: int | None = None) -> _Gram | None:
        """(G, G/s², s) for rows [start, stop) (see `_scaled_gram`); None if not 2-D, empty or not finite."""
        key = (name, start, stop)
        if key not in self._grams:
            values = self.whole(name) if start is None else self.block(name, start, stop or 0)
            ok = values.dim() == 2 and values.numel() > 0 and bool(torch.isfinite(values).all())
            self._grams[key] = _scaled_gram(values) if ok else None
        return self._grams[key]
