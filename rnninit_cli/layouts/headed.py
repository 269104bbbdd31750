"""Per-head cells (xLSTM's sLSTM and mLSTM, RG-LRU, transformers' xLSTM): the layer a matched declaration with stored
axes, a radius or a family makes, its gate-and-head blocks and the views that assemble its effective tensors."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import LayoutDeclarationError
from .declared import WEIGHT_KINDS, DeclaredCell
from .heads import Axes, HeadPiece, HeadView, axes_text, solve_sizes
from .layer import KINDS, Layer, RowBlock, brace_name, common_prefix


class _NoFit(Exception):
    """A form of the declaration does not fit the tensors' shapes (the next form is tried)."""


@dataclass(frozen=True)
class _Found:
    kind: str
    source: str
    gates: tuple[str | None, ...]
    axes: Axes


def _default_axes(kind: str, gates: int) -> Axes:
    rows = ("gate", "out") if gates > 1 else ("out",)
    return (rows, ("in",)) if kind in WEIGHT_KINDS else (rows,)


def _found(cell: DeclaredCell, form: int) -> list[_Found]:
    declaration = cell.declaration
    result = []
    for kind in KINDS:
        for name, gate in cell.pieces.get(kind, ()):
            if kind == "radius" or kind == "weight_hr":
                gates: tuple[str | None, ...] = (None,)
            else:
                gates = declaration.gates if gate is None else (gate,)
            axes = declaration.axes_of(kind, form) or _default_axes(kind, len(gates))
            result.append(_Found(kind, name, gates, axes))
    return result


