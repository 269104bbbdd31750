"""Effective parameters: the tensor a recurrent layer computes with, assembled from the tensors a file stores.

Most checkpoints store each recurrent parameter as one tensor in PyTorch's orientation and gate order; they need
no view. Others store it
- weight-normalized, as a magnitude g and a direction v; the layer computes g·v/‖v‖
  (`torch.nn.utils.parametrizations.weight_norm`, and the older `torch.nn.utils.weight_norm`);
- under another name: `weight_hh_l0_raw` of weight-dropped LSTMs (AWD-LSTM: fastai's `WeightDropout`, the
  salesforce awd-lstm-lm `WeightDrop`);
- transposed, in another gate order, or as one tensor per gate (declared layouts, see `declared`).

A view composes the effective tensor (PyTorch's orientation, the layer's gate order) from the stored ones, and
decomposes a new effective tensor into new stored tensors that compose back to it: exactly for renamed,
transposed, reordered or split tensors, up to one rounding for weight_norm. Names and shapes alone decide
which view applies (`find_views`), so that files are understood without their model code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_KIND = r"(?:weight_ih|weight_hh|weight_hr|bias_ih|bias_hh)(?:_l\d+(?:_reverse)?)?"
_PARAMETRIZED = re.compile(rf"^(?P<prefix>(?:.*\.)?)parametrizations\.(?P<kind>{_KIND})\.(?P<part>original[01]?)\Z",
                           re.DOTALL)
_OLD_FORM = re.compile(rf"^(?P<prefix>(?:.*\.)?)(?P<kind>{_KIND})_(?P<part>g|v|orig|u|raw)\Z", re.DOTALL)


@dataclass(frozen=True)
class Piece:
    """A stored tensor that holds some gates of an effective parameter, rows in stored order."""

    source: str
    gates: tuple[str | None, ...]
    transposed: bool = False
    row: int | None = None  # the piece is this row of the stored tensor (Keras's GRU bias: (2, 3h), input then
    # recurrent)


@dataclass(frozen=True)
class GateView:
    """An effective parameter whose gate blocks are rows of stored tensors: renamed, transposed, reordered or
    split one tensor per gate. Exact both ways."""

    name: str
    pieces: tuple[Piece, ...]
    gates: tuple[str | None, ...]  # the effective gate order
    form: str  # "renamed" (weight-dropped `_raw`) or "declared"
    mirrors: tuple[str, ...] = ()  # stored copies that get the same values (a weight-dropped layer's last weight)

    @property
    def sources(self) -> tuple[str, ...]:
        return (*(piece.source for piece in self.pieces), *self.mirrors)

    @property
    def describe(self) -> str:
        if self.form == "renamed":
            copies = f"; its copy {', '.join(self.mirrors)} gets the same values" if self.mirrors else ""
            return f"{self.name} is stored as {self.pieces[0].source} (weight-dropped){copies}"
        first = self.pieces[0]
        row = f"row {first.row} of " if first.row is not None else ""
        how = [row + ", ".join(self.sources) + (" (one tensor per gate)" if len(self.pieces) > 1 else "")]
        if first.transposed:
            how.append("transposed")
        stored = tuple(gate for piece in self.pieces for gate in piece.gates)
        if stored != self.gates:
            how.append(f"gates stored in the order {', '.join(g or '' for g in stored)}")
        return f"{self.name} is " + ", ".join(how)

    def shape(self, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
        rows = 0
        tail: tuple[int, ...] = ()
        for piece in self.pieces:
            shape = shapes[piece.source]
            if piece.row is not None:
                shape = shape[1:]
            if piece.transposed and len(shape) == 2:
                shape = (shape[1], shape[0])
            rows += shape[0] if shape else 0
            tail = shape[1:]
        return (rows, *tail)

    def _rows(self, piece: Piece, tensor: torch.Tensor) -> dict[str | None, torch.Tensor]:
        if piece.row is not None:
            tensor = tensor[piece.row]
        oriented = tensor.T if piece.transposed and tensor.ndim == 2 else tensor
        size = oriented.shape[0] // len(piece.gates)
        return {gate: oriented[index * size:(index + 1) * size] for index, gate in enumerate(piece.gates)}

    def compose(self, stored: Mapping[str, Any]) -> Any:
        """The effective tensor (the stored tensor itself when the view only renames it), of the stored tensors'
        kind: a torch tensor from torch tensors (apply), a numpy array from numpy arrays (reading)."""
        if self.form == "renamed":
            return stored[self.pieces[0].source]
        blocks: dict[str | None, Any] = {}
        for piece in self.pieces:
            blocks.update(self._rows(piece, stored[piece.source]))
        ordered = [blocks[gate] for gate in self.gates]
        if is_numpy(ordered[0]):
            from ..bfloat16 import concatenate

            return concatenate(ordered, axis=0)
        import torch

        return torch.cat(ordered, dim=0)

    def decompose(self, value: torch.Tensor, stored: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """New stored tensors (same dtypes and shapes as `stored`) that compose to `value`. A piece that is one row
        of a stored tensor keeps the tensor's other rows as `stored` holds them now (so views sharing a tensor are
        decomposed one after the other, each into the tensor the previous one wrote)."""
        import torch

        if self.form == "renamed":
            return {self.pieces[0].source: value, **{mirror: value for mirror in self.mirrors}}
        size = value.shape[0] // len(self.gates)
        rows = {gate: value[index * size:(index + 1) * size] for index, gate in enumerate(self.gates)}
        result = {}
        for piece in self.pieces:
            joined = torch.cat([rows[gate] for gate in piece.gates], dim=0)
            if piece.transposed and joined.dim() == 2:
                joined = joined.T
            joined = joined.to(stored[piece.source].dtype)
            if piece.row is not None:
                whole = result.get(piece.source, stored[piece.source]).clone()
                whole[piece.row] = joined
                joined = whole
            result[piece.source] = joined.contiguous()
        return result


@dataclass(frozen=True)
class WeightNormView:
    """An effective weight g·v/‖v‖, the norm taken over every dim of v but `dim` (all of them when dim is -1)."""

    name: str
    magnitude: str  # g
    direction: str  # v
    dim: int
    origin: str  # which torch function made it

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.magnitude, self.direction)

    @property
    def describe(self) -> str:
        return f"{self.name} = g·v/‖v‖ with g = {self.magnitude}, v = {self.direction} ({self.origin}, dim {self.dim})"

    def shape(self, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
        return shapes[self.direction]

    def compose(self, stored: Mapping[str, Any]) -> Any:
        """g·v/‖v‖ in v's dtype, computed in float32 (float64 for a float64 v): a numpy array from numpy arrays
        (reading), a torch tensor from torch tensors (apply)."""
        direction, magnitude = stored[self.direction], stored[self.magnitude]
        if is_numpy(direction):
            return weight_norm(direction, magnitude, self.dim)
        import torch

        compute = torch.float64 if direction.dtype == torch.float64 else torch.float32
        effective = torch._weight_norm(direction.to(compute), magnitude.to(compute), self.dim)
        return effective.to(direction.dtype)

    def decompose(self, value: torch.Tensor, stored: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """v := W and g := ‖W‖ along `dim`, so that g·v/‖v‖ = W up to one rounding. Where W is 0 (a row of zeros),
        g := 0 and v := 1 there: v/‖v‖ would be 0/0, and g = 0 gives the 0 exactly."""
        import torch

        direction, magnitude = stored[self.direction], stored[self.magnitude]
        compute = torch.float64 if direction.dtype == torch.float64 else torch.float32
        norms = torch.norm_except_dim(value.to(compute), 2, self.dim)
        new_direction = torch.where(norms == 0, torch.ones((), dtype=value.dtype), value)
        return {self.direction: new_direction.to(direction.dtype).contiguous(),
                self.magnitude: norms.reshape(magnitude.shape).to(magnitude.dtype)}


View = GateView | WeightNormView


def is_numpy(value: Any) -> bool:
    """Whether `value` is a numpy array or a bfloat16 one (the read path's tensors), without importing numpy or
    torch."""
    return type(value).__module__ in ("numpy", "rnninit_cli.bfloat16")


def weight_norm(direction: Any, magnitude: Any, dim: int) -> Any:
    """numpy's `torch._weight_norm(v, g, dim)` for numpy arrays v and g: v·(g/‖v‖), the 2-norm over every dim of
    v but `dim` (over all of them when dim is -1, torch's norm_except_dim), computed in float32 (float64 for a
    float64 v) and returned in v's dtype, rounded to nearest as torch rounds (a BFloat16Array for a BFloat16Array v,
    float8 through ml_dtypes)."""
    import numpy as np

    from ..bfloat16 import BFloat16Array

    compute = np.float64 if direction.dtype == np.float64 else np.float32
    values = direction.astype(compute)
    axes = tuple(axis for axis in range(values.ndim) if dim == -1 or axis != dim % values.ndim)
    with np.errstate(all="ignore"):  # a zero or non-finite v gives NaN or Inf silently, as torch does
        norms = np.sqrt(np.sum(np.square(values), axis=axes, keepdims=True))
        effective = values * (magnitude.astype(compute) / norms)
        if isinstance(direction, BFloat16Array):
            return BFloat16Array.from_values(effective)
        return effective.astype(direction.dtype)


@dataclass(frozen=True)
class Unwritable:
    """A recurrent parameter stored in a form whose effective value rnninit cannot write."""

    name: str  # the parameter the layer computes with
    sources: tuple[str, ...]
    reason: str


def shape_of(value: Any) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    return None if shape is None else tuple(int(s) for s in shape)


def weight_norm_dim(magnitude: tuple[int, ...], direction: tuple[int, ...]) -> int | None:
    """The dim weight_norm kept, from g's and v's shapes: g has v's size there and 1 elsewhere (-1: one norm)."""
    if len(magnitude) == 0 or all(size == 1 for size in magnitude):
        return -1
    if len(magnitude) != len(direction):
        return None
    kept = [dim for dim, size in enumerate(magnitude) if size != 1]
    if len(kept) == 1 and magnitude[kept[0]] == direction[kept[0]]:
        return kept[0]
    return None


