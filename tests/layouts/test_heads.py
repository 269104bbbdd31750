"""Per-head stored axes (`layouts.heads`): parsing, sizes solved from shapes, and exact round trips of the
composition into gate-major [out, in] rows, checked against einsum-free index arithmetic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rnninit_cli.bfloat16 import BFloat16Array
from rnninit_cli.errors import LayoutDeclarationError
from rnninit_cli.layouts.heads import HeadPiece, HeadView, parse_axes, solve_sizes


def test_parse_axes_reads_factors_major_first() -> None:
    assert parse_axes("head,gate*out,in", "x") == (("head",), ("gate", "out"), ("in",))


@pytest.mark.parametrize("text", ["head,gate*out,width", "head,out,out", "head,in", "gate*head"])
def test_parse_axes_refuses_unknown_repeated_or_missing_factors(text: str) -> None:
    with pytest.raises(LayoutDeclarationError):
        parse_axes(text, "x")


def test_solve_sizes_from_shape_and_known_counts() -> None:
    assert solve_sizes((("head",), ("gate", "out"), ("in",)), (2, 32, 8), {"gate": 4}) == \
        {"gate": 4, "head": 2, "out": 8, "in": 8}
    assert solve_sizes((("gate", "head", "out"),), (64,), {"gate": 4, "head": 2}) == {"gate": 4, "head": 2, "out": 8}
    assert solve_sizes((("gate", "head", "out"),), (64,), {"gate": 4}) is None  # head and out: undetermined
    assert solve_sizes((("head",), ("gate", "out"), ("in",)), (2, 30, 8), {"gate": 4}) is None  # 30 = 4·7.5
    assert solve_sizes((("head",), ("out",), ("in",)), (2, 8), {}) is None  # wrong rank


def _piece(axes_text: str, sizes: dict[str, int], gates: tuple[str | None, ...]) -> HeadPiece:
    axes = parse_axes(axes_text, "test")
    return HeadPiece("t", gates, axes, tuple((f, sizes.get(f, 1)) for f in ("gate", "head", "out", "in")))


def _reference_rows(stored: np.ndarray, axes_text: str, sizes: dict[str, int]) -> np.ndarray:
    """Effective row (g, h, o) column i, read element by element from the stored tensor by the axes' meaning."""
    axes = parse_axes(axes_text, "test")
    factor = lambda name: sizes.get(name, 1)  # noqa: E731
    has_in = any("in" in axis for axis in axes)
    rows = factor("gate") * factor("head") * factor("out")
    out = np.zeros((rows, factor("in")) if has_in else (rows,))
    for g, h, o, i in itertools.product(*(range(factor(n)) for n in ("gate", "head", "out", "in"))):
        index = {"gate": g, "head": h, "out": o, "in": i}
        position = []
        for axis in axes:
            flat = 0
            for name in axis:
                flat = flat * factor(name) + index[name]
            position.append(flat)
        row = (g * factor("head") + h) * factor("out") + o
        if has_in:
            out[row, i] = stored[tuple(position)]
        else:
            out[row] = stored[tuple(position)]
    return out


CASES = [
    ("head,gate*out,in", {"gate": 4, "head": 3, "out": 2, "in": 2}),  # xlstm sLSTM vanilla kernel
    ("head,in,gate*out", {"gate": 4, "head": 2, "out": 3, "in": 3}),  # cuda kernel
    ("gate*head*out", {"gate": 4, "head": 3, "out": 2}),  # vanilla bias
    ("head*gate*out", {"gate": 4, "head": 3, "out": 2}),  # cuda bias
    ("head,in,out", {"head": 2, "out": 5, "in": 5}),  # RG-LRU gate weight
    ("head,out", {"head": 3, "out": 4}),
    ("in,gate*out", {"gate": 3, "out": 2, "in": 5}),  # a Keras kernel
]


@pytest.mark.parametrize(("axes_text", "sizes"), CASES)
def test_to_effective_matches_index_arithmetic_and_round_trips_bit_for_bit(axes_text: str, sizes: dict[str, int]
                                                                          ) -> None:
    gates = tuple("abcd"[: sizes.get("gate", 1)])
    piece = _piece(axes_text, sizes, gates)
    stored = torch.randn(piece.stored_shape, generator=torch.Generator().manual_seed(3))
    effective = piece.to_effective(stored)
    np.testing.assert_array_equal(effective.numpy(), _reference_rows(stored.numpy(), axes_text, sizes))
    assert torch.equal(piece.to_stored(effective), stored)
    # numpy and bfloat16 arrays (the read path) give the same rows
    np.testing.assert_array_equal(piece.to_effective(stored.numpy()), effective.numpy())
    bits = BFloat16Array.from_values(stored.numpy())
    np.testing.assert_array_equal(np.asarray(piece.to_effective(bits)),
                                  piece.to_effective(stored.to(torch.bfloat16)).float().numpy())


def test_view_composes_pieces_in_gate_order_and_decomposes_to_the_stored_dtypes() -> None:
    first = _piece("head,out,in", {"head": 2, "out": 3, "in": 3}, ("i",))
    second = _piece("head,out,in", {"head": 2, "out": 3, "in": 3}, ("f",))
    first, second = (HeadPiece(name, p.gates, p.axes, p.sizes) for name, p in (("x.f", first), ("x.i", second)))
    view = HeadView("x.{f,i}", (first, second))
    stored = {"x.f": torch.randn(2, 3, 3), "x.i": torch.randn(2, 3, 3, dtype=torch.float64)}
    composed = view.compose(stored)
    assert composed.shape == view.shape({}) == (12, 3)
    assert torch.equal(composed[:6], stored["x.f"].reshape(6, 3).double())
    back = view.decompose(composed, stored)
    assert back["x.i"].dtype == torch.float64 and torch.equal(back["x.f"], stored["x.f"])
    assert torch.equal(back["x.i"], stored["x.i"])


def test_a_per_head_cell_with_an_empty_axis_is_refused_by_name() -> None:
    """sLSTM tensors of head width 0 (and of 0 heads) are no cell: refused with the reason, not drawn into."""
    from rnninit_cli.layouts.declared import parse_layout
    from rnninit_cli.layouts.discovery import discover

    for heads, width in ((2, 0), (0, 8)):
        prefix = "blocks.0.xlstm."
        tensors = {f"{prefix}{g}gate.weight": torch.zeros(heads, width, width) for g in "ifzo"}
        tensors[f"{prefix}slstm_cell._recurrent_kernel_"] = torch.zeros(heads, 4 * width, width)
        tensors[f"{prefix}slstm_cell._bias_"] = torch.zeros(4 * heads * width)
        reason = "size is 0" if width == 0 else "shape"
        found = discover(tensors)  # found without being asked for: skipped, with the reason
        assert not found.layers and len(found.skipped) == 1 and reason in found.skipped[0].reason
        with pytest.raises(LayoutDeclarationError, match=reason):  # asked for: refused
            discover(tensors, layouts=parse_layout("xlstm-slstm", "--layout 1"))
