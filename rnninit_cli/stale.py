"""What a rewrite leaves behind in the rest of a checkpoint: optimizer state that describes the old values, and
tensors that share storage with a rewritten one. Optimizer state is never a layer, a look-alike or rewritten.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

from .errors import CheckpointError


def optimizer_tensors(opened: Any, names: Iterable[str]) -> list[str]:
    """The tensors of `names` that are optimizer state (Adam's moments, SGD's momentum...: see
    `optimizer_state_paths`), in order."""
    paths = getattr(opened, "optimizer_paths", [])
    if "" in paths:
        return list(names)  # the file is one optimizer's state
    inside = tuple(f"{path}/" for path in paths)
    return [name for name in names if name.startswith(inside)] if inside else []


def model_tensors(opened: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    """`tensors` without optimizer state: it is never a layer, a look-alike, or rewritten."""
    optimizer = set(optimizer_tensors(opened, tensors))
    return {name: tensor for name, tensor in tensors.items() if name not in optimizer} if optimizer else tensors


def stale_optimizer_warning(opened: Any, shapes: dict[str, Any], written: Iterable[str], *,
                            dry_run: bool = False) -> str | None:
    """A warning when the optimizer state holds per-parameter tensors (moments, momentum buffers) shaped like a
    rewritten parameter: they describe the old values. Optimizer state without such tensors (plain SGD) is not
    stale."""
    rewritten = {tuple(shapes[name].shape) for name in written}
    stale = [name for name in optimizer_tensors(opened, shapes)
             if len(shapes[name].shape) and tuple(shapes[name].shape) in rewritten]
    if not stale:
        return None
    written = list(written)
    paths = ", ".join(path or "(the whole file)" for path in opened.optimizer_paths)
    tense = "would be" if dry_run else "are now"
    return (f"the checkpoint holds optimizer state ({paths}) with {len(stale)} per-parameter buffer(s) shaped like "
            f"the {len(written)} rewritten parameter(s) ({stale[0]}{', ...' if len(stale) > 1 else ''}); they "
            f"{tense} stale. Pass --drop-optimizer-state to reset them (hyper-parameters are kept), or reset the "
            "optimizer when resuming")


def shared_storage_warnings(opened: Any, written: Iterable[str], records: Iterable[str] = ()) -> list[str]:
    """Warnings for rewritten tensors that share storage with others (tied weights); `records`: paths of objects
    whose tensors share storage with each other by design (a packed record's biases), not called tied."""
    spans = opened.storage_spans()
    inside = tuple(f"{path}/" for path in records)
    overlapping = SpanIndex(spans)
    messages = []
    written = list(written)
    rewritten = set(written)
    for name in written:
        storage, start, stop = spans[name]
        others = [other for other in overlapping.overlapping(storage, start, stop) if other != name]
        clash = next((other for other in others if other in rewritten and spans[other] != spans[name]), None)
        if clash is not None:  # a tied pair is one tensor; a partial overlap would mix two draws' bytes
            raise CheckpointError(f"{name} and {clash} overlap in memory without being the same tensor: rewriting "
                                  "one would overwrite part of the other. Save the checkpoint with each "
                                  "parameter .clone()d, or leave one out with --only")
        others = [other for other in others if not _flat_weight_of(name, other)
                  and not any(name.startswith(path) and other.startswith(path) for path in inside)]
        if others:
            messages.append(f"{name} shares its storage with {', '.join(others)} (tied weights): "
                            "rewriting it changed those too")
    return messages


def _flat_weight_of(name: str, other: str) -> bool:
    """Whether `other` is the pickled nn.RNN/GRU/LSTM's own list of its parameters (`_flat_weights`) holding
    `name`: a second name the module keeps, not a weight tied to another."""
    module, found, _ = name.rpartition("_parameters/")
    if not found or (module and not module.endswith("/")):
        return False
    index = other.removeprefix(f"{module}_flat_weights/")
    return index != other and index.isdigit()


class SpanIndex:
    """The byte spans of a checkpoint by storage, sorted by first byte, with a max-tree over their ends: finding
    the spans that overlap one costs O(log n) per span found, not a scan of all n (10,000-layer checkpoints)."""

    def __init__(self, spans: dict[str, tuple[Any, int, int]]) -> None:
        by_storage: dict[Any, list[tuple[int, int, int, str]]] = {}
        for order, (name, (storage, start, stop)) in enumerate(spans.items()):
            by_storage.setdefault(storage, []).append((start, order, stop, name))
        self._storages: dict[Any, tuple[list[int], list[int], list[tuple[int, str]]]] = {}
        for storage, members in by_storage.items():
            members.sort()
            size = 1 << max(len(members) - 1, 0).bit_length()
            tree = [-1] * size + [stop for _, _, stop, _ in members] + [-1] * (size - len(members))
            for node in range(size - 1, 0, -1):
                tree[node] = max(tree[2 * node], tree[2 * node + 1])
            self._storages[storage] = ([start for start, _, _, _ in members], tree,
                                       [(order, name) for _, order, _, name in members])

    def overlapping(self, storage: Any, start: int, stop: int) -> list[str]:
        """Names of the spans [a, b) of `storage` with a < stop and start < b, in the order of the spans dict."""
        starts, tree, names = self._storages[storage]
        count = bisect.bisect_left(starts, stop)  # spans [0, count) begin before `stop`
        size = len(tree) // 2
        found = []
        pending = [(1, 0, size)]
        while pending:
            node, low, high = pending.pop()
            if low >= count or tree[node] <= start:
                continue
            if node >= size:
                found.append(names[low])
                continue
            middle = (low + high) // 2
            pending += [(2 * node, low, middle), (2 * node + 1, middle, high)]
        return [name for _, name in sorted(found)]
