"""Checkpoint IO: read `torch.save` and `.safetensors` files safely, write them atomically.

`.pt` files are read by rnninit's restricted unpickler (`unpickle.py`), which accepts what
`torch.load(weights_only=True)` accepts and more (pickle protocols 4 and 5, TorchScript archives, objects
of other classes as inert records) while calling nothing a file names; a file that names a known-dangerous
callable is refused. Tensors nested in containers (training checkpoints) are found and named by their path,
e.g. `state_dict/model.rnn.weight_ih_l0`; everything that is not rewritten is kept as it was.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import secrets
import signal
import stat
import struct
import sys
import threading
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .errors import CheckpointError, OutputError, UsageError
from .safety import (
    MAX_ENTRIES_VARIABLE,
    MAX_NESTING,
    SAFETENSORS_TORCH_DTYPES,
    check_zip_records,
    max_entries,
    read_record,
    read_stdin,
    safetensors_header_size,
    validate_safetensors_header,
)
from .unpickle import (
    Builders,
    Foreign,
    PickledFile,
    QTensorRef,
    TensorRef,
    array_from_bytes,
    foreign_classes,
    key_text,
    named_tensors,
    read_file,
    tensor_array,
    tensor_span,
    view_span,
)

if TYPE_CHECKING:
    import torch

FORMATS = ("pt", "safetensors")
PT_EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt")
METADATA_RECORD = "rnninit.json"  # extra record in a .pt zip archive; torch.load ignores it
METADATA_RECORD_SIZE = 4096  # the record is padded so that a re-run can overwrite it in place
STDIO = "-"


@dataclass(frozen=True)
class TensorShape:
    """What layout discovery needs of a tensor, read without torch: its shape and dtype."""

    shape: tuple[int, ...]
    dtype: str  # torch's name: "float32", "bfloat16"...

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return len(self.shape)


@dataclass
class Checkpoint:
    """A loaded checkpoint: the original object and a flat view of its tensors by path."""

    format: str
    root: Any
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = STDIO
    torchscript: bool = False  # a TorchScript archive: tensors named by state_dict paths
    legacy: bool = False  # a legacy (non-zip) torch.save file: never patched, only re-saved whole

    @property
    def foreign_classes(self) -> list[str]:
        """Sorted "module.Name" of the objects of other classes the file holds (read as inert records)."""
        return foreign_classes(self.root)

    @property
    def non_tensor_paths(self) -> list[str]:
        """Paths of entries that are not tensors (epoch counters, optimizer hyper-parameters...)."""
        return [path for path, value in walk(self.root, "") if not is_tensor(value)]

    @property
    def optimizer_paths(self) -> list[str]:
        return optimizer_state_paths(self.root)

    def shapes(self) -> dict[str, torch.Tensor]:
        """The tensors by path (real ones here; a TensorFile gives meta tensors)."""
        return self.tensors

    def shape_records(self) -> dict[str, TensorShape]:
        """Shape and dtype of every tensor by path."""
        return {name: TensorShape(tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
                for name, tensor in self.tensors.items()}

    def load(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The named tensors themselves: writing into them changes this checkpoint."""
        loaded = {name: self.tensors[name] for name in names}
        for name, tensor in loaded.items():
            refuse_broadcast(name, tensor.numel(), tensor.untyped_storage().nbytes() // tensor.element_size())
        return loaded

    def storage_spans(self) -> dict[str, tuple[int, int, int]]:
        """(storage id, first byte, last byte + 1) of every tensor, to find tensors that share memory."""
        spans = {}
        for name, tensor in self.tensors.items():
            first, stop = view_span(tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
            size = tensor.element_size()
            spans[name] = (tensor.untyped_storage().data_ptr(), first * size, stop * size)
        return spans

    def drop(self, paths: Iterable[str]) -> None:
        """Remove the entries at `paths` (e.g. optimizer state) from the checkpoint."""
        for path in filter(None, paths):
            *parents, last = path.split("/")
            node = self.root
            for key in parents:
                node = node[int(key)] if isinstance(node, (list, tuple)) else node[key]
            if isinstance(node, dict):
                del node[last]
        self.tensors = {p: v for p, v in walk(self.root, "") if is_tensor(v)}


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
    return isinstance(node, dict) and "state" in node and "param_groups" in node


def optimizer_state_paths(root: Any) -> list[str]:
    """Paths of optimizer state dicts ({"state", "param_groups"}); a list of them (Lightning's
    `optimizer_states`) is named as the list itself. Each container is looked at once (see walk)."""
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
        children = node.items() if isinstance(node, dict) else enumerate(node)
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


def detect_format(head: bytes, size: int) -> str:
    """'pt' or 'safetensors' from the first bytes of a file; CheckpointError otherwise."""
    if size == 0:
        raise CheckpointError("the file is empty")
    if head.startswith(b"PK\x03\x04"):
        return "pt"
    # safetensors before pickles: a header length whose low byte is 0x80 starts like a pickle does
    if len(head) >= 9 and head[8:9] in b"{ \t\r\n":  # the library's JSON parser skips leading whitespace
        (header_size,) = struct.unpack("<Q", head[:8])
        if header_size <= size - 8:
            return "safetensors"
        if head[:1] != b"\x80" and head[8:9] == b"{":
            raise CheckpointError(f"safetensors header claims {header_size} bytes but the file has only {size}: "
                                  "truncated or damaged")
    if head[:1] == b"\x80":
        return "pt"
    raise CheckpointError("not a checkpoint: neither a torch.save file nor a .safetensors file")


def read_input(source: str | Path) -> bytes:
    """The bytes of `source`, or of standard input for '-'."""
    if str(source) == STDIO:
        return read_stdin()
    path = Path(source)
    try:
        if path.is_dir():
            raise CheckpointError(f"{path} is a folder, not a checkpoint file")
        require_regular_file(path)
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read: {error.strerror or error}") from None


def require_regular_file(path: Path) -> None:
    """Refuse FIFOs, sockets and devices: opening one can block forever."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise CheckpointError(f"{path} is not a regular file (a FIFO, socket or device); "
                              "feed it through standard input with -")


def _read_and_detect(source: str | Path, data: bytes | None) -> tuple[bytes, str, str]:
    """(the bytes, the name for messages, "pt" or "safetensors") of a path or '-' (or of `data`, its bytes)."""
    data = read_input(source) if data is None else data
    name = str(source)
    try:
        return data, name, detect_format(data[:16], len(data))
    except CheckpointError as error:
        raise CheckpointError(f"{name}: {error}") from None


def load_checkpoint(source: str | Path, data: bytes | None = None) -> Checkpoint:
    """Load a `torch.save` or `.safetensors` checkpoint, recognised by content, from a path or '-'."""
    data, name, fmt = _read_and_detect(source, data)
    if fmt == "pt":
        return _load_pt(data, name)
    return _load_safetensors(data, name)


_UNSAFE_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|global) ([\w.]+)", re.IGNORECASE)


class _TorchBuilders(Builders):
    """Build torch objects as the restricted reader reads the pickle: one untyped storage per storage key
    (tensors that share it share it, as with torch.load), each allocated at its declared size (checked
    against the file before) and filled once the file's storages are known."""

    def __init__(self) -> None:
        import torch

        super().__init__()
        self.torch = torch
        self.storages: dict[str, torch.UntypedStorage] = {}
        self.channels: list[tuple[torch.Tensor, Any, Any]] = []  # per-channel qtensors, their scales, zero points

    def _storage(self, ref: TensorRef) -> Any:
        storage = self.storages.get(ref.storage.key)
        if storage is None:
            storage = self.torch.UntypedStorage(ref.storage.nbytes)
            self.storages[ref.storage.key] = storage
        return storage

    def tensor(self, ref: TensorRef) -> Any:
        torch = self.torch
        storage = self._storage(ref)
        tensor = torch.empty((0,), dtype=getattr(torch, ref.dtype))
        try:
            tensor.set_(storage, ref.offset, ref.shape, ref.stride)
        except RuntimeError as error:  # a view outside its storage, sizes that overflow
            raise CheckpointError(f"a tensor torch cannot make: {first_line(str(error))}") from None
        tensor.requires_grad = ref.requires_grad
        self.made.append(tensor)
        return tensor

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, self.torch.Tensor)

    def qtensor(self, ref: QTensorRef) -> Any:
        """A quantized tensor made as torch.load makes it: `torch._utils._rebuild_qtensor` on the file's storage,
        which `fill` fills later (per-channel scales and zero points are checked then)."""
        torch = self.torch
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's deprecation notes on typed storages and quantization
                typed = torch.storage.TypedStorage(wrap_storage=self._storage(ref), dtype=getattr(torch, ref.dtype),
                                                   _internal=True)
                tensor = torch._utils._rebuild_qtensor(typed, ref.offset, tuple(ref.shape), tuple(ref.stride),
                                                       ref.quantizer, False, OrderedDict())
        except (RuntimeError, ValueError, TypeError) as error:
            raise CheckpointError(f"a quantized tensor torch cannot make: {first_line(str(error))}") from None
        if len(ref.quantizer) == 4:
            self.channels.append((tensor, ref.quantizer[1], ref.quantizer[2]))
        return tensor

    def parameter(self, data: Any, requires_grad: bool, _state: Any) -> Any:
        if not isinstance(data, self.torch.Tensor):
            raise CheckpointError("a parameter does not hold a tensor")
        try:
            return self.torch.nn.Parameter(data, requires_grad)
        except RuntimeError as error:  # requires_grad on an integer tensor
            raise CheckpointError(f"a parameter torch cannot make: {first_line(str(error))}") from None

    def dtype(self, name: str) -> Any:
        if not hasattr(self.torch, name):
            raise CheckpointError(f"torch.{name} is not a dtype of this torch")
        return getattr(self.torch, name)

    def device(self, spec: tuple[Any, ...]) -> Any:
        return self.torch.device(*spec)

    def size(self, dims: tuple[int, ...]) -> Any:
        return self.torch.Size(dims)

    def layout(self, name: str) -> Any:
        layout = getattr(self.torch, name.removeprefix("torch."), None)
        if not isinstance(layout, self.torch.layout):
            raise CheckpointError(f"{name} is not a torch layout")
        return layout

    def fill(self, storage_bytes: dict[str, memoryview]) -> None:
        torch = self.torch
        for key, storage in self.storages.items():
            nbytes = storage.nbytes()
            if nbytes:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a read-only buffer: it is only copied from
                    source = torch.frombuffer(storage_bytes[key][:nbytes], dtype=torch.uint8)
                torch.empty((0,), dtype=torch.uint8).set_(storage).copy_(source)
        for tensor, scales, zero_points in self.channels:
            # torch keeps per-channel scales and zero points by reference where their dtypes are the ones it saves
            # (float64 and int64, or float32 and float32), so they are the filled values; a copy made before
            # the fill would hold others, and the tensor would not be what the file holds
            held = (tensor.q_per_channel_scales(), tensor.q_per_channel_zero_points())
            if not all(torch.equal(now.to(torch.float64), torch.as_tensor(saved).to(torch.float64))
                       for now, saved in zip(held, (scales, zero_points), strict=True)):
                raise CheckpointError("a per-channel quantized tensor whose scales or zero points rnninit cannot "
                                      "rebuild exactly as the file holds them (unusual dtypes); refused")


def _load_pt(data: bytes, name: str) -> Checkpoint:
    builders = _TorchBuilders()
    pickled = _read_pickled(data, name, builders)
    try:
        builders.fill(pickled.storage_bytes)
    except CheckpointError as error:
        raise CheckpointError(f"{name}: {error}") from None
    root = pickled.root
    tensors = named_tensors(pickled)
    metadata = _read_pt_metadata(data, name)
    return Checkpoint("pt", root, tensors, metadata, name, torchscript=pickled.kind == "torchscript",
                      legacy=pickled.kind == "legacy")


def _read_pickled(data: bytes, name: str, builders: Builders | None = None) -> PickledFile:
    """A whole torch.save file or TorchScript archive read by the restricted reader, damage as CheckpointError."""
    if data.startswith(b"PK"):  # nothing is decompressed before every record of the archive is checked
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                check_zip_records(archive, len(data), name)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, NotImplementedError) as error:
            # an archive whose records cannot be checked is not read (torch might read more of it)
            raise CheckpointError(f"{name}: not a readable torch.save file (truncated or damaged?): "
                                  f"{first_line(str(error))}") from None
    try:
        return read_file(data, name, builders)
    except CheckpointError as error:
        text = str(error)
        raise type(error)(text if text.startswith(f"{name}: ") else f"{name}: {text}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, NotImplementedError, OSError,
            zlib.error, KeyError) as error:
        raise CheckpointError(f"{name}: not a readable torch.save file (truncated or damaged?): "
                              f"{first_line(str(error)) or type(error).__name__}") from None


