"""The object graph of a loaded checkpoint: its leaves by path, optimizer states, TorchScript objects.

A pickle's memo lets a few kB reference one container from many places; every walk here visits a container
once and counts what it visits against `safety.max_entries()`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ...errors import CheckpointError
from ..safety import (
    MAX_ENTRIES_VARIABLE,
    MAX_NESTING,
    max_entries,
)
from .records import Foreign, TensorRef, key_text

if TYPE_CHECKING:
    pass



BROADCAST_LIMIT = 1 << 24  # elements a view may claim beyond its storage (128 MiB as float64 statistics)



def refuse_broadcast(name: str, count: int, stored: int) -> None:
    """Refuse a view made by `expand` that claims far more elements than its storage holds: a few stored bytes
    can claim billions of elements, and statistics would allocate them all. Small ones are inspected as they
    are (and refused for rewriting later: their elements share memory)."""
    if count > stored and count > BROADCAST_LIMIT:
        raise CheckpointError(f"{name} is a broadcast view (made by expand?): its {count} elements read only "
                              f"{stored} stored ones; rnninit neither inspects nor rewrites such a tensor. "
                              "Save it with .contiguous() first")



def _is_optimizer_state(node: Any) -> bool:
    """torch's `Optimizer.state_dict()` ({"state", "param_groups"}) or fastai's ({"state", "hypers"})."""
    return isinstance(node, dict) and "state" in node and ("param_groups" in node or "hypers" in node)



def _is_per_parameter_state(node: Any) -> bool:
    """A mapping of parameter ids (ints) to each parameter's buffers ({"exp_avg": tensor, "step": 3}): the state
    of an optimizer saved without its param_groups (a hand-rolled one's)."""
    return isinstance(node, dict) and bool(node) and all(
        isinstance(key, int) and isinstance(value, dict) and value
        and all(isinstance(name, str) and "." not in name and not isinstance(item, (dict, list, tuple))
                for name, item in value.items())
        for key, value in node.items())



def optimizer_state_paths(root: Any) -> list[str]:
    """Paths of optimizer state dicts (see `_is_optimizer_state`); a list of them (Lightning's
    `optimizer_states`) is named as the list itself; a "state" entry that maps parameter ids to their buffers is
    named by itself (`opt/state`). Each container is looked at once (see walk)."""
    found = []
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, node = stack.pop()
        if not isinstance(node, (dict, list, tuple)) or id(node) in seen:
            continue
        seen.add(id(node))
        if _is_optimizer_state(node) or (not isinstance(node, dict) and any(map(_is_optimizer_state, node))):
            found.append(path)
            continue
        children = list(node.items() if isinstance(node, dict) else enumerate(node))
        if isinstance(node, dict) and _is_per_parameter_state(node.get("state")):
            found.append(join(path, "state"))
            children = [(key, value) for key, value in children if key != "state"]
        stack.extend(reversed([(join(path, key), value) for key, value in children]))
    return found



def is_tensor(value: Any) -> bool:
    """A torch tensor, or a tensor record of the restricted reader (checking never imports torch)."""
    if isinstance(value, TensorRef):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)



def join(prefix: str, key: Any) -> str:
    text = key_text(key)  # CheckpointError for an int key of more than 4300 digits (str would raise ValueError)
    return f"{prefix}/{text}" if prefix else text



def walk(node: Any, prefix: str, aliases: list[tuple[str, str]] | None = None) -> Iterator[tuple[str, Any]]:
    """(path, leaf) for every leaf of nested dicts, lists and tuples, depth first, in order.

    A pickle's memo lets a few kB reference one container from many places (2**64 paths in 4 kB), so
    each container is walked once: reached again by another path, it is not walked again and its leaves
    keep the names of the first path (`aliases`, if given, collects (path, first path) of each such
    container). A leaf reached from several containers (a tied tensor) gets each name. CheckpointError
    when containers nest deeper than MAX_NESTING, when there are more than max_entries() leaves and
    containers, or when two leaves get the same name (a key "model/x" beside {"model": {"x": ...}}): one
    of them would be lost."""
    limit = max_entries()
    walked: dict[int, tuple[str, Any]] = {}  # id of a container → (the path it was first reached by, it)
    named: dict[str, tuple[str, Any]] = {}  # leaf path → (its container's path, its key), to name collisions
    count = 1
    # (path of the container, key in it, value, depth): a child's own path is made when it is reached, so a wide
    # container costs one small tuple a child, counted against the limit before any is made
    stack: list[tuple[str, Any, Any, int]] = [(prefix, _ROOT, node, 0)]
    while stack:
        parent, key, value, depth = stack.pop()
        path = parent if key is _ROOT else join(parent, key)
        if isinstance(value, dict):
            items: Any = value.items()
        elif isinstance(value, (list, tuple)):
            items = enumerate(value)
        elif isinstance(value, Foreign):  # an object of another class: its attributes, arguments, items
            items = value.children()
        else:
            if path in named:
                raise CheckpointError(f"two entries are both named {path!r}: {_describe(*named[path])} and "
                                      f"{_describe(parent, key)}; rename one (one of them would be lost)")
            named[path] = (parent if key is not _ROOT else "", None if key is _ROOT else key)
            yield path, value
            continue
        if id(value) in walked:
            if aliases is not None:
                aliases.append((path, walked[id(value)][0]))
            continue
        walked[id(value)] = (path, value)  # the value kept alive: a freed temporary's id would be reused
        if depth >= MAX_NESTING:
            raise CheckpointError(f"the checkpoint's containers are nested deeper than {MAX_NESTING} levels "
                                  f"(at {path[:200]!r}...); refused")
        count += len(value) if not isinstance(value, Foreign) else len(items)
        if count > limit:
            raise CheckpointError(f"the checkpoint holds more than {limit} entries (tensors, values and "
                                  f"containers); refused. Set {MAX_ENTRIES_VARIABLE} to allow more")
        stack.extend(reversed([(path, child, item, depth + 1) for child, item in items]))



_ROOT = object()  # the key of the walk's starting node: its path is the prefix itself



def script_objects(root: Any) -> list[tuple[str, Foreign]]:
    """(path, record) of every `torch.ScriptObject` in the object graph (the outermost ones), named as `walk` names
    paths: a quantized model's packed weights (`lstm._all_weight_values.0.param`), which rnninit keeps as stored."""
    found: list[tuple[str, Foreign]] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, Foreign) and node.qualified == "torch.ScriptObject":
            found.append((path, node))
            continue
        if not isinstance(node, (dict, list, tuple, Foreign)) or id(node) in seen:
            continue
        seen.add(id(node))
        children = node.items() if isinstance(node, dict) else node.children() if isinstance(node, Foreign) \
            else enumerate(node)
        stack.extend(reversed([(join(path, key), value) for key, value in children]))
    return found



def _describe(parent: str, key: Any) -> str:
    return f"key {key!r} of {parent!r}" if parent else f"top-level key {key!r}"
