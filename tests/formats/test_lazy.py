"""Tensors read when asked (formats/lazy.py): a FileArray's rows and pieces are the tensor's stored elements as torch
loads them (bfloat16: its bits), bit for bit, whatever the dtype, the layout in the file (views into a shared storage,
transposed views) and the piece size; it refuses what the whole-tensor reader refuses, with the same message."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rnninit_cli.errors import CheckpointError
from rnninit_cli.formats.lazy import DeferredArray, FileArray, lazy_arrays
from rnninit_cli.formats.tensorfile import index_file

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.bool, torch.complex64)


def _tensors(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A plain tensor, views at offsets into one storage, a transposed view and a 1-D tensor."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(7 * 13 + 40, generator=generator) * 10
    flat = values.to(dtype) if dtype != torch.bool else values > 0
    return {"plain": flat[:91].reshape(7, 13).clone(), "view": flat[3:94].view(7, 13), "tail": flat[94:],
            "transposed": flat[:91].reshape(13, 7).t(), "rows": flat[20:60].view(10, 4)}


def _as_bits(values: np.ndarray | torch.Tensor) -> bytes:
    """The values' bytes in row-major order (comparable across numpy and torch, NaN payloads included)."""
    if isinstance(values, torch.Tensor):
        return values.contiguous().view(torch.uint8).numpy().tobytes() if values.numel() else b""
    return np.ascontiguousarray(values).tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_and_pieces_are_the_stored_values(dtype: torch.dtype, tmp_path: Path) -> None:
    tensors = _tensors(dtype)
    path = tmp_path / "views.pt"
    torch.save(tensors, path)
    loaded = torch.load(path, weights_only=True)
    with index_file(path) as indexed:
        for name, tensor in loaded.items():
            array = FileArray(indexed, name)
            assert array.shape == tuple(tensor.shape) and array.nbytes == tensor.numel() * tensor.element_size()
            whole = array.read()  # as the whole-file reader gives it: bfloat16 as a BFloat16Array of its bits
            assert _as_bits(getattr(whole, "bits", whole)) == _as_bits(tensor)
            values = tensor.float() if dtype == torch.bfloat16 else tensor
            assert _as_bits(np.asarray(array)) == _as_bits(values)
            rows = len(tensor)
            for start, stop in ((0, rows), (1, rows - 1), (rows // 2, rows // 2), (rows - 1, rows)):
                assert _as_bits(array.rows(start, stop)) == _as_bits(tensor[start:stop])
                for count in (1, 5, 13, 1000):
                    buffer = bytearray()
                    pieces = [_as_bits(piece) for piece in array.pieces(start, stop, count, buffer)]
                    assert all(len(piece) <= count * tensor.element_size() for piece in pieces)
                    assert b"".join(pieces) == _as_bits(tensor[start:stop])


def test_pieces_of_a_safetensors_file_and_of_a_model_folder(tmp_path: Path) -> None:
    tensors = {name: tensor.clone().contiguous() for name, tensor in _tensors(torch.float32).items()}
    folder = tmp_path / "model"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    from rnninit_cli.formats.folders import open_folder

    with index_file(folder / "model.safetensors") as indexed:
        opened = open_folder(folder)
        try:
            for source in (indexed, opened):
                found = lazy_arrays(source, tensors)
                for name, tensor in tensors.items():
                    assert isinstance(found[name], FileArray)
                    pieces = b"".join(_as_bits(p) for p in found[name].pieces(2, 5, 7, bytearray()))
                    assert pieces == _as_bits(tensor[2:5])
        finally:
            opened.close()


def test_a_truncated_file_is_refused_as_the_whole_reader_refuses_it(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.ones(64, 64)}, str(path))
    data = path.read_bytes()
    indexed = index_file(path)
    try:
        with pytest.raises(CheckpointError) as whole:
            indexed.size = len(data) - 100  # as if it had been indexed shorter
            indexed.arrays(["w"])
        with pytest.raises(CheckpointError) as lazy:
            FileArray(indexed, "w")
        assert str(lazy.value) == str(whole.value)
    finally:
        indexed.close()


def test_a_file_cut_while_it_is_read_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "shrinks.safetensors"
    save_file({"w": torch.ones(64, 64)}, str(path))
    with index_file(path) as indexed:
        array = FileArray(indexed, "w")
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size - 1000)
        with pytest.raises(CheckpointError, match="ended early"):
            list(array.pieces(0, 64, 64 * 64, bytearray()))


def test_a_deferred_array_is_read_each_time_it_is_asked_for() -> None:
    calls = []

    def load() -> np.ndarray:
        calls.append(1)
        return np.arange(6.0).reshape(2, 3)

    deferred = DeferredArray(load, (2, 3), 48)
    assert calls == [] and deferred.shape == (2, 3) and deferred.nbytes == 48
    assert np.array_equal(np.asarray(deferred), np.arange(6.0).reshape(2, 3))
    assert np.asarray(deferred, dtype=np.float32).dtype == np.float32
    assert len(calls) == 2
    assert math.prod(deferred.shape) == 6
