"""Byte-level access to checkpoint files: where each tensor's bytes lie, and patched copies.

For large checkpoints rnninit never loads the untouched tensors. A `.safetensors` header gives every
tensor's byte range; a `.pt` written by `torch.save` is a zip archive whose tensor records are stored
uncompressed, and its `data.pkl` says which record (and offset) backs each tensor. That pickle is read
only by rnninit's restricted unpickler (`unpickle/`: no torch, nothing the file names is imported or
called, tensors are records of where their bytes lie), so indexing reads no tensor data. TorchScript
archives are read the same way, their tensors named as `module.state_dict()` names them. An output is
then the input's bytes copied by the kernel, with only the rewritten tensors' byte ranges overwritten
(and, for zip archives, the CRC-32 fields of the touched records updated): objects of other classes
keep their bytes exactly.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import CheckpointError, UnsafeCheckpointError, first_line
from .atomic import FileIdentity
from .checkpoint import (
    TensorShape,
    append_metadata_record,
    merge_metadata,
    metadata_payload,
    safetensors_header_json,
    string_map,
    unsafe_message,
)
from .kinds import METADATA_RECORD, detect_format
from .safety import (
    SAFETENSORS_TORCH_DTYPES,
    check_zip_records,
    read_record,
    safetensors_header_size,
    validate_safetensors_header,
)
from .unpickle.arrays import array_from_bytes, integer_array, is_contiguous, view_span
from .unpickle.machine import storage_from_id, unpickle
from .unpickle.objects import is_tensor, optimizer_state_paths, refuse_broadcast, walk
from .unpickle.records import DTYPES, QUANTIZED_DTYPES, Builders, QTensorRef, TensorRef
from .unpickle.records import foreign_classes as find_foreign_classes
from .unpickle.torchscript import read_code, script_tensors
from .ziplayout import check_storage_record, check_torch_records

if TYPE_CHECKING:
    import torch

_CHUNK = 16 << 20
_TORCH_DTYPES = SAFETENSORS_TORCH_DTYPES  # safetensors dtype code → torch dtype name


class CannotPatch(Exception):
    """This file (or this change) cannot be done by patching bytes; load the checkpoint instead."""


@dataclass(frozen=True)
class Location:
    """Where a tensor's elements lie in the file."""

    dtype_name: str  # torch's name: "float32", "bfloat16"...
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage: str  # zip record name (.pt) or "data" (.safetensors)
    base: int  # absolute file offset of the storage's first byte
    offset: int  # element offset of the tensor in its storage

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype_name)

    @property
    def element_size(self) -> int:
        return DTYPES[self.dtype_name][0]

    @property
    def contiguous(self) -> bool:
        return is_contiguous(self.shape, self.stride)

    @property
    def span(self) -> tuple[int, int]:
        """[first, last + 1) element indexes of the storage that the tensor reads."""
        return view_span(self.offset, self.shape, self.stride)

    @property
    def byte_range(self) -> tuple[int, int]:
        first, stop = self.span
        return self.base + first * self.element_size, self.base + stop * self.element_size


@dataclass
class Record:
    """A stored (uncompressed) zip record and where its CRC-32 is written."""

    name: str
    data_start: int
    size: int
    crc_positions: list[int]