def unsafe_message(name: str, text: str) -> str:
    """The refusal for a pickle that would need code: name what it refers to, say nothing ran."""
    found = _UNSAFE_GLOBAL.search(text)
    what = f" (it refers to {found.group(1)})" if found else ""
    return (f"{name}: this file needs code to load{what}; rnninit will not run it. "
            "Only tensors, containers and plain values are accepted (weights_only=True)")


def first_line(text: str) -> str:
    line = (text.strip().splitlines() or ["unknown error"])[0]
    return line.split(". ")[0][:200]


def _read_pt_metadata(data: bytes, name: str = STDIO) -> dict[str, str]:
    if not data.startswith(b"PK"):
        return {}
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except Exception:  # zipfile cannot read an archive torch could (NotImplementedError...): no record then
        return {}
    with archive:
        record = next((n for n in archive.namelist() if n.endswith("/" + METADATA_RECORD)), None)
        if record is None:
            return {}
        try:
            raw = read_record(archive, record)  # no further than its declared size (check_zip_records)
        except NotImplementedError:  # a zip feature zipfile lacks (torch ignores this record): no record then
            return {}
        except (zipfile.BadZipFile, CheckpointError, EOFError, OSError, zlib.error) as error:
            raise CheckpointError(f"{name}: zip record {record} is damaged: {first_line(str(error))}") from None
    try:
        return string_map(json.loads(raw))
    except ValueError:  # not JSON: an earlier run's record, damaged; nothing in it is kept
        return {}


