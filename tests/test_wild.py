"""End to end on checkpoints with the real libraries' names and shapes (tests/wild_models.py): rnninit finds their
recurrent parameters (torch-named, weight-dropped, parametrized, or declared with --layout / --layout-file /
a built-in layout), rewrites them, and the output loads back strictly into the model it came from and runs
forward. The scheme's property is checked on the EFFECTIVE weights, in torch's form, computed here from the
stored tensors the way the library's forward uses them (un-transposed, reordered, assembled per gate).

Property of the `keras` scheme checked throughout: the recurrent weight, whole matrix, has orthonormal columns
(Keras's orthogonal recurrent kernel, (h, G·h), transposed); the input weight is Glorot uniform over the whole
matrix (|w| <= sqrt(6 / (in + G·h))); biases are zero but the LSTM forget gate's bias_ih, which is 1.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import wild_models as W
from typer.testing import CliRunner, Result

from rnninit_cli.cli import app

runner = CliRunner()


def cli(*args: object) -> Result:
    return runner.invoke(app, [str(arg) for arg in args])


def orthonormal_columns_error(weight: torch.Tensor) -> float:
    matrix = weight.detach().double()
    return (matrix.T @ matrix - torch.eye(matrix.shape[1], dtype=torch.float64)).abs().max().item()


def assert_keras(effective: dict[str, torch.Tensor], cell: str = "lstm") -> None:
    """The keras scheme's property on torch-form parameters (gate order i,f,g,o / r,z,n; custom: no biases)."""
    weight_ih, weight_hh = effective["weight_ih"], effective["weight_hh"]
    assert orthonormal_columns_error(weight_hh) < 1e-5
    bound = math.sqrt(6 / (weight_ih.shape[1] + weight_ih.shape[0]))
    assert weight_ih.abs().max() <= bound * (1 + 1e-6)
    assert weight_ih.abs().max() > 0.8 * bound
    hidden = weight_hh.shape[1]
    if "bias_ih" in effective:
        expected = torch.zeros_like(effective["bias_ih"])
        if cell == "lstm":
            expected[hidden : 2 * hidden] = 1.0
        torch.testing.assert_close(effective["bias_ih"], expected, atol=0, rtol=0)
    if "bias_hh" in effective:
        assert torch.count_nonzero(effective["bias_hh"]) == 0


def write(tmp_path: Path, name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], Path]:
    module, state = W.BUILDERS[name]()
    path = tmp_path / f"{name}.pt"
    torch.save(state, path)
    return module, state, path


def applied(
    source: Path, *options: object, scheme: str = "keras", seed: int = 3
) -> tuple[dict[str, torch.Tensor], Path]:
    output = source.with_name(f"out-{source.name}")
    result = cli("apply", source, "-s", scheme, "--seed", seed, "-o", output, "--force", *options)
    assert result.exit_code == 0, result.stdout + result.stderr
    return torch.load(output, weights_only=True), output


