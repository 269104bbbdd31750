"""What inspect shows of a dynamically quantized LSTM or GRU (read by `formats.packed`): per packed weight its dtype,
scale and zero point, and per gate block the statistics of the dequantized values ((integer − zero point) × scale)
and of the float biases, and whether `apply` rewrites the layer (`packing`) or keeps it as stored, and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..layouts.discovery import GATES
from .formatting import _json
from .stats import Stats, block_stats, dtype_name


@dataclass(frozen=True)
class QuantizedParam:
    """One parameter of a quantized layer: a packed weight (with scale and zero point when quantized) or a bias,
    and per gate the statistics of its values."""

    kind: str  # weight_ih, weight_hh, bias_ih, bias_hh
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None
    zero_point: int | None
    blocks: tuple[tuple[str, Stats], ...]  # (gate, statistics of its rows' values)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "dtype": self.dtype,
                "scale": self.scale, "zero_point": self.zero_point,
                "blocks": [{"gate": gate, **_json(stats)} for gate, stats in self.blocks]}


@dataclass(frozen=True)
class QuantizedLayer:
    """A dynamically quantized LSTM or GRU layer and direction, as its packed record holds it."""

    path: str  # the record's name in the file: lstm._all_weight_values.0.param
    module: str
    index: int | None
    packing: str  # quantized_dynamic (qint8 weights) or quantized_fp16
    cell: str
    layer: int | None
    direction: int | None
    input_size: int
    hidden_size: int
    params: tuple[QuantizedParam, ...]
    kept: str | None = None  # why apply keeps the record as stored; None: apply rewrites it

    @property
    def title(self) -> str:
        """`lstm._all_weight_values.0.param: quantized LSTM, layer 0 forward`."""
        where = "" if self.layer is None else f", layer {self.layer} {('forward', 'reverse')[self.direction or 0]}"
        return f"{self.path}: quantized {self.cell.upper()}{where}"

    def as_dict(self) -> dict[str, Any]:
        direction = None if self.direction is None else ("forward", "reverse")[self.direction]
        return {"path": self.path, "module": self.module, "index": self.index, "packing": self.packing,
                "cell": self.cell, "layer": self.layer, "direction": direction, "input_size": self.input_size,
                "hidden_size": self.hidden_size, "gates": list(GATES[self.cell]),
                "params": [param.as_dict() for param in self.params], "rewritten": self.kept is None,
                "reason": self.kept}


def dequantized_stats(integers: Any, scale: float, zero_point: int) -> Stats:
    """Statistics of (q − z)·s from those of the integers q: mean (q̄ − z)·s, std σ_q·s, min (q_min − z)·s,
    max (q_max − z)·s (s > 0), without a float copy of the values."""
    stats = block_stats(integers)
    return {"mean": (stats["mean"] - zero_point) * scale, "std": stats["std"] * scale,
            "min": (stats["min"] - zero_point) * scale, "max": (stats["max"] - zero_point) * scale}


def quantized_layer(cell: Any, values: Mapping[str, Any], kept: str | None = None) -> QuantizedLayer:
    """The description of a `formats.packed.PackedCell`, its tensors' `values` by name (stored integers for the
    quantized weights, float arrays otherwise); `kept`: why apply keeps it as stored (None: apply rewrites it)."""
    gates = GATES[cell.cell]
    rows = cell.hidden_size

    def blocks(array: Any, stats_of: Any) -> tuple[tuple[str, Stats], ...]:
        return tuple((gate, stats_of(array[index * rows:(index + 1) * rows])) for index, gate in enumerate(gates))

    params = []
    for weight in cell.weights:
        array = values[weight.name]
        if weight.scale is None:
            made = blocks(array, block_stats)
        else:
            made = blocks(array, lambda part, w=weight: dequantized_stats(part, w.scale, w.zero_point))
        params.append(QuantizedParam(weight.kind, weight.name, weight.shape, weight.dtype, weight.scale,
                                     weight.zero_point, made))
    for kind, name in cell.biases:
        array = values[name]
        params.append(QuantizedParam(kind, name, tuple(array.shape), dtype_name(array), None, None,
                                     blocks(array, block_stats)))
    return QuantizedLayer(cell.path, cell.module, cell.index, cell.tag, cell.cell, cell.layer, cell.direction,
                          cell.input_size, cell.hidden_size, tuple(params), kept)
