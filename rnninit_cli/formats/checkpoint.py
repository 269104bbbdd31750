"""Checkpoint IO: read `torch.save` and `.safetensors` files safely, write them atomically.

`.pt` files are read by rnninit's restricted unpickler (`unpickle/`), which accepts what
`torch.load(weights_only=True)` accepts and more (pickle protocols 4 and 5, TorchScript archives, objects
of other classes as inert records) while calling nothing a file names; a file that names a known-dangerous
callable is refused. Tensors nested in containers (training checkpoints) are found and named by their path,
e.g. `state_dict/model.rnn.weight_ih_l0`; everything that is not rewritten is kept as it was.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import CheckpointError, OutputError, first_line
from ..interruption import refuse_commit_if_stopping
from .atomic import FileIdentity, atomic_write
from .kinds import METADATA_RECORD, METADATA_RECORD_SIZE, STDIO, detect_format
from .outputs import refuse_foreign_objects, refuse_non_tensors
from .safety import (
    SAFETENSORS_TORCH_DTYPES,
    check_zip_records,
    read_record,
    read_stdin,
    safetensors_header_size,
    validate_safetensors_header,
)
from .unpickle.arrays import array_from_bytes, integer_array, tensor_array, tensor_span, view_span
from .unpickle.files import PickledFile, named_tensors, read_file
from .unpickle.objects import is_tensor, optimizer_state_paths, refuse_broadcast, walk
from .unpickle.records import Builders, QTensorRef, TensorRef, foreign_classes
from .unpickle.torch_builders import _TorchBuilders

if TYPE_CHECKING:
    import torch


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
        """Remove the entries at `paths` from the checkpoint."""
        for path in filter(None, paths):
            *parents, last = path.split("/")
            node = self._at(parents)
            if isinstance(node, dict):
                del node[last]
        self.tensors = {p: v for p, v in walk(self.root, "") if is_tensor(v)}

    def reset_optimizer_state(self, paths: Iterable[str]) -> None:
        """Empty the per-parameter state (moments, momentum buffers, step counts) of the optimizer states at `paths`
        (see `optimizer_paths`), keeping their hyper-parameters (`param_groups`, fastai's `hypers`): the checkpoint
        still resumes (Lightning, `optimizer.load_state_dict`), with the optimizer starting afresh."""
        for path in paths:
            node = self._at(path.split("/")) if path else self.root
            if path.endswith("/state") or path == "state":  # a parameter id → buffers mapping on its own
                node.clear()
                continue
            for state_dict in node if isinstance(node, (list, tuple)) else [node]:
                if isinstance(state_dict, dict) and isinstance(state_dict.get("state"), dict):
                    state_dict["state"] = {}
                elif isinstance(state_dict, dict) and isinstance(state_dict.get("state"), list):  # fastai
                    state_dict["state"] = [{} for _ in state_dict["state"]]
        self.tensors = {p: v for p, v in walk(self.root, "") if is_tensor(v)}

    def _at(self, keys: Iterable[str]) -> Any:
        node = self.root
        for key in keys:
            node = node[int(key)] if isinstance(node, (list, tuple)) else node[key]
        return node


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
    bytes are, and numpy arrays (float8 through ml_dtypes; bfloat16 as BFloat16Arrays of its bits) of the tensors
    asked for."""

    format: str
    records: dict[str, TensorShape]
    reader: Callable[[str], Any]  # name → a numpy copy of that tensor
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = STDIO
    root: Any = None  # .pt: the object graph with tensor records in place of tensors
    torchscript: bool = False
    legacy: bool = False
    integer_reader: Callable[[str], Any] | None = None  # .pt: name → a quantized tensor's stored integers

    @property
    def foreign_classes(self) -> list[str]:
        return [] if self.root is None else foreign_classes(self.root)

    @property
    def optimizer_paths(self) -> list[str]:
        return [] if self.root is None or self.torchscript else optimizer_state_paths(self.root)

    def shape_records(self) -> dict[str, TensorShape]:
        return dict(self.records)

    def arrays(self, names: Iterable[str]) -> dict[str, Any]:
        return {name: self.reader(name) for name in names}

    def integers(self, names: Iterable[str]) -> dict[str, Any]:
        """The stored integers (`int_repr()`) of the named quantized tensors (a .pt file's only)."""
        if self.integer_reader is None:
            raise CheckpointError(f"{self.source}: holds no quantized tensors")
        return {name: self.integer_reader(name) for name in names}


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

    def pt_integers(key: str) -> Any:
        ref = refs[key]
        first, stop = tensor_span(ref)
        raw = pickled.storage_bytes[ref.storage.key][first * ref.itemsize:stop * ref.itemsize]  # checked above
        return integer_array(raw, ref.dtype, ref.shape, ref.stride)

    records = {key: TensorShape(ref.shape, ref.dtype) for key, ref in refs.items()}
    return ArrayCheckpoint("pt", records, pt_array, _read_pt_metadata(data, name), name, pickled.root,
                           torchscript=pickled.kind == "torchscript", legacy=pickled.kind == "legacy",
                           integer_reader=pt_integers)


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
    if sink is sys.stdout.buffer:
        refuse_commit_if_stopping()  # standard output is where this output lands: nothing goes out after a stop
    sink.write(buffer.getvalue())  # type: ignore[union-attr]
    sink.flush()  # type: ignore[union-attr]
