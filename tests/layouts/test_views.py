"""Effective parameters stored in other forms (weight_norm, weight drop, declared transposed/reordered/split
tensors), groups skipped instead of aborting, `--only` before validation, and look-alikes listed by inspect.

The checks are independent of the code under test: torch's own parametrizations compute the weight the layer
uses, and the scheme's property (Keras: whole-matrix orthonormal recurrent weight) is checked on that weight.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import rnninit_cli
from rnninit_cli.cli import app
from rnninit_cli.errors import LayoutError
from rnninit_cli.layouts.discovery import discover
from rnninit_cli.layouts.views import GateView, Piece, WeightNormView, weight_norm_dim

runner = CliRunner()


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def orthonormal_columns_error(weight: torch.Tensor) -> float:
    matrix = weight.detach().double()
    return (matrix.T @ matrix - torch.eye(matrix.shape[1], dtype=torch.float64)).abs().max().item()


def weight_normed_lstm(dim: int | None = 0, old: bool = False) -> nn.LSTM:
    torch.manual_seed(0)
    module = nn.LSTM(5, 8, num_layers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the old API is deprecated
        if old:
            torch.nn.utils.weight_norm(module, "weight_hh_l0", dim=dim)
        else:
            torch.nn.utils.parametrizations.weight_norm(module, "weight_hh_l0", dim=dim)
    return module


def effective_hh(module: nn.LSTM) -> torch.Tensor:
    """The weight torch computes for weight_hh_l0 (what the layer runs with)."""
    if hasattr(module, "parametrizations"):
        return module.weight_hh_l0
    return torch._weight_norm(module.weight_hh_l0_v, module.weight_hh_l0_g, module._forward_pre_hooks[
        next(iter(module._forward_pre_hooks))].dim)


# --- the math of the views ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weight_norm_decompose_gives_back_the_weight_up_to_one_rounding(dim: int, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(dim + 5)
    wanted = torch.randn(32, 8, generator=generator, dtype=dtype)
    magnitude_shape = {0: (32, 1), 1: (1, 8), -1: ()}[dim]
    view = WeightNormView("w", "g", "v", dim, "test")
    stored = {"g": torch.ones(magnitude_shape, dtype=dtype), "v": torch.ones(32, 8, dtype=dtype)}
    stored.update(view.decompose(wanted, stored))
    assert stored["g"].shape == magnitude_shape and stored["v"].shape == (32, 8)
    composed = torch._weight_norm(stored["v"], stored["g"], dim)  # torch's own formula, not the view's
    ulp = torch.finfo(dtype).eps
    assert ((composed - wanted).abs() <= 4 * ulp * wanted.abs()).all()


@pytest.mark.parametrize(("magnitude", "direction", "dim"), [
    ((16, 1), (16, 4), 0), ((1, 4), (16, 4), 1), ((), (16, 4), -1), ((1, 1), (16, 4), -1),
    ((4, 1), (16, 4), None), ((16,), (16, 4), None), ((16, 4), (16, 4), None),
])
def test_weight_norm_dim_from_shapes(magnitude: tuple[int, ...], direction: tuple[int, ...], dim: int | None) -> None:
    assert weight_norm_dim(magnitude, direction) == dim


def test_gate_view_is_exact_both_ways() -> None:
    generator = torch.Generator().manual_seed(1)
    stored = {"k": torch.randn(5, 12, generator=generator),  # transposed, stored order z, r, n
              "w_r": torch.randn(4, 5, generator=generator), "w_z": torch.randn(4, 5, generator=generator)}
    transposed = GateView("k.T", (Piece("k", ("z", "r", "n"), True),), ("r", "z", "n"), "declared")
    effective = transposed.compose(stored)
    # row block r of the effective tensor is columns 4:8 of the stored kernel, transposed
    assert torch.equal(effective[0:4], stored["k"][:, 4:8].T)
    assert torch.equal(effective[4:8], stored["k"][:, 0:4].T)
    assert torch.equal(effective[8:12], stored["k"][:, 8:12].T)
    new = torch.randn(12, 5, generator=generator)
    back = transposed.decompose(new, stored)
    assert torch.equal(transposed.compose(back), new)
    split = GateView("w", (Piece("w_z", ("z",)), Piece("w_r", ("r",))), ("r", "z"), "declared")
    assert torch.equal(split.compose(stored), torch.cat([stored["w_r"], stored["w_z"]]))
    parts = split.decompose(torch.arange(40.0).reshape(8, 5), stored)
    assert torch.equal(parts["w_r"], torch.arange(20.0).reshape(4, 5))
    assert torch.equal(parts["w_z"], torch.arange(20.0, 40.0).reshape(4, 5))


# --- parametrized layers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dim", "old"), [(0, False), (1, False), (None, False), (0, True), (1, True)])
def test_init_through_weight_norm_gives_the_scheme_to_the_effective_weight(dim: int | None, old: bool) -> None:
    module = weight_normed_lstm(dim, old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is skipped
        the_plan = rnninit_cli.init_(module, "keras", seed=3)
    assert len(the_plan.layers) == 2 and len(the_plan.views) == 1
    assert orthonormal_columns_error(effective_hh(module)) < 1e-5  # keras: the whole weight_hh is orthogonal
    # and the untouched stored form still composes to it: what torch computes is what the plan drew
    plain = nn.LSTM(5, 8, num_layers=2)
    state = {key.replace("parametrizations.", "").replace(".original0", "_g").replace(".original1", "_v"): value
             for key, value in dict(module.named_parameters()).items()}
    rnninit_cli.init_(plain, "keras", seed=3)
    assert torch.allclose(effective_hh(module), plain.weight_hh_l0, atol=1e-6)
    assert torch.equal(state["weight_ih_l0"], plain.weight_ih_l0)  # same seed, same parameter: same values


def test_apply_on_a_weight_normed_checkpoint_loads_back_strictly_and_runs(tmp_path: Path) -> None:
    module = weight_normed_lstm()
    source, output = tmp_path / "wn.pt", tmp_path / "out.pt"
    torch.save(module.state_dict(), source)
    result = cli("apply", source, "-s", "keras", "--seed", "1", "-o", output, "-q")
    assert result.exit_code == 0, result.stderr
    fresh = weight_normed_lstm()
    fresh.load_state_dict(torch.load(output, weights_only=True), strict=True)
    assert orthonormal_columns_error(fresh.weight_hh_l0) < 1e-5
    assert orthonormal_columns_error(fresh.weight_hh_l1) < 1e-5
    fresh(torch.randn(3, 2, 5))
    verified = cli("verify", output, "-s", "keras")
    assert verified.exit_code == 0, verified.stdout + verified.stderr


def test_inspect_shows_the_effective_weight_and_how_it_was_read(tmp_path: Path) -> None:
    module = weight_normed_lstm()
    rnninit_cli.init_(module, "keras", seed=2)
    source = tmp_path / "wn.pt"
    torch.save(module.state_dict(), source)
    result = cli("inspect", source, "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert any("g·v/‖v‖" in line for line in document["views"])
    hh = next(p for layer in document["layers"] for p in layer["params"] if p["name"] == "weight_hh_l0")
    assert hh["shape"] == [32, 8]
    # statistics of the effective weight: an orthogonal (32, 8) matrix has entries of mean square 8/(32·8)
    square = sum(block["std"] ** 2 + block["mean"] ** 2 for block in hh["blocks"]) / len(hh["blocks"])
    assert square == pytest.approx(1 / 32, rel=1e-3)


@pytest.mark.parametrize("which", ["spectral_norm", "orthogonal", "old spectral_norm"])
def test_parametrizations_that_cannot_be_written_are_skipped_with_a_named_warning(tmp_path: Path, which: str) -> None:
    torch.manual_seed(0)
    module = nn.LSTM(5, 8, num_layers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if which == "old spectral_norm":
            torch.nn.utils.spectral_norm(module, "weight_hh_l0")
        else:
            getattr(torch.nn.utils.parametrizations, which)(module, "weight_hh_l0")
    source, output = tmp_path / "p.pt", tmp_path / "out.pt"
    torch.save(module.state_dict(), source)
    result = cli("apply", source, "-s", "keras", "--seed", "1", "-o", output)
    assert result.exit_code == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning: skipped")]
    assert len(warning) == 1 and "weight_hh_l0" in warning[0], result.stderr
    assert (which.split()[-1] if which != "orthogonal" else "orthogonal") in warning[0]
    before, after = torch.load(source, weights_only=True), torch.load(output, weights_only=True)
    for key in before:
        untouched = key.endswith("_l0") or "weight_hh_l0" in key
        assert torch.equal(before[key], after[key]) == untouched, key
    strict = cli("apply", source, "-s", "keras", "--seed", "1", "-o", tmp_path / "strict.pt", "--strict")
    assert strict.exit_code == 3 and strict.stderr.startswith("error: ") and "weight_hh_l0" in strict.stderr
    assert not (tmp_path / "strict.pt").exists()


# --- one odd group never stops the rest ---------------------------------------------------------------------


def odd_state() -> dict[str, torch.Tensor]:
    """A good 2-layer LSTM whose layer 0 recurrent weight has a shape no layer can have."""
    torch.manual_seed(0)
    state = {key: value.detach().clone() for key, value in nn.LSTM(5, 8, num_layers=2).state_dict().items()}
    state["weight_hh_l0"] = torch.randn(30, 7)
    return state


def test_an_odd_group_is_skipped_and_the_rest_rewritten(tmp_path: Path) -> None:
    source, output = tmp_path / "odd.pt", tmp_path / "out.pt"
    torch.save(odd_state(), source)
    result = cli("apply", source, "-s", "keras", "--seed", "1", "-o", output)
    assert result.exit_code == 0, result.stderr
    skipped = [line for line in result.stderr.splitlines() if line.startswith("warning: skipped")]
    assert len(skipped) == 1 and "weight_hh_l0" in skipped[0]
    assert "--layout" not in skipped[0]  # 30 rows fit no cell of hidden size 7: no declaration would be accepted
    before, after = torch.load(source, weights_only=True), torch.load(output, weights_only=True)
    for key in before:
        assert torch.equal(before[key], after[key]) == key.endswith("_l0"), key
    assert orthonormal_columns_error(after["weight_hh_l1"]) < 1e-5


@pytest.mark.parametrize("command", ["inspect", "apply", "verify", "diff"])
def test_only_selects_before_anything_is_checked(tmp_path: Path, command: str) -> None:
    source = tmp_path / "odd.pt"
    torch.save(odd_state(), source)
    args = {"inspect": ["inspect", source],
            "apply": ["apply", source, "-s", "keras", "-o", tmp_path / "o.pt", "--force"],
            "verify": ["verify", source, "-s", "pytorch"], "diff": ["diff", source, source]}[command]
    result = cli(*args, "--only", "l1$", "--strict")
    assert result.exit_code == 0, result.stderr
    assert "skipped" not in result.stderr and "weight_hh_l0" not in result.stdout + result.stderr
    unselected = cli(*args, "--strict")
    assert unselected.exit_code == 3, unselected.stderr
    assert "weight_hh_l0" in unselected.stderr


def test_discover_skips_without_raising_and_find_layers_stays_strict() -> None:
    found = discover(odd_state())
    assert [layer.layer for layer in found.layers] == [1]
    assert len(found.skipped) == 1 and "weight_hh_l0" in found.skipped[0].names
    with pytest.raises(LayoutError, match="weight_hh_l0"):
        rnninit_cli.find_layers(odd_state())


def test_init_warns_for_each_skipped_group_and_strict_raises() -> None:
    state = odd_state()
    with pytest.warns(UserWarning, match="weight_hh_l0"):
        rnninit_cli.init_(state, "keras", seed=0)
    with pytest.raises(LayoutError, match="weight_hh_l0"):
        rnninit_cli.init_(odd_state(), "keras", seed=0, strict=True)


# --- look-alikes: likely recurrent weights that are not named like torch.nn ---------------------------------


class HandWritten(nn.Module):
    """An LSTM written by hand with one Linear for the input and one for the hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.cells = nn.ModuleList(nn.ModuleDict({"i2h": nn.Linear(6 if k == 0 else 8, 32),
                                                  "h2h": nn.Linear(8, 32)}) for k in range(2))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for cell in self.cells:
            h = torch.zeros(x.shape[1], 8)
            c = torch.zeros(x.shape[1], 8)
            outputs = []
            for step in x:
                i, f, g, o = (cell["i2h"](step) + cell["h2h"](h)).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outputs.append(h)
            x = torch.stack(outputs)
        return self.head(x)


