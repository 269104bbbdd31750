"""Tensors left in their checkpoint until they are read: a block of rows at a time from an indexed file
(`FileArray`), or whole when first asked for (`DeferredArray`). `rnninit diff` streams two checkpoints this way,
holding a few MB of each instead of both files. numpy only; no torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..bfloat16 import BFLOAT16
from ..errors import CheckpointError
from .checkpoint import ArrayCheckpoint
from .folders import ModelFolder
from .tensorfile import TensorFile
from .unpickle.arrays import storage_dtype, stored_array, view_span
from .unpickle.objects import refuse_broadcast


class FileArray:
    """A tensor of an indexed file, read when asked: whole (`read`, `numpy.asarray`), or the stored elements of rows
    [start, stop) a piece at a time into the caller's buffer (`pieces`). The file must stay open while it is read.
    Made only for tensors the whole-file readers would read (it refuses what `TensorFile.arrays` refuses, with the
    same message). `dtype` is the tensor's (BFLOAT16 for bfloat16), `stored` the numpy dtype of its elements as
    stored (uint16, the bits, for bfloat16)."""

    def __init__(self, file: TensorFile, name: str) -> None:
        location = file.locations[name]
        first, stop = location.byte_range
        if stop > file.size:
            raise CheckpointError(f"{file.path}: truncated: {name} lies past the end of the file")
        refuse_broadcast(name, math.prod(location.shape), (stop - first) // location.element_size)
        try:
            self.stored = storage_dtype(location.dtype_name)
        except CheckpointError as error:  # a dtype numpy cannot read (bits8, float4_e2m1fn_x2...): say which
            raise CheckpointError(f"{file.path}: {name}: {error}") from None
        self.dtype: Any = BFLOAT16 if location.dtype_name == "bfloat16" else self.stored
        self.file, self.name, self.location = file, name, location
        self.shape = location.shape
        self.ndim = len(self.shape)
        self.size = math.prod(self.shape)
        self.nbytes = self.size * self.stored.itemsize

    def read(self) -> Any:
        """The whole tensor, as `TensorFile.arrays` reads it (a numpy array; a BFloat16Array for bfloat16)."""
        return self.file.arrays([self.name])[self.name]

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        import numpy as np

        return np.asarray(self.read(), dtype=dtype)

    def rows(self, start: int, stop: int) -> Any:
        """The stored elements of rows [start, stop) (of the first dimension), a numpy array of their own."""
        location = self.location
        if not self.shape:
            return self._stored_elements(self.read())
        shape = (stop - start, *self.shape[1:])
        offset = location.offset + start * location.stride[0]
        if 0 in shape:
            return stored_array(b"", location.dtype_name, shape, location.stride)
        first, stop = view_span(offset, shape, location.stride)
        raw = bytearray((stop - first) * location.element_size)
        self._read_into(memoryview(raw), location.base + first * location.element_size)
        return stored_array(raw, location.dtype_name, shape, location.stride)

    @staticmethod
    def _stored_elements(values: Any) -> Any:
        return getattr(values, "bits", values)  # a BFloat16Array's elements are its bits

    def pieces(self, start: int, stop: int, count: int, buffer: Any) -> Iterator[Any]:
        """The stored elements of rows [start, stop) (of dtype `stored`), flattened in row-major order, `count` at a
        time (the last piece may hold fewer): numpy arrays read into `buffer` (a writable buffer: bytearray, numpy
        uint8 array), each valid until the next is read. A buffer too small for a piece is left alone and a new one
        used."""
        row = math.prod(self.shape[1:])
        values = (stop - start) * row
        if not self.location.contiguous or not self.shape:
            flat = self.rows(start, stop).reshape(-1)
            for first in range(0, values, count):
                yield flat[first:first + count]
            return
        itemsize = self.stored.itemsize
        view = memoryview(buffer).cast("B")
        if len(view) < min(count, values) * itemsize:
            view = memoryview(bytearray(min(count, values) * itemsize))
        position = self.location.base + (self.location.offset + start * row) * itemsize
        for first in range(0, values, count):
            size = min(count, values - first)
            self._read_into(view[:size * itemsize], position + first * itemsize)
            yield self._piece(view, size)

    def _piece(self, view: memoryview, size: int) -> Any:
        import numpy as np

        return np.frombuffer(view, dtype=self.stored, count=size)

    def _read_into(self, target: memoryview, position: int) -> None:
        """Fill `target` from the file at `position`; CheckpointError if the file ends first."""
        descriptor = self.file.descriptor
        while target:
            read = os.preadv(descriptor, [target], position) if hasattr(os, "preadv") else \
                _pread_into(descriptor, target, position)
            if not read:
                raise CheckpointError(f"{self.file.path}: the file ended early (was it truncated while being read?)")
            target, position = target[read:], position + read


def _pread_into(descriptor: int, target: memoryview, position: int) -> int:
    """os.preadv where the platform lacks it: read, then copy."""
    chunk = os.pread(descriptor, len(target), position)
    target[:len(chunk)] = chunk
    return len(chunk)


class DeferredArray:
    """A tensor read (or composed) whole by `load` each time it is asked for (`read`, `numpy.asarray`), never kept
    here: its reader holds it while it needs it. `shape` and `nbytes` say how large it is without reading it."""

    def __init__(self, load: Callable[[], Any], shape: tuple[int, ...], nbytes: int) -> None:
        self._load = load
        self.shape = shape
        self.nbytes = nbytes

    def read(self) -> Any:
        """The whole tensor (a numpy array; a BFloat16Array for bfloat16)."""
        return self._load()

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        import numpy as np

        return np.asarray(self._load(), dtype=dtype)


def lazy_arrays(opened: Any, names: Iterable[str]) -> dict[str, Any]:
    """The named tensors of an opened checkpoint, read when asked: FileArrays of an indexed file or of a model
    folder's shards, the arrays themselves of a checkpoint already read whole (standard input, a legacy `.pt`),
    DeferredArrays otherwise (DCP folders)."""
    records = opened.shape_records()
    found: dict[str, Any] = {}
    for name in names:
        if isinstance(opened, TensorFile):
            found[name] = FileArray(opened, name)
        elif isinstance(opened, ModelFolder):
            found[name] = FileArray(opened.shards[opened.owner[name]], name)
        elif isinstance(opened, ArrayCheckpoint):
            found[name] = opened.arrays([name])[name]  # views of the bytes already read
        else:
            record = records[name]
            found[name] = DeferredArray(lambda name=name: opened.arrays([name])[name], tuple(record.shape),
                                        math.prod(record.shape) * _item_size(record.dtype))
    return found


def _item_size(dtype: str) -> int:
    try:
        return int(storage_dtype(dtype).itemsize)
    except CheckpointError:
        return 1
