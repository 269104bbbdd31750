"""`LayerDiagnosis`: what a diagnosis found for one layer (direction) or cell, read by the warnings and the report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..layouts.discovery import Layer
from .blocks import BlockStats, MatrixStats
from .formatting import _json
from .recognition import SchemeMatch


@dataclass(frozen=True)
class LayerDiagnosis:
    """One layer (direction) or cell: its blocks, whole matrices, effective bias and the schemes it matches."""

    layer: Layer
    blocks: tuple[BlockStats, ...]
    matrices: tuple[MatrixStats, ...]
    effective_bias: tuple[dict[str, Any], ...]
    scheme: SchemeMatch
    notes: tuple[str, ...] = ()  # what a per-head cell's biases and recurrence mean (see `recurrences`)

    @property
    def title(self) -> str:
        return self.layer.title

    def as_dict(self) -> dict[str, Any]:
        layer = self.layer
        return _json({
            "title": layer.title, "prefix": layer.prefix, "cell": layer.cell, "is_cell": layer.is_cell,
            "layer": layer.layer, "direction": layer.direction, "input_size": layer.input_size,
            "hidden_size": layer.hidden_size, "proj_size": layer.proj_size, "bias": layer.bias,
            "blocks": [b.as_dict() for b in self.blocks], "matrices": [m.as_dict() for m in self.matrices],
            "effective_bias": list(self.effective_bias), "scheme": self.scheme.as_dict(), "notes": list(self.notes),
        })