def find_views(shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[View], list[Unwritable]]:
    """Views for the recurrent parameters that `tensors` store in another form, and those that cannot be written.

    Recognised: `P.parametrizations.K.original0/1` (weight_norm), `P.parametrizations.K.original` (spectral_norm,
    orthogonal: unwritable), `P.K_g`/`P.K_v` (old weight_norm), `P.K_orig` (old spectral_norm: unwritable),
    `P.K_raw` (weight drop), where K is a recurrent parameter name such as weight_hh_l0."""
    parametrized: dict[tuple[str, str], dict[str, str]] = {}
    old: dict[tuple[str, str], dict[str, str]] = {}
    for name in shapes:
        if match := _PARAMETRIZED.match(name):
            parametrized.setdefault((match["prefix"], match["kind"]), {})[match["part"]] = name
        elif match := _OLD_FORM.match(name):
            old.setdefault((match["prefix"], match["kind"]), {})[match["part"]] = name

    views: list[View] = []
    unwritable: list[Unwritable] = []
    for key in parametrized.keys() & old.keys():  # two stored forms of one parameter: which one counts is unknown
        names = (*parametrized.pop(key).values(), *old.pop(key).values())
        unwritable.append(Unwritable(key[0] + key[1], names, (
            f"{key[0] + key[1]} is stored in two forms ({', '.join(names)}); which one the layer computes with "
            "cannot be told from the file, so it is left alone (save only one)")))
    for (prefix, kind), parts in parametrized.items():
        effective = prefix + kind
        if effective in shapes:
            continue
        if "original" in parts:
            base = f"{prefix}parametrizations.{kind}.0."
            which = ("spectral_norm" if base + "_u" in shapes else "orthogonal" if base + "base" in shapes
                     else "a parametrization")
            unwritable.append(Unwritable(effective, (parts["original"],), (
                f"{effective} is computed at run time by {which} from {parts['original']}; rnninit cannot make it "
                "equal a scheme's values (remove the parametrization before saving, or leave the layer out)")))
        elif "original0" in parts and "original1" in parts:
            dim = weight_norm_dim(shapes[parts["original0"]], shapes[parts["original1"]])
            if dim is None:
                unwritable.append(Unwritable(effective, (parts["original0"], parts["original1"]), (
                    f"{parts['original0']} has shape {list(shapes[parts['original0']])}, which is not a weight_norm "
                    f"magnitude for {parts['original1']} of shape {list(shapes[parts['original1']])}")))
                continue
            views.append(WeightNormView(effective, parts["original0"], parts["original1"], dim,
                                        "torch.nn.utils.parametrizations.weight_norm"))
    for (prefix, kind), parts in old.items():
        effective = prefix + kind
        if "raw" in parts:  # the weight-dropped layer's own weight, even beside the copy a forward left behind
            views.append(_raw_view(prefix, kind, parts["raw"], shapes))
            continue
        if effective in shapes:
            continue
        if "orig" in parts:
            unwritable.append(Unwritable(effective, tuple(parts.values()), (
                f"{effective} is computed at run time by spectral_norm from {parts['orig']}; rnninit cannot make "
                "it equal a scheme's values (remove the spectral norm before saving, or leave the layer out)")))
        elif "g" in parts and "v" in parts:
            dim = weight_norm_dim(shapes[parts["g"]], shapes[parts["v"]])
            if dim is not None:
                views.append(WeightNormView(effective, parts["g"], parts["v"], dim, "torch.nn.utils.weight_norm"))
    return views, unwritable


