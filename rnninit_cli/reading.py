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
from .init.planning import refuse_skipped, set_aside_quantized
from .layouts.discovery import Discovery, discover
from .rewrite import Inspection, close_source, open_source, set_aside_packed
from .stale import model_tensors

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
        shapes = opened.shape_records()
        unpacked, packed = set_aside_packed(opened, model_tensors(opened, shapes))
        kept, quantized = set_aside_quantized(unpacked, layouts=layouts, only=only)
        spans = getattr(opened, "storage_spans", None)
        found = discover(kept, layouts=layouts, only=only, identities=None if spans is None else spans())
        skipped = [*packed, *quantized, *found.skipped]
        if strict:
            refuse_skipped(skipped)
        held = {name for item in quantized for name in item.names}
        listed = [f"{name} ({record.dtype})" for name, record in unpacked.items() if name not in kept
                  and name not in held]
        tensors = _effective(found, lazy_arrays(opened, found.sources))
        unselected = [name for layer in discover(kept, layouts=layouts).layers for name in layer.params.values()] \
            if only is not None and not found.layers else []
        yield Inspection(source, opened.format, len(shapes), dict(opened.metadata), list(found.layers), tensors,
                         skipped, list(found.suspects), [view.describe for view in found.views],
                         foreign_classes=list(getattr(opened, "foreign_classes", [])), quantized=listed,
                         unselected=unselected)
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