def string_map(value: Any) -> dict[str, str]:
    """Metadata read from a file as a str → str map; what a damaged record holds besides is dropped."""
    if not isinstance(value, dict):
        return {}
    return {key: item for key, item in value.items() if isinstance(key, str) and isinstance(item, str)}


def _load_safetensors(data: bytes, name: str) -> Checkpoint:
    from safetensors.torch import load

    header_size = safetensors_header_size(data[:8], len(data), name)
    header = validate_safetensors_header(data[8:8 + header_size], len(data), name)
    try:
        loaded = load(data)
    except Exception as error:  # SafetensorError and friends
        raise CheckpointError(f"{name}: not a readable safetensors file (truncated or damaged?): "
                              f"{first_line(str(error))}") from None
    tensors = {key: loaded[key] for key in header.entries}
    return Checkpoint("safetensors", tensors, tensors, dict(header.metadata or {}), name)


@dataclass
class ArrayCheckpoint:
    """A checkpoint read whole without torch, for reading only (inspect, verify, diff): where each tensor's
    bytes are, and numpy arrays (bfloat16 and float8 through ml_dtypes) of the tensors asked for."""

    format: str
    records: dict[str, TensorShape]
    reader: Callable[[str], Any]  # name → a numpy copy of that tensor
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = STDIO
    root: Any = None  # .pt: the object graph with tensor records in place of tensors
    torchscript: bool = False
    legacy: bool = False

    @property
    def foreign_classes(self) -> list[str]:
        return [] if self.root is None else foreign_classes(self.root)

    def shape_records(self) -> dict[str, TensorShape]:
        return dict(self.records)

    def arrays(self, names: Iterable[str]) -> dict[str, Any]:
        return {name: self.reader(name) for name in names}