def reloaded(name: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A fresh module of the same build, loaded strictly with `state`, run forward once (in eval mode)."""
    fresh, _ = W.BUILDERS[name]()
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        output = fresh(*W.sample_input(name))
    first = output[0] if isinstance(output, tuple) else output
    assert torch.isfinite(first).all()
    return fresh


def unchanged_except(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], rewritten: set[str]) -> None:
    assert sorted(after) == sorted(before)
    for name in before:
        assert torch.equal(before[name], after[name]) != (name in rewritten), name


# ---------------------------------------------------------------------------------------------------------------
# built-in layouts


@pytest.mark.parametrize("name", ["torchaudio-rnnt", "torchaudio-rnnt-layernorm"])
def test_torchaudio_rnnt_predictor_with_the_builtin_layout(tmp_path: Path, name: str) -> None:
    _, before, source = write(tmp_path, name)
    found = cli("inspect", source, "--layout", "torchaudio-rnnt", "--json")
    assert found.exit_code == 0, found.stderr
    layers = json.loads(found.stdout)["layers"]
    assert [(layer["prefix"], layer["cell"], layer["hidden_size"]) for layer in layers] == [
        ("predictor.lstm_layers.0.", "lstm", 16), ("predictor.lstm_layers.1.", "lstm", 16)]
    after, output = applied(source, "--layout", "torchaudio-rnnt")
    rewritten = {n for n in before if ".x2g." in n or ".p2g." in n}
    unchanged_except(before, after, rewritten)  # embedding, layer norms (c_norm, g_norm), linear: bit for bit
    for k in range(2):
        assert_keras(W.effective_torchaudio(after, f"predictor.lstm_layers.{k}."))
    reloaded(name, after)
    verified = cli("verify", output, "-s", "keras", "--layout", "torchaudio-rnnt")
    assert verified.exit_code == 0, verified.stdout + verified.stderr
    assert cli("verify", source, "-s", "keras", "--layout", "torchaudio-rnnt").exit_code != 0


def test_speechbrain_ligru_with_the_builtin_layout(tmp_path: Path) -> None:
    _, before, source = write(tmp_path, "speechbrain-ligru")
    after, _ = applied(source, "--layout", "speechbrain-ligru")
    unchanged_except(before, after, {n for n in before if n.endswith((".w.weight", ".u.weight"))})
    for k in range(2):
        assert_keras({"weight_ih": after[f"rnn.{k}.w.weight"], "weight_hh": after[f"rnn.{k}.u.weight"]}, "custom")
    reloaded("speechbrain-ligru", after)


def test_speechbrain_ligru_gate_rules_reach_only_their_gate(tmp_path: Path) -> None:
    _, before, source = write(tmp_path, "speechbrain-ligru")
    after, _ = applied(source, "--layout", "speechbrain-ligru", "--rule", "weight_hh.z=zeros", scheme="pytorch")
    for k in range(2):
        u = after[f"rnn.{k}.u.weight"]  # (2h, h): the candidate a first, the update gate z second
        assert torch.count_nonzero(u[8:]) == 0
        assert 0 < u[:8].abs().max() <= 1 / math.sqrt(8)
        assert not torch.equal(u[:8], before[f"rnn.{k}.u.weight"][:8])
    reloaded("speechbrain-ligru", after)


# ---------------------------------------------------------------------------------------------------------------
# weight-dropped LSTMs (no declaration needed)


def test_fastai_awd_lstm(tmp_path: Path) -> None:
    _, before, source = write(tmp_path, "fastai-awd-lstm")
    after, _ = applied(source)
    unchanged_except(before, after, {n for n in before if n.startswith("rnns.")})
    module = reloaded("fastai-awd-lstm", after)
    for k in range(3):
        prefix = f"rnns.{k}."
        assert_keras({"weight_ih": after[prefix + "module.weight_ih_l0"],
                      "weight_hh": after[prefix + "weight_hh_l0_raw"],
                      "bias_ih": after[prefix + "module.bias_ih_l0"],
                      "bias_hh": after[prefix + "module.bias_hh_l0"]})
        # what the wrapped LSTM computed with in the forward just run (eval mode: a copy of the raw weight)
        assert torch.equal(module.rnns[k].module.weight_hh_l0, after[prefix + "weight_hh_l0_raw"])


@pytest.mark.parametrize(
    "name",
    [
        "salesforce-awd-lstm",
        "salesforce-awd-lstm-after-eval-forward",
        "salesforce-awd-lstm-after-train-forward",  # a dropped-out copy beside _raw: _raw counts, the copy follows
    ],
)
def test_salesforce_awd_lstm(tmp_path: Path, name: str) -> None:
    _, _, source = write(tmp_path, name)
    after, _ = applied(source)
    module = reloaded(name, after)  # its forward recomputed module.weight_hh_l0 from module.weight_hh_l0_raw
    for k in range(3):
        lstm = module.rnns[k].module
        assert_keras({"weight_ih": lstm.weight_ih_l0, "weight_hh": lstm.weight_hh_l0, "bias_ih": lstm.bias_ih_l0,
                      "bias_hh": lstm.bias_hh_l0})


# ---------------------------------------------------------------------------------------------------------------
# torch parametrizations


@pytest.mark.parametrize("how", ["weight_norm", "old_weight_norm"])
def test_weight_normed_lstm(tmp_path: Path, how: str) -> None:
    name = f"parametrized-{how}"
    _, _, source = write(tmp_path, name)
    after, _ = applied(source)
    module = reloaded(name, after)  # the forward recomputed the old API's weight_hh_l0 from g and v
    assert orthonormal_columns_error(W.effective_weight_hh(module)) < 1e-5
    assert orthonormal_columns_error(module.rnn.weight_hh_l1) < 1e-5


@pytest.mark.parametrize("how", ["spectral_norm", "orthogonal"])
def test_unwritable_parametrizations_are_skipped_and_the_rest_written(tmp_path: Path, how: str) -> None:
    name = f"parametrized-{how}"
    _, before, source = write(tmp_path, name)
    after, _ = applied(source)
    unchanged_except(before, after, {n for n in before if n.endswith("_l1")})
    reloaded(name, after)


# ---------------------------------------------------------------------------------------------------------------
# declared on the command line and in files


def test_hand_written_i2h_lstm_declared_inline(tmp_path: Path) -> None:
    _, _, source = write(tmp_path, "i2h-lstm")
    after, _ = applied(source, "--layout", W.I2H_LAYOUT)
    for k in range(2):
        prefix = f"layers.{k}."
        assert_keras({"weight_ih": after[prefix + "i2h.weight"], "weight_hh": after[prefix + "h2h.weight"],
                      "bias_ih": after[prefix + "i2h.bias"], "bias_hh": after[prefix + "h2h.bias"]})
    reloaded("i2h-lstm", after)


TOML_PER_GATE = r"""
[layout.per-gate]
cell = "lstm"
gates = ["i", "f", "c", "o"]
weight_ih = '(.*)\.input_(?P<gate>\w)\.weight'
bias_ih = '(.*)\.input_(?P<gate>\w)\.bias'
weight_hh = '(.*)\.hidden_(?P<gate>\w)\.weight'
"""


def test_one_linear_per_gate_declared_in_a_file(tmp_path: Path) -> None:
    _, before, source = write(tmp_path, "per-gate-lstm")
    layouts = tmp_path / "layouts.toml"
    layouts.write_text(TOML_PER_GATE, encoding="utf-8")
    after, output = applied(source, "--layout-file", layouts)
    unchanged_except(before, after, set(before))
    assert_keras(W.effective_per_gate(after))  # orthonormal across the four per-gate tensors, as one matrix
    reloaded("per-gate-lstm", after)
    verified = cli("verify", output, "-s", "keras", "--layout-file", layouts)
    assert verified.exit_code == 0, verified.stdout + verified.stderr


TOML_KERAS = r"""
[layout.keras-lstm]
cell = "lstm"
gates = ["i", "f", "c", "o"]
transposed = ["weight_ih", "weight_hh"]
weight_ih = '(.*lstm_cell)\.kernel'
weight_hh = '(.*lstm_cell)\.recurrent_kernel'
bias_ih = '(.*lstm_cell)\.bias'

[layout.keras-gru]
cell = "gru"
gates = "z,r,h"
transposed = "weight_ih,weight_hh"
weight_ih = '(.*gru_cell)\.kernel'
weight_hh = '(.*gru_cell)\.recurrent_kernel'
bias_ih = '(.*gru_cell)\.bias'
bias_hh = '(.*gru_cell)\.bias'
"""


def test_keras_ported_kernels_declared_in_a_file(tmp_path: Path) -> None:
    _, _, source = write(tmp_path, "keras-ported")
    layouts = tmp_path / "keras.toml"
    layouts.write_text(TOML_KERAS, encoding="utf-8")
    after, _ = applied(source, "--layout-file", layouts)
    assert_keras(W.effective_keras_lstm(after))
    assert_keras(W.effective_keras_gru(after), "gru")
    reloaded("keras-ported", after)


def test_keras_gru_gate_rules_follow_the_declared_order(tmp_path: Path) -> None:
    """Keras stores z,r,h: a rule for gate z must land in Keras's first block, torch's second."""
    _, _, source = write(tmp_path, "keras-ported")
    after, _ = applied(source, "--layout", W.KERAS_GRU_LAYOUT, "--rule", "bias_ih.z=ones", "--rule",
                       "bias_hh.n=ones", "--rule", "weight_hh.r=zeros", scheme="pytorch")
    stored = after["decoder.gru_cell.bias"]
    assert torch.equal(stored[0, :16], torch.ones(16)) and torch.equal(stored[1, 32:], torch.ones(16))
    assert torch.count_nonzero(after["decoder.gru_cell.recurrent_kernel"][:, 16:32]) == 0
    effective = W.effective_keras_gru(after)  # torch order r, z, n
    assert torch.equal(effective["bias_ih"][16:32], torch.ones(16))
    assert torch.equal(effective["bias_hh"][32:], torch.ones(16))
    assert torch.count_nonzero(effective["weight_hh"][:16]) == 0
    assert torch.count_nonzero(effective["bias_hh"][:32] == 1) == 0
    reloaded("keras-ported", after)


def test_keras_lstm_declared_inline_in_a_real_process(tmp_path: Path) -> None:
    _, before = W.keras_ported()
    before["encoder.lstm_cell.bias"] += 0.1  # as trained: not the zeros / forget ones Keras starts from
    source = tmp_path / "keras.pt"
    torch.save(before, source)
    output = tmp_path / "out.safetensors"
    command = [sys.executable, "-m", "rnninit_cli", "apply", str(source), "-s", "keras", "--seed", "1", "-o",
               str(output), "--layout", W.KERAS_LSTM_LAYOUT, "--only", "lstm_cell", "-q"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from safetensors.torch import load_file

    after = load_file(str(output))
    assert_keras(W.effective_keras_lstm(after))
    unchanged_except(before, after, {n for n in before if "lstm_cell" in n})
    reloaded("keras-ported", after)


def test_onnx_3d_initializers_are_refused_naming_tensor_and_shape(tmp_path: Path) -> None:
    """ONNX's W is (num_directions, 4h, in): not a 2-D weight; the refusal names it (lead: not supported yet)."""
    _, _, source = write(tmp_path, "onnx-lstm")
    result = cli("inspect", source, "--layout", r"cell=lstm gates=i,o,f,c weight_ih=(.*)\.W weight_hh=(.*)\.R")
    assert result.exit_code != 0
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "lstm.W" in result.stderr and "[1, 64, 8]" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# declaration errors on the command line: one `error:` line, exit status 2, nothing written


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--layout", "torchaudio-rnn"], "no built-in layout named 'torchaudio-rnn'"),
        (["--layout", r"weight_ih=x2g\.weight weight_hh=p2g\.weight"], "--layout 1: the layout matches no recurrent"),
        (["--layout", "speechbrain-ligru"], "speechbrain-ligru (--layout 1): the layout matches no recurrent cell"),
        (["--layout", "cell=lstm gates=i,f,g", "--layout", "torchaudio-rnnt"], "--layout 1: "),
        (["--layout-file", "MISSING"], "cannot read the layout file"),
        (["--layout-file", "BROKEN"], "not valid TOML"),
    ],
)
def test_declaration_errors(tmp_path: Path, options: list[str], expected: str) -> None:
    _, _, source = write(tmp_path, "torchaudio-rnnt")
    (tmp_path / "broken.toml").write_text("[layout.x\n", encoding="utf-8")
    options = [str(tmp_path / "missing.toml") if o == "MISSING" else str(tmp_path / "broken.toml") if o == "BROKEN"
               else o for o in options]
    output = tmp_path / "out.pt"
    result = cli("apply", source, "-s", "keras", "-o", output, *options)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert not output.exists()


def test_declared_shapes_that_do_not_fit_are_an_error_naming_tensor_and_shape(tmp_path: Path) -> None:
    _, state, _ = write(tmp_path, "i2h-lstm")
    state["layers.1.h2h.weight"] = torch.zeros(64, 15)
    source = tmp_path / "bad.pt"
    torch.save(state, source)
    result = cli("inspect", source, "--layout", W.I2H_LAYOUT)
    assert result.exit_code != 0
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "--layout 1" in result.stderr and "layers.1." in result.stderr and "shape [" in result.stderr


def test_diff_sees_the_declared_layers(tmp_path: Path) -> None:
    _, _, source = write(tmp_path, "torchaudio-rnnt")
    _, output = applied(source, "--layout", "torchaudio-rnnt")
    assert cli("diff", source, output).exit_code == 2  # nothing recurrent without the declaration
    declared = cli("diff", source, output, "--layout", "torchaudio-rnnt", "--json")
    assert declared.exit_code == 1, declared.stderr  # different (like diff)
    assert "predictor.lstm_layers.1.p2g.weight" in declared.stdout
    same = cli("diff", output, output, "--layout", "torchaudio-rnnt")
    assert same.exit_code == 0, same.stderr
