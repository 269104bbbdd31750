"""How results are written: numbers in messages (`_fmt`) and JSON-serializable values (`_json`)."""

from __future__ import annotations

import math
from typing import Any


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _json(value: Any) -> Any:
    """Non-finite floats → None, recursively through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(item) for item in value]
    return value