def read_checkpoint(source: str | Path, data: bytes | None = None) -> ArrayCheckpoint:
    """`load_checkpoint` without torch: a `torch.save` file (zip, legacy), TorchScript archive or `.safetensors`
    file read whole from a path or '-' (or from `data`, its bytes), every check of the whole-load path kept."""
    data, name, fmt = _read_and_detect(source, data)
    if fmt == "safetensors":
        header_size = safetensors_header_size(data[:8], len(data), name)
        header = validate_safetensors_header(data[8:8 + header_size], len(data), name)
        view = memoryview(data)[header.data_start:]
        entries = {key: (SAFETENSORS_TORCH_DTYPES[entry.dtype], entry) for key, entry in header.entries.items()}

        def safetensors_array(key: str) -> Any:
            dtype, entry = entries[key]
            strides = tuple(math.prod(entry.shape[axis + 1:]) for axis in range(len(entry.shape)))
            return array_from_bytes(view[entry.begin:entry.end], dtype, entry.shape, strides)

        records = {key: TensorShape(entry.shape, dtype) for key, (dtype, entry) in entries.items()}
        return ArrayCheckpoint("safetensors", records, safetensors_array, dict(header.metadata or {}), name)
    pickled = _read_pickled(data, name)
    refs: dict[str, TensorRef] = named_tensors(pickled)
    for key, ref in refs.items():  # what the whole-load path refuses as it builds the tensors, refused here too
        if isinstance(ref, QTensorRef) and ref.packed:
            continue  # its sizes count values several to a byte; never read as values (torch checks it on loading)
        first, stop = tensor_span(ref)
        stored = min(len(pickled.storage_bytes[ref.storage.key]), ref.storage.nbytes) // ref.itemsize
        if first < 0 or min(ref.stride, default=0) < 0 or stop > stored:
            raise CheckpointError(f"{name}: {key} reads outside its storage (offset {ref.offset}, shape "
                                  f"{list(ref.shape)}, stride {list(ref.stride)}, {ref.storage.numel} stored elements)")
        refuse_broadcast(key, math.prod(ref.shape), stop - first)

    def pt_array(key: str) -> Any:
        ref = refs[key]
        try:
            return tensor_array(ref, pickled.storage_bytes[ref.storage.key])
        except CheckpointError as error:  # a dtype numpy cannot read (bits8, float4_e2m1fn_x2...): say which
            raise CheckpointError(f"{name}: {key}: {error}") from None

    records = {key: TensorShape(ref.shape, ref.dtype) for key, ref in refs.items()}
    return ArrayCheckpoint("pt", records, pt_array, _read_pt_metadata(data, name), name, pickled.root,
                           torchscript=pickled.kind == "torchscript", legacy=pickled.kind == "legacy")


