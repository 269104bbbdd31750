"""Dynamically quantized (packed) recurrent layers (`quantize_dynamic` on nn.LSTM / nn.GRU): their records set aside
from layer discovery, described for `inspect` (`formats.packed` reads them, `diagnostics.quantized` summarizes them),
and rewritten by `apply` as torch made them.

A packed module is planned as the float layer `quantize_dynamic` made it from: its cells' weights and biases under
the names torch gives them (`rnn.weight_ih_l0`, `rnn.bias_hh_l1_reverse`, as `get_weight()` names them), float32
dequantized values, so the scheme draws exactly what it draws for that float layer with the same seed. The drawn
weights are then quantized as `quantize_dynamic` quantizes them (qint8: per tensor, zero point 0, the scale of
torch's MinMaxObserver, `formats.packed.qint8_scale`, and `torch.quantize_per_tensor`; fp16: rounded to float16,
stored as float32) and written back into the file's bytes: the int8 storage, the 8 bytes of the scale in data.pkl,
the float biases. Every other byte of the file is kept; torch loads the output into the quantized module.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .diagnostics.quantized import QuantizedLayer, quantized_layer
from .errors import DtypeError
from .formats.checkpoint import TensorShape
from .formats.packed import PackedCell, located_scales, packed_cells, pickle_record, qint8_scale, read_packed
from .formats.tensorfile import TensorFile
from .formats.unpickle.objects import script_objects
from .layouts.discovery import Skipped
from .layouts.patterns import compile_user_pattern

KEPT = "apply keeps it as stored"
_ONLY_PATCHED = ("rnninit rewrites packed records only in a patched copy of a torch.save zip archive, which keeps "
                 "every other byte")
_PACKING = {"quantized_dynamic": "qint8 per tensor, scale max|w|/127.5 in float32, zero point 0",
            "quantized_fp16": "float16 values"}


def set_aside_packed(opened: Any, tensors: dict[str, Any]) -> tuple[dict[str, Any], tuple[Skipped, ...]]:
    """`tensors` without those inside TorchScript objects (a quantized model's packed weights: planned only through
    `packed_as_float`), and a Skipped for each packed recurrent weight, by its name in the file."""
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
                                            f"({f'{kind}, ' if kind else ''}{cls}): {KEPT}"))
    return kept, tuple(skipped)


@dataclass
class PackedFloat:
    """The packed cells `apply` rewrites, as float parameters: by float name, the stored tensor behind it and its
    shape record; by quantized weight, where its scale lies in the pickle."""

    cells: list[PackedCell] = field(default_factory=list)
    stored: dict[str, str] = field(default_factory=dict)  # rnn.weight_ih_l0 → the packed tensor's name in the file
    shapes: dict[str, TensorShape] = field(default_factory=dict)
    scales: dict[str, int] = field(default_factory=dict)  # quantized weight's name → offset of its scale's 8 bytes
    pickle: str = ""  # the data.pkl record those offsets are in

    def stored_of(self, written: Iterable[str]) -> tuple[list[str], list[str]]:
        """Of a plan's written sources: (those the file stores as they are, the packed tensors behind the others)."""
        written = list(written)
        return [name for name in written if name not in self.stored], \
            [self.stored[name] for name in written if name in self.stored]

    def notes(self, written: Iterable[str]) -> list[str]:
        """What `apply` tells about the packed modules it rewrites, when `written` (a plan's written sources) holds
        float parameters of theirs."""
        if not any(name in self.stored for name in written):
            return []
        first: dict[str, PackedCell] = {}
        for cell in self.cells:
            first.setdefault(cell.module, cell)
        return [f"packed (dynamically quantized) {cell.cell.upper()} {module or '(top)'}: planned as its float "
                f"parameters ({_prefix(module)}weight_ih_l0, ...), packed again as quantize_dynamic packs them "
                f"({_PACKING[cell.tag]})" for module, cell in first.items()]


def _prefix(module: str) -> str:
    return f"{module}." if module else ""


