"""How results are written: numbers in messages (`_fmt`) and JSON-serializable values (`_json`)."""

from __future__ import annotations

import math
from typing import Any


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _at_rounding(value: float | None, level: float) -> str | None:
    """'< 1e-5' (the power of ten above `level`) for a value at most `level`, a rounding-level error whose digits
    change with the CPU and BLAS build; None for a value worth printing as it is."""
    if value is None or not (level > 0 and value <= level):
        return None
    return f"< 1e{math.floor(math.log10(level)) + 1}"


def _json(value: Any) -> Any:
    """Non-finite floats → None, recursively through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(item) for item in value]
    return value