def _heads(found: Sequence[_Found], shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The head count: the size of an axis that holds only heads (one head when no tensor has a head factor)."""
    seen = {shapes[item.source][index] for item in found if len(item.axes) == len(shapes[item.source])
            for index, axis in enumerate(item.axes) if axis == ("head",)}
    if len(seen) > 1:
        raise _NoFit(f"the tensors give different head counts ({', '.join(map(str, sorted(seen)))})")
    if seen:
        return seen.pop()
    if any("head" in axis for item in found for axis in item.axes):
        raise _NoFit("no tensor stores the heads on an axis of their own, so their count is unknown")
    return 1


def _pieces(found: Sequence[_Found], shapes: Mapping[str, tuple[int, ...]], heads: int) -> list[HeadPiece]:
    pieces = []
    for item in found:
        shape = shapes[item.source]
        sizes = solve_sizes(item.axes, shape, {"gate": len(item.gates), "head": heads})
        if sizes is None:
            raise _NoFit(f"{item.source} has shape {list(shape)}, which is not [{axes_text(item.axes)}] with "
                         f"{len(item.gates)} gate(s) and {heads} head(s)")
        if empty := [factor for factor, size in sizes.items() if size == 0]:
            raise _NoFit(f"{item.source} has shape {list(shape)}: its {', '.join(empty)} size is 0, and a gate "
                         "block needs at least one row and one column")
        pieces.append(HeadPiece(item.source, item.gates, item.axes,
                                tuple((factor, sizes.get(factor, 1)) for factor in ("gate", "head", "out", "in"))))
    return pieces


def _check_consistent(kinds: Mapping[str, list[HeadPiece]]) -> None:
    """A gate's rows agree across kinds (its weights' rows = its bias's), and a kind's pieces share their columns."""
    rows: dict[str | None, tuple[int, str]] = {}
    for pieces in kinds.values():
        if len({piece.size("in") for piece in pieces}) > 1:
            shown = ", ".join(f"{piece.source} {list(piece.stored_shape)}" for piece in pieces)
            raise _NoFit(f"the gate tensors {shown} have different input sizes")
        for piece in pieces:
            for gate in piece.gates:
                if gate is None:
                    continue
                own = piece.size("head") * piece.size("out")
                other = rows.setdefault(gate, (own, piece.source))
                if other[0] != own:
                    raise _NoFit(f"gate {gate} has {other[0]} rows in {other[1]} but {own} in {piece.source}")


def _row_blocks(kind: str, pieces: Sequence[HeadPiece], heads: int) -> list[RowBlock]:
    blocks: list[RowBlock] = []
    start = 0
    for piece in pieces:
        per_head = piece.size("head") > 1 or (heads > 1 and any("head" in axis for axis in piece.axes))
        for gate in piece.gates:
            for head in range(piece.size("head")):
                stop = start + piece.size("out")
                blocks.append((kind, gate, head if per_head else None, start, stop))
                start = stop
    return blocks


def _stack_position(cell: DeclaredCell, prefix: str, names: Sequence[str]) -> tuple[int, int]:
    """(block index, block count) of a cell in a residual stack: the index its prefix gives, and one more than the
    largest index among the names of the same stack (every block counts, whatever its kind)."""
    pattern = cell.declaration.block
    match = pattern.search(prefix) if pattern is not None else None
    if match is None or not (number := match.group(1) or "").isdigit():
        return 0, 1
    end = prefix.rfind(f"{number}.")
    while end > 0 and prefix[end - 1] != ".":
        end = prefix.rfind(f"{number}.", 0, end)
    stack = prefix[:max(end, 0)]
    sibling = re.compile(re.escape(stack) + r"(\d+)\.")
    indices = [int(found[1]) for name in names if (found := sibling.match(name)) and len(found[1]) < 10]
    index = int(number) if len(number) < 10 else 0
    return index, max([index, *indices]) + 1


def _view_name(pieces: Sequence[HeadPiece], declared_axes: bool) -> str:
    """`blocks.1.xlstm.{f,i,z,o}gate.weight[head,out,in]`: the stored tensors and their axes."""
    names = [piece.source for piece in pieces]
    name = names[0] if len(names) == 1 else brace_name(names)
    return f"{name}[{axes_text(pieces[0].axes)}]" if declared_axes else name


def _trivial(pieces: Sequence[HeadPiece]) -> bool:
    """One stored tensor already in the effective layout (rows gate-major, [out, in]): it needs no view."""
    if len(pieces) != 1:
        return False
    piece = pieces[0]
    effective = (piece.rows,) if piece.vector else (piece.rows, piece.size("in"))
    factors = [factor for axis in piece.axes for factor in axis if piece.size(factor) > 1]
    return piece.stored_shape == effective and factors == [f for f in ("gate", "head", "out", "in") if f in factors]


def _build(cell: DeclaredCell, shapes: Mapping[str, tuple[int, ...]], form: int) -> tuple[Layer, list[HeadView]]:
    declaration = cell.declaration
    found = _found(cell, form)
    heads = _heads(found, shapes)
    pieces = _pieces(found, shapes, heads)
    by_kind: dict[str, list[HeadPiece]] = {}
    for item, piece in zip(found, pieces, strict=True):
        by_kind.setdefault(item.kind, []).append(piece)
    order = {gate: index for index, gate in enumerate(declaration.gates)}
    for kind_pieces in by_kind.values():
        kind_pieces.sort(key=lambda piece: order.get(piece.gates[0] or "", 0))
    _check_consistent(by_kind)
    params: dict[str, str] = {}
    sources: dict[str, tuple[str, ...]] = {}
    views: list[HeadView] = []
    row_blocks: list[RowBlock] = []
    for kind, kind_pieces in by_kind.items():
        row_blocks += _row_blocks(kind, kind_pieces, heads)
        if _trivial(kind_pieces):
            params[kind] = kind_pieces[0].source
            continue
        view = HeadView(_view_name(kind_pieces, declaration.axes_of(kind, form) is not None), tuple(kind_pieces))
        params[kind] = view.name
        sources[kind] = view.sources
        views.append(view)
    first = by_kind["weight_ih"][0]
    headed_input = any("head" in axis for axis in first.axes)
    names = [name for kind in params for name in sources.get(kind, (params[kind],))]
    prefix = common_prefix(names)
    index, count = _stack_position(cell, prefix, list(shapes))
    layer = Layer(prefix=prefix, cell="custom", is_cell=True, layer=0, direction="forward",
                  input_size=first.size("in") * (heads if headed_input else 1),
                  hidden_size=first.size("head") * first.size("out"), proj_size=0,
                  bias=any(kind.startswith("bias") for kind in params), params=params, sources=sources,
                  gate_names=declaration.gates, label=declaration.title, declared=declaration.name,
                  family=declaration.family, heads=heads,
                  head_size=first.size("out") if heads > 1 else first.size("head") * first.size("out"),
                  block_index=index, num_blocks=count, row_blocks=tuple(row_blocks))
    return layer, views


def headed_layer(cell: DeclaredCell, shapes: Mapping[str, tuple[int, ...]]) -> tuple[Layer, list[HeadView]]:
    """The layer a per-head declared cell makes, trying the declaration's forms in order (the first that fits the
    shapes wins); LayoutDeclarationError says why none fits."""
    reasons = []
    for form in range(cell.declaration.forms):
        try:
            return _build(cell, shapes, form)
        except _NoFit as error:
            reasons.append(str(error))
    where = cell.declaration.name if "layout" in cell.declaration.name else f"layout {cell.declaration.name}"
    raise LayoutDeclarationError(f"{where}: {'; '.join(dict.fromkeys(reasons))}; check the declaration against the "
                                 "tensors' shapes")
