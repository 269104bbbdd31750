"""Drawing a plan's values: one seeded generator per scope (a block, or a whole parameter), scopes batched per
hand-off to a one-thread worker, and drawn straight into the parameter's rows where nothing else is written there."""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import DtypeError
from .arguments import _call_initializer

if TYPE_CHECKING:
    import torch


def draw_seed() -> int:
    """A fresh random seed, small enough to type."""
    return secrets.randbelow(2**32)


def _generator(seed: int, name: str, stream: str) -> torch.Generator:
    import torch

    # surrogatepass: a name with a lone surrogate (a pickle may hold one) gets bytes too; valid names keep UTF-8's
    digest = hashlib.sha256(f"rnninit\0{seed}\0{name}\0{stream}".encode("utf-8", "surrogatepass")).digest()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return generator


def _covered_rows(writes: Sequence[Any], scopes: Sequence[Any], scope_of: Sequence[int]) -> list[int]:
    """Per scope, how many of its rows its entries write (a per=matrix scope may leave a gate to another rule)."""
    covered = [0] * len(scopes)
    for entry, scope in zip(writes, scope_of, strict=True):
        covered[scope] += entry.stop - entry.start
    return covered


def _drawn_in_place(first: Any, tensor: Any, covered: int, shards: Mapping[str, Any],
                    views: Mapping[str, Any]) -> Any:
    """The rows a scope fills, where its values can be drawn straight into them (no drawn copy waits in memory):
    a plain contiguous tensor in the dtype drawn in, every row of the scope written by it; else None."""
    import torch

    if first.name in shards or first.name in views or tensor.dtype not in (torch.float32, torch.float64) \
            or not tensor.is_contiguous() or type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        return None
    rows = tensor.shape[0] if first.per == "matrix" else first.stop - first.start
    if covered != rows:
        return None
    return tensor if first.per == "matrix" else tensor[first.start:first.stop]


_BATCH_VALUES = 1 << 16  # values drawn per hand-off to a worker, at least (a scope larger than this goes alone)


def _scope_size(entry: Any, tensor: torch.Tensor) -> int:
    """Values a scope draws: the whole parameter (per=matrix) or the block's rows."""
    rows = tensor.shape[0] if entry.per == "matrix" else entry.stop - entry.start
    return rows * math.prod(tensor.shape[1:])


def _batches(sizes: Sequence[int]) -> list[range]:
    """Consecutive scopes grouped until each group draws at least _BATCH_VALUES values (the last may draw fewer)."""
    batches, start, total = [], 0, 0
    for index, size in enumerate(sizes):
        total += size
        if total >= _BATCH_VALUES:
            batches.append(range(start, index + 1))
            start, total = index + 1, 0
    if start < len(sizes):
        batches.append(range(start, len(sizes)))
    return batches


def _draw_scope(entry: Any, tensor: torch.Tensor, seed: int, into: torch.Tensor | None = None) -> torch.Tensor:
    """Fresh values for the entry's scope: the whole parameter (per=matrix) or its block alone; drawn into `into`
    (the scope's own rows of the parameter, see `_drawn_in_place`) when given."""
    import torch

    from .initializers import get_initializer

    spec = get_initializer(entry.initializer)
    whole = entry.per == "matrix"
    # a block's own stream: its gate, and its head in a per-head cell (heads of one gate must differ)
    stream = spec.stream or ("matrix" if whole else entry.label if entry.head is not None else (entry.gate or "block"))
    shape = tuple(tensor.shape) if whole else (entry.stop - entry.start, *tensor.shape[1:])
    compute = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    values = torch.empty(shape, dtype=compute) if into is None else into
    with torch.no_grad():  # a worker thread's own grad mode: a parameter is written in place
        _call_initializer(spec.function, f"rule {entry.rule} on {entry.name}", values, **dict(entry.args),
                          generator=_generator(seed, entry.name, stream))
    if tensor.dtype != compute and values.numel():  # a narrower dtype: fan-based bounds are known only now
        from .initializers import overflow

        problem = overflow(_dtype_name(tensor), float(values.abs().max()))
        if problem is not None:
            raise DtypeError(f"{entry.name} ({_dtype_name(tensor)}) cannot hold what rule {entry.rule} draws: "
                             f"{problem}; change the rule, or convert it to a wider float dtype first")
    return values


def _dtype_name(tensor: Any) -> str:
    return str(getattr(tensor, "dtype", "")).removeprefix("torch.")
