"""Overflow-safe float64 statistics of arrays and gate blocks, and the effective bias: shared by report and
diagnostics. numpy only: torch tensors are accepted and converted (torch is imported only if one is given)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np

if TYPE_CHECKING:
    from .layout import Layer

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
        with np.errstate(all="ignore"):
            return function(*args, **kwargs)

    return wrapper


def _is_torch(values: Any) -> bool:
    return type(values).__module__.startswith("torch")


def to_array(values: Any) -> np.ndarray:
    """A numpy array of any array-like (a torch tensor by a CPU copy in its own dtype, bfloat16 and float8 through
    ml_dtypes); complex values keep both parts."""
    if isinstance(values, np.ndarray):
        return values
    if _is_torch(values):
        import torch

        tensor = values.detach().to("cpu")
        name = str(tensor.dtype).removeprefix("torch.")
        if tensor.dtype in (torch.bfloat16,) or name.startswith("float8"):
            import ml_dtypes

            return tensor.view(torch.uint8 if name.startswith("float8") else torch.int16).numpy().view(
                getattr(ml_dtypes, name))
        return tensor.numpy()
    return np.asarray(values)


def dtype_name(values: Any) -> str:
    """The dtype's name as torch and safetensors write it: 'float32', 'bfloat16', 'float8_e4m3fn', 'int64'..."""
    dtype = getattr(values, "dtype", None)
    if dtype is None:
        return str(np.asarray(values).dtype)
    return {"bool_": "bool"}.get(str(dtype).removeprefix("torch."), str(dtype).removeprefix("torch."))


def numpy_float_dtype(name: str) -> Any:
    """The numpy (or ml_dtypes) dtype of a floating dtype's name; None for other dtypes (ints, bools, complex)."""
    if name in ("float64", "float32", "float16"):
        return np.dtype(name)
    if name.startswith(("bfloat16", "float8", "float4", "float6")):
        import ml_dtypes

        return getattr(ml_dtypes, name, None)
    return None


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


@quiet_floats
def moments(data: np.ndarray, mean: float | None = None, largest: float | None = None) -> tuple[float, float]:
    """(mean, population std) of a float64 array, computed on values scaled by a power of two where needed, so that
    neither sums nor squares overflow (1e300) or underflow (1e-300). NaN/Inf values propagate. `mean` and `largest`
    (max |x|), when the caller has them, save a pass each."""
    if data.size == 0:
        return math.nan, math.nan
    flat = data.reshape(-1)
    if largest is None:
        largest = float(np.max(np.abs(flat)))
    scale = safe_scale(largest)
    scaled = flat / scale if scale != 1.0 else flat
    scaled_mean = float(scaled.mean()) if mean is None or not math.isfinite(mean) else mean / scale
    centred = scaled - scaled_mean
    std = math.sqrt(float(np.dot(centred, centred)) / flat.size) if math.isfinite(scaled_mean) else math.nan
    if not math.isfinite(largest):
        return scaled_mean, std
    # rounding may carry the product a hair past the largest |x| (and float64's maximum): clamp
    return math.copysign(min(abs(scaled_mean) * scale, largest), scaled_mean), min(std * scale, largest)


@quiet_floats
def block_stats(values: Any) -> Stats:
    """mean, std (population), min and max of a block, computed in float64 without overflow."""
    data = as_float64(values)
    if data.size == 0:
        return dict.fromkeys(STAT_NAMES, math.nan)
    mean, std = moments(data)
    return {"mean": mean, "std": std, "min": float(data.min()), "max": float(data.max())}


@quiet_floats
def effective_bias(layer: Layer, tensors: Mapping[str, Any]) -> list[tuple[str | None, Stats]]:
    """Per gate, statistics of bias_ih + bias_hh (what the gate actually adds)."""
    present = [kind for kind in ("bias_ih", "bias_hh") if kind in layer.params]
    if not present:
        return []
    total = sum(as_float64(tensors[layer.params[kind]]) for kind in present)  # a declared cell may have one
    return [(block.gate, block_stats(total[block.start:block.stop])) for block in layer.blocks(present[0])]