def output_format(output: str | Path, requested: str | None, input_format: str) -> str:
    """`--format`, else OUTPUT's extension, else the input's format."""
    if requested is not None:
        if requested not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {requested!r}")
        return requested
    suffix = Path(str(output)).suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in PT_EXTENSIONS:
        return "pt"
    return input_format


def check_output(source: str | Path, output: str | Path, *, force: bool, in_place: bool) -> None:
    """Refuse, before any work, an OUTPUT that rnninit must not replace.

    A file output may replace a regular file or a symbolic link to one (the link itself is replaced, like
    `sed -i`) with `force`, or INPUT itself with `in_place`; never a folder, device, FIFO, socket, or a
    link to one or to nothing. A model folder's output may replace, with `force`, a folder that holds
    nothing but what the new folder will hold; never one that holds anything else, contains INPUT or lies
    inside it. INPUT's own folder is rewritten shard by shard with `in_place`."""
    if str(output) == STDIO:
        return
    out = Path(output)
    if str(source) != STDIO and Path(source).is_dir():
        _check_folder_output(Path(source), out, force=force, in_place=in_place)
    else:
        kind = output_kind(out)
        if kind == "a folder":
            raise OutputError(f"{out} is a folder; give a file name for the output")
        if kind not in ("absent", "a regular file"):
            raise OutputError(f"{out} is {kind}; rnninit replaces only regular files and symbolic links to them, "
                              "even with --force")
        same = kind != "absent" and str(source) != STDIO and Path(source).exists() and out.samefile(source)
        if same and not in_place:
            raise OutputError(f"{out} is the input file; pass --in-place to rewrite it")
        if kind != "absent" and not same and not force:
            raise OutputError(f"{out} already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent} does not exist; create the folder first")


def _check_folder_output(source: Path, out: Path, *, force: bool, in_place: bool) -> None:
    kind = output_kind(out)
    if kind == "absent":
        return
    if kind != "a folder" or out.is_symlink():
        what = "a symbolic link" if out.is_symlink() else kind
        raise OutputError(f"{out} is {what}; the output of a model folder is a folder (a new one, or one that "
                          "--force may replace)")
    here, there = source.resolve(), out.resolve()
    if there == here:
        if not in_place:
            raise OutputError(f"{out} is the input folder; pass --in-place to rewrite its shards")
        return
    if here.is_relative_to(there):
        raise OutputError(f"{out} contains the input folder {source}; rnninit never replaces a folder that holds "
                          "its input: choose another OUTPUT")
    if there.is_relative_to(here):
        raise OutputError(f"{out} is inside the input folder; choose a folder outside it")
    if not force:
        raise OutputError(f"{out} already exists; pass --force to replace it")
    expected = {relative: "a folder" if path.is_dir() else "a regular file"
                for path in source.rglob("*") for relative in [path.relative_to(source).as_posix()]}
    if (source / ".metadata").is_file():  # a torch.distributed.checkpoint folder: its outputs add rnninit.json
        expected[METADATA_RECORD] = "a regular file"
    refuse_foreign_entries(out, expected)


def output_kind(path: Path) -> str:
    """'absent', 'a regular file' (or a symbolic link to one), 'a folder', or what else is at `path`."""
    try:
        status = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "absent"
    except OSError as error:
        raise OutputError(f"cannot check {path}: {error.strerror or error}") from None
    if stat.S_ISLNK(status.st_mode):
        try:
            target = os.stat(path)
        except OSError:
            return "a symbolic link that leads nowhere"
        return "a regular file" if stat.S_ISREG(target.st_mode) else f"a symbolic link to {_kind_name(target.st_mode)}"
    return _kind_name(status.st_mode)


def _kind_name(mode: int) -> str:
    kinds = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def refuse_unreplaceable(out: Path) -> None:
    """Right before a rename onto OUTPUT: what is there now must still be replaceable (it may have
    changed since the checks before the work)."""
    kind = output_kind(out)
    if kind not in ("absent", "a regular file"):
        raise OutputError(f"{out} is now {kind}; rnninit replaces only regular files and symbolic links to them; "
                          "nothing was written")


