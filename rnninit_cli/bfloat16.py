"""bfloat16 values without ml_dtypes, whose import alone costs more than `rnninit inspect` of a small float32 file.

A bfloat16 is the top half of a float32's bits: numpy decodes it exactly by a shift, and encodes a float32 by
rounding its bits to the nearest bfloat16, ties to even, as torch does. The read path (inspect, verify, diff) holds
a bfloat16 tensor as a `BFloat16Array` of its raw bits, which numpy reads as the float32 array of its values.
float16 is numpy's own; the float8 types still come from ml_dtypes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_QUIET_NAN = 0x7FC0  # all exponent bits and the fraction's top bit: a NaN whatever the lower bits
_SIGN = 0x8000


class BFloat16Dtype:
    """What a BFloat16Array gives as its dtype: the name torch and safetensors write, and the format's sizes."""

    name = "bfloat16"
    itemsize = 2
    kind = "f"
    eps = 2.0**-7  # the step from 1 to the next bfloat16: 7 stored fraction bits

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return "dtype(bfloat16)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BFloat16Dtype) or (isinstance(other, str) and other == self.name)

    def __hash__(self) -> int:
        return hash(self.name)


BFLOAT16 = BFloat16Dtype()


def bfloat16_to_float32(bits: Any) -> np.ndarray:
    """The float32 values of bfloat16 bits b: the float32 whose bits are b·2¹⁶ (exact, NaN payloads kept)."""
    wide = np.asarray(bits, dtype=np.uint16).astype(np.uint32)
    wide <<= 16  # in place: a 0-d array stays an array
    return wide.view(np.float32)


def float32_to_bfloat16_bits(values: Any) -> np.ndarray:
    """The bits of the bfloat16 nearest each value (taken as float32 first, as torch converts): (u + 0x7FFF +
    ((u >> 16) & 1)) >> 16 of its float32 bits u, ties to even; a NaN becomes the quiet NaN of its sign."""
    with np.errstate(over="ignore"):  # float64 values beyond float32's range become ±inf, as in torch
        single = np.asarray(values, dtype=np.float32, order="C")
    bits = single.view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16
    quiet = ((bits >> 16) & np.uint32(_SIGN)) | np.uint32(_QUIET_NAN)
    return np.where(np.isnan(single), quiet, rounded).astype(np.uint16)


class BFloat16Array(np.lib.mixins.NDArrayOperatorsMixin):
    """A bfloat16 tensor as numpy has no dtype for: its raw bits (`bits`, a uint16 array of the tensor's shape).
    numpy reads it as the float32 array of its values (np.asarray, ufuncs, operators); indexing, reshaping and
    transposing act on the bits, so that parts of a bfloat16 tensor stay bfloat16."""

    __slots__ = ("bits",)
    dtype = BFLOAT16

    def __init__(self, bits: np.ndarray) -> None:
        if not isinstance(bits, np.ndarray) or bits.dtype != np.uint16:
            raise TypeError(f"a BFloat16Array holds bits as uint16, not {getattr(bits, 'dtype', type(bits))}")
        self.bits = bits

    @classmethod
    def from_values(cls, values: Any) -> BFloat16Array:
        """The bfloat16 values nearest `values`, rounded as torch rounds."""
        return cls(float32_to_bfloat16_bits(values))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.bits.shape

    @property
    def ndim(self) -> int:
        return self.bits.ndim

    @property
    def size(self) -> int:
        return self.bits.size

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes

    @property
    def itemsize(self) -> int:
        return self.bits.itemsize

    @property
    def T(self) -> BFloat16Array:
        return BFloat16Array(self.bits.T)

    def __len__(self) -> int:
        return len(self.bits)

    def __getitem__(self, key: Any) -> Any:
        part = self.bits[key]
        if isinstance(part, np.ndarray):
            return BFloat16Array(part)
        return bfloat16_to_float32(part)[()]  # one element: a float32 scalar of its value

    def reshape(self, *shape: Any) -> BFloat16Array:
        return BFloat16Array(self.bits.reshape(*shape))

    def ravel(self) -> BFloat16Array:
        return BFloat16Array(self.bits.ravel())

    def transpose(self, *axes: Any) -> BFloat16Array:
        return BFloat16Array(self.bits.transpose(*axes))

    def copy(self) -> BFloat16Array:
        return BFloat16Array(self.bits.copy())

    def tobytes(self, order: Any = "C") -> bytes:
        """The tensor's bytes as stored (its bits), as ml_dtypes' bfloat16 arrays give them."""
        return self.bits.tobytes(order)

    def astype(self, dtype: Any, copy: bool = True) -> Any:
        """The values as `dtype` (a numpy dtype); bfloat16 itself keeps the bits."""
        if isinstance(dtype, (BFloat16Dtype, str)) and dtype == BFLOAT16:
            return self.copy() if copy else self
        return bfloat16_to_float32(self.bits).astype(dtype, copy=False)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("bfloat16 values are decoded into a new float32 array: a copy cannot be avoided")
        values = bfloat16_to_float32(self.bits)
        return values if dtype is None else values.astype(dtype, copy=False)

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        """Any ufunc, on the float32 values (its result is numpy's: float32 arithmetic is not bfloat16's)."""
        if any(isinstance(out, BFloat16Array) for out in kwargs.get("out", ())):
            return NotImplemented
        return getattr(ufunc, method)(*(np.asarray(x) if isinstance(x, BFloat16Array) else x for x in inputs),
                                      **kwargs)

    def __repr__(self) -> str:
        return f"BFloat16Array({np.asarray(self)!r})"


def concatenate(parts: Sequence[Any], axis: int = 0) -> Any:
    """np.concatenate, where bfloat16 parts give a bfloat16 array (their bits joined)."""
    if parts and all(isinstance(part, BFloat16Array) for part in parts):
        return BFloat16Array(np.concatenate([part.bits for part in parts], axis=axis))
    return np.concatenate(parts, axis=axis)
