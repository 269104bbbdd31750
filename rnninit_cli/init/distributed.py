"""Writing parameters that one process holds only in part: DTensors (FSDP2 `fully_shard`, `distribute_tensor`) and
parameters still on the `meta` device.

Gate blocks are row ranges, and a DTensor sharded by rows (Shard(0), the placement FSDP2 uses) gives each rank one
contiguous range of rows. Each rank draws, whole and from the same seeded generator as a single process would, only
the scopes (blocks, or whole matrices for per=matrix rules) that overlap its rows, and writes the overlapping rows into
its local shard: the assembled tensor is bit for bit what `init_` writes into an unsharded copy, with no communication.
Where rows are not contiguous on a rank (Shard(1), _StridedShard) or values are partial sums (Partial), nothing is
written: PlacementError. Everything here uses torch's own DTensor API (placements, device_mesh, to_local()).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import MetaDeviceError, PlacementError, UsageError

if TYPE_CHECKING:
    import torch


def is_dtensor(value: Any) -> bool:
    """Whether `value` is a DTensor. A DTensor exists only once torch.distributed.tensor is imported, so the check
    never imports it (that costs a second on every CLI run)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(value, module.DTensor)


def _is_meta(value: Any) -> bool:
    local = value.to_local() if is_dtensor(value) else value
    return bool(getattr(local, "is_meta", False))


def refuse_meta(tensors: Mapping[str, Any], names: Iterable[str]) -> None:
    """MetaDeviceError naming the tensors to be written that live on the meta device (no storage to write into)."""
    meta = [name for name in dict.fromkeys(names) if _is_meta(tensors[name])]
    if meta:
        shown = ", ".join(meta[:5]) + (f" and {len(meta) - 5} more" if len(meta) > 5 else "")
        raise MetaDeviceError(f"{len(meta)} parameter(s) to initialize are on the meta device and have no storage "
                              f"({shown}); call module.to_empty(device=...) first, then init_")


@dataclass(frozen=True)
class LocalRows:
    """The rows [start, stop) of a parameter that this rank holds, as `values` (its DTensor's local shard)."""

    values: torch.Tensor
    start: int
    stop: int

    def overlaps(self, start: int, stop: int) -> bool:
        return max(start, self.start) < min(stop, self.stop)

    def write(self, start: int, stop: int, values: torch.Tensor) -> None:
        """Write the global rows [start, stop), given as `values` (all of them), where they overlap ours."""
        low, high = max(start, self.start), min(stop, self.stop)
        if low < high:
            self.values[low - self.start:high - self.start].copy_(values[low - start:high - start])


def local_rows(name: str, tensor: Any) -> LocalRows:
    """This rank's rows of the DTensor `tensor`; PlacementError unless they are one contiguous row range holding
    whole rows (every placement Shard(0) or Replicate())."""
    import torch
    from torch.distributed.tensor import Shard, _StridedShard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    placements = tuple(tensor.placements)
    for placement in placements:
        by_rows = isinstance(placement, Shard) and not isinstance(placement, _StridedShard) and placement.dim == 0
        if not (by_rows or placement.is_replicate()):
            raise PlacementError(
                f"{name} is a DTensor placed as {list(placements)}; init_ writes DTensors sharded by rows (Shard(0), "
                "as FSDP2 does by default) or replicated (Replicate()), where each rank holds whole gate rows. Shard "
                "it with Shard(0) (FSDP2: leave shard_placement_fn unset), or call init_ before sharding it")
    global_shape = tuple(tensor.shape)
    with torch.no_grad():  # the local tensor itself, not an autograd view of it
        local = tensor.to_local()
    if local.numel() == 0:  # no rows here (fewer rows than ranks, or a rank outside the mesh): nothing to write
        return LocalRows(local, 0, 0)
    local_shape, offset = compute_local_shape_and_global_offset(global_shape, tensor.device_mesh, placements)
    if not global_shape or tuple(local.shape) != tuple(local_shape) or tuple(local.shape[1:]) != global_shape[1:]:
        raise PlacementError(f"{name}: the local shard of this rank has shape {list(local.shape)}, not the "
                             f"{list(local_shape)} that its placements {list(placements)} give for the global "
                             f"shape {list(global_shape)}; call init_ before sharding this parameter")
    start = offset[0] if offset else 0
    return LocalRows(local, start, start + local.shape[0])


def shard_rows(tensors: Mapping[str, Any], names: Iterable[str]) -> dict[str, LocalRows]:
    """The local rows of every DTensor among the named tensors (plain tensors are left out: they are written whole)."""
    return {name: local_rows(name, tensors[name]) for name in dict.fromkeys(names) if is_dtensor(tensors[name])}


def refuse_unsharded_fsdp(module: Any) -> None:
    """UsageError for an FSDP2 module whose parameters are unsharded right now (after a forward with
    reshard_after_forward=False, or unshard()): its registered parameters are then all-gathered copies that
    reshard() drops, so values written into them would be lost."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    kind = getattr(fsdp, "FSDPModule", None)
    if kind is None:
        return
    for name, submodule in module.named_modules():
        if not isinstance(submodule, kind):
            continue
        try:  # torch's own record of the group's state (private, so read defensively)
            group = submodule._get_fsdp_state()._fsdp_param_group
            sharded = group is None or group.is_sharded
        except AttributeError:
            continue
        if not sharded:
            where = f"{name!r}" if name else "the model"
            raise UsageError(f"{where} is an FSDP2 module whose parameters are unsharded now (after a forward with "
                             "reshard_after_forward=False, or unshard()): init_ would write into copies that "
                             "reshard() drops; call reshard() on it first, then init_")


def refuse_unseeded_shards(tensors: Mapping[str, Any], names: Iterable[str]) -> None:
    """UsageError when a DTensor is to be written without a seed: each rank would draw its own, and the shards
    would come from different draws."""
    sharded = [name for name in dict.fromkeys(names) if is_dtensor(tensors[name])]
    if sharded:
        raise UsageError(f"{sharded[0]} is a DTensor: give init_ a seed (the same on every rank); without one, each "
                         "rank would draw its own and the shards would not fit together")


def refuse_sharded_views(tensors: Mapping[str, Any], views: Iterable[Any]) -> None:
    """PlacementError for a parameter stored in another form (weight_norm's g and v, a weight-dropped `_raw`
    tensor...) whose stored tensors are DTensors: composing and decomposing it would need the whole tensors."""
    for view in views:
        sharded = [source for source in view.sources if is_dtensor(tensors[source])]
        if sharded:
            raise PlacementError(f"{view.name} is stored as {', '.join(view.sources)}, and {', '.join(sharded)} "
                                 "are DTensors; init_ cannot write such a parameter shard by shard: call init_ "
                                 "before sharding the module")