def refuse_foreign_entries(out: Path, expected: dict[str, str]) -> None:
    """Refuse to replace the folder `out` if anything in it is not what the new model folder will hold:
    `expected` maps each relative path of the new folder to its kind. Symbolic links are not followed,
    and the walk stops at the first foreign entry."""
    for root, folders, files in os.walk(out):
        for name in sorted(folders) + sorted(files):
            path = Path(root, name)
            relative = path.relative_to(out).as_posix()
            kind = _kind_name(os.lstat(path).st_mode)
            if expected.get(relative) != kind:
                raise OutputError(f"{out} holds {relative!r}, which the new model folder would not contain; "
                                  "--force replaces a folder only when all it holds is what rnninit will write "
                                  "there (an earlier output). Remove it or choose another OUTPUT")


def refuse_foreign_objects(checkpoint: Any) -> None:
    """Objects of other classes are read as inert records: rnninit can keep their bytes in a patched copy of
    a zip archive, but cannot write them again (standard output, another format, a re-saved or legacy file)."""
    classes = getattr(checkpoint, "foreign_classes", [])
    if classes:
        shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
        what = "the TorchScript archive holds" if getattr(checkpoint, "torchscript", False) else "the checkpoint holds"
        if getattr(checkpoint, "legacy", False):  # never patched: there is no copy that keeps their bytes
            advice = ("It is in torch.save's legacy (non-zip) format, which rnninit only re-saves whole: re-save "
                      "it with torch.save's default (zip) format, whose patched copy (-o FILE.pt) keeps their bytes")
        else:
            advice = "Write a .pt file with -o: a patched copy keeps their bytes"
        raise OutputError(f"{what} objects of classes rnninit reads as inert records but never rebuilds ({shown}); "
                          "it cannot be written again to standard output, in another format, or re-saved "
                          f"(--drop-optimizer-state). {advice}")


def refuse_non_tensors(root: Any, tensors_only: bool) -> None:
    """Safetensors holds tensors only: refuse to silently drop other entries of a .pt, or the names of a
    container that the .pt holds under several paths (only the first path's names would be written)."""
    if root is None:
        return
    aliases: list[tuple[str, str]] = []
    non_tensor_paths = [path for path, value in walk(root, "", aliases) if not is_tensor(value)]
    if aliases:
        path, first = aliases[0]
        raise OutputError(f"the checkpoint holds one container under several paths ({path or '(top)'} is the same "
                          f"object as {first or '(top)'}); safetensors would keep only the first path's names. "
                          "Write .pt instead")
    if non_tensor_paths and not tensors_only:
        shown = ", ".join(non_tensor_paths[:5]) + (", ..." if len(non_tensor_paths) > 5 else "")
        raise OutputError(f"the checkpoint holds non-tensor entries ({shown}) that safetensors cannot "
                          "store; write .pt, or pass --tensors-only to keep only the tensors")


SAFETENSORS_DTYPES = {  # torch dtype name → safetensors dtype code
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
    "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "uint16": "U16",
    "uint32": "U32", "uint64": "U64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "float8_e8m0fnu": "F8_E8M0",
}


def _has_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def safetensors_header_json(header: dict[str, Any]) -> bytes:
    """`header` as a .safetensors header's UTF-8 JSON; a name or metadata entry with no UTF-8 form (a lone
    surrogate, which a pickle may hold) is refused by name."""
    try:
        return json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        pass
    bad = next((key for key in header if key != "__metadata__" and not _has_utf8(key)), None)
    if bad is not None:
        raise OutputError(f"the tensor name {bad!r} is not valid UTF-8 (a lone surrogate), which a safetensors "
                          "header cannot hold; write .pt instead")
    bad = next(key for key, value in header.get("__metadata__", {}).items()
               if not (_has_utf8(key) and _has_utf8(value)))
    raise OutputError(f"the metadata entry {bad!r} is not valid UTF-8 (a lone surrogate), which a safetensors "
                      "header cannot hold; write .pt instead")


def write_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], sink: BinaryIO) -> None:
    """Write a .safetensors file with a deterministic header: sorted metadata, tensors ordered by
    element size (largest first, for alignment) then name. The official library's writer orders
    metadata by a hash map, so its bytes differ between runs."""
    import torch

    def dtype_name(key: str, tensor: torch.Tensor) -> str:
        name = str(tensor.dtype).removeprefix("torch.")
        if name not in SAFETENSORS_DTYPES:
            what = "a quantized tensor" if tensor.is_quantized else f"dtype {name}"
            raise OutputError(f"{key} is {what} ({name}), which safetensors cannot store; write .pt instead")
        return SAFETENSORS_DTYPES[name]

    order = sorted(tensors, key=lambda key: (-tensors[key].element_size(), key))
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset = 0
    for key in order:
        tensor = tensors[key]
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": dtype_name(key, tensor), "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    encoded = safetensors_header_json(header)
    encoded += b" " * (-len(encoded) % 8)
    sink.write(struct.pack("<Q", len(encoded)))
    sink.write(encoded)
    for key in order:
        flat = tensors[key].detach().to("cpu").contiguous().reshape(-1)
        if flat.numel():
            sink.write(memoryview(flat.view(torch.uint8).numpy()))


