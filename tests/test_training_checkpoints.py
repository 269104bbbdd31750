"""Training checkpoints as libraries save them (torch optimizers, Lightning, fastai, OpenNMT-py, whole pickled
modules, DCP folders): optimizer state is never a layer, a look-alike or rewritten, and is called stale exactly when
it holds buffers of a rewritten parameter; every `--layout` hint that inspect (or apply, when it finds nothing)
gives works when fed back, pairing input weight with input weight."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from rnninit_cli.cli import app
from rnninit_cli.formats.checkpoint import read_checkpoint
from tests.terminals import run_on_terminal, terminal_environment
from tests.wild_models import speechbrain_ligru, torchaudio_rnnt_predictor

D, H = 8, 16  # input and hidden size of the trained LSTM: no other tensor of these checkpoints has its shapes


def cli(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def arrays(path: Path) -> dict[str, bytes]:
    """Every tensor's bytes, read by rnninit's own reader (no class a file names is imported)."""
    opened = read_checkpoint(path)
    return {name: opened.reader(name).tobytes() for name, record in opened.records.items()
            if not record.dtype.startswith("q")}


def changed(before: Path, after: Path) -> set[str]:
    old, new = arrays(before), arrays(after)
    assert set(old) == set(new)
    return {name for name in old if old[name] != new[name]}


def look_alike_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: not recognised")]


def hints(stderr: str) -> list[str]:
    """Each --layout value the warnings suggest, as a shell would pass it."""
    found = [shlex.split(match)[0] for match in re.findall(r"--layout (.+)$", stderr, re.MULTILINE)]
    return list(dict.fromkeys(found))


# --------------------------------------------------------------------------------------------------------------
# training checkpoints


class Net(nn.Module):
    def __init__(self, layers: int = 1, bidirectional: bool = False) -> None:
        super().__init__()
        self.rnn = nn.LSTM(D, H, num_layers=layers, bidirectional=bidirectional)
        self.head = nn.Linear(H * (2 if bidirectional else 1), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


def trained(make_optimizer: Callable[[Net], torch.optim.Optimizer], **net: Any) -> tuple[Net, torch.optim.Optimizer]:
    """A Net and its optimizer after two steps, under a fixed seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Net(**net)
        optimizer = make_optimizer(model)
        for _ in range(2):
            optimizer.zero_grad()
            model(torch.randn(5, 2, D)).pow(2).mean().backward()
            optimizer.step()
    return model, optimizer


def adam(model: Net) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-3)


def sgd(model: Net) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1)


def script(make_optimizer: Callable[[Net], torch.optim.Optimizer]) -> dict[str, Any]:
    model, optimizer = trained(make_optimizer)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 2}


