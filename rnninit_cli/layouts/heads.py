"""Per-head gate tensors: how a stored tensor's axes map onto gates, heads, output rows and input columns.

Modern recurrences store gate parameters per head: xlstm's sLSTM keeps each gate's input projection as
(heads, out, in) and its recurrent kernel as (heads, gates·out, in) or, in its cuda backend, (heads, in, gates·out);
RecurrentGemma's RG-LRU keeps its gate weights as (heads, in, out). A layout names each stored axis by the factors
it holds, major first, e.g. `head,gate*out,in`, from four factors:

- `gate`: the gates the tensor holds, in the declaration's order (absent: the tensor holds one gate);
- `head`: the heads (absent: one head);
- `out`: the rows of one gate of one head (a head's width);
- `in`: the columns (absent for a vector: a bias, a recurrence parameter).

The effective tensor rnninit works on stacks the blocks gate-major, then head, each block `out` rows of `in`
columns in nn.Linear's [out, in] orientation, so every (gate, head) block is a contiguous run of rows, as a torch
LSTM's gate blocks are. Composing and decomposing are exact (reshapes and permutations only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import LayoutDeclarationError

if TYPE_CHECKING:
    import torch

FACTORS = ("gate", "head", "out", "in")  # the effective tensor's order, major first
Axes = tuple[tuple[str, ...], ...]


def parse_axes(text: str, where: str) -> Axes:
    """`head,gate*out,in` → (('head',), ('gate', 'out'), ('in',)): each stored axis and the factors it holds."""
    axes = tuple(tuple(part.strip() for part in axis.split("*")) for axis in text.split(","))
    seen: list[str] = []
    for axis in axes:
        for factor in axis:
            if factor not in FACTORS:
                raise LayoutDeclarationError(f"{where}: axis factor {factor!r} in {text!r} is not one of "
                                             f"{', '.join(FACTORS)} (e.g. head,gate*out,in)")
            if factor in seen:
                raise LayoutDeclarationError(f"{where}: factor {factor} appears twice in {text!r}")
            seen.append(factor)
    if "out" not in seen:
        raise LayoutDeclarationError(f"{where}: {text!r} has no out factor: every gate tensor has output rows")
    return axes


def axes_text(axes: Axes) -> str:
    return ",".join("*".join(axis) for axis in axes)


def solve_sizes(axes: Axes, shape: Sequence[int], known: Mapping[str, int]) -> dict[str, int] | None:
    """The size of every factor of `axes` for a stored tensor of `shape`, given some sizes (`known`); None when the
    shape does not fit (a wrong rank, a size that does not divide) or a factor stays undetermined."""
    if len(axes) != len(shape):
        return None
    sizes = {factor: size for factor, size in known.items() if any(factor in axis for axis in axes)}
    progress = True
    while progress:
        progress = False
        for axis, size in zip(axes, shape, strict=True):
            unknown = [factor for factor in axis if factor not in sizes]
            product = math.prod(sizes[factor] for factor in axis if factor in sizes)
            if len(unknown) == 1:
                if product == 0 or size % product:
                    return None
                sizes[unknown[0]] = size // product
                progress = True
            elif not unknown and product != size:
                return None
    if any(factor not in sizes for axis in axes for factor in axis):
        return None
    return sizes


@dataclass(frozen=True)
class HeadPiece:
    """A stored tensor holding some gates of an effective parameter, laid out by `axes`."""

    source: str
    gates: tuple[str | None, ...]
    axes: Axes
    sizes: tuple[tuple[str, int], ...]  # every factor's size, `gate` included (1 when absent)

    def size(self, factor: str) -> int:
        return dict(self.sizes).get(factor, 1)

    @property
    def stored_shape(self) -> tuple[int, ...]:
        return tuple(math.prod(self.size(factor) for factor in axis) for axis in self.axes)

    @property
    def rows(self) -> int:
        return self.size("gate") * self.size("head") * self.size("out")

    @property
    def vector(self) -> bool:
        return not any("in" in axis for axis in self.axes)

    @property
    def _stored_factors(self) -> list[str]:
        return [factor for axis in self.axes for factor in axis]

    @property
    def _canonical(self) -> list[str]:
        present = self._stored_factors
        return [factor for factor in FACTORS if factor in present]

    def to_effective(self, tensor: Any) -> Any:
        """The stored tensor as effective rows: (gates·heads·out, in), or (gates·heads·out,) for a vector."""
        stored, canonical = self._stored_factors, self._canonical
        split = tensor.reshape(tuple(self.size(factor) for factor in stored))
        order = tuple(stored.index(factor) for factor in canonical)
        moved = split.permute(order) if hasattr(split, "permute") else split.transpose(order)
        return moved.reshape((self.rows,) if self.vector else (self.rows, self.size("in")))

    def to_stored(self, rows: torch.Tensor) -> torch.Tensor:
        """Effective rows back into the stored layout (the inverse of `to_effective`)."""
        stored, canonical = self._stored_factors, self._canonical
        split = rows.reshape(tuple(self.size(factor) for factor in canonical))
        return split.permute(tuple(canonical.index(factor) for factor in stored)).reshape(self.stored_shape)


@dataclass(frozen=True)
class HeadView:
    """An effective parameter assembled from per-head stored tensors (see the module docstring). Exact both ways."""

    name: str
    pieces: tuple[HeadPiece, ...]  # in effective gate order

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(piece.source for piece in self.pieces))

    @property
    def describe(self) -> str:
        parts = []
        for piece in self.pieces:
            gates = ",".join(gate or "" for gate in piece.gates)
            parts.append(f"{piece.source} [{axes_text(piece.axes)}]" + (f" (gate {gates})" if gates else ""))
        return f"{self.name} is " + "; ".join(parts)

    def shape(self, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
        rows = sum(piece.rows for piece in self.pieces)
        first = self.pieces[0]
        return (rows,) if first.vector else (rows, first.size("in"))

    def compose(self, stored: Mapping[str, Any]) -> Any:
        """The effective tensor, of the stored tensors' kind (torch from torch, numpy from numpy)."""
        from .views import is_numpy

        parts = [piece.to_effective(stored[piece.source]) for piece in self.pieces]
        if is_numpy(parts[0]):
            from ..bfloat16 import concatenate

            return concatenate(parts, axis=0)
        import torch

        return torch.cat(parts, dim=0)

    def decompose(self, value: torch.Tensor, stored: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """New stored tensors (the dtypes and shapes of `stored`) that compose to `value`."""
        result = {}
        start = 0
        for piece in self.pieces:
            rows = value[start:start + piece.rows]
            start += piece.rows
            result[piece.source] = piece.to_stored(rows).to(stored[piece.source].dtype).contiguous()
        return result