@dataclass
class TensorFile:
    """A checkpoint file indexed by byte ranges; tensors are read on demand.

    It holds the file open: indexing, reading tensors and copying all use that one descriptor, so what
    is read is what was indexed even if another file is renamed over the path meanwhile. close() it
    (or use it as a context manager)."""

    path: Path
    format: str
    locations: dict[str, Location]
    metadata: dict[str, str] = field(default_factory=dict)
    root: Any = None  # .pt: the object with meta tensors in place of data
    records: dict[str, Record] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)  # .safetensors: the parsed header
    data_start: int = 0  # .safetensors: where the data section begins
    handle: BinaryIO | None = None  # the open file (set by index_file)
    size: int = 0  # the file's size when it was indexed: a copy copies that many bytes
    identity: FileIdentity | None = None  # inode, size and mtime when it was opened (--in-place checks it)
    torchscript: bool = False  # a TorchScript archive (torch.jit.save): tensors named by state_dict paths
    torch_checked: bool = False  # the torch-side checks of a patched copy ran (check_loadable)

    @property
    def source(self) -> str:
        return str(self.path)

    @property
    def descriptor(self) -> int:
        if self.handle is None or self.handle.closed:
            raise ValueError(f"{self.path} is closed")
        return self.handle.fileno()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *_exception: object) -> None:
        self.close()

    def read_all(self) -> bytes:
        """The whole file as it was indexed (for a fallback that loads it whole)."""
        return read_exactly(self.descriptor, 0, self.size, self.path)

    @property
    def non_tensor_paths(self) -> list[str]:
        return [] if self.root is None else [p for p, v in walk(self.root, "") if not is_tensor(v)]

    @property
    def optimizer_paths(self) -> list[str]:
        return [] if self.root is None or self.torchscript else optimizer_state_paths(self.root)

    @property
    def foreign_classes(self) -> list[str]:
        """Sorted "module.Name" of the objects of other classes the file holds (read as inert records)."""
        return [] if self.root is None else find_foreign_classes(self.root)

    def arrays(self, names: Iterable[str]) -> dict[str, Any]:
        """numpy copies of the named tensors, read from their byte ranges (no torch needed)."""
        result = {}
        for name in names:
            loc, raw = self._read_tensor_bytes(name)
            try:
                result[name] = array_from_bytes(raw, loc.dtype_name, loc.shape, loc.stride)  # `raw` starts at offset
            except CheckpointError as error:  # a dtype numpy cannot read (bits8, float4_e2m1fn_x2...): say which
                raise CheckpointError(f"{self.path}: {name}: {error}") from None
        return result

    def integers(self, names: Iterable[str]) -> dict[str, Any]:
        """The stored integers (`int_repr()`) of the named quantized tensors, read from their byte ranges."""
        result = {}
        for name in names:
            loc, raw = self._read_tensor_bytes(name)
            result[name] = integer_array(raw, loc.dtype_name, loc.shape, loc.stride)
        return result

    def _read_tensor_bytes(self, name: str) -> tuple[Location, bytes]:
        """The bytes from the first to the last element `name` reads, after checking they lie in the file and
        that the tensor is no broadcast view claiming far more elements than it stores."""
        loc = self.locations[name]
        start, stop = loc.byte_range
        if stop > self.size:
            raise CheckpointError(f"{self.path}: truncated: {name} lies past the end of the file")
        refuse_broadcast(name, math.prod(loc.shape), (stop - start) // loc.element_size)
        return loc, read_exactly(self.descriptor, start, stop - start, self.path)

    def shape_records(self) -> dict[str, TensorShape]:
        """Shape and dtype of every tensor, for layout discovery without torch (inspect, verify, diff)."""
        return {name: TensorShape(loc.shape, loc.dtype_name) for name, loc in self.locations.items()}

    def shapes(self) -> dict[str, torch.Tensor | TensorShape]:
        """Meta tensors (shape and dtype, no data) for layout discovery and planning; quantized tensors, which torch
        makes on no meta device, as shape records (they are never planned)."""
        import torch

        return {name: TensorShape(loc.shape, loc.dtype_name) if loc.dtype_name in QUANTIZED_DTYPES
                else torch.empty_strided(loc.shape, loc.stride, dtype=loc.dtype, device="meta")
                for name, loc in self.locations.items()}

    def load(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Real copies of the named tensors, read from their byte ranges."""
        import torch

        result = {}
        for name in names:
            loc, read = self._read_tensor_bytes(name)
            raw = bytearray(read)
            if not raw:
                result[name] = torch.empty(loc.shape, dtype=loc.dtype)
                continue
            # `raw` starts at the first element the tensor reads, so the view's offset is 0
            flat = torch.frombuffer(raw, dtype=loc.dtype)
            view = torch.as_strided(flat, loc.shape, loc.stride, 0)
            result[name] = view if loc.contiguous else view.clone()  # `raw` is ours: no copy needed
        return result

    def storage_spans(self) -> dict[str, tuple[str, int, int]]:
        return {name: (loc.storage, *loc.byte_range) for name, loc in self.locations.items()}

    def write_patched(self, sink: BinaryIO, updates: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        """Write this file with `updates` in place of those tensors' bytes, to the file `sink`."""
        self.copy_into(sink, metadata, updates)
        self.patch(sink, updates, metadata)

    def copy_into(self, sink: BinaryIO, metadata: dict[str, str], names: Iterable[str]) -> None:
        """First phase: the input's bytes into `sink` (a .safetensors gets its new header already).
        Needs no tensor values, so it can run while they are being drawn."""
        if self.format == "pt":
            self.check_loadable()
        for name in names:
            if not self.locations[name].contiguous:
                raise CannotPatch(f"{name} is not contiguous")
        out = sink.fileno()
        size = self.size
        start = 0
        if self.format == "safetensors":
            header = self._header_bytes(metadata)
            os.pwrite(out, header, 0)
            start, size = self.data_start, size - self.data_start
        copy_range(self.descriptor, out, start, self._shift(metadata) + start, size)

    def check_loadable(self) -> None:
        """Before a patched copy is written (torch is imported there anyway): torch's own zip reader must find
        every record where Python's does, and where torch.load(weights_only=True) can read this kind of file
        (a plain protocol 2 or 3 torch.save archive, no objects of other classes), it must accept it: a copy
        it could not load is not written. Reading (inspect, verify, diff) needs neither."""
        if self.torch_checked or self.handle is None:
            return
        folder = next(iter(self.records)).split("/")[0] if self.records else ""
        try:
            _check_torch_reads(self.path, folder, self.records, self.handle)
        except CheckpointError:
            raise
        except Exception as error:  # RuntimeError, UnicodeDecodeError... from torch's reader on damage
            raise CheckpointError(f"{self.path}: not a readable torch.save file (damaged?): "
                                  f"{first_line(str(error)) or type(error).__name__}") from None
        pickle_record = self.records.get(f"{folder}/data.pkl")
        protocol = os.pread(self.descriptor, 2, pickle_record.data_start) if pickle_record else b""
        plain = not self.torchscript and not self.foreign_classes
        if plain and protocol[:1] == b"\x80" and protocol[1:2] in b"\x02\x03":
            _check_torch_loads(self.path, self.handle)
        self.torch_checked = True

    def patch(self, sink: BinaryIO, updates: dict[str, torch.Tensor], metadata: dict[str, str],
              raw: Mapping[str, Mapping[int, bytes]] | None = None) -> None:
        """Second phase: overwrite the rewritten tensors' bytes (and a .pt's CRCs and rnninit record); `raw`: bytes
        to write at offsets of other records of a .pt, by record name (a packed weight's scale in data.pkl), each
        inside its record."""
        out = sink.fileno()
        shift = self._shift(metadata)
        for name, tensor in updates.items():
            _pwrite_tensor(out, tensor, self.locations[name].byte_range[0] + shift)
        touched = {self.locations[name].storage for name in updates}
        for record_name, changes in (raw or {}).items():
            record = self.records[record_name]
            for offset, data in changes.items():
                if not 0 <= offset <= record.size - len(data):  # checked by the caller: never past the record
                    raise CheckpointError(f"a change of {len(data)} bytes at {offset} lies outside {record_name}")
                os.pwrite(out, data, record.data_start + offset)
            touched.add(record_name)
        if self.format == "pt":
            self._finish_pt(sink, touched, metadata)

    def _header_bytes(self, metadata: dict[str, str]) -> bytes:
        header = dict(self.header)
        merged = merge_metadata(self.metadata, metadata)
        header.pop("__metadata__", None)
        if merged:
            header = {"__metadata__": merged, **header}
        encoded = safetensors_header_json(header)
        encoded += b" " * (-len(encoded) % 8)
        return struct.pack("<Q", len(encoded)) + encoded

    def _shift(self, metadata: dict[str, str]) -> int:
        """How far the data moves in the output: a .safetensors header may change length."""
        return len(self._header_bytes(metadata)) - self.data_start if self.format == "safetensors" else 0

    def _finish_pt(self, sink: BinaryIO, touched: set[str], metadata: dict[str, str]) -> None:
        out = sink.fileno()
        existing = next((r for n, r in self.records.items() if n.endswith("/" + METADATA_RECORD)), None)
        payload = metadata_payload(merge_metadata(self.metadata, metadata)) if metadata else None
        if payload is not None and existing is not None:
            if existing.size != len(payload):
                raise CannotPatch("the existing rnninit record has another size")
            os.pwrite(out, payload, existing.data_start)
            touched.add(existing.name)
        for name in sorted(touched):
            record = self.records[name]
            crc = _crc_of(out, record.data_start, record.size)
            for position in record.crc_positions:
                os.pwrite(out, struct.pack("<I", crc), position)
        if payload is not None and existing is None:
            sink.seek(0)
            append_metadata_record(sink, payload)


def _pwrite_tensor(descriptor: int, tensor: torch.Tensor, position: int) -> None:
    import torch

    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel():
        data = memoryview(flat.view(torch.uint8).numpy())
        while data:
            written = os.pwrite(descriptor, data, position)
            data, position = data[written:], position + written


def _crc_of(descriptor: int, start: int, size: int) -> int:
    crc = 0
    while size > 0:
        chunk = os.pread(descriptor, min(size, _CHUNK), start)
        if not chunk:
            raise CheckpointError("unexpected end of file while checking a zip record")
        crc = zlib.crc32(chunk, crc)
        start += len(chunk)
        size -= len(chunk)
    return crc


def read_exactly(descriptor: int, start: int, count: int, path: Path) -> bytes:
    """`count` bytes at `start` of an open file; CheckpointError if it ends first."""
    chunks = []
    while count > 0:
        chunk = os.pread(descriptor, min(count, 1 << 30), start)
        if not chunk:
            raise CheckpointError(f"{path}: the file ended early (was it truncated while being read?)")
        chunks.append(chunk)
        start += len(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def copy_range(source: int, target: int, source_start: int, target_start: int, count: int) -> None:
    """Copy `count` bytes between file descriptors in the kernel where possible (no Python buffers)."""
    use_kernel = hasattr(os, "copy_file_range")
    while count > 0:
        step = min(count, 1 << 30)
        copied = 0
        if use_kernel:
            try:
                copied = os.copy_file_range(source, target, step, source_start, target_start)
            except OSError:
                use_kernel = False
        if not use_kernel:
            chunk = os.pread(source, min(step, _CHUNK), source_start)
            copied = os.pwrite(target, chunk, target_start) if chunk else 0
        if copied == 0:
            raise CheckpointError("the input file ended early (was it truncated while being read?)")
        count -= copied
        source_start += copied
        target_start += copied


def open_regular(path: Path) -> BinaryIO:
    """Open a checkpoint file for reading; refuse FIFOs, sockets and devices without blocking on them."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise CheckpointError(f"{path} is not a regular file (a FIFO, socket, device or folder)")
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


def index_file(path: Path, handle: BinaryIO | None = None) -> TensorFile:
    """Index a `.pt` zip archive or a `.safetensors` file; CannotPatch for other `.pt` layouts.

    The TensorFile keeps the file open (see TensorFile). `handle`: index this open file instead of
    opening `path`; the TensorFile takes it over on success (the caller keeps it on failure)."""
    own = handle is None
    if handle is None:
        handle = open_regular(path)
    try:
        indexed = _index_open(path, handle)
    except BaseException:
        if own:
            handle.close()
        raise
    return indexed


def _index_open(path: Path, handle: BinaryIO) -> TensorFile:
    status = os.fstat(handle.fileno())
    size = status.st_size
    head = os.pread(handle.fileno(), 16, 0)
    try:
        fmt = detect_format(head, size)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    if fmt == "pt" and not head.startswith(b"PK"):
        raise CannotPatch("legacy (non-zip) torch.save format")
    handle.seek(0)
    try:
        indexed = _index_safetensors(path, size, handle) if fmt == "safetensors" else _index_pt(path, handle)
        indexed.handle, indexed.size, indexed.identity = handle, size, FileIdentity.of(status)
        return indexed
    except (CheckpointError, CannotPatch):
        raise
    except Exception as error:  # damage shows up as any of zipfile's, struct's, unicode's... errors
        kind = "torch.save" if fmt == "pt" else "safetensors"
        raise CheckpointError(f"{path}: not a readable {kind} file (truncated or damaged?): "
                              f"{first_line(str(error)) or type(error).__name__}") from None


def _index_safetensors(path: Path, size: int, handle: BinaryIO) -> TensorFile:
    with nullcontext(handle):
        header_size = safetensors_header_size(handle.read(8), size, str(path))
        raw = handle.read(header_size)
    header = validate_safetensors_header(raw, size, str(path))  # exactly as strict as the safetensors library
    locations = {}
    for name, entry in header.entries.items():
        dtype = _TORCH_DTYPES[entry.dtype]
        stride = tuple(_contiguous_strides(entry.shape))
        locations[name] = Location(dtype, entry.shape, stride, "data", header.data_start + entry.begin, 0)
    return TensorFile(path, "safetensors", locations, dict(header.metadata or {}), header=header.as_json(),
                      data_start=header.data_start)


def _contiguous_strides(shape: tuple[int, ...]) -> Iterator[int]:
    strides = []
    step = 1
    for dim in reversed(shape):
        strides.append(step)
        step *= max(dim, 1)
    return reversed(strides)


def _zip_records(path: Path, archive: zipfile.ZipFile) -> dict[str, Record]:
    records = {}
    with nullcontext(archive.fp) as handle:  # the indexed file itself, never reopened by name
        central = {}
        handle.seek(archive.start_dir)  # type: ignore[attr-defined]
        for _ in archive.infolist():
            position = handle.tell()
            fixed = handle.read(46)
            if fixed[:4] != b"PK\x01\x02":
                raise CannotPatch("unexpected zip central directory")
            name_length, extra_length, comment_length = struct.unpack("<HHH", fixed[28:34])
            name = handle.read(name_length).decode("utf-8")
            handle.seek(extra_length + comment_length, os.SEEK_CUR)
            central[name] = position + 16
        for info in archive.infolist():
            parts = info.filename.split("/")
            if info.compress_type != zipfile.ZIP_STORED and (parts[1:] == [METADATA_RECORD]
                                                            or (len(parts) >= 3 and parts[1] == "data")):
                raise CannotPatch(f"record {info.filename} is compressed")  # a record a patch would write
            handle.seek(info.header_offset)
            local = handle.read(30)
            if local[:4] != b"PK\x03\x04":
                raise CannotPatch("unexpected zip local header")
            flags = struct.unpack("<H", local[6:8])[0]
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            data_start = info.header_offset + 30 + name_length + extra_length
            positions = [central[info.filename]]
            if flags & 0x08:
                handle.seek(data_start + info.compress_size)
                descriptor = handle.read(4)
                positions.append(data_start + info.compress_size + (4 if descriptor == b"PK\x07\x08" else 0))
            else:
                positions.append(info.header_offset + 14)
            records[info.filename] = Record(info.filename, data_start, info.file_size, positions)
    return records  # records that overlap were refused before (ziplayout.check_zip_layout, via check_zip_records)


def _check_torch_reads(path: Path, folder: str, records: dict[str, Record], handle: BinaryIO) -> None:
    """torch.load reads archives with its own zip reader, stricter than Python's zipfile: an archive it
    cannot read (or whose records it finds elsewhere) is refused, or its patched copy would be as broken.
    Only the zip directory and local headers are read, no tensor data."""
    import torch

    handle.seek(0)  # torch's reader counts offsets from the position it starts at
    reader = torch._C.PyTorchFileReader(handle)  # RuntimeError on damage; reads the indexed file itself
    reader.serialization_id()  # torch.load decodes it (UnicodeDecodeError on damage)
    for name, record in records.items():
        relative = name.removeprefix(f"{folder}/")
        if (reader.get_record_offset(relative), reader.get_record_size(relative)) != (record.data_start, record.size):
            raise CheckpointError(f"{path}: not a readable torch.save file (damaged?): zip record {name} "
                                  "is not where its headers say")


def _check_torch_loads(path: Path, handle: BinaryIO) -> None:
    """torch.load itself, weights-only and memory-mapped (no tensor data is read), on the very file that is
    indexed: tensors whose sizes, strides or offsets torch refuses (negative strides, views past their
    storage) are refused here rather than patched into a copy that would not load either."""
    import pickle

    import torch

    descriptor_path = f"/proc/self/fd/{handle.fileno()}"
    if not os.path.exists(descriptor_path):
        return  # no such view of open files here: the checks on the index below still apply
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(descriptor_path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(unsafe_message(str(path), str(error))) from None
    except Exception as error:  # RuntimeError, ValueError... on layouts torch refuses
        raise CheckpointError(f"{path}: not a readable torch.save file (damaged?): "
                              f"{first_line(str(error)) or type(error).__name__}") from None


def _index_pt(path: Path, handle: BinaryIO) -> TensorFile:
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"{path}: not a readable torch.save file (truncated or damaged?): "
                              f"{first_line(str(error))}") from None
    with archive:
        check_zip_records(archive, os.fstat(handle.fileno()).st_size, str(path))  # before any record is read
        names = archive.namelist()
        folder = check_torch_records(names, lambda record: read_record(archive, record), str(path))
        records = _zip_records(path, archive)
        data_pkl = read_record(archive, f"{folder}/data.pkl")
        code = read_code(archive, folder)  # TorchScript: the classes' source, as text (never run)
        metadata = {}
        if f"{folder}/{METADATA_RECORD}" in names:
            try:
                metadata = string_map(json.loads(read_record(archive, f"{folder}/{METADATA_RECORD}")))
            except ValueError:
                metadata = {}

    storages: dict[str, Any] = {}

    def persistent_load(saved_id: Any) -> Any:
        ref = storage_from_id(saved_id, storages)
        record = f"{folder}/data/{ref.key}"
        check_storage_record(record, ref.nbytes, records[record].size if record in records else None, str(path))
        return ref

    builders = Builders()
    root = unpickle(data_pkl, persistent_load, str(path), builders)
    leaves = [(name or "tensor", value) for name, value in walk(root, "")]  # also enforces the graph's limits
    try:
        builders.refuse_hidden(value for _, value in leaves)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    named = list(script_tensors(root, code)) if code else [(n, v) for n, v in leaves if isinstance(v, TensorRef)]
    locations = {}
    for name, value in named:
        if not isinstance(value, TensorRef):
            raise CannotPatch(f"{name} is not backed by a storage record")
        record = f"{folder}/data/{value.storage.key}"
        location = Location(value.dtype, value.shape, value.stride, record, records[record].data_start, value.offset)
        # torch.load checks this against real storages; here nothing else does, and a view past its storage
        # would be read from, and patched into, the next record of the archive
        stored = value.storage.nbytes // value.itemsize  # an untyped storage counts bytes
        packed = isinstance(value, QTensorRef) and value.packed  # never read nor patched; torch.load checks it
        if min(location.stride, default=0) < 0 or location.offset < 0 or (location.span[1] > stored and not packed):
            raise CheckpointError(f"{path}: not a readable torch.save file (damaged?): {name} reads "
                                  f"outside its storage (offset {location.offset}, shape {list(location.shape)}, "
                                  f"stride {list(location.stride)}, {stored} stored elements)")
        locations[name] = location
    return TensorFile(path, "pt", locations, metadata, root=root, records=records, torchscript=bool(code))
