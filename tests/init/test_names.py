"""Names a person types: schemes, scheme arguments, initializers, rule targets and gates, built-in layouts and `only`.

Case does not matter where only one name fits; an unknown name gets the closest names (difflib) rather than the
whole list; errors from the Python API name its arguments (`only=`, `strict=True`), the command line its flags.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import rnninit_cli
from rnninit_cli.errors import resolve_name, suggestion
from rnninit_cli.init.schemes import SCHEMES, Scheme

README = Path(__file__).resolve().parents[2] / "README.md"


def _error_line(result: Any) -> str:
    assert result.exit_code != 0 and result.stdout == "", (result.exit_code, result.stdout)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(("typed", "name"), [("Keras", "keras"), ("KERAS-GATE", "keras-gate"), ("Flax", "flax"),
                                              ("Chrono(TMAX=50)", "chrono")])
def test_scheme_names_and_arguments_ignore_case(typed: str, name: str) -> None:
    scheme, _ = rnninit_cli.get_scheme(typed)
    assert scheme.name == name
    lstm = nn.LSTM(3, 4)
    plan = rnninit_cli.init_(lstm, typed, seed=0)
    assert plan.scheme.startswith(name)  # recorded as registered: `keras`, not `Keras`
    reference = nn.LSTM(3, 4)
    rnninit_cli.init_(reference, typed.lower(), seed=0)
    for (key, value), (_, expected) in zip(lstm.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(value, expected), key


def test_initializers_targets_and_gates_ignore_case() -> None:
    rule = rnninit_cli.parse_rule("WEIGHT_HH=ORTHOGONAL(per=gate)")
    assert (rule.target, rule.initializer, str(rule)) == ("weight_hh", "orthogonal", "weight_hh=orthogonal(per=gate)")
    assert rnninit_cli.get_initializer("Xavier_Uniform").name == "xavier_uniform"
    lstm = nn.LSTM(3, 4)
    plan = rnninit_cli.init_(lstm, "keras", rules=["Bias_HH.F=constant(3)"], seed=0)
    assert torch.all(lstm.bias_hh_l0[4:8] == 3) and torch.all(lstm.bias_hh_l0[:4] == 0)
    assert plan.rules == ("bias_hh.f=constant(3)",)


def test_builtin_layouts_ignore_case() -> None:
    (declaration,) = rnninit_cli.parse_layout("TorchAudio-RNNT", "layouts")
    assert declaration.name == "torchaudio-rnnt"


@pytest.mark.parametrize(
    ("call", "typed", "suggested"),
    [
        (lambda: rnninit_cli.get_scheme("kears"), "kears", "'keras'"),
        (lambda: rnninit_cli.get_scheme("chrono(tmx=100)"), "tmx", "'tmax'"),
        (lambda: rnninit_cli.get_scheme("irnn(scael=2)"), "scael", "'scale'"),
        (lambda: rnninit_cli.get_initializer("orthgonal"), "orthgonal", "'orthogonal'"),
        (lambda: rnninit_cli.init_(nn.LSTM(3, 4), "keras", rules=["weight_hh=orthgonal"], seed=0), "orthgonal",
         "'orthogonal'"),
        (lambda: rnninit_cli.parse_rule("wieght_hh=zeros"), "wieght_hh", "'weight_hh'"),
        (lambda: rnninit_cli.init_(nn.LSTM(3, 4), "keras", rules=["bias_ih.forget=ones"], seed=0), "forget",
         "bias_ih.f?"),
        (lambda: rnninit_cli.init_(nn.GRU(3, 4), "keras", rules=["weight_hh.zz=zeros"], seed=0), "zz", "'z'"),
        (lambda: rnninit_cli.parse_layout("torchaudio-rnn", "layouts"), "torchaudio-rnn", "'torchaudio-rnnt'"),
        (lambda: rnninit_cli.parse_layout("speechbrain_ligru", "layouts"), "speechbrain_ligru",
         "'speechbrain-ligru'"),
    ],
)
def test_an_unknown_name_gets_the_closest_instead_of_the_whole_list(call: Callable[[], Any], typed: str,
                                                                    suggested: str) -> None:
    with pytest.raises(rnninit_cli.UsageError) as caught:
        call()
    message = str(caught.value)
    assert typed in message and f"did you mean {suggested}" in message, message
    assert len(message) < 200, message
    assert not {"lecun_normal", "flax", "kaiming_normal", "bias_hh"} & set(re.findall(r"[\w-]+", message)), message


def test_a_name_far_from_every_known_one_lists_them_when_they_are_few() -> None:
    with pytest.raises(rnninit_cli.SchemeError, match="known: pytorch, keras, keras-gate, flax, orthogonal"):
        rnninit_cli.get_scheme("zzqx")


def test_case_decides_where_two_names_differ_only_by_case() -> None:
    assert resolve_name("Foo", ["foo", "FOO"]) is None
    assert resolve_name("FOO", ["foo", "FOO"]) == "FOO"
    assert resolve_name("fOo", ["foo", "bar"]) == "foo"
    assert suggestion("qqqq", ["keras", "flax"]) == ""
    twin = Scheme("Keras", "the same name as keras but for case", ("weight=zeros",), "a test")
    rnninit_cli.register_scheme(twin)
    try:
        assert rnninit_cli.get_scheme("Keras")[0] is twin
        assert rnninit_cli.get_scheme("keras")[0] is SCHEMES["keras"]
        with pytest.raises(rnninit_cli.SchemeError, match="did you mean"):
            rnninit_cli.get_scheme("KERAS")  # two names fit: no guess
    finally:
        del SCHEMES["Keras"]


def _many_layers(count: int) -> dict[str, torch.Tensor]:
    return {f"encoder.block{index}.rnn.{name}": tensor for index in range(count)
            for name, tensor in nn.GRU(2, 3).state_dict().items()}


def test_only_matching_nothing_is_short_counts_and_suggests() -> None:
    """A count and a few names, whatever the file's size; the closest part of a name; the API's `only=`."""
    state = _many_layers(200)
    with pytest.raises(rnninit_cli.NothingToDoError) as caught:
        rnninit_cli.plan(state, "keras", only="encodr")
    message = str(caught.value)
    assert message.startswith("only='encodr' matches none of the 800 recurrent parameter(s)"), message
    assert "did you mean 'encoder'?" in message
    assert len(message) < 300 and message.count("weight_") <= 3, message
    assert "--only" not in message


def test_api_errors_name_the_api_arguments(tmp_path: Path) -> None:
    state = {**nn.LSTM(3, 4).state_dict()}
    state["bias_ih_l0"] = torch.zeros(15)
    with pytest.raises(rnninit_cli.LayoutError) as caught:
        rnninit_cli.plan(state, "keras", strict=True)
    assert "strict=True" in str(caught.value) and "--strict" not in str(caught.value)
    with pytest.raises(rnninit_cli.SchemeError) as caught:
        rnninit_cli.plan({**nn.RNN(3, 4).state_dict()}, "chrono(tmax=9)")
    assert "select other layers with only" in str(caught.value) and "--only" not in str(caught.value)
    with pytest.raises(rnninit_cli.UsageError) as caught:
        rnninit_cli.plan(nn.LSTM(3, 4).state_dict(), "keras", only="a(?=b)")
    assert str(caught.value).startswith("only=a(?=b) "), caught.value  # the argument: only=...


def test_api_layout_and_save_errors_name_the_api_arguments(tmp_path: Path) -> None:
    with pytest.raises(rnninit_cli.LayoutDeclarationError) as caught:
        rnninit_cli.init_(nn.LSTM(3, 4), "keras", layouts=["speechbrain-ligru", "torchaudio-rnn"], seed=0)
    assert str(caught.value).startswith("layouts[1]: no built-in layout named 'torchaudio-rnn'"), caught.value
    from rnninit_cli.formats.checkpoint import Checkpoint

    checkpoint = Checkpoint("pt", {"w": torch.zeros(2), "epoch": 3}, {"w": torch.zeros(2)})
    with pytest.raises(rnninit_cli.OutputError) as caught:
        rnninit_cli.save_checkpoint(checkpoint, tmp_path / "out.safetensors", "safetensors")
    assert "tensors_only=True" in str(caught.value) and "--tensors-only" not in str(caught.value)


def test_the_cli_names_its_flags_instead(cli: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    state = {**_many_layers(30), "bad.bias_ih_l0": torch.zeros(15), "bad.weight_ih_l0": torch.zeros(16, 2),
             "bad.weight_hh_l0": torch.zeros(16, 4)}
    torch.save(state, path)
    torch.save({"model": nn.GRU(2, 3).state_dict(), "epoch": 3}, tmp_path / "train.pt")
    line = _error_line(cli("apply", path, "--scheme", "keras", "--dry-run", "--only", "encodr"))
    assert line.startswith("error: --only 'encodr' matches none of the 120 recurrent parameter(s)"), line
    assert "did you mean 'encoder'?" in line and len(line) < 300
    line = _error_line(cli("verify", path, "--scheme", "keras", "--only", "encodr"))
    assert "--only 'encodr' matches none" in line and "did you mean 'encoder'?" in line
    line = _error_line(cli("apply", path, "--scheme", "keras", "--dry-run", "--strict"))
    assert "(--strict)" in line and "strict=True" not in line
    line = _error_line(cli("apply", tmp_path / "train.pt", "--scheme", "keras", "-o", tmp_path / "out.safetensors"))
    assert "pass --tensors-only" in line and "tensors_only" not in line
    line = _error_line(cli("inspect", path, "--only", "a(?=b)"))
    assert line.startswith("error: --only=a(?=b) "), line


def test_the_cli_takes_any_case_and_suggests(cli: Callable[..., Any], tmp_path: Path) -> None:
    path = tmp_path / "lstm.pt"
    torch.save(nn.LSTM(3, 4).state_dict(), path)
    typed = cli("apply", path, "--scheme", "Keras", "--rule", "WEIGHT_HH=Orthogonal(per=gate)", "--dry-run",
                "--seed", "1")
    plain = cli("apply", path, "--scheme", "keras", "--rule", "weight_hh=orthogonal(per=gate)", "--dry-run",
                "--seed", "1")
    assert typed.exit_code == plain.exit_code == 0
    assert typed.stdout == plain.stdout
    assert cli("verify", path, "--scheme", "PYTORCH").exit_code in (0, 1)
    line = _error_line(cli("apply", path, "--scheme", "kears", "--dry-run"))
    assert line == "error: unknown scheme 'kears'; did you mean 'keras'?"
    line = _error_line(cli("apply", path, "--scheme", "keras", "--rule", "bias_ih.F=ones", "--rule",
                           "weight_hh.x=zeros", "--dry-run"))
    assert "weight_hh.x" in line and "weight_hh.i, weight_hh.f, weight_hh.g, weight_hh.o" in line
    line = _error_line(cli("inspect", path, "--layout", "torchaudio_rnnt"))
    assert "did you mean 'torchaudio-rnnt'?" in line


def test_every_exception_the_docs_name_is_exported() -> None:
    from rnninit_cli import errors

    classes = {name for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, errors.RnnInitError)}
    named = set(re.findall(r"`([A-Z]\w*(?:Error|Warning))`", README.read_text(encoding="utf-8")))
    assert {"PlacementError", "MetaDeviceError"} <= named
    for name in sorted(classes | named):
        assert name in rnninit_cli.__all__, name
        assert getattr(rnninit_cli, name).__name__ == name


@pytest.mark.parametrize("rule", ["bias_ih.=ones", "weight_hh.=orthogonal"])
def test_an_empty_gate_is_refused_not_widened_to_every_gate(rule: str) -> None:
    """`bias_ih.$GATE=ones` with GATE unset must not write ones into every gate."""
    from rnninit_cli.errors import RuleError
    from rnninit_cli.init.schemes import parse_rule

    with pytest.raises(RuleError, match=r"gate after .* is empty"):
        parse_rule(rule)
