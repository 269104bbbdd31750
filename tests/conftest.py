"""Shared fixtures: small real checkpoints built from torch.nn modules, a CLI runner, and independent
readers (torch.load / safetensors / zipfile, never rnninit's own loader) to check what was written."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner, Result

# Sizes of the fixture model (tests use them to slice gate blocks themselves).
EMB = (10, 5)
LSTM_INPUT, LSTM_HIDDEN = 5, 6
GRU_INPUT, GRU_HIDDEN = 2 * LSTM_HIDDEN, 4
HEAD_OUT = 3


class TinyModel(torch.nn.Module):
    """Embedding -> 2-layer bidirectional LSTM -> GRU -> Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(*EMB)
        self.lstm = torch.nn.LSTM(LSTM_INPUT, LSTM_HIDDEN, num_layers=2, bidirectional=True)
        self.gru = torch.nn.GRU(GRU_INPUT, GRU_HIDDEN)
        self.head = torch.nn.Linear(GRU_HIDDEN, HEAD_OUT)


class RunsCode:
    """Unpickling this runs `touch MARKER`: the kind of file rnninit must refuse without running."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch '{self.marker}'",))


def build_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The state_dict of a TinyModel built under a fixed seed (the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyModel()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def read_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    """Flat tensors of a file, read with torch / safetensors directly (format told by content)."""
    data = Path(path).read_bytes()
    return read_tensor_bytes(data)


def read_tensor_bytes(data: bytes) -> dict[str, torch.Tensor]:
    if data.startswith(b"PK"):
        root = torch.load(io.BytesIO(data), weights_only=True)
        return dict(_flatten(root, ""))
    from safetensors.torch import load

    return load(data)


def _flatten(node: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(node, torch.Tensor):
        yield prefix or "tensor", node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _flatten(value, f"{prefix}/{index}" if prefix else str(index))


def file_format(path: Path | str) -> str:
    """'pt' (zip archive) or 'safetensors', from the bytes alone."""
    head = Path(path).read_bytes()[:9]
    if head.startswith(b"PK\x03\x04"):
        return "pt"
    assert head[8:9] == b"{", f"{path} is neither a zip torch.save file nor safetensors: {head!r}"
    return "safetensors"


def read_metadata(path: Path | str) -> dict[str, str]:
    """safetensors `__metadata__`, or the JSON record `*/rnninit.json` of a .pt zip archive."""
    if file_format(path) == "safetensors":
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    with zipfile.ZipFile(path) as archive:
        records = [name for name in archive.namelist() if name.endswith("/rnninit.json")]
        assert len(records) <= 1, records
        return json.loads(archive.read(records[0])) if records else {}


def stats(values: torch.Tensor) -> dict[str, float]:
    """mean, population std, min, max in float64, computed here (not by rnninit)."""
    data = values.detach().to(torch.float64).reshape(-1)
    mean = data.sum().item() / data.numel()
    var = ((data - mean) ** 2).sum().item() / data.numel()
    return {"mean": mean, "std": var**0.5, "min": data.min().item(), "max": data.max().item()}


def temp_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".rnninit-tmp"))


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def model_state() -> dict[str, torch.Tensor]:
    """A fresh float32 TinyModel state dict (emb, lstm 2 layers bidirectional, gru, head)."""
    return build_state()


@pytest.fixture
def model_pt(tmp_path: Path, model_state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "model.pt"
    torch.save(model_state, path)
    return path


@pytest.fixture
def model_safetensors(tmp_path: Path, model_state: dict[str, torch.Tensor]) -> Path:
    """The TinyModel as .safetensors with metadata of its own: {"author": "me"}."""
    path = tmp_path / "model.safetensors"
    save_file(model_state, str(path), metadata={"author": "me"})
    return path


@pytest.fixture
def training_pt(tmp_path: Path, model_state: dict[str, torch.Tensor]) -> Path:
    """A training-loop checkpoint: nested state dict plus non-tensor entries."""
    path = tmp_path / "train.ckpt"
    torch.save({"state_dict": model_state, "epoch": 3, "hp": {"lr": 0.1}, "history": [0.5, 0.25]}, path)
    return path


@pytest.fixture
def half_state() -> dict[str, torch.Tensor]:
    """TinyModel with the embedding and LSTM in bfloat16, the GRU and head in float16."""
    state = build_state(seed=1)
    return {name: tensor.to(torch.bfloat16 if name.startswith(("emb", "lstm")) else torch.float16)
            for name, tensor in state.items()}


@pytest.fixture
def half_pt(tmp_path: Path, half_state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "half.pt"
    torch.save(half_state, path)
    return path


@pytest.fixture
def half_safetensors(tmp_path: Path, half_state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "half.safetensors"
    save_file(half_state, str(path), metadata={"author": "me"})
    return path


@pytest.fixture
def no_recurrent_pt(tmp_path: Path) -> Path:
    """A state dict with an embedding and a linear layer only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        state = {**{f"emb.{k}": v for k, v in torch.nn.Embedding(4, 3).state_dict().items()},
                 **{f"fc.{k}": v for k, v in torch.nn.Linear(3, 2).state_dict().items()}}
    path = tmp_path / "plain.pt"
    torch.save(state, path)
    return path


@pytest.fixture
def bad_layout_pt(tmp_path: Path) -> Path:
    """An LSTM state dict whose bias_ih_l0 has 15 entries instead of 4 * 4 = 16."""
    state = torch.nn.LSTM(3, 4).state_dict()
    state["bias_ih_l0"] = torch.zeros(15)
    path = tmp_path / "bad_layout.pt"
    torch.save(state, path)
    return path


@pytest.fixture
def rnn_pt(tmp_path: Path) -> Path:
    """A plain (tanh) RNN under the prefix `rnn.`, next to a linear layer."""
    state = {**{f"rnn.{k}": v for k, v in torch.nn.RNN(3, 4).state_dict().items()},
             **{f"fc.{k}": v for k, v in torch.nn.Linear(4, 2).state_dict().items()}}
    path = tmp_path / "rnn.pt"
    torch.save(state, path)
    return path


@pytest.fixture
def code_running_pt(tmp_path: Path) -> tuple[Path, Path]:
    """(a torch.save file that would run `touch MARKER` if unpickled unsafely, MARKER's path)."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"lstm.weight_ih_l0": torch.zeros(4, 2), "payload": RunsCode(marker)}, path)
    return path, marker


@pytest.fixture
def code_running_pickle(tmp_path: Path) -> tuple[Path, Path]:
    """(a plain pickle file, not torch.save, that would run `touch MARKER`, MARKER's path)."""
    import pickle

    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"payload": RunsCode(marker)}, protocol=2))
    return path, marker


@pytest.fixture
def cli() -> Callable[..., Result]:
    """cli(*args, input=bytes|None) runs the Typer app in-process; stdout and stderr are separate."""
    from rnninit_cli.cli import app

    runner = CliRunner()

    def invoke(*args: Any, input: bytes | str | None = None, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(app, [str(a) for a in args], input=input, env=env)

    return invoke


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    """umask(value) sets the process umask for the rest of the test; the old one is restored."""
    old = os.umask(0o022)
    os.umask(old)
    try:
        yield os.umask
    finally:
        os.umask(old)