def _raw_view(prefix: str, kind: str, raw: str, shapes: Mapping[str, tuple[int, ...]]) -> GateView:
    """`P.K_raw` is K of the module at P (salesforce WeightDrop), or of the wrapped module at P.module. when that
    one holds the layer's other parameters (fastai WeightDropout). A `K` stored there too is the dropped-out
    copy a forward left behind; the wrapper rebuilds it from `_raw`, so `_raw` is what counts and the copy is
    written with the same values."""
    target = prefix + kind
    wrapped = f"{prefix}module.{kind}"
    suffix = kind[kind.index("_l"):] if "_l" in kind else ""
    if any(name.startswith(f"{prefix}module.") and name.endswith(suffix) for name in shapes):
        target = wrapped
    mirrors = (target,) if target in shapes and shapes[target] == shapes[raw] else ()
    return GateView(target, (Piece(raw, (None,)),), (None,), "renamed", mirrors)


def is_parametrization_part(name: str, shapes: Mapping[str, Any]) -> bool:
    """Whether `name` is one part of a parametrized weight (weight_norm's g or v, spectral_norm's original...),
    whatever the weight is called: `P.parametrizations.W.original0`, or `P.W_g` beside `P.W_v`."""
    if re.search(r"(?:^|\.)parametrizations\.[^.]+\.original\d*\Z", name):
        return True
    for own, others in (("_g", ("_v",)), ("_v", ("_g", "_orig")), ("_orig", ("_u", "_v")), ("_u", ("_orig",))):
        if name.endswith(own) and any(name[:-len(own)] + other in shapes for other in others):
            return True
    return False


def effective_shapes(shapes: Mapping[str, tuple[int, ...]], views: Iterable[View]) -> dict[str, tuple[int, ...]]:
    """Shapes of the stored tensors that no view consumes, and of every view's effective tensor."""
    consumed: set[str] = set()
    result = dict(shapes)
    for view in views:
        consumed.update(view.sources)
        result[view.name] = view.shape(shapes)
    for name in consumed - {view.name for view in views}:
        result.pop(name, None)
    return result