def test_inspect_lists_look_alikes_and_their_declaration_works(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = HandWritten()
    source, output = tmp_path / "hand.pt", tmp_path / "out.pt"
    torch.save(model.state_dict(), source)
    result = cli("inspect", source)
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("warning: not recognised")]
    assert [line.split()[3] for line in lines] == ["cells.0.h2h.weight", "cells.1.h2h.weight"], result.stderr
    declare = re.search(r"--layout '([^']*)'", lines[0])
    assert declare is not None
    applied = cli("apply", source, "-s", "keras", "--seed", "4", "-o", output, "--layout", declare.group(1), "-q")
    assert applied.exit_code == 0, applied.stderr
    after = torch.load(output, weights_only=True)
    for k in range(2):
        assert orthonormal_columns_error(after[f"cells.{k}.h2h.weight"]) < 1e-5
        assert torch.count_nonzero(after[f"cells.{k}.h2h.bias"]) == 0
        assert torch.equal(after[f"cells.{k}.i2h.bias"][8:16], torch.ones(8))  # forget bias 1, in one vector
    assert torch.equal(after["head.weight"], model.state_dict()["head.weight"])
    model.load_state_dict(after, strict=True)
    model(torch.randn(4, 2, 6))


def test_transformer_weights_are_not_look_alikes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=64)
    found = discover(layer.state_dict())
    assert found.layers == () and found.suspects == ()


