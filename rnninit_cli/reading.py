"""Checkpoints opened for reading block by block (`rnninit diff`): the layers `rewrite.inspect_checkpoint` finds,
with their parameters left in the file until a block of their rows is read (`formats.lazy`), so that comparing
two 1 GB checkpoints holds a few MB of each rather than both files.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .formats.checkpoint import read_checkpoint
from .formats.lazy import DeferredArray, FileArray, lazy_arrays
from .layouts.discovery import Discovery
from .rewrite import Inspection, close_source, inspection_of, open_source

if TYPE_CHECKING:
    from .layouts.declared import Declaration


@contextmanager
def open_inspection(source: str, only: str | None = None, *, layouts: Sequence[Declaration] = (),
                    strict: bool = False) -> Iterator[Inspection]:
    """`inspect_checkpoint`'s answer, the source held open while the caller reads it: the layers' parameters are
    FileArrays (rows read when asked), arrays where the checkpoint was read whole anyway (standard input, a legacy
    `.pt`), and DeferredArrays where a view composes them (read whole when asked, one parameter at a time)."""
    opened = open_source(source, load=read_checkpoint)
    try:
        yield inspection_of(opened, source, only, layouts=layouts, strict=strict,
                            tensors_of=lambda found: _effective(found, lazy_arrays(opened, found.sources)))
    finally:
        close_source(opened)


def _effective(found: Discovery, stored: Mapping[str, Any]) -> dict[str, Any]:
    """`found.effective(stored)`, a view's parameter composed only when it is read (a DeferredArray)."""
    views = {view.name: view for view in found.views}
    shapes = {name: tuple(value.shape) for name, value in stored.items()}
    result: dict[str, Any] = {}
    for layer in found.layers:
        for name in layer.params.values():
            if name in result:
                continue
            view = views.get(name)
            if view is None:
                result[name] = stored[name]
            else:
                result[name] = DeferredArray(lambda view=view: view.compose(_Whole(stored)), view.shape(shapes),
                                             sum(int(stored[source].nbytes) for source in view.sources))
    return result


class _Whole(Mapping[str, Any]):
    """The stored tensors, each read whole when a view asks for it, as the whole-file readers give them."""

    def __init__(self, stored: Mapping[str, Any]) -> None:
        self._stored = stored

    def __getitem__(self, name: str) -> Any:
        value = self._stored[name]
        return value.read() if isinstance(value, (FileArray, DeferredArray)) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)
