"""Overflow-safe float64 statistics of arrays and gate blocks, and the effective bias: shared by report and
diagnostics. numpy only: torch tensors are accepted and converted (torch is imported only if one is given)."""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, TypeVar

import numpy as np

from ..bfloat16 import BFLOAT16, BFloat16Array

if TYPE_CHECKING:
    from ..layouts.discovery import Layer

_Params = ParamSpec("_Params")
_Result = TypeVar("_Result")

Stats = dict[str, float]
STAT_NAMES = ("mean", "std", "min", "max")
# Below 2^-500 or above 2^500 squares underflow or overflow float64: only then are values scaled before summing.
_SAFE_LOW, _SAFE_HIGH = 2.0**-500, 2.0**500


def quiet_floats(function: Callable[_Params, _Result]) -> Callable[_Params, _Result]:
    """`function` without numpy's overflow / invalid-value warnings: extreme values are expected here, and their
    inf and NaN results are reported as such (a warning on the user's terminal would only be noise)."""

    @functools.wraps(function)
    def wrapper(*args: _Params.args, **kwargs: _Params.kwargs) -> _Result:
        if getattr(_quiet, "on", False):  # already inside a quiet call: np.errstate costs more than most callees
            return function(*args, **kwargs)
        with np.errstate(all="ignore"):
            _quiet.on = True
            try:
                return function(*args, **kwargs)
            finally:
                _quiet.on = False

    return wrapper


_quiet = threading.local()  # per thread, as numpy's error state is


def _is_torch(values: Any) -> bool:
    return type(values).__module__.startswith("torch")


def to_array(values: Any) -> np.ndarray:
    """A numpy array of any array-like (a torch tensor by a CPU copy in its own dtype, float8 through ml_dtypes;
    bfloat16, which numpy lacks, as the float32 array of its values: exact); complex values keep both parts."""
    if isinstance(values, np.ndarray):
        return values
    if isinstance(values, BFloat16Array):
        return np.asarray(values)
    if _is_torch(values):
        import torch

        tensor = values.detach().to("cpu").resolve_conj().resolve_neg()  # numpy() refuses those lazy bits
        name = str(tensor.dtype).removeprefix("torch.")
        if tensor.dtype == torch.bfloat16:
            return tensor.float().numpy()
        if name.startswith("float8"):
            import ml_dtypes

            return tensor.view(torch.uint8).numpy().view(getattr(ml_dtypes, name))
        return tensor.numpy()
    return np.asarray(values)


def dtype_name(values: Any) -> str:
    """The dtype's name as torch and safetensors write it: 'float32', 'bfloat16', 'float8_e4m3fn', 'int64'..."""
    dtype = getattr(values, "dtype", None)
    if dtype is None:
        return str(np.asarray(values).dtype)
    return {"bool_": "bool"}.get(str(dtype).removeprefix("torch."), str(dtype).removeprefix("torch."))


def numpy_float_dtype(name: str) -> Any:
    """The numpy dtype of a floating dtype's name (BFLOAT16 for bfloat16, which numpy lacks; ml_dtypes' for the
    float8 types); None for other dtypes (ints, bools, complex)."""
    if name in ("float64", "float32", "float16"):
        return np.dtype(name)
    if name == "bfloat16":
        return BFLOAT16
    if name.startswith(("float8", "float4", "float6")):
        import ml_dtypes

        return getattr(ml_dtypes, name, None)
    return None


def unit_roundoff(name: str) -> float:
    """u = eps/2 of a floating dtype's name (2⁻⁸ for bfloat16); 0 for other dtypes."""
    numeric = numpy_float_dtype(name)
    if numeric is None:
        return 0.0
    if numeric is BFLOAT16:
        return BFLOAT16.eps / 2
    if isinstance(numeric, np.dtype):
        return float(np.finfo(numeric).eps) / 2
    import ml_dtypes

    return float(ml_dtypes.finfo(numeric).eps) / 2


def rounded_to(values: Any, name: str) -> np.ndarray | None:
    """`values` rounded to the nearest values of the floating dtype `name` (bfloat16 as torch rounds, given as the
    float32 values of the result); None when `name` is not a floating dtype."""
    numeric = numpy_float_dtype(name)
    if numeric is None:
        return None
    if numeric is BFLOAT16:
        return np.asarray(BFloat16Array.from_values(values))
    return np.asarray(values).astype(numeric)


