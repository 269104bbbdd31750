"""bfloat16 without ml_dtypes (rnninit_cli/bfloat16.py), and float16 by numpy alone: decoding every bit pattern and
rounding float32 values give what torch gives, and what the formats' definitions give; a BFloat16Array acts on its
bits where a bfloat16 array would, and numpy reads it as its values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rnninit_cli.bfloat16 import (
    BFLOAT16,
    BFloat16Array,
    bfloat16_to_float32,
    concatenate,
    float32_to_bfloat16_bits,
)

EVERY_PATTERN = np.arange(65536, dtype=np.uint16)


def _torch_bits(values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """torch's conversion of float values to a 16-bit float dtype, as its bits."""
    return torch.from_numpy(values).to(dtype).view(torch.int16).numpy().view(np.uint16)


def _torch_values(bits: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """torch's float32 values of 16-bit float patterns."""
    return torch.from_numpy(bits.astype(np.int32)).to(torch.int16).view(dtype).float().numpy()


def _same_values(found: np.ndarray, expected: np.ndarray) -> None:
    """Bit for bit equal float32 arrays (so +0 and -0 differ), NaN only against NaN (payloads may differ)."""
    assert found.dtype == expected.dtype == np.float32
    assert np.array_equal(np.isnan(found), np.isnan(expected))
    numbers = ~np.isnan(expected)
    assert np.array_equal(found[numbers].view(np.uint32), expected[numbers].view(np.uint32))


def _bfloat16_by_definition(bits: int) -> float:
    """The value of bfloat16 bits from the format: sign, 8 exponent bits (bias 127), 7 fraction bits."""
    sign = -1.0 if bits >> 15 else 1.0
    exponent, fraction = (bits >> 7) & 0xFF, bits & 0x7F
    if exponent == 0xFF:
        return math.nan if fraction else sign * math.inf
    if exponent == 0:
        return sign * math.ldexp(fraction, -126 - 7)
    return sign * math.ldexp(128 + fraction, exponent - 127 - 7)


def _float32_patterns(count: int, seed: int) -> np.ndarray:
    """float32 values to round: random bit patterns (every class: NaN, ±inf, subnormals), exact ties between two
    bfloat16 values (low 16 bits 0x8000, upper halves even and odd), one ulp either side of the ties, the largest
    values below and at bfloat16's overflow, ±0."""
    rng = np.random.default_rng(seed)
    random = rng.integers(0, 2**32, count, dtype=np.uint64).astype(np.uint32)
    upper = rng.integers(0, 2**16, count // 4, dtype=np.uint64).astype(np.uint32) << 16
    ties = upper | 0x8000
    edges = np.array([0x7F7F7FFF, 0x7F7F8000, 0x7F7F8001, 0x7F7FFFFF, 0x7F800000, 0x7F800001, 0x7FC00000, 0x7FFFFFFF,
                      0x00000001, 0x00007FFF, 0x00008000, 0x00018000, 0x007FFFFF, 0x00800000, 0x00000000],
                     dtype=np.uint32)
    edges = np.concatenate([edges, edges | 0x80000000])
    return np.concatenate([random, ties, ties - 1, ties + 1, edges]).view(np.float32)


def test_every_bfloat16_pattern_decodes_to_torchs_value() -> None:
    _same_values(bfloat16_to_float32(EVERY_PATTERN), _torch_values(EVERY_PATTERN, torch.bfloat16))


def test_every_bfloat16_pattern_decodes_to_the_formats_value() -> None:
    decoded = bfloat16_to_float32(EVERY_PATTERN).astype(np.float64)
    expected = np.array([_bfloat16_by_definition(int(bits)) for bits in EVERY_PATTERN])
    assert np.array_equal(decoded, expected, equal_nan=True)
    assert np.array_equal(np.signbit(decoded), EVERY_PATTERN >= 0x8000)  # -0 included


def test_decoding_keeps_the_bits() -> None:
    """bfloat16 → float32 → bfloat16 gives the same bits for every pattern, NaN payloads included."""
    decoded = bfloat16_to_float32(EVERY_PATTERN)
    assert np.array_equal(decoded.view(np.uint32) >> 16, EVERY_PATTERN)
    numbers = ~np.isnan(decoded)
    assert np.array_equal(float32_to_bfloat16_bits(decoded)[numbers], EVERY_PATTERN[numbers])


@pytest.mark.parametrize("seed", [0, 1])
def test_rounding_float32_to_bfloat16_is_torchs(seed: int) -> None:
    values = _float32_patterns(200_000, seed)
    found, expected = float32_to_bfloat16_bits(values), _torch_bits(values, torch.bfloat16)
    numbers = ~np.isnan(values)
    assert np.array_equal(found[numbers], expected[numbers])
    assert np.isnan(bfloat16_to_float32(found[~numbers])).all()  # torch's NaN bits differ between its code paths
    assert np.array_equal(found[~numbers] >> 15, values[~numbers].view(np.uint32) >> 31)  # the sign is kept


def test_rounding_float32_to_bfloat16_is_to_nearest_ties_to_even() -> None:
    """Against the definition, in float64: the bfloat16 chosen is the nearer of the two around the value (the one
    with an even last bit at a tie); beyond the largest bfloat16 plus half a step, infinity."""
    values = _float32_patterns(50_000, 2)
    values = values[np.isfinite(values)]
    found = bfloat16_to_float32(float32_to_bfloat16_bits(values)).astype(np.float64)
    exact = values.astype(np.float64)
    below_bits = values.view(np.uint32) >> 16  # truncation: toward zero
    below = bfloat16_to_float32(below_bits.astype(np.uint16)).astype(np.float64)
    with np.errstate(over="ignore"):
        above = bfloat16_to_float32((below_bits + 1).astype(np.uint16)).astype(np.float64)  # away from zero
    largest = _bfloat16_by_definition(0x7F7F)
    overflow = np.abs(exact) >= largest + math.ldexp(1.0, 127 - 8)  # half a step above the largest
    assert np.array_equal(found[overflow], np.copysign(math.inf, exact[overflow]))
    finite = ~overflow
    low_gap, high_gap = np.abs(exact - below)[finite], np.abs(above - exact)[finite]
    expected = np.where(low_gap < high_gap, below[finite], above[finite])
    tie = low_gap == high_gap
    expected[tie] = np.where(below_bits[finite][tie] % 2 == 0, below[finite][tie], above[finite][tie])
    assert np.array_equal(found[finite], expected)
    assert tie.sum() > 1000  # the ties were there to test


def test_float64_values_are_rounded_through_float32_as_torch_does() -> None:
    """torch converts a float64 to bfloat16 through float32 (two roundings, unlike ml_dtypes' one): so does rnninit."""
    rng = np.random.default_rng(3)
    near_ties = (1 + (2 * rng.integers(0, 128, 1000) + 1) * 2.0**-8) * (1 + rng.choice([-1, 1], 1000) * 2.0**-40)
    values = np.concatenate([near_ties, rng.standard_normal(1000) * 10.0 ** rng.integers(-40, 40, 1000),
                             [1e39, -1e39, 3.4e38, 1e-46, np.inf, -np.inf]])
    found = float32_to_bfloat16_bits(values)
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(found, expected)


def test_every_float16_pattern_decodes_in_numpy_to_torchs_value() -> None:
    _same_values(EVERY_PATTERN.view(np.float16).astype(np.float32), _torch_values(EVERY_PATTERN, torch.float16))


@pytest.mark.parametrize("seed", [0, 1])
def test_numpy_rounds_float32_to_float16_as_torch(seed: int) -> None:
    values = _float32_patterns(200_000, seed)
    with np.errstate(over="ignore"):
        found = values.astype(np.float16).view(np.uint16)
    expected = _torch_bits(values, torch.float16)
    numbers = ~np.isnan(values)
    assert np.array_equal(found[numbers], expected[numbers])
    assert np.isnan(found[~numbers].view(np.float16)).all()


# --- BFloat16Array: bits where an array of bfloat16 keeps them, float32 values where numpy reads it ---------------

def _array(shape: tuple[int, ...] = (6, 4), seed: int = 0) -> tuple[BFloat16Array, torch.Tensor]:
    tensor = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
    return BFloat16Array(tensor.view(torch.int16).numpy().view(np.uint16)), tensor


def _values(tensor: torch.Tensor) -> np.ndarray:
    return tensor.float().numpy()


def test_a_bfloat16_array_reads_as_its_values() -> None:
    array, tensor = _array()
    assert array.dtype == BFLOAT16 == "bfloat16" and str(array.dtype) == array.dtype.name == "bfloat16"
    assert (array.shape, array.ndim, array.size, array.nbytes, len(array)) == ((6, 4), 2, 24, 48, 6)
    assert np.asarray(array).dtype == np.float32 and np.array_equal(np.asarray(array), _values(tensor))
    assert np.array_equal(np.array(array, dtype=np.float64), _values(tensor).astype(np.float64))
    assert np.array_equal(array.astype(np.float64), _values(tensor).astype(np.float64))
    assert array.tobytes() == tensor.view(torch.uint8).numpy().tobytes()  # the bytes as stored
    with pytest.raises(ValueError, match="copy"):
        np.asarray(array, copy=False)


def test_parts_of_a_bfloat16_array_stay_bfloat16() -> None:
    array, tensor = _array((6, 4))
    for part, expected in [(array[1:4], tensor[1:4]), (array.T, tensor.T), (array[:, 2], tensor[:, 2]),
                           (array.reshape(4, 6), tensor.reshape(4, 6)), (array.ravel(), tensor.reshape(-1)),
                           (array.transpose(1, 0), tensor.t()), (array.copy(), tensor),
                           (array.astype("bfloat16"), tensor)]:
        assert isinstance(part, BFloat16Array) and part.shape == tuple(expected.shape)
        assert np.array_equal(np.asarray(part), _values(expected))
    element = array[2, 3]
    assert isinstance(element, np.float32) and element == tensor[2, 3].item()
    assert [float(row[0]) for row in array] == [float(value) for value in tensor[:, 0]]


def test_numpy_arithmetic_on_a_bfloat16_array_is_float32s() -> None:
    array, tensor = _array()
    values = _values(tensor)
    for found, expected in [(array * 2, values * 2), (array - array, values - values), (1 - array, 1 - values),
                            (np.abs(array), np.abs(values)), (array == array, values == values),
                            (np.add.reduce(array, axis=0), values.sum(axis=0)), (np.maximum(array, 0), values.clip(0))]:
        assert type(found) is np.ndarray and found.dtype == expected.dtype and np.array_equal(found, expected)


def test_from_values_and_concatenate() -> None:
    array, tensor = _array((4, 3))
    values = np.linspace(-3, 3, 12, dtype=np.float32).reshape(4, 3)
    rounded = BFloat16Array.from_values(values)
    assert np.array_equal(np.asarray(rounded), _values(torch.from_numpy(values).to(torch.bfloat16)))
    joined = concatenate([array, rounded], axis=0)
    assert isinstance(joined, BFloat16Array) and joined.shape == (8, 3)
    assert np.array_equal(np.asarray(joined), np.concatenate([_values(tensor), np.asarray(rounded)]))
    plain = concatenate([values, values], axis=1)
    assert type(plain) is np.ndarray and plain.shape == (4, 6)
    with pytest.raises(TypeError, match="uint16"):
        BFloat16Array(values)


def test_the_bfloat16_dtype_is_torchs() -> None:
    """eps: the step from 1 to the next bfloat16 (bits 0x3F81), as torch.finfo gives it; the unit roundoff the
    diagnostics allow for a bfloat16 tensor is half of it."""
    from rnninit_cli.diagnostics.stats import unit_roundoff

    step = float(bfloat16_to_float32(np.array(0x3F81, dtype=np.uint16))) - 1.0
    assert BFLOAT16.eps == step == torch.finfo(torch.bfloat16).eps
    assert unit_roundoff("bfloat16") == step / 2
    assert BFLOAT16.itemsize == torch.bfloat16.itemsize and BFLOAT16.kind == "f"