def lightning() -> dict[str, Any]:
    """The keys of Lightning's `Trainer.save_checkpoint` (checkpoint_connector.py, dump_checkpoint)."""
    model, optimizer = trained(lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    return {"epoch": 1, "global_step": 2, "pytorch-lightning_version": "2.4.0",
            "state_dict": {f"model.{key}": value for key, value in model.state_dict().items()},
            "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 2, "completed": 1}}}},
            "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None}},
            "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [scheduler.state_dict()],
            "hparams_name": "kwargs", "hyper_parameters": {"hidden": H}}


def _fastcore_list_init(self: Any, items: list[Any]) -> None:
    self.items = items


# stands for fastcore's `L`, which fastai's optimizer keeps its `hypers` in: pickled by its name, with its items
FastcoreL = type("L", (), {"__module__": "fastcore.foundation", "__init__": _fastcore_list_init})


@pytest.fixture
def fastcore(monkeypatch: pytest.MonkeyPatch) -> None:
    """`fastcore.foundation.L` importable, so that pickle names the class as fastai's checkpoints do."""
    foundation = types.ModuleType("fastcore.foundation")
    foundation.L = FastcoreL  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fastcore", types.ModuleType("fastcore"))
    monkeypatch.setitem(sys.modules, "fastcore.foundation", foundation)


def fastai(momentum: bool = True) -> dict[str, Any]:
    """What fastai's `learn.save` writes: {'model', 'opt'}, the optimizer's `state_dict()` being
    {'state': [its per-parameter dicts, in parameter order], 'hypers': L of dicts} (fastai/optimizer.py); Adam keeps
    grad_avg, sqr_avg and step, plain SGD nothing but do_wd."""
    model, optimizer = trained(adam)
    states = []
    for parameter in model.parameters():
        moments = optimizer.state[parameter]
        states.append({"grad_avg": moments["exp_avg"], "sqr_avg": moments["exp_avg_sq"], "step": 2, "do_wd": True}
                      if momentum else {"do_wd": True})
    hypers = FastcoreL([{"lr": 1e-3, "mom": 0.9, "sqr_mom": 0.99, "eps": 1e-5, "wd": 0.01}])
    return {"model": model.state_dict(), "opt": {"state": states, "hypers": hypers}}


def opennmt() -> dict[str, Any]:
    """OpenNMT-py's model_saver: model, generator, vocab, opt (the command line, a Namespace) and optim (its
    Optimizer.state_dict(): training_step, decay_step and the torch optimizer's state), here trained by plain SGD."""
    model, optimizer = trained(sgd)
    state = model.state_dict()
    return {"model": {f"encoder.{key}": value for key, value in state.items() if key.startswith("rnn.")},
            "generator": {key.removeprefix("head."): value for key, value in state.items() if key.startswith("head.")},
            "vocab": {"src": ["<unk>", "<blank>", "a"]}, "opt": argparse.Namespace(rnn_size=H, optim="sgd"),
            "optim": {"training_step": 3, "decay_step": 3, "optimizer": optimizer.state_dict()}}


def hand_rolled() -> dict[str, Any]:
    """An optimizer written by hand: its state maps parameter ids to their buffers, with no param_groups."""
    model, optimizer = trained(adam)
    ids = {id(parameter): index for index, parameter in enumerate(model.parameters())}
    return {"model": model.state_dict(), "opt": {"state": {ids[id(p)]: {"m": s["exp_avg"], "v": s["exp_avg_sq"]}
                                                           for p, s in optimizer.state.items()}, "lr": 1e-3}}


def hand_rolled_beside_model() -> dict[str, Any]:
    """The same state saved beside the model, at the top of the checkpoint: only that entry is optimizer state."""
    saved = hand_rolled()
    return {"model": saved["model"], "state": saved["opt"]["state"], "epoch": 3}


CHECKPOINTS: dict[str, tuple[Callable[[], Any], bool]] = {  # builder, whether it holds moments of the LSTM
    "adam": (lambda: script(adam), True),
    "sgd-momentum": (lambda: script(lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)), True),
    "sgd": (lambda: script(sgd), False),
    "head-only-adam": (lambda: script(lambda m: torch.optim.Adam(m.head.parameters())), False),
    "lightning": (lightning, True),
    "fastai": (fastai, True),
    "fastai-sgd": (lambda: fastai(momentum=False), False),
    "opennmt": (opennmt, False),
    "hand-rolled": (hand_rolled, True),
    "hand-rolled-beside-model": (hand_rolled_beside_model, True),
    "whole-module": (lambda: trained(adam, layers=2, bidirectional=True)[0], False),
}


@pytest.fixture(params=sorted(CHECKPOINTS))
def checkpoint(request: pytest.FixtureRequest, tmp_path: Path, fastcore: None) -> tuple[Path, bool]:
    build, moments = CHECKPOINTS[request.param]
    path = tmp_path / f"{request.param}.pt"
    torch.save(build(), path)
    return path, moments


def test_optimizer_state_is_no_look_alike(checkpoint: tuple[Path, bool]) -> None:
    path, _ = checkpoint
    inspected = cli("inspect", path)
    assert inspected.exit_code == 0, inspected.stderr
    assert look_alike_lines(inspected.stderr) == [], inspected.stderr
    assert "--layout" not in inspected.stderr
    document = json.loads(cli("inspect", path, "--json").stdout)
    assert document["suspects"] == [] and document["skipped"] == []
    assert {layer["cell"] for layer in document["layers"]} == {"lstm"} and document["layers"]


def test_stale_warning_exactly_when_the_optimizer_holds_buffers_of_a_rewritten_parameter(
        checkpoint: tuple[Path, bool], tmp_path: Path) -> None:
    path, moments = checkpoint
    output = tmp_path / "out.pt"
    applied = cli("apply", path, "-s", "keras", "--seed", 1, "-o", output)
    assert applied.exit_code == 0, applied.stderr
    assert "shares its storage" not in applied.stderr  # a pickled LSTM's _flat_weights are its own parameters
    stale = [line for line in applied.stderr.splitlines() if "stale" in line]
    assert len(stale) == (1 if moments else 0), applied.stderr
    if moments:
        assert "--drop-optimizer-state" in stale[0]
    touched = changed(path, output)
    assert touched and all(re.search(r"(weight|bias)_(ih|hh)_l\d|_flat_weights/\d+$", name) for name in touched)
    assert not any(name.startswith(("optimizer", "opt/", "optim/", "state/")) for name in touched)


