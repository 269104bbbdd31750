"""Dynamically quantized (packed) recurrent layers (`quantize_dynamic` on nn.LSTM / nn.GRU): their records set aside
from layer discovery and from every rewrite, named as skipped, and described for `inspect` (`formats.packed` reads
them, `diagnostics.quantized` summarizes them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from .diagnostics.quantized import QuantizedLayer, quantized_layer
from .formats.packed import packed_cells, read_packed
from .formats.unpickle.objects import script_objects
from .layouts.discovery import Skipped
from .layouts.patterns import compile_user_pattern


def set_aside_packed(opened: Any, tensors: dict[str, Any]) -> tuple[dict[str, Any], tuple[Skipped, ...]]:
    """`tensors` without those inside TorchScript objects (a quantized model's packed weights: never planned), and
    a Skipped for each packed recurrent weight, by its name in the file."""
    objects = script_objects(getattr(opened, "root", None))
    if not objects:
        return tensors, ()
    inside = tuple(f"{path}/" for path, _ in objects)
    kept = {name: tensor for name, tensor in tensors.items() if not name.startswith(inside)}
    skipped = []
    for path, record in objects:
        # torch pickles a ScriptObject's state as (its __getstate__(), its class's qualified name)
        fields, cls = record.state if isinstance(record.state, tuple) and len(record.state) == 2 else ((), "")
        if isinstance(cls, str) and ".classes.rnn." in cls:
            kind = fields[0] if isinstance(fields, tuple) and fields and isinstance(fields[0], str) else ""
            skipped.append(Skipped((path,), f"a dynamically quantized (packed) recurrent weight "
                                            f"({f'{kind}, ' if kind else ''}{cls}): rnninit cannot rewrite it and "
                                            "keeps it as stored"))
    return kept, tuple(skipped)


def describe_packed(opened: Any, names: Iterable[str], skipped: tuple[Skipped, ...], only: str | None,
                    ) -> tuple[list[QuantizedLayer], tuple[Skipped, ...]]:
    """The dynamically quantized layers of `opened` (those whose record path `only` matches), and `skipped` with why
    a packed record is not shown, where it is not."""
    if not skipped:
        return [], skipped
    cells, problems = packed_cells(getattr(opened, "root", None), names)
    pattern = compile_user_pattern(only, "only") if only else None
    cells = [cell for cell in cells if pattern is None or pattern.search(cell.path)]
    values = read_packed(opened, cells)
    why = {problem.path: problem.reason for problem in problems}
    return [quantized_layer(cell, values) for cell in cells], tuple(
        replace(item, reason=f"{item.reason}; inspect cannot show it: {why[item.names[0]]}")
        if item.names[0] in why else item for item in skipped)
