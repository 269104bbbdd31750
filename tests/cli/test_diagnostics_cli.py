"""The diagnostics as the CLI shows them: `inspect` (tables, JSON, --plot), `verify` and `diff` exit codes."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from rnninit_cli import init_
from rnninit_cli.cli import app

runner = CliRunner()


def _model(seed: int = 0) -> torch.nn.ModuleDict:
    torch.manual_seed(seed)
    return torch.nn.ModuleDict({"lstm": torch.nn.LSTM(24, 32, bidirectional=True), "gru": torch.nn.GRU(64, 32)})


def _saved(tmp_path: Path, name: str, scheme: str | None, *, rules: tuple[str, ...] = (), seed: int = 1) -> Path:
    model = _model()
    if scheme is not None:
        init_(model, scheme, seed=seed, rules=rules)
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return path


def _run(*args: str) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def test_verify_exit_codes(tmp_path: Path) -> None:
    keras = _saved(tmp_path, "keras.pt", "keras")
    per_gate = _saved(tmp_path, "gate.pt", "keras-gate")
    assert _run("verify", keras, "--scheme", "keras").exit_code == 0
    failed = _run("verify", per_gate, "--scheme", "keras")
    assert failed.exit_code == 1
    assert "NOT consistent" in failed.stdout
    assert "weight_hh_l0" in failed.stdout
    assert _run("verify", keras, "--scheme", "keras-gate").exit_code == 1
    assert _run("verify", keras, "--scheme", "no-such-scheme").exit_code == 2
    assert _run("verify", tmp_path / "missing.pt", "--scheme", "keras").exit_code == 3
    assert _run("verify", keras, "--scheme", "keras", "--rule", "bias_ih.x=ones").exit_code == 2


def test_verify_names_the_one_tampered_block(tmp_path: Path) -> None:
    model = _model()
    init_(model, "keras-gate", seed=3)
    with torch.no_grad():
        model["gru"].weight_hh_l0[32:64].mul_(1.5)  # the z block
    path = tmp_path / "tampered.pt"
    torch.save(model.state_dict(), path)
    result = _run("verify", path, "--scheme", "keras-gate", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [(f["name"], f["gate"]) for f in report["failures"]] == [("gru.weight_hh_l0", "z")]


def test_verify_respects_rules_and_only(tmp_path: Path) -> None:
    path = _saved(tmp_path, "rule.pt", "keras", rules=("bias_ih.f=constant(2)",))
    assert _run("verify", path, "--scheme", "keras").exit_code == 1
    assert _run("verify", path, "--scheme", "keras", "--rule", "bias_ih.f=constant(2)").exit_code == 0
    assert _run("verify", path, "--scheme", "keras", "--only", "gru").exit_code == 0


def test_diff_exit_codes_and_changed_blocks(tmp_path: Path) -> None:
    a = _saved(tmp_path, "a.pt", "keras")
    same = _saved(tmp_path, "same.pt", "keras")
    state = torch.load(a, weights_only=True)
    state["lstm.bias_hh_l0_reverse"][64:96] += 0.25  # gate g of the reverse direction
    b = tmp_path / "b.pt"
    torch.save(state, b)
    assert _run("diff", a, same).exit_code == 0
    result = _run("diff", a, b, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    changed = [(blk["name"], blk["gate"]) for layer in report["layers"] for blk in layer["blocks"] if blk["changed"]]
    assert changed == [("lstm.bias_hh_l0_reverse", "g")]
    assert report["layers"][0]["blocks"]  # the unchanged blocks are listed too
    delta = max(blk["max_abs_delta"] for layer in report["layers"] for blk in layer["blocks"])
    assert delta == pytest.approx(0.25, abs=1e-6)
    assert _run("diff", a, tmp_path / "missing.pt").exit_code == 3


def test_diff_reports_layers_in_one_side_only(tmp_path: Path) -> None:
    a = _saved(tmp_path, "a.pt", "keras")
    state = torch.load(a, weights_only=True)
    b = tmp_path / "only_lstm.pt"
    torch.save({k: v for k, v in state.items() if k.startswith("lstm.")}, b)
    result = _run("diff", a, b)
    assert result.exit_code == 1
    assert "only in" in result.stdout and "GRU" in result.stdout


def test_inspect_json_keeps_the_schema_and_adds_diagnostics(tmp_path: Path) -> None:
    path = _saved(tmp_path, "keras.pt", "keras")
    compact = json.loads(_run("inspect", path, "--json").stdout)  # no Gram matrices, spectra: as fast as the table
    assert {block["sv_min"] for param in compact["layers"][0]["params"] for block in param["blocks"]} == {None}
    result = _run("inspect", path, "--json", "--wide")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    layer = document["layers"][0]
    for key in ("prefix", "cell", "is_cell", "layer", "direction", "input_size", "hidden_size", "proj_size", "bias",
                "params"):
        assert key in layer
    assert layer["scheme"]["primary"] == "keras"
    block = layer["params"][1]["blocks"][0]
    for key in ("gate", "mean", "std", "min", "max", "max_abs", "orthogonality_error", "sv_min", "sv_max", "family"):
        assert key in block
    whole_hh = next(m for m in layer["matrices"] if m["kind"] == "weight_hh")
    weight = torch.load(path, weights_only=True)[whole_hh["name"]].double()
    assert whole_hh["orthogonality_error"] == pytest.approx((weight.T @ weight - torch.eye(32)).abs().max().item(),
                                                            abs=1e-6)
    assert document["warnings"] == []


def test_inspect_warns_about_a_doubled_forget_bias(tmp_path: Path) -> None:
    path = _saved(tmp_path, "double.pt", "keras", rules=("bias_hh.f=ones",))
    result = _run("inspect", path)
    assert result.exit_code == 0
    assert "warning:" in result.stderr and "effective forget bias is 2" in result.stderr


def test_inspect_shows_family_and_scheme_in_the_table(tmp_path: Path) -> None:
    result = _run("inspect", _saved(tmp_path, "orth.pt", "orthogonal"))
    assert result.exit_code == 0
    assert "orthogonal per gate" in result.stdout
    assert "scheme: orthogonal" in result.stdout


def test_inspect_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    image = tmp_path / "gates.png"
    result = _run("inspect", _saved(tmp_path, "k.pt", "keras"), "--plot", image)
    assert result.exit_code == 0, result.stderr
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_plot_without_matplotlib_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    image = tmp_path / "gates.png"
    result = _run("inspect", _saved(tmp_path, "k.pt", "keras"), "--plot", image)
    assert result.exit_code == 2
    assert "rnninit[plot]" in result.stderr
    assert not image.exists()


def test_diff_of_checkpoints_without_a_common_layer_says_so(tmp_path: Path) -> None:
    lstm, gru = tmp_path / "lstm.pt", tmp_path / "gru.pt"
    torch.save(torch.nn.LSTM(2, 3).state_dict(), lstm)
    torch.save({f"other.{name}": value for name, value in torch.nn.GRU(2, 3).state_dict().items()}, gru)
    result = _run("diff", lstm, gru)
    assert result.exit_code == 1
    assert result.stdout.strip().splitlines()[-1].endswith(f"no layer in common (1 only in {lstm}, 1 only in {gru})")