def test_a_layout_cannot_reach_into_optimizer_state(tmp_path: Path) -> None:
    path, output = tmp_path / "adam.pt", tmp_path / "out.pt"
    torch.save(script(adam), path)
    declared = r"cell=lstm weight_ih=optimizer/state/(\d+)/exp_avg weight_hh=optimizer/state/(\d+)/exp_avg_sq"
    applied = cli("apply", path, "-s", "keras", "--seed", 1, "-o", output, "--layout", declared)
    assert applied.exit_code == 2 and "matches no recurrent cell" in applied.stderr, applied.stderr
    assert not output.exists()


@pytest.mark.parametrize("optimizer_key", ["optim", "hand-rolled"])
def test_dcp_optimizer_entries_are_no_look_alikes(tmp_path: Path, optimizer_key: str) -> None:
    import torch.distributed.checkpoint as dcp

    model, optimizer = trained(adam)
    state = optimizer.state_dict() if optimizer_key == "optim" else {"state": hand_rolled()["opt"]["state"]}
    folder = tmp_path / "dcp"
    dcp.save({"model": model.state_dict(), optimizer_key: state}, checkpoint_id=folder, no_dist=True)
    inspected = cli("inspect", folder)
    assert inspected.exit_code == 0, inspected.stderr
    assert look_alike_lines(inspected.stderr) == [], inspected.stderr
    applied = cli("apply", folder, "-s", "keras", "--seed", 1, "-o", tmp_path / "out")
    assert applied.exit_code == 0, applied.stderr
    assert sum("stale" in line for line in applied.stderr.splitlines()) == 1, applied.stderr


# --------------------------------------------------------------------------------------------------------------
# hints that work


class NamedGRU(nn.Module):
    """A GRU cell under names of its own, input 12, hidden 16 (so its (48, 12) input weight also reads as an LSTM's
    (4·12, 12) recurrent one), its recurrent weight registered second, or first with `recurrent_first`."""

    def __init__(self, input_name: str, recurrent_name: str, *, recurrent_first: bool = False) -> None:
        super().__init__()
        made = {input_name: nn.Linear(12, 3 * 16), recurrent_name: nn.Linear(16, 3 * 16)}
        for name in sorted(made, key=lambda name: (name == input_name) == recurrent_first):
            setattr(self, name, made[name])


class Decoder(nn.Module):
    def __init__(self, input_name: str, recurrent_name: str, *, recurrent_first: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList([NamedGRU(input_name, recurrent_name, recurrent_first=recurrent_first)])
        self.out = nn.Linear(16, 5)


class ParameterListLSTM(nn.Module):
    """An LSTM cell whose weights sit in a ParameterList: `cell.weights.0` (input) and `cell.weights.1`."""

    def __init__(self) -> None:
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(4 * 10, 6)), nn.Parameter(torch.randn(4 * 10, 10))])


def quantized_lstm() -> dict[str, Any]:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(D, H, num_layers=2)
            self.head = nn.Linear(H, 3)

    with warnings.catch_warnings():  # torch.ao.quantization says it is deprecated
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(Model(), {nn.LSTM}, dtype=torch.qint8)
    return quantized.state_dict()


# name → (state to save, expected hint or None for a written one, recurrent weights, input weights, gates)
HINTED: dict[str, Callable[[], tuple[Any, str | None, list[str], list[str], int]]] = {
    "torchaudio-rnnt": lambda: (
        {"model": {f"transducer.{k}": v for k, v in torchaudio_rnnt_predictor()[1].items()}},
        "torchaudio-rnnt", [f"model/transducer.predictor.lstm_layers.{k}.p2g.weight" for k in range(2)],
        [f"model/transducer.predictor.lstm_layers.{k}.x2g.weight" for k in range(2)], 4),
    "speechbrain-ligru": lambda: (
        {"state_dict": {f"enc.{k}": v for k, v in speechbrain_ligru(layers=3)[1].items()}}, "speechbrain-ligru",
        [f"state_dict/enc.rnn.{k}.u.weight" for k in range(3)], [f"state_dict/enc.rnn.{k}.w.weight" for k in range(3)],
        2),
    # names that say nothing, input first: the order decides (the input name sorts first too)
    "gru-neutral-names": lambda: (Decoder("proj_in", "proj_state").state_dict(), None,
                                  ["layers.0.proj_state.weight"], ["layers.0.proj_in.weight"], 3),
    # the recurrent weight registered first: its name decides
    "gru-named-recurrent-first": lambda: (Decoder("input_proj", "state_proj", recurrent_first=True).state_dict(),
                                          None, ["layers.0.state_proj.weight"], ["layers.0.input_proj.weight"], 3),
    "parameter-list": lambda: ({"cell": ParameterListLSTM().state_dict()}, None, ["cell/weights.1"],
                               ["cell/weights.0"], 4),
}


