"""A per-head cell declared in TOML (the next xLSTM-like layer): stored axes, forms tried in order, gate roles, a
kind holding only some gates, a radius, a family and a stack position, all from the declaration alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rnninit_cli.errors import LayoutDeclarationError
from rnninit_cli.layouts.declared import inline_text, load_layout_file, parse_layout
from rnninit_cli.layouts.discovery import discover

TOML = r"""
[layout.my-cell]
cell = "custom"
title = "MyCell"
family = "mycell"
gates = ["a", "b"]
roles = ["alpha:a", "beta:b"]
weight_ih = '(.*\.)(?P<gate>alpha|beta)_proj'
weight_ih_axes = "head,in,out"
weight_hh = '(.*\.)kernel'
weight_hh_axes = "head,gate*out,in|head,in,gate*out"
bias_ih = '(.*\.)(?P<gate>alpha|beta)_bias'
partial = ["bias_ih"]
radius = '(.*\.)decay'
block = '(?:^|\.)stack\.(\d+)\.(?:[^.]*\.)?\Z'
"""


def _cell(prefix: str, heads: int = 2, width: int = 3, *, transposed_kernel: bool = False) -> dict[str, torch.Tensor]:
    kernel = (heads, width, 2 * width) if transposed_kernel else (heads, 2 * width, width)
    return {f"{prefix}alpha_proj": torch.randn(heads, width, width),
            f"{prefix}beta_proj": torch.randn(heads, width, width),
            f"{prefix}kernel": torch.randn(kernel), f"{prefix}alpha_bias": torch.randn(heads * width),
            f"{prefix}decay": torch.randn(heads * width), f"{prefix}norm.weight": torch.ones(heads * width)}


@pytest.fixture
def declaration(tmp_path: Path):
    path = tmp_path / "layouts.toml"
    path.write_text(TOML, encoding="utf-8")
    return load_layout_file(path)


def test_declared_cell_is_found_with_heads_roles_partial_gates_and_stack_position(declaration) -> None:
    tensors = {**_cell("net.stack.0.cell."), **_cell("net.stack.3.cell.", transposed_kernel=True)}
    found = discover(tensors, layouts=declaration)
    assert [layer.prefix for layer in found.layers] == ["net.stack.0.cell.", "net.stack.3.cell."]
    first, last = found.layers
    assert (first.family, first.heads, first.head_size, first.input_size) == ("mycell", 2, 3, 6)
    assert (first.block_index, first.num_blocks, last.block_index, last.num_blocks) == (0, 4, 3, 4)
    assert [(b.gate, b.head) for b in first.blocks("weight_ih")] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    # no beta bias (partial), and no axes declared for it: one block
    assert [(b.gate, b.head, b.stop) for b in first.blocks("bias_ih")] == [("a", None, 6)]
    assert [(b.start, b.stop) for b in first.blocks("radius")] == [(0, 6)]
    effective = found.effective(tensors)
    for layer, prefix in ((first, "net.stack.0.cell."), (last, "net.stack.3.cell.")):
        kernel = effective[layer.params["weight_hh"]]
        stored = tensors[f"{prefix}kernel"]
        for block in layer.blocks("weight_hh"):
            gate = "ab".index(block.gate)
            expected = (stored[block.head, gate * 3:(gate + 1) * 3, :] if layer is first
                        else stored[block.head, :, gate * 3:(gate + 1) * 3].T)  # the second form: [head, in, gate·out]
            assert torch.equal(kernel[block.start:block.stop], expected)
        proj = effective[layer.params["weight_ih"]]
        assert torch.equal(proj[3:6], tensors[f"{prefix}alpha_proj"][1].T)  # [head, in, out] read as [out, in]


def test_declaration_round_trips_through_its_inline_text(declaration) -> None:
    again = parse_layout(inline_text(declaration[0]), "--layout 1")[0]
    assert again.same_layout(declaration[0])


def test_shapes_that_fit_no_form_are_refused_with_the_reason(declaration) -> None:
    tensors = _cell("net.stack.0.cell.")
    tensors["net.stack.0.cell.kernel"] = torch.randn(2, 5, 3)  # 5 rows are not 2 gates × 3
    with pytest.raises(LayoutDeclarationError, match="kernel has shape"):
        discover(tensors, layouts=declaration)


@pytest.mark.parametrize(("settings", "message"), [
    ("weight_ih_axes=head,gate*out", "needs an in factor"),
    ("bias_ih=(.*\\.)b bias_ih_axes=gate*out,in", "vector has no in factor"),
    ("roles=x:q", "roles entry"),
    ("partial=weight_hh", "only a kind stored one tensor per gate"),
    ("radius=(?P<gate>r)(.*)", "radius has no gates"),
    ("weight_ih_axes=head,out,in|head,in,out weight_hh_axes=head,out,in|head,in,out|out,head,in", "numbers of forms"),
])
def test_bad_per_head_settings_are_refused(settings: str, message: str) -> None:
    base = "cell=custom gates=a,b weight_ih=(.*\\.)(?P<gate>[ab])w weight_hh=(.*\\.)k family=x"
    with pytest.raises(LayoutDeclarationError, match=message):
        parse_layout(f"{base} {settings}", "--layout 1")