def float_names(cell: PackedCell) -> dict[str, str]:
    """kind → the name torch gives the parameter in the float layer (`rnn.weight_hh_l1_reverse`)."""
    suffix = f"_l{cell.layer}{'_reverse' if cell.direction else ''}"
    return {kind: f"{_prefix(cell.module)}{kind}{suffix}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}


def packed_as_float(opened: Any, tensors: Mapping[str, Any], skipped: tuple[Skipped, ...],
                    ) -> tuple[PackedFloat, tuple[Skipped, ...]]:
    """The packed cells of `opened` that `apply` rewrites (a module's cells all or none), and `skipped` without
    their records, the others' reasons saying why they are kept; `tensors`: the file's other tensors."""
    found = PackedFloat()
    if not skipped:
        return found, skipped
    if not isinstance(opened, TensorFile) or opened.format != "pt" or opened.torchscript:
        return found, tuple(replace(item, reason=f"{item.reason} ({_ONLY_PATCHED})") for item in skipped)
    cells, problems = packed_cells(getattr(opened, "root", None), getattr(opened, "locations", {}))
    why = {problem.path: problem.reason for problem in problems}  # records rnninit cannot read
    offsets, unlocated = _scales(opened, cells)
    by_module: dict[str, list[PackedCell]] = {}
    for cell in cells:
        by_module.setdefault(cell.module, []).append(cell)
    for group in by_module.values():
        reason = next((text for cell in group if (text := _not_rewritable(opened, cell, tensors, unlocated))), None)
        if reason is not None:
            why.update(dict.fromkeys((cell.path for cell in group), reason))
            continue
        for cell in group:
            found.cells.append(cell)
            names = float_names(cell)
            for kind, stored in [*((weight.kind, weight.name) for weight in cell.weights), *cell.biases]:
                location = opened.locations[stored]
                dtype = "float32" if location.dtype_name.startswith("q") else location.dtype_name
                found.stored[names[kind]] = stored
                found.shapes[names[kind]] = TensorShape(location.shape, dtype)
            found.scales.update({w.name: offsets[w.name] for w in cell.weights if w.scale is not None})
    found.pickle = pickle_record(opened) or ""
    rewritten = {cell.path for cell in found.cells}
    return found, tuple(replace(item, reason=f"{item.reason}: {why[item.names[0]]}") if item.names[0] in why else item
                        for item in skipped if item.names[0] not in rewritten)


def _scales(opened: Any, cells: list[PackedCell]) -> tuple[dict[str, int], dict[str, str]]:
    """Where each quantized weight's scale lies in data.pkl, and why not where that cannot be told."""
    weights = [w for cell in cells for w in cell.weights if w.scale is not None]
    if not weights or pickle_record(opened) is None:
        return {}, {}
    return located_scales(opened, weights)


def _not_rewritable(opened: Any, cell: PackedCell, tensors: Mapping[str, Any], unlocated: Mapping[str, str]
                    ) -> str | None:
    """Why `apply` keeps `cell` (and its module's other cells) as stored, or None."""
    if cell.index is None:  # not a state dict's `….{k}.param` key: a whole module pickled (torch.save(model))
        return ("it is part of a whole pickled module (torch.save(model)); rnninit rewrites the packed layers of "
                "state dicts: save model.state_dict() and apply to that")
    if cell.layer is None:
        return "its layer and direction cannot be told from the shapes of its module's records"
    prefix = _prefix(cell.module)
    clash = next((name for name in tensors if name.startswith((f"{prefix}weight_", f"{prefix}bias_"))), None)
    if clash is not None:
        return f"the file also holds {clash}, a float parameter of the module the packed cells would be planned as"
    for weight in cell.weights:
        if cell.tag == "quantized_dynamic" and (weight.dtype, weight.zero_point) != ("qint8", 0):
            return f"its {weight.kind} is {weight.dtype} with zero point {weight.zero_point}, not qint8 with 0"
        if cell.tag == "quantized_fp16" and weight.dtype != "float32":
            return f"its {weight.kind} is {weight.dtype}, not float32"
        if weight.name in unlocated:
            return f"the scale of its {weight.kind} cannot be located in the pickle: {unlocated[weight.name]}"
    for name in [w.name for w in cell.weights] + [name for _, name in cell.biases]:
        if not opened.locations[name].contiguous:
            return f"{name} is not contiguous"
    return None


def source_values(opened: Any, found: PackedFloat, names: Iterable[str], *, as_torch: bool) -> dict[str, Any]:
    """The values of a plan's sources `names`: the file's tensors as stored, and the float parameters of `found`
    (dequantized weights, float32; biases as stored); torch tensors (`as_torch`, for drawing: torch's own
    dequantize) or numpy arrays (for reading)."""
    import numpy as np

    names = list(names)
    plain, _ = found.stored_of(names)
    packed = [name for name in names if name in found.stored]
    scales = {w.name: w.scale for cell in found.cells for w in cell.weights}
    quantized = [found.stored[name] for name in packed if scales.get(found.stored[name]) is not None]
    floats = [found.stored[name] for name in packed if found.stored[name] not in quantized]
    integers = opened.integers(quantized) if quantized else {}
    if not as_torch:
        arrays = opened.arrays([*plain, *floats])
        return {**{name: arrays[name] for name in plain}, **{
            name: integers[stored].astype(np.float32) * np.float32(scales[stored]) if stored in integers
            else arrays[stored] for name in packed for stored in [found.stored[name]]}}
    import torch

    loaded = opened.load([*plain, *floats])
    values = {name: loaded[name] for name in plain}
    for name in packed:
        stored = found.stored[name]
        if stored in integers:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's deprecation notes on quantized tensors
                made = torch._make_per_tensor_quantized_tensor(torch.from_numpy(integers[stored].astype(np.int8)),
                                                               scales[stored], 0)
            values[name] = made.dequantize()
        else:
            values[name] = loaded[stored].float() if stored in scales else loaded[stored]
    return values


def packed_updates(found: PackedFloat, tensors: Mapping[str, Any], written: Iterable[str]) -> dict[str, Any]:
    """What the file's packed tensors become, by stored name (the int8 of a quantized weight not yet computed: an
    empty int8 tensor that `repack` fills), for the float parameters of `found` among `written`."""
    import torch

    weights = {w.name: w for cell in found.cells for w in cell.weights}
    updates = {}
    for name in written:
        stored = found.stored.get(name)
        if stored is None:
            continue
        weight = weights.get(stored)
        quantized = weight is not None and weight.scale is not None
        updates[stored] = torch.empty(weight.shape, dtype=torch.int8) if quantized else tensors[name]
    return updates


def repack(found: PackedFloat, tensors: Mapping[str, Any], updates: Mapping[str, Any]) -> dict[int, bytes]:
    """Pack the drawn float weights as `quantize_dynamic` does, into `updates` (see `packed_updates`), and leave in
    `tensors` the values the quantized layer computes with (dequantized); the new scales' bytes by their offset in
    data.pkl."""
    import torch

    weights = {w.name: w for cell in found.cells for w in cell.weights}
    patches = {}
    for name, stored in found.stored.items():
        weight = weights.get(stored)
        if stored not in updates or weight is None:
            continue  # a bias is written as drawn
        values = tensors[name]
        if not bool(torch.isfinite(values).all()):
            raise DtypeError(f"{name} ({stored}) would hold non-finite values, which a packed weight cannot hold")
        if weight.scale is None:  # fp16: the values fbgemm's fp16 packing keeps, stored as float32
            half = values.to(torch.float16)
            if not bool(torch.isfinite(half).all()):
                raise DtypeError(f"{name} ({stored}) is packed as float16, which cannot hold values beyond 65504")
            values.copy_(half)
            continue
        scale = qint8_scale(float(values.abs().max()) if values.numel() else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's deprecation notes on quantized tensors
            quantized = torch.quantize_per_tensor(values, scale, 0, torch.qint8)
        updates[stored].copy_(quantized.int_repr())
        values.copy_(quantized.dequantize())
        patches[found.scales[stored]] = struct.pack(">d", scale)
    return patches


def describe_packed(opened: Any, names: Iterable[str], skipped: tuple[Skipped, ...], only: str | None,
                    ) -> tuple[list[QuantizedLayer], tuple[Skipped, ...]]:
    """The dynamically quantized layers of `opened` (those whose record path `only` matches), each with why apply
    keeps it where `skipped` names it, and `skipped` with why a packed record is not shown, where it is not."""
    cells, problems = packed_cells(getattr(opened, "root", None), names)
    if not cells and not skipped:
        return [], skipped
    pattern = compile_user_pattern(only, "only") if only else None
    cells = [cell for cell in cells if pattern is None or pattern.search(cell.path)]
    values = read_packed(opened, cells)
    why = {problem.path: problem.reason for problem in problems}
    kept = {item.names[0]: item.reason for item in skipped}
    return [quantized_layer(cell, values, kept.get(cell.path)) for cell in cells], tuple(
        replace(item, reason=_unshown(item.reason, why[item.names[0]])) if item.names[0] in why else item
        for item in skipped)


def _unshown(reason: str, why: str) -> str:
    """A skipped record's reason, saying that inspect cannot show it either (and why, unless it says so already)."""
    return f"{reason}; inspect cannot show it" if reason.endswith(why) else f"{reason}; inspect cannot show it: {why}"
