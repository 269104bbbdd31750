"""Overflow-safe float64 statistics of tensors and gate blocks, and the effective bias: shared by report and
diagnostics. torch is imported only when a tensor is converted (report does not import torch)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .layout import Layer

Stats = dict[str, float]
STAT_NAMES = ("mean", "std", "min", "max")


def as_float64(values: Any) -> torch.Tensor:
    """A float64 CPU copy of any tensor (integers and bools as numbers, complex values by their real part)."""
    import torch

    tensor = torch.as_tensor(values).detach().to("cpu")
    if tensor.is_complex():
        tensor = tensor.real  # casting complex to float64 directly would print a warning
    return tensor.to(torch.float64)


def power_of_two_scale(largest: float) -> float:
    """A power of two s with largest/s in [1, 2): dividing by it is exact, and squares of the scaled values stay
    far from float64's overflow and underflow. 1 for 0 and for non-finite values."""
    if largest == 0 or not math.isfinite(largest):
        return 1.0
    return math.ldexp(1.0, math.frexp(largest)[1] - 1)


def moments(data: torch.Tensor) -> tuple[float, float]:
    """(mean, population std) of a float64 tensor, computed on values scaled by a power of two, so that
    neither sums nor squares overflow (1e300) or underflow (1e-300). NaN/Inf values propagate."""
    if data.numel() == 0:
        return math.nan, math.nan
    largest = data.abs().max().item()
    scale = power_of_two_scale(largest)
    scaled = data / scale
    mean, std = scaled.mean().item(), scaled.std(unbiased=False).item()
    if not math.isfinite(largest):
        return mean, std
    # rounding may carry the product a hair past the largest |x| (and float64's maximum): clamp
    return math.copysign(min(abs(mean) * scale, largest), mean), min(std * scale, largest)


def block_stats(values: torch.Tensor) -> Stats:
    """mean, std (population), min and max of a block, computed in float64 without overflow."""
    if values.numel() == 0:
        return dict.fromkeys(STAT_NAMES, math.nan)
    data = as_float64(values)
    mean, std = moments(data)
    return {"mean": mean, "std": std, "min": data.min().item(), "max": data.max().item()}


def effective_bias(layer: Layer, tensors: Mapping[str, torch.Tensor]) -> list[tuple[str | None, Stats]]:
    """Per gate, statistics of bias_ih + bias_hh (what the gate actually adds)."""
    present = [kind for kind in ("bias_ih", "bias_hh") if kind in layer.params]
    if not present:
        return []
    total = sum(as_float64(tensors[layer.params[kind]]) for kind in present)  # a declared cell may have one
    return [(block.gate, block_stats(total[block.start:block.stop])) for block in layer.blocks(present[0])]
