"""Progress reports of long computations: (bytes done, bytes in all), sent to a callback the caller gives.

The library never draws a bar: the CLI turns the reports into one on a terminal. The bytes are those of the
values a step reads (a gate block's rows, a whole parameter), so a bar fills evenly however the sizes vary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

OnProgress = Callable[[int, int], None]  # called with (bytes done, bytes in all); done only grows


def byte_size(values: Any) -> int:
    """The bytes a numpy array, torch tensor or shape record (`shape`, `dtype` name) holds, without copying it."""
    nbytes = getattr(values, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    element_size = getattr(values, "element_size", None)
    if callable(element_size):  # a torch tensor (also on the meta device, which has no storage)
        return int(values.numel()) * int(element_size())
    return math.prod(getattr(values, "shape", ())) * _ITEM_SIZES.get(str(getattr(values, "dtype", "")), 4)


_ITEM_SIZES = {"float64": 8, "complex128": 16, "int64": 8, "float16": 2, "bfloat16": 2, "int16": 2,
               "complex64": 8, "uint8": 1, "int8": 1, "bool": 1}


def rows_bytes(values: Any, start: int, stop: int) -> int:
    """The bytes of rows [start, stop) of `values` (its first dimension)."""
    shape = tuple(getattr(values, "shape", ()))
    if not shape or shape[0] == 0:
        return byte_size(values)
    return byte_size(values) * (stop - start) // shape[0]


class Tally:
    """Bytes done out of a known total, reported to `on_progress` (None: nothing is reported) as they grow.
    `passes`: how many times the work goes through each of the `total` bytes (a summary pass, then the checks):
    `add` and `reach` count every pass, the report says bytes of values, so that the total is the values' size."""

    def __init__(self, total: int, on_progress: OnProgress | None, passes: int = 1) -> None:
        self.total = max(int(total), 0) * passes
        self.done = 0
        self._passes = passes
        self._report = on_progress
        if on_progress is not None:
            on_progress(0, self.total // passes)

    def add(self, count: int) -> None:
        """`count` more bytes done."""
        self.reach(self.done + count)

    def reach(self, done: int) -> None:
        """`done` bytes done in all (never more than the total, never less than before)."""
        done = min(max(done, self.done), self.total)
        if done != self.done:
            self.done = done
            if self._report is not None:
                self._report(done // self._passes, self.total // self._passes)