@pytest.fixture(params=sorted(HINTED))
def hinted(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, str | None, list[str], list[str],
                                                                            int]]:
    torch.manual_seed(0)
    state, hint, recurrent, inputs, gates = HINTED[request.param]()
    path = tmp_path / f"{request.param}.pt"
    torch.save(state, path)
    yield path, hint, recurrent, inputs, gates


def test_every_hint_works_when_fed_back(hinted: tuple[Path, str | None, list[str], list[str], int],
                                        tmp_path: Path) -> None:
    path, expected, recurrent, inputs, gates = hinted
    inspected = cli("inspect", path)
    assert inspected.exit_code == 0, inspected.stderr
    offered = hints(inspected.stderr)
    assert len(offered) == 1, inspected.stderr
    if expected is not None:
        assert offered == [expected] and f"--layout {expected}\n" in inspected.stderr + "\n"
    output = tmp_path / "out.pt"
    applied = cli("apply", path, "-s", "keras", "--seed", 2, "-o", output, "--layout", offered[0], "--json")
    assert applied.exit_code == 0, applied.stderr
    layers = json.loads(applied.stdout)["layers"]
    assert len(layers) == len(recurrent)
    for layer, name, input_name in zip(layers, recurrent, inputs, strict=True):
        blocks = {param["kind"]: len(param["blocks"]) for param in layer["params"]}
        assert blocks["weight_hh"] == blocks["weight_ih"] == gates, layer
        after = torch.load(output, weights_only=True)
        tensors = dict(_flat(after))
        hh, ih = tensors[name], tensors[input_name]
        assert layer["hidden_size"] == hh.shape[1] and layer["input_size"] == ih.shape[1], layer
        # keras: the recurrent weight orthogonal as a whole (W Wᵀ = I over its (G·h, h) columns)
        gram = hh.T.double() @ hh.double()
        assert torch.allclose(gram, torch.eye(hh.shape[1], dtype=torch.float64), atol=1e-5), name
    touched = changed(path, output)
    assert set(recurrent) | set(inputs) <= touched
    assert all(re.search(r"(weight|bias)$|weights\.\d$", name) for name in touched), touched


def _flat(node: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(node, torch.Tensor):
        yield prefix, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _flat(value, f"{prefix}/{key}" if prefix else str(key))


def test_apply_that_finds_nothing_gives_the_hints_of_inspect(tmp_path: Path) -> None:
    path = tmp_path / "rnnt.pt"
    torch.save({"model": torchaudio_rnnt_predictor()[1]}, path)
    inspected, applied = cli("inspect", path), cli("apply", path, "-s", "keras", "-o", tmp_path / "out.pt")
    assert applied.exit_code == 2 and "error: no recurrent parameters found" in applied.stderr, applied.stderr
    error_line = next(line for line in applied.stderr.splitlines() if line.startswith("error:"))
    assert "declared with --layout)" in error_line, error_line  # the flag's name, not the API's `layouts`
    assert look_alike_lines(applied.stderr) == look_alike_lines(inspected.stderr) != []
    assert hints(applied.stderr) == ["torchaudio-rnnt"]
    assert not (tmp_path / "out.pt").exists()


def test_quantized_lstm_gets_no_hint_that_would_be_refused(tmp_path: Path) -> None:
    path = tmp_path / "quantized.pt"
    torch.save(quantized_lstm(), path)
    inspected = cli("inspect", path)
    assert inspected.exit_code == 0, inspected.stderr
    for layout in hints(inspected.stderr):
        dry = cli("apply", path, "-s", "keras", "--dry-run", "--layout", layout)
        assert dry.exit_code == 0, (layout, dry.stderr)


def test_hint_at_a_narrow_terminal_stays_whole(tmp_path: Path) -> None:
    path = tmp_path / "ligru.pt"
    torch.save({"model": speechbrain_ligru()[1]}, path)
    shown = run_on_terminal(["-m", "rnninit_cli", "inspect", str(path)], columns=60, env=terminal_environment())
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    assert plain.count("declare it with --layout speechbrain-ligru") == 2, plain