def serialize(
    checkpoint: Checkpoint, fmt: str, metadata: dict[str, str], sink: BinaryIO, *,
    tensors_only: bool = False,
) -> None:
    """Write `checkpoint` in format `fmt` to the seekable binary file `sink`."""
    refuse_foreign_objects(checkpoint)
    if fmt == "safetensors":
        refuse_non_tensors(checkpoint.root, tensors_only)
        tensors = checkpoint.tensors
        merged = merge_metadata(checkpoint.metadata, metadata)
        write_safetensors(tensors, merged, sink)
        return
    import torch

    torch.save(checkpoint.root, sink)
    if metadata:
        sink.seek(0)
        append_metadata_record(sink, metadata_payload(merge_metadata(checkpoint.metadata, metadata)))


def metadata_payload(metadata: dict[str, str]) -> bytes:
    """The rnninit zip record: sorted JSON padded with spaces to a multiple of 4096 bytes."""
    encoded = json.dumps(metadata, sort_keys=True).encode()
    return encoded + b" " * (-len(encoded) % METADATA_RECORD_SIZE)


def append_metadata_record(sink: BinaryIO, payload: bytes) -> None:
    """Add the rnninit record to the zip archive in `sink` (torch.load ignores unknown records)."""
    with zipfile.ZipFile(sink, "a") as archive:  # type: ignore[arg-type]
        folder = archive.namelist()[0].split("/")[0]
        info = zipfile.ZipInfo(f"{folder}/{METADATA_RECORD}", date_time=(1980, 1, 1, 0, 0, 0))
        archive.writestr(info, payload, zipfile.ZIP_STORED)


def merge_metadata(kept: dict[str, str], recorded: dict[str, str]) -> dict[str, str]:
    """The input's metadata plus this run's record; a new record replaces every `rnninit.*` key of an
    earlier run (an old `rnninit.only` would otherwise describe a run that did not happen)."""
    if any(key.startswith("rnninit.") for key in recorded):
        kept = {key: value for key, value in kept.items() if not key.startswith("rnninit.")}
    return {**kept, **recorded}


def save_whole(
    source: Path, updates: dict[str, torch.Tensor], metadata: dict[str, str], sink: BinaryIO,
    fmt: str | None = None, *, tensors_only: bool = False, data: bytes | None = None,
) -> None:
    """Load `source` whole (from `data`, its bytes, when given), copy `updates` into it, and write it to
    `sink` (for files that cannot be patched byte by byte, e.g. a non-contiguous rewritten tensor)."""
    whole = load_checkpoint(source, data)
    for name, tensor in updates.items():
        whole.tensors[name].copy_(tensor)
    serialize(whole, fmt or whole.format, metadata, sink, tensors_only=tensors_only)


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_mode(existing: Path) -> int:
    if existing.exists():
        return existing.stat().st_mode & 0o7777
    return 0o666 & ~current_umask()


TEMP_SUFFIX = ".rnninit-tmp"  # a temporary file or folder being written
OLD_SUFFIX = ".rnninit-old"  # a replaced model folder on its way out (where a folder swap is not atomic)


def temporary_path(folder: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """A fresh name in `folder` of fixed length, whatever OUTPUT's name: a dot, 12 random hex digits and
    `suffix` (25 bytes), so a 255-byte OUTPUT name still works and a leftover is recognisable."""
    return folder / f".{secrets.token_hex(6)}{suffix}"


def create_temporary_file(folder: Path) -> tuple[int, Path]:
    """A new, empty, private temporary file in `folder`: (descriptor, path)."""
    while True:
        path = temporary_path(folder)
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), path
        except FileExistsError:
            continue


def create_temporary_folder(folder: Path) -> Path:
    while True:
        path = temporary_path(folder)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path


