"""Shared test builders: small real checkpoints built from torch.nn modules, and independent readers
(torch.load / safetensors / zipfile, never rnninit's own loader) to check what was written. Plain functions,
imported by the tests (`from builders import ...`); conftest.py turns some of them into fixtures."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

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
        return dict(flat_tensors(root))
    from safetensors.torch import load

    return load(data)


def flat_tensors(node: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(path, tensor) of every tensor in nested dicts, lists and tuples, named as rnninit names them."""
    if isinstance(node, torch.Tensor):
        yield prefix or "tensor", node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from flat_tensors(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from flat_tensors(value, f"{prefix}/{index}" if prefix else str(index))


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
