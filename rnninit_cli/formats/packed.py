"""Dynamically quantized recurrent layers (`torch.ao.quantization.quantize_dynamic` on nn.LSTM / nn.GRU) read as
data: each `_all_weight_values.{k}.param` is a `torch.ScriptObject` of class `rnn.CellParamsBase`, which torch
pickles as its `__getstate__()` and its class's name:

    ((tag, [b_ih, b_hh], [], [reduce_range], [packed ih, packed hh]), "__torch__.torch.classes.rnn.CellParamsBase")

tag "quantized_dynamic" (qint8 weights) or "quantized_fp16" (float weights, no biases in the list: they are in the
packed records). Each packed record is a ScriptObject of class `quantized.LinearPackedParamsBase` pickled as
((weight, bias), its class's name): the weight a quantized tensor (`_rebuild_qtensor`, per tensor, zero point 0)
or, for fp16, a float tensor. The restricted reader has already made all of these inert records (`Foreign`,
`QTensorRef`, `TensorRef`); nothing here calls anything a file names. A record that is not exactly this shape is
described by why (`PackedProblem`), never guessed at.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .unpickle.objects import join, script_objects, walk
from .unpickle.records import Foreign, QTensorRef, TensorRef

CELL_CLASS = "__torch__.torch.classes.rnn.CellParamsBase"
PACKED_CLASS = "__torch__.torch.classes.quantized.LinearPackedParamsBase"
TAGS = ("quantized_dynamic", "quantized_fp16")
CELLS = {4: "lstm", 3: "gru"}  # gate rows per hidden unit → the cell (torch packs no other kind dynamically)
_INTEGER_RANGES = {"qint8": (-128, 127), "quint8": (0, 255), "qint32": (-(1 << 31), (1 << 31) - 1)}
_FLOATS = frozenset({"float32", "float64", "float16", "bfloat16"})
_INDEXED = re.compile(r"^(?P<module>.*?)\.?_all_weight_values\.(?P<index>\d{1,6})\.param$")


@dataclass(frozen=True)
class PackedWeight:
    """One packed weight matrix: its tensor's name in the file, dtype, shape, and for qint8 its per-tensor scale
    and zero point (values = (integer − zero point) × scale)."""

    kind: str  # weight_ih or weight_hh
    name: str
    dtype: str
    shape: tuple[int, int]
    scale: float | None = None
    zero_point: int | None = None


@dataclass(frozen=True)
class PackedCell:
    """One layer and direction of a dynamically quantized LSTM or GRU, as its CellParamsBase record holds it."""

    path: str  # lstm._all_weight_values.0.param
    module: str  # lstm
    index: int | None  # k = layer × directions + direction (None: the path does not say)
    tag: str
    cell: str  # lstm or gru
    input_size: int
    hidden_size: int
    weights: tuple[PackedWeight, PackedWeight]
    biases: tuple[tuple[str, str], ...]  # (bias_ih, its tensor's name), (bias_hh, ...), or none
    layer: int | None = None  # from the shapes of all the module's cells, where only one arrangement fits
    direction: int | None = None


@dataclass(frozen=True)
class PackedProblem:
    """A CellParamsBase record rnninit does not describe, and why."""

    path: str
    reason: str


def packed_cells(root: Any, names: Iterable[str]) -> tuple[list[PackedCell], list[PackedProblem]]:
    """The dynamically quantized recurrent cells of a file's object graph, and a PackedProblem for each
    CellParamsBase record that is not one as torch writes it; `names`: the file's tensor names (a tensor the walk
    names otherwise, e.g. through a shared container, makes the record a problem)."""
    known = set(names)
    cells, problems = [], []
    for path, record in script_objects(root):
        fields, cls = _script_state(record)
        if not (isinstance(cls, str) and ".classes.rnn." in cls):
            continue
        try:
            cells.append(_cell(path, fields, cls, known))
        except _NotPacked as reason:
            problems.append(PackedProblem(path, str(reason)))
    return _arranged(cells), problems


class _NotPacked(Exception):
    """Why a record is not a packed cell as torch writes one."""


def _script_state(record: Foreign) -> tuple[Any, Any]:
    """(its __getstate__(), its class's qualified name), as torch pickles a ScriptObject."""
    state = record.state
    return state if isinstance(state, tuple) and len(state) == 2 else ((), "")


def _cell(path: str, fields: Any, cls: str, known: set[str]) -> PackedCell:
    if cls != CELL_CLASS:
        raise _NotPacked(f"class {cls[:80]}, not {CELL_CLASS}")
    if not (isinstance(fields, tuple) and len(fields) == 5 and all(isinstance(f, list) for f in fields[1:])):
        raise _NotPacked("its state is not (tag, tensors, doubles, longs, packed weights)")
    tag, biases, _doubles, _longs, packed = fields
    if tag not in TAGS:
        raise _NotPacked(f"its tag is {str(tag)[:40]!r}, not one of {', '.join(TAGS)}")
    if len(packed) != 2:
        raise _NotPacked(f"{len(packed)} packed weights, not 2 (input-hidden, hidden-hidden)")
    prefix = join(join(path, "__state__"), 0)  # the state is (fields, class name)
    ih, ih_bias = _packed(join(join(join(prefix, 4), 0), "__state__"), packed[0], "weight_ih", tag, known)
    hh, hh_bias = _packed(join(join(join(prefix, 4), 1), "__state__"), packed[1], "weight_hh", tag, known)
    rows, hidden = hh.shape
    if ih.shape[0] != rows or hidden == 0 or rows % hidden or rows // hidden not in CELLS:
        raise _NotPacked(f"weights of shapes {list(ih.shape)} and {list(hh.shape)} are no LSTM's or GRU's "
                         "(hh must be (4 or 3) × hidden by hidden, ih as many rows)")
    if tag == "quantized_dynamic":
        if len(biases) != 2:
            raise _NotPacked(f"{len(biases)} biases, not 2")
        bias_names = ((join(join(prefix, 1), 0), biases[0]), (join(join(prefix, 1), 1), biases[1]))
    else:
        bias_names = tuple((name, bias) for name, bias in (ih_bias, hh_bias) if bias is not None)
        if len(bias_names) == 1:
            raise _NotPacked("one packed weight has a bias and the other none")
    for name, bias in bias_names:
        _require_tensor(name, bias, known)
        if not (bias.dtype in _FLOATS and bias.shape == (rows,)):
            raise _NotPacked(f"bias {name} is {bias.dtype} of shape {list(bias.shape)}, not float of shape [{rows}]")
    found = _INDEXED.match(path)
    return PackedCell(path, found["module"] if found else path, int(found["index"]) if found else None, tag,
                      CELLS[rows // hidden], ih.shape[1], hidden, (ih, hh),
                      tuple(zip(("bias_ih", "bias_hh"), (name for name, _ in bias_names), strict=False)))


def _packed(prefix: str, record: Any, kind: str, tag: str, known: set[str]) -> tuple[PackedWeight, Any]:
    """A LinearPackedParamsBase record: (its weight, (its bias's name, the bias) or None)."""
    if not (isinstance(record, Foreign) and record.qualified == "torch.ScriptObject"):
        raise _NotPacked(f"its {kind} is not a packed weight object")
    fields, cls = _script_state(record)
    if cls != PACKED_CLASS:
        raise _NotPacked(f"its {kind} is of class {str(cls)[:80]}, not {PACKED_CLASS}")
    if not (isinstance(fields, tuple) and len(fields) == 2):
        raise _NotPacked(f"its {kind}'s state is not (weight, bias)")
    weight, bias = fields
    name = join(join(prefix, 0), 0)
    _require_tensor(name, weight, known)
    if len(weight.shape) != 2:
        raise _NotPacked(f"{kind} has shape {list(weight.shape)[:8]}, not a matrix")
    shape = (weight.shape[0], weight.shape[1])
    if tag == "quantized_fp16":
        if weight.dtype not in _FLOATS:
            raise _NotPacked(f"{kind} of an fp16 cell is {weight.dtype}, not float")
        packed = PackedWeight(kind, name, weight.dtype, shape)
    else:
        packed = PackedWeight(kind, name, weight.dtype, shape, *_per_tensor(kind, weight))
    return packed, None if bias is None else (join(join(prefix, 0), 1), bias)


def _per_tensor(kind: str, weight: Any) -> tuple[float, int]:
    """(scale, zero point) of a per-tensor quantized weight whose values rnninit can read."""
    if not isinstance(weight, QTensorRef) or weight.dtype not in _INTEGER_RANGES:
        raise _NotPacked(f"{kind} is {weight.dtype}, not a quantized tensor of qint8, quint8 or qint32")
    if len(weight.quantizer) != 3:
        raise _NotPacked(f"{kind} is quantized per channel; rnninit reads per-tensor packed weights only")
    _, scale, zero_point = weight.quantizer
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise _NotPacked(f"{kind} has scale {scale!r}; a scale is a finite number above 0")
    low, high = _INTEGER_RANGES[weight.dtype]
    if isinstance(zero_point, bool) or not isinstance(zero_point, int) or not low <= zero_point <= high:
        raise _NotPacked(f"{kind} has zero point {zero_point!r}, outside {weight.dtype}'s {low}…{high}")
    return float(scale), zero_point


def _require_tensor(name: str, value: Any, known: set[str]) -> None:
    if not isinstance(value, TensorRef):
        raise _NotPacked(f"{name} is not a tensor")
    if name not in known:
        raise _NotPacked(f"{name} is not a tensor of the file by that name (a shared container?)")


def _arranged(cells: list[PackedCell]) -> list[PackedCell]:
    """The cells with layer and direction where the shapes of their module's cells allow one arrangement only:
    k = layer × directions + direction; a layer after the first takes hidden × directions inputs."""
    by_module: dict[str, list[PackedCell]] = {}
    for cell in cells:
        by_module.setdefault(cell.module, []).append(cell)
    placed: dict[str, tuple[int, int]] = {}
    for group in by_module.values():
        fits = [directions for directions in (1, 2) if _fits(group, directions)]
        if len(fits) == 1:
            placed.update({cell.path: divmod(cell.index or 0, fits[0]) for cell in group})
    return [cell if cell.path not in placed else
            PackedCell(**{**cell.__dict__, "layer": placed[cell.path][0], "direction": placed[cell.path][1]})
            for cell in cells]


def _fits(group: list[PackedCell], directions: int) -> bool:
    """Whether `group` (one module's cells) can be a torch LSTM/GRU of `directions` directions."""
    by_index = {cell.index: cell for cell in group}
    if None in by_index or len(by_index) != len(group) or set(by_index) != set(range(len(group))) \
            or len(group) % directions:
        return False
    first = group[0]
    for index, cell in by_index.items():
        layer = index // directions
        inputs = by_index[layer * directions].input_size if layer == 0 else first.hidden_size * directions
        if (cell.cell, cell.hidden_size, cell.tag) != (first.cell, first.hidden_size, first.tag) \
                or cell.input_size != inputs:
            return False
    return True


def read_packed(opened: Any, cells: Iterable[PackedCell]) -> dict[str, Any]:
    """The values of `cells`' tensors by name, as numpy arrays: the stored integers of quantized weights
    (`opened.integers`), the values of float ones and of the biases (`opened.arrays`)."""
    quantized = [w.name for cell in cells for w in cell.weights if w.scale is not None]
    floats = [w.name for cell in cells for w in cell.weights if w.scale is None] + \
             [name for cell in cells for _, name in cell.biases]
    values: Mapping[str, Any] = opened.integers(quantized) if quantized else {}
    return {**values, **opened.arrays(dict.fromkeys(floats))}


QINT8_LEVELS = 255  # quant_max − quant_min of torch's qint8 weight observer: 127 − (−128)
FLOAT32_EPS = 2.0 ** -23  # torch.finfo(torch.float32).eps, the observer's smallest scale


def qint8_scale(max_abs: float | None) -> float:
    """The per-tensor scale `quantize_dynamic` gives a weight: max(m / (255 / 2), eps) in float32, m = max |w|
    (torch's MinMaxObserver, per_tensor_symmetric, qint8 −128…127, reduce_range False); an empty weight 1.0."""
    import numpy as np

    if max_abs is None:  # an empty weight: the observer saw nothing and keeps its default
        return 1.0
    halved = np.float32(max_abs) / np.float32(QINT8_LEVELS / 2)  # 127.5 is exact in float32; one rounding
    return float(max(halved, np.float32(FLOAT32_EPS)))


def pickle_record(opened: Any) -> str | None:
    """The name of an indexed .pt's data.pkl record (None: none)."""
    records = getattr(opened, "records", None) or {}
    return next((name for name in records if name.count("/") == 1 and name.endswith("/data.pkl")), None)


def located_scales(opened: Any, weights: Iterable[PackedWeight]) -> tuple[dict[str, int], dict[str, str]]:
    """`scale_offsets` in the data.pkl record of `opened`, an indexed .pt (`tensorfile.TensorFile`), whose pickle
    is read again by the restricted reader as indexing read it (storages named, never read)."""
    from .tensorfile import read_exactly
    from .unpickle.machine import storage_from_id, unpickle
    from .unpickle.records import Builders

    record = opened.records[pickle_record(opened)]
    data = read_exactly(opened.descriptor, record.data_start, record.size, opened.path)

    def reread(changed: bytes) -> Any:
        storages: dict[str, Any] = {}
        return unpickle(changed, lambda saved_id: storage_from_id(saved_id, storages), str(opened.path), Builders())

    return scale_offsets(data, weights, reread)


def scale_offsets(data: bytes, weights: Iterable[PackedWeight], reread: Any) -> tuple[dict[str, int], dict[str, str]]:
    """Where each quantized weight's scale lies in the pickle `data`: the offset of the 8 bytes (big-endian double)
    of the BINFLOAT opcode it was read from, by the weight's name; and why, for a weight whose scale cannot be told
    apart from other values. Every BINFLOAT holding one of the scales gets its own negative probe value; `reread`
    unpickles the probed bytes (the restricted reader) and returns its root: a weight whose scale became probe k
    was read from opcode k. A probe that also shows up elsewhere (a shared scale or quantizer) is refused."""
    import pickletools

    wanted = {w.name: w for w in weights if w.scale is not None}
    bits = {struct.pack(">d", w.scale) for w in wanted.values()}
    try:
        found = [position + 1 for opcode, argument, position in pickletools.genops(data)
                 if opcode.code == "G" and position is not None and struct.pack(">d", argument) in bits]
    except Exception as error:  # genops is stricter than the reader on some damage
        return {}, dict.fromkeys(wanted, f"its pickle cannot be parsed opcode by opcode ({type(error).__name__})")
    probed = bytearray(data)
    for number, offset in enumerate(found):
        probed[offset:offset + 8] = struct.pack(">d", _probe(number))
    root = reread(bytes(probed))
    scales: dict[str, Any] = {}
    elsewhere: list[float] = []
    for name, value in walk(root, ""):
        if isinstance(value, QTensorRef) and len(value.quantizer) == 3:
            scales[name] = value.quantizer[1]
        elif isinstance(value, float):
            elsewhere.append(value)
    offsets, why = {}, {}
    used: dict[int, str] = {}
    for name in wanted:
        scale = scales.get(name)
        number = _probed(scale)
        if not 0 <= number < len(found):
            why[name] = "its scale is not stored as a BINFLOAT of its own"
        elif number in used or _probe(number) in elsewhere:
            why[name] = f"its scale is shared with {used.get(number, 'another value of the file')}"
        else:
            used[number] = name
            offsets[name] = found[number]
    return offsets, why


_PROBE_UNIT = 2.0 ** 900  # probes are −(k + 1)·2⁹⁰⁰: exact, and no scale (> 0) nor plausible value of a file


def _probe(number: int) -> float:
    """The value BINFLOAT number `number` is probed with: −(number + 1)·2⁹⁰⁰."""
    return -(number + 1) * _PROBE_UNIT


def _probed(value: Any) -> int:
    """The number of the probe `value` is (see `_probe`), or −1."""
    if not isinstance(value, float) or not value < 0 or not math.isfinite(value):
        return -1
    number = -value / _PROBE_UNIT - 1
    return int(number) if number.is_integer() and _probe(int(number)) == value else -1