def test_keras_gru_bias_rows_are_two_parameters_of_one_tensor(tmp_path: Path) -> None:
    """Keras's GRU (reset_after=True) stores kernel (in, 3h), recurrent_kernel (h, 3h) in gate order z, r, h and
    one bias (2, 3h): row 0 the input bias, row 1 the recurrent bias."""
    generator = torch.Generator().manual_seed(0)
    state = {"gru.kernel": torch.randn(8, 48, generator=generator),
             "gru.recurrent_kernel": torch.randn(16, 48, generator=generator),
             "gru.bias": torch.randn(2, 48, generator=generator)}
    source, output = tmp_path / "keras-gru.pt", tmp_path / "out.pt"
    torch.save(state, source)
    layout = (r"cell=gru gates=z,r,h weight_ih=(.*)\.kernel weight_hh=(.*)\.recurrent_kernel bias_ih=(.*)\.bias "
              r"bias_hh=(.*)\.bias transposed=weight_ih,weight_hh")
    result = cli("apply", source, "-s", "keras", "--seed", "1", "-o", output, "--layout", layout,
                 "--rule", "bias_hh.z=ones", "--rule", "bias_ih.n=constant(0.5)", "-q")
    assert result.exit_code == 0, result.stderr
    after = torch.load(output, weights_only=True)
    expected_bias = torch.zeros(2, 48)
    expected_bias[1, 0:16] = 1  # z is stored first, in row 1 (recurrent)
    expected_bias[0, 32:48] = 0.5  # h (torch's n) is stored last, in row 0 (input)
    assert torch.equal(after["gru.bias"], expected_bias)
    recurrent = after["gru.recurrent_kernel"].double()  # Keras: the (h, 3h) kernel has orthonormal rows
    assert (recurrent @ recurrent.T - torch.eye(16, dtype=torch.float64)).abs().max() < 1e-5
    bound = (6 / (8 + 48)) ** 0.5  # Glorot over the whole kernel: fans 8 and 48
    assert after["gru.kernel"].abs().max() <= bound and after["gru.kernel"].abs().max() > 0.9 * bound
    verified = cli("verify", output, "-s", "keras", "--layout", layout, "--rule", "bias_hh.z=ones",
                   "--rule", "bias_ih.n=constant(0.5)")
    assert verified.exit_code == 0, verified.stdout + verified.stderr


def test_a_row_piece_keeps_the_other_row() -> None:
    stored = {"b": torch.arange(12.0).reshape(2, 6)}
    first = GateView("b[0]", (Piece("b", ("r", "z", "n"), False, 0),), ("r", "z", "n"), "declared")
    second = GateView("b[1]", (Piece("b", ("r", "z", "n"), False, 1),), ("r", "z", "n"), "declared")
    assert torch.equal(first.compose(stored), torch.arange(6.0)) and torch.equal(second.compose(stored),
                                                                                    torch.arange(6.0, 12.0))
    stored.update(first.decompose(-torch.ones(6), stored))
    stored.update(second.decompose(torch.ones(6), stored))
    assert torch.equal(stored["b"], torch.stack([-torch.ones(6), torch.ones(6)]))