@dataclass(frozen=True)
class FileIdentity:
    """What says a path still holds the file rnninit read: the same inode, size and modification time."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, status: os.stat_result) -> FileIdentity:
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def refuse_changed(path: Path, expected: FileIdentity) -> None:
    """--in-place: refuse to replace INPUT if another writer changed or replaced it since it was read."""
    try:
        now: FileIdentity | None = FileIdentity.of(os.stat(path))
    except OSError:
        now = None
    if now != expected:
        raise OutputError(f"{path} changed while rnninit was rewriting it (another writer?); nothing was written")


@contextmanager
def locked_input(path: Path) -> Iterator[int]:
    """--in-place: an exclusive lock (flock) on INPUT, held until the rewrite is done, so concurrent
    in-place runs on one file (or one model folder) take turns. Yields a read-only descriptor of the
    file (or folder) that is at `path` while the lock is held: a run that waited for the lock reads the
    file the previous run wrote."""
    import fcntl

    while True:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            except OSError as error:
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                break  # a file system without locks: the identity check before the rename still applies
            opened = os.fstat(descriptor)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                raise CheckpointError(f"{path}: no such file (it was removed while rnninit waited for it)") from None
            if (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino):
                break
        except BaseException:
            os.close(descriptor)
            raise
        os.close(descriptor)  # replaced while we waited (another run finished): lock the new file
    try:
        yield descriptor
    finally:
        os.close(descriptor)


class CommitLog:
    """How many outputs this process has renamed into place. The CLI reads it: a Ctrl-C that arrives
    after its command's output is in place comes too late to stop anything, so the command succeeded."""

    count = 0


_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (their handlers run when the block ends) while outputs are renamed into
    place, so an interruption lands before the renames (nothing written) or after them (all written),
    never between. Only the main thread can change handlers; elsewhere this holds nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous: dict[int, Any] = {}

    def hold(signum: int, _frame: object) -> None:
        received.append(signum)

    for signum in _HELD_SIGNALS:
        if signal.getsignal(signum) is not None:  # None: installed outside Python, leave it alone
            previous[signum] = signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def atomic_write(output: str | Path, write: Callable[[BinaryIO], None], *,
                 expect: FileIdentity | None = None) -> None:
    """Call `write` on a temporary file in OUTPUT's folder, fsync it, then rename it onto OUTPUT.

    On any error the temporary file is removed and OUTPUT is left as it was. Right before the rename,
    OUTPUT is checked again (still replaceable; with `expect`, --in-place, still the file that was read).
    """
    out = Path(output)
    mode = _default_mode(out)
    temp: Path | None = None
    try:
        while True:  # the name is known before the file exists: a Ctrl-C right after its creation removes it
            temp = temporary_path(out.parent)
            try:
                descriptor = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                temp = None  # another writer's file
            except OSError as error:
                temp = None
                raise OutputError(f"cannot write in {out.parent}: {error.strerror or error}") from None
        with os.fdopen(descriptor, "w+b") as sink:
            write(sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.chmod(temp, mode)
        with signals_held():
            refuse_unreplaceable(out)
            if expect is not None:
                refuse_changed(out, expect)
            os.replace(temp, out)
            CommitLog.count += 1
    except BaseException as error:
        if temp is None:
            raise
        temp.unlink(missing_ok=True)
        failed = write_failure(error)
        if failed is not None:
            raise OutputError(f"cannot write {out}: {failed.strerror or failed}") from None
        raise
    fsync_folder(out.parent)


def write_failure(error: BaseException) -> OSError | None:
    """The OSError behind a failed write (a full disk, a file size limit...): the error itself, or the
    one that torch.save's zip writer turned into a RuntimeError ("unexpected pos ...")."""
    if isinstance(error, OSError):
        return error
    if isinstance(error, RuntimeError) and isinstance(error.__context__, OSError):
        return error.__context__
    return None


def fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def save_checkpoint(
    checkpoint: Checkpoint,
    output: str | Path | BinaryIO,
    fmt: str | None = None,
    *,
    metadata: dict[str, str] | None = None,
    tensors_only: bool = False,
    expect: FileIdentity | None = None,
) -> None:
    """Write `checkpoint` to a path (atomically), to '-' (standard output) or to a binary file.
    `expect`: see atomic_write."""
    fmt = fmt or checkpoint.format
    metadata = metadata or {}
    if isinstance(output, (str, Path)) and str(output) != STDIO:
        atomic_write(output, lambda sink: serialize(checkpoint, fmt, metadata, sink,
                                                    tensors_only=tensors_only), expect=expect)
        return
    buffer = io.BytesIO()
    serialize(checkpoint, fmt, metadata, buffer, tensors_only=tensors_only)
    sink = sys.stdout.buffer if str(output) == STDIO else output
    sink.write(buffer.getvalue())  # type: ignore[union-attr]
    sink.flush()  # type: ignore[union-attr]
