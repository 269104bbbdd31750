"""A tensor record's bytes as a numpy array (bfloat16 as a `BFloat16Array` of its bits, ml_dtypes for the float8
types), and the span of storage a view reads."""

from __future__ import annotations

import math
from typing import Any

from ...errors import CheckpointError
from .records import DTYPES, TensorRef


def storage_dtype(name: str) -> Any:
    """The numpy dtype of a torch dtype's stored elements: numpy's own, uint16 (the bits) for bfloat16, ml_dtypes'
    for the float8 types."""
    import numpy as np

    if name not in DTYPES or not DTYPES[name][1]:
        raise CheckpointError(f"dtype {name} has no numpy equivalent here")
    code = DTYPES[name][1]
    if code[0] in "<?iuf" and not code.startswith("float"):
        return np.dtype(code)
    import ml_dtypes

    if not hasattr(ml_dtypes, code):
        raise CheckpointError(f"dtype {name} needs a newer ml_dtypes")
    return np.dtype(getattr(ml_dtypes, code))



def as_values(name: str, stored: Any) -> Any:
    """The array of a tensor's values from the array of its stored elements (`stored_array`): itself, or for
    bfloat16 a BFloat16Array of the bits."""
    if name != "bfloat16":
        return stored
    from ...bfloat16 import BFloat16Array

    return BFloat16Array(stored)



def stored_array(raw: bytes | bytearray | memoryview, dtype: str, shape: tuple[int, ...],
                 stride: tuple[int, ...]) -> Any:
    """A numpy array (of `storage_dtype`) of `shape`/`stride` (in elements) over `raw`, which starts at the tensor's
    first element."""
    return _laid_out(raw, storage_dtype(dtype), shape, stride)



# the integers a quantized tensor stores (torch's `int_repr()`), by its dtype; quint4x2 and quint2x4 (several values
# a byte) are never read
QUANTIZED_INTEGERS = {"qint8": "i1", "quint8": "u1", "qint32": "<i4"}



def integer_array(raw: bytes | bytearray | memoryview, dtype: str, shape: tuple[int, ...],
                  stride: tuple[int, ...]) -> Any:
    """The stored integers of a quantized tensor (what torch's `int_repr()` gives) of `shape`/`stride` over `raw`,
    as `stored_array` lays them out; the values are (integer − zero point) × scale."""
    import numpy as np

    if dtype not in QUANTIZED_INTEGERS:
        raise CheckpointError(f"dtype {dtype} stores no integers rnninit reads")
    return _laid_out(raw, np.dtype(QUANTIZED_INTEGERS[dtype]), shape, stride)



def _laid_out(raw: bytes | bytearray | memoryview, kind: Any, shape: tuple[int, ...], stride: tuple[int, ...]) -> Any:
    import numpy as np

    if 0 in shape:
        return np.empty(shape, dtype=kind)
    flat = np.frombuffer(raw, dtype=kind)
    if is_contiguous(shape, stride) and flat.size == math.prod(shape):
        return flat.reshape(shape)  # no copy: a read-only view that keeps `raw` alive
    # over unsigned integers of the same size: as_strided rebuilds its dtype from a type string, which some
    # ml_dtypes types (float8_e5m2: '<f1') do not round-trip through
    bits = flat.view(f"u{kind.itemsize}") if kind.itemsize in (1, 2, 4, 8) else flat
    view = np.lib.stride_tricks.as_strided(bits, shape, tuple(s * kind.itemsize for s in stride), writeable=False)
    return np.array(view).view(kind)  # a copy of its own, laid out contiguously



def array_from_bytes(raw: bytes | bytearray | memoryview, dtype: str, shape: tuple[int, ...],
                     stride: tuple[int, ...]) -> Any:
    """The values of `shape`/`stride` (in elements) over `raw`, which starts at the tensor's first element: a numpy
    array, or for bfloat16 a BFloat16Array."""
    return as_values(dtype, stored_array(raw, dtype, shape, stride))



def is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether elements of `shape` at `stride` (in elements) lie in row-major order without gaps."""
    expected = 1
    for size, step in reversed(list(zip(shape, stride, strict=True))):
        if size != 1 and step != expected:
            return False
        expected *= size
    return True



def tensor_array(ref: TensorRef, storage: bytes | memoryview) -> Any:
    """The numpy array of `ref` from its storage's bytes; CheckpointError for a view outside the storage."""
    first, stop = tensor_span(ref)
    if stop * ref.itemsize > min(len(storage), ref.storage.nbytes) or first < 0 or min(ref.stride, default=0) < 0:
        raise CheckpointError(f"a tensor reads outside its storage (offset {ref.offset}, shape {list(ref.shape)}, "
                              f"stride {list(ref.stride)}, {ref.storage.numel} stored elements)")
    return array_from_bytes(storage[first * ref.itemsize:stop * ref.itemsize], ref.dtype, ref.shape, ref.stride)



def view_span(offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, int]:
    """[first, last + 1) element indexes of the storage that a view reads: offset + Σ (size − 1)·stride + 1,
    not offset + numel (a strided view reaches further, a broadcast one less far)."""
    if 0 in shape:
        return offset, offset
    return offset, offset + 1 + sum((size - 1) * step for size, step in zip(shape, stride, strict=True))



def tensor_span(ref: TensorRef) -> tuple[int, int]:
    """[first, last + 1) element indexes of the storage that the tensor reads."""
    return view_span(ref.offset, ref.shape, ref.stride)
