"""Shared fixtures: small real checkpoints (made by tests/builders.py) and a CLI runner."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from builders import (
    RunsCode,
    build_state,
)
from json_contract import check_json_output
from safetensors.torch import save_file
from typer.testing import CliRunner, Result


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
    """cli(*args, input=bytes|None) runs the Typer app in-process; stdout and stderr are separate. Every --json
    document it prints is checked against its shipped JSON Schema (tests/json_contract.py)."""
    from rnninit_cli.cli import app

    runner = CliRunner()

    def invoke(*args: Any, input: bytes | str | None = None, env: dict[str, str] | None = None) -> Result:
        result = runner.invoke(app, [str(a) for a in args], input=input, env=env)
        with contextlib.suppress(ValueError):  # stdout is not text: a checkpoint written to `-o -`
            check_json_output([str(a) for a in args], result.stdout)  # every --json document meets its schema
        return result

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