def as_float64(values: Any) -> np.ndarray:
    """A float64 copy of any array or tensor (integers and bools as numbers, complex values by their real part)."""
    array = to_array(values)
    if np.iscomplexobj(array):
        array = array.real
    return np.array(array, dtype=np.float64, copy=True)


def power_of_two_scale(largest: float) -> float:
    """A power of two s with largest/s in [1, 2): dividing by it is exact, and squares of the scaled values stay
    far from float64's overflow and underflow. 1 for 0 and for non-finite values."""
    if largest == 0 or not math.isfinite(largest):
        return 1.0
    return math.ldexp(1.0, math.frexp(largest)[1] - 1)


def safe_scale(largest: float) -> float:
    """1 when squares of values up to `largest` neither overflow nor underflow float64, else power_of_two_scale:
    dividing by a power of two is exact, so results are the same either way, only faster at ordinary sizes."""
    return 1.0 if _SAFE_LOW <= largest <= _SAFE_HIGH else power_of_two_scale(largest)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Σ aᵢbᵢ by numpy's own loop: BLAS's threaded dot waits on its threads for vectors this short, which on a busy
    machine costs 50× the arithmetic."""
    return float(np.einsum("i,i->", a, b))


CHUNK = 1 << 18  # values per float64 chunk: 2 MiB, so each pass over a chunk stays in cache
_WORTH_A_BUFFER = 1 << 15  # values from which summarize converts into buffers of its own (below: fresh arrays)


def float64_chunks(values: Any, buffer: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """The values (flattened; complex by their real part) as float64 arrays of at most CHUNK values: arrays of any
    size are summarized in float64 without a float64 copy of the whole. `buffer` (float64, at least
    min(size, CHUNK) values): convert into it, each chunk a view valid until the next (a fresh 2 MiB array per
    chunk costs about 500 page faults, more than the arithmetic on it)."""
    array = to_array(values)
    if np.iscomplexobj(array):
        array = array.real
    flat = array.reshape(-1)
    for start in range(0, flat.size, CHUNK):
        piece = flat[start:start + CHUNK]
        if piece.dtype == np.float64:
            yield piece
        elif buffer is None:
            yield piece.astype(np.float64)
        else:
            converted = buffer[:piece.size]
            np.copyto(converted, piece, casting="unsafe")  # what astype does, into memory already mapped
            yield converted


@dataclass(frozen=True)
class Summary:
    """One pass over a block: count, NaN and Inf counts, and over the finite values min, max, Σ x/s, Σ (x/s)² and
    Σ (x/s − x̄/s)² (s a power of two, 1 unless squares would overflow or underflow float64). Chunks are combined
    exactly as Chan, Golub & LeVeque (1979) combine partial sums of squares, so the centred sum is as accurate as
    a second pass."""

    n: int
    nan: int
    nonfinite: int
    minimum: float  # of the finite values (NaN when there are none)
    maximum: float
    scale: float
    total: float
    squares: float
    centred: float

    @property
    def finite(self) -> int:
        return self.n - self.nonfinite

    @property
    def max_abs(self) -> float:
        return max(abs(self.minimum), abs(self.maximum))

    @property
    def mean(self) -> float:
        """Mean of the finite values (NaN when there are none)."""
        return self.total / self.finite * self.scale if self.finite else math.nan

    def mean_square(self) -> float:
        """Σx²/n of the finite values, without overflow in the intermediate sum."""
        return self.squares / self.finite * self.scale * self.scale if self.finite else math.nan

    def moments(self) -> tuple[float, float]:
        """(mean, population std) of the finite values, clamped to max |x| (rounding may carry the product a hair
        past it, and past float64's maximum)."""
        if not self.finite:
            return math.nan, math.nan
        largest = self.max_abs
        mean = self.total / self.finite
        std = math.sqrt(max(self.centred, 0.0) / self.finite)
        return math.copysign(min(abs(mean) * self.scale, largest), mean), min(std * self.scale, largest)


@quiet_floats
def summarize(values: Any) -> Summary:
    """The Summary of any array or tensor, in float64, one chunk at a time: one pass, or two when the values are so
    large or small (beyond 2^±500) that their squares need scaling."""
    array = to_array(values)
    buffer = scratch = None
    if array.size >= _WORTH_A_BUFFER:
        buffer, scratch = np.empty(min(array.size, CHUNK)), np.empty(min(array.size, CHUNK))
    summary = _accumulate(array, 1.0, buffer, scratch)
    scale = second_pass_scale(summary)
    return summary if scale == 1.0 else _accumulate(array, scale, buffer, scratch)


def second_pass_scale(first: Summary) -> float:
    """1 when a first pass (at scale 1) stands; else the power of two its values are divided by in a second pass,
    because their squares (or their sum) overflow or underflow float64."""
    if not first.finite:
        return 1.0
    scale = safe_scale(first.max_abs)
    if scale == 1.0 and not (math.isfinite(first.squares) and math.isfinite(first.centred)):
        scale = power_of_two_scale(first.max_abs)  # many values near 2^500: their squares' sum overflows
    return scale


def _accumulate(values: Any, scale: float, buffer: np.ndarray | None = None,
                scratch: np.ndarray | None = None) -> Summary:
    accumulator = Accumulator(scale, scratch)
    for chunk in float64_chunks(values, buffer):
        accumulator.add(chunk)
    return accumulator.summary()


class ChunkPart(NamedTuple):
    """One float64 chunk's share of a Summary: its counts, and over its finite values (`size` of them, scaled)
    min, max, Σ x/s and Σ (x/s − x̄/s)²."""

    n: int
    nan: int
    nonfinite: int
    size: int
    minimum: float
    maximum: float
    total: float
    centred: float


class Accumulator:
    """A Summary built one float64 chunk at a time, in order (what `summarize` does over `float64_chunks`): values
    read in pieces are summarized without being held. `part` and `merge` split `add`, so that two equal chunks
    are measured once. `scratch`: a float64 buffer of at least a chunk's size for the deviations."""

    def __init__(self, scale: float = 1.0, scratch: np.ndarray | None = None) -> None:
        self.scale = scale
        self._scratch = scratch
        self.n = self.nan = self.nonfinite = self.count = 0
        self.minimum, self.maximum = math.inf, -math.inf
        self.total = self.squares = self.centred = 0.0

    def add(self, chunk: np.ndarray) -> None:
        """Count one more float64 chunk (it is not changed, nor kept)."""
        self.merge(self.part(chunk))

    def part(self, chunk: np.ndarray) -> ChunkPart:
        """The chunk's share, not yet counted (see `merge`)."""
        n = chunk.size
        nan = nonfinite = 0
        part_total = float(chunk.sum())
        if not math.isfinite(part_total):
            finite = np.isfinite(chunk)
            if not finite.all():
                nan = int(np.isnan(chunk).sum())
                chunk = chunk[finite]
                nonfinite = finite.size - chunk.size
                if not chunk.size:
                    return ChunkPart(n, nan, nonfinite, 0, math.inf, -math.inf, 0.0, 0.0)
            part_total = float(chunk.sum())  # finite values whose sum overflowed: scaled below
        minimum, maximum = float(chunk.min()), float(chunk.max())
        if self.scale != 1.0:
            chunk = chunk / self.scale
            part_total = float(chunk.sum())
        size = chunk.size
        part_mean = part_total / size
        if self._scratch is not None and self._scratch.size >= size:
            deviation = np.subtract(chunk, part_mean, out=self._scratch[:size])
        else:
            deviation = chunk - part_mean
        return ChunkPart(n, nan, nonfinite, size, minimum, maximum, part_total, _dot(deviation, deviation))

    def merge(self, part: ChunkPart) -> None:
        """Count a chunk's share (`part` of this accumulator, or of one with the same scale), in chunk order."""
        self.n += part.n
        self.nan += part.nan
        self.nonfinite += part.nonfinite
        if not part.size:
            return
        self.minimum, self.maximum = min(self.minimum, part.minimum), max(self.maximum, part.maximum)
        size = part.size
        part_mean = part.total / size
        if self.count:  # Chan, Golub & LeVeque: M2 = M2_a + M2_b + δ²·n_a·n_b / n
            delta = part_mean - self.total / self.count
            self.centred += part.centred + delta * delta * self.count * size / (self.count + size)
        else:
            self.centred = part.centred
        self.count += size
        self.total += part.total
        self.squares += part.centred + part.total * part_mean  # Σx² = Σ(x − x̄)² + n·x̄²: two non-negative terms

    def summary(self) -> Summary:
        if self.count == 0:
            return Summary(self.n, self.nan, self.nonfinite, math.nan, math.nan, 1.0, 0.0, 0.0, 0.0)
        return Summary(self.n, self.nan, self.nonfinite, self.minimum, self.maximum, self.scale, self.total,
                       self.squares, self.centred)


def combine(parts: Sequence[Summary]) -> Summary | None:
    """The Summary of the concatenated values of `parts` (Chan, Golub & LeVeque's merge of centred sums); None when
    their scales differ (the caller summarizes the values themselves then)."""
    if not parts or len({part.scale for part in parts}) != 1:
        return None
    n = sum(part.n for part in parts)
    nan = sum(part.nan for part in parts)
    nonfinite = sum(part.nonfinite for part in parts)
    present = [part for part in parts if part.finite]
    if not present:
        return Summary(n, nan, nonfinite, math.nan, math.nan, 1.0, 0.0, 0.0, 0.0)
    count, total, squares, centred = 0, 0.0, 0.0, 0.0
    for part in present:
        size = part.finite
        part_mean = part.total / size
        if count:
            delta = part_mean - total / count
            centred += part.centred + delta * delta * count * size / (count + size)
        else:
            centred = part.centred
        count += size
        total += part.total
        squares += part.squares
    return Summary(n, nan, nonfinite, min(part.minimum for part in present), max(part.maximum for part in present),
                   present[0].scale, total, squares, centred)


def spread_sample(values: Any, limit: int) -> np.ndarray:
    """At most `limit` of the values, in float64: every k-th (row-major), k the smallest step ≥ ⌈n / limit⌉ that
    shares no factor with the row length, so that the sample visits every column, not just every k-th one. The
    positions do not depend on the values: i.i.d. values give an i.i.d. sample."""
    array = to_array(values)
    flat = array.reshape(-1)
    step = -(-flat.size // limit)
    if step <= 1:
        return as_float64(flat)
    width = array.shape[-1] if array.ndim >= 2 else 1
    while math.gcd(step, width) != 1:
        step += 1
    return as_float64(flat[::step])


def squares_about(values: Any, centre: float, divisor: float = 1.0) -> float:
    """Σ ((x − centre) / divisor)² in float64, one chunk at a time."""
    total = 0.0
    for chunk in float64_chunks(values):
        scaled = (chunk - centre) / divisor
        total += _dot(scaled, scaled)
    return total


def moments(data: Any) -> tuple[float, float]:
    """(mean, population std) of the finite values of an array, computed in float64 on values scaled by a power of
    two where needed, so that neither sums nor squares overflow (1e300) or underflow (1e-300)."""
    return summarize(data).moments()


@quiet_floats
def block_stats(values: Any) -> Stats:
    """mean, std (population), min and max of a block, computed in float64 without overflow (NaN/Inf propagate:
    a block holding one has NaN statistics, which the report shows as such)."""
    summary = summarize(values)
    if summary.n == 0 or summary.nonfinite:
        return _nonfinite_stats(values, summary)
    mean, std = summary.moments()
    return {"mean": mean, "std": std, "min": summary.minimum, "max": summary.maximum}


def _nonfinite_stats(values: Any, summary: Summary) -> Stats:
    if summary.n == 0:
        return dict.fromkeys(STAT_NAMES, math.nan)
    data = as_float64(values)
    return {"mean": float(data.mean()), "std": float(data.std()), "min": float(data.min()), "max": float(data.max())}


@quiet_floats
def effective_bias(layer: Layer, tensors: Mapping[str, Any]) -> list[tuple[str | None, Stats]]:
    """Per gate, statistics of bias_ih + bias_hh (what the gate actually adds)."""
    present = [kind for kind in ("bias_ih", "bias_hh") if kind in layer.params]
    if not present or layer.row_blocks:  # per-head cells have one bias: their notes say what it means
        return []
    total = sum(as_float64(tensors[layer.params[kind]]) for kind in present)  # a declared cell may have one
    return [(block.gate, block_stats(total[block.start:block.stop])) for block in layer.blocks(present[0])]
