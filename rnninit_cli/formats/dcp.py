"""torch.distributed.checkpoint (DCP) folders: read without torch, rewritten by patching bytes.

A folder that `torch.distributed.checkpoint.save` wrote with its FileSystemWriter holds `.metadata`, a pickle of
DCP dataclasses, and the ranks' `__R_N.distcp` files. `.metadata` lists every state-dict entry: a tensor (dtype,
full size, and its chunks: offsets and sizes in the full tensor) or a bytes entry (any other object), and where
each chunk lies (file, offset, length). With the default serialization format each chunk is a complete
`torch.save` archive of that chunk's tensor, nested at its byte range, and each bytes entry a `torch.save` of
its object. torch's reader (FileSystemReader) slices the file at (offset, length), `torch.load(weights_only=True)`s
the slice, narrows the tensor to the part it wants and checks that part's size (then copies it into the target,
converting its dtype if it differs); it checks no CRC-32, neither of the nested archive's records nor of anything
else, and .metadata holds no checksum.

`.metadata` is read by the restricted unpickler with exactly the classes DCP pickles allowed, as inert records,
then checked field by field; a chunk's nested archive is read like a `.pt` (restricted unpickler, no torch). An
output folder is the input's files copied by the kernel, with the rewritten tensors' chunk elements overwritten
where they lie (and the CRC-32 of each touched zip record updated, so that the nested archives stay valid zips):
every other byte, `.metadata` included, is the input's. What rnninit records of a run goes into a new
`rnninit.json` beside `.metadata`, a file DCP does not read.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import shutil
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import CheckpointError, OutputError, first_line
from .atomic import current_umask
from .checkpoint import TensorShape, merge_metadata, string_map
from .dcp_metadata import FORMAT, METADATA_NAME, Chunk, DcpLayout, DcpTensor, read_metadata
from .folders import _fsync_file, build_folder
from .kinds import METADATA_RECORD
from .safety import PICKLE_RECORD_LIMIT, SMALL_RECORD_LIMIT, check_zip_records, read_record
from .tensorfile import (
    CannotPatch,
    Record,
    _crc_of,
    _pwrite_tensor,
    _zip_records,
    copy_range,
    open_regular,
    read_exactly,
)
from .unpickle.arrays import as_values, is_contiguous, storage_dtype, stored_array, tensor_span
from .unpickle.machine import (
    storage_from_id,
    unpickle,
)
from .unpickle.objects import refuse_broadcast
from .unpickle.records import TensorRef
from .ziplayout import check_storage_record, check_torch_records

if TYPE_CHECKING:
    import torch


# --- what .metadata says -----------------------------------------------------------------------------------


# --- chunks: nested torch.save archives ---------------------------------------------------------------------


class _FileView(io.RawIOBase):
    """Bytes [start, start + length) of an open file as a read-only, seekable file (a chunk's nested archive)."""

    def __init__(self, descriptor: int, start: int, length: int) -> None:
        super().__init__()
        self._descriptor, self._start, self._length, self._position = descriptor, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the chunk")
        self._position = base + offset
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        left = max(self._length - self._position, 0)
        count = left if size is None or size < 0 else min(size, left)
        data = read_exactly(self._descriptor, self._start + self._position, count, Path("the chunk")) if count else b""
        self._position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


@dataclass(frozen=True)
class StoredChunk:
    """Where a chunk's elements lie in its file (absolute offsets), and the zip record that holds them."""

    chunk: Chunk
    dtype: str
    stride: tuple[int, ...]
    first: int  # the chunk's first element
    stop: int  # the end of its last element
    record: Record  # data_start and crc_positions absolute in the file
    span: int  # elements from the first to the last it reads (fewer than its elements: a broadcast view)

    @property
    def contiguous(self) -> bool:
        return is_contiguous(self.chunk.sizes, self.stride)


def _index_chunk(descriptor: int, tensor: DcpTensor, chunk: Chunk, where: str) -> StoredChunk:
    """Read a chunk's nested torch.save archive (its zip directory and data.pkl; no tensor data)."""
    try:
        return _read_chunk_archive(descriptor, tensor, chunk, where)
    except CheckpointError:
        raise
    except Exception as error:  # damage shows up as any of zipfile's, struct's, unicode's... errors
        raise CheckpointError(f"{where}: not a readable torch.save archive (truncated or damaged?): "
                              f"{first_line(str(error)) or type(error).__name__}") from None


def _read_chunk_archive(descriptor: int, tensor: DcpTensor, chunk: Chunk, where: str) -> StoredChunk:
    if chunk.transforms:
        raise CheckpointError(f"{where}: written through the stream transforms {list(chunk.transforms)} "
                              "(compression?); rnninit reads and patches plain torch.save chunks only")
    if os.pread(descriptor, 4, chunk.start) != b"PK\x03\x04":
        raise CheckpointError(f"{where}: not a torch.save archive (a folder saved with serialization_format="
                              "SAFETENSORS, which torch's own FileSystemReader cannot load either?); refused")
    view = _FileView(descriptor, chunk.start, chunk.length)
    try:
        archive = zipfile.ZipFile(view)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"{where}: not a readable torch.save archive (truncated or damaged?): "
                              f"{first_line(str(error))}") from None
    with archive:
        check_zip_records(archive, chunk.length, where)
        names = archive.namelist()
        folder = check_torch_records(names, lambda record: read_record(archive, record), where)
        try:
            records = _zip_records(Path(where), archive)
        except CannotPatch as why:
            raise CheckpointError(f"{where}: not a torch.save archive as torch writes it ({why})") from None
        data_pkl = read_record(archive, f"{folder}/data.pkl")
    storages: dict[str, Any] = {}

    def persistent_load(pid: Any) -> Any:
        ref = storage_from_id(pid, storages)
        record = records.get(f"{folder}/data/{ref.key}")
        check_storage_record(f"{folder}/data/{ref.key}", ref.nbytes, None if record is None else record.size, where)
        return ref

    root = unpickle(data_pkl, persistent_load, where)
    if not isinstance(root, TensorRef):
        raise CheckpointError(f"{where}: the nested archive does not hold one tensor")
    if root.dtype != tensor.dtype:
        raise CheckpointError(f"{where}: stored as {root.dtype}, while .metadata says {tensor.dtype}; rnninit "
                              "neither converts nor patches such a chunk")
    if root.shape != chunk.sizes:
        raise CheckpointError(f"{where}: stored with shape {list(root.shape)}, while .metadata says "
                              f"{list(chunk.sizes)}")
    first, stop = tensor_span(root)
    stored = root.storage.nbytes // root.itemsize
    if min(root.stride, default=0) < 0 or first < 0 or stop > stored:
        raise CheckpointError(f"{where}: the chunk reads outside its storage (offset {root.offset}, stride "
                              f"{list(root.stride)}, {stored} stored elements)")
    refuse_broadcast(where, chunk.numel, stop - first)  # stride 0 (expand): any size from a few stored elements
    record = records[f"{folder}/data/{root.storage.key}"]
    base = chunk.start + record.data_start
    absolute = Record(record.name, base, record.size, [chunk.start + position for position in record.crc_positions])
    return StoredChunk(chunk, root.dtype, root.stride, base + first * root.itemsize, base + stop * root.itemsize,
                       absolute, stop - first)


# --- the folder -----------------------------------------------------------------------------------------------


@dataclass
class DcpFolder:
    """A DCP folder, indexed: what `.metadata` says, and its files held open (what is read is what was
    indexed, whatever is renamed over the paths meanwhile). close() it, or use it as a context manager."""

    path: Path
    layout: DcpLayout
    metadata_bytes: bytes  # .metadata as it was read (and parsed)
    files: dict[str, BinaryIO]  # relative name → open file
    sizes: dict[str, int]  # relative name → size when opened (a copy copies that many bytes)
    recorded: dict[str, str] = field(default_factory=dict)  # rnninit.json of an earlier run
    _stored: dict[tuple[str, int], StoredChunk] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return str(self.path)

    @property
    def format(self) -> str:
        return FORMAT

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.recorded)

    @property
    def non_tensor_paths(self) -> list[str]:
        return sorted(self.layout.objects)

    @property
    def optimizer_paths(self) -> list[str]:
        return self.layout.optimizer_prefixes()

    @property
    def foreign_classes(self) -> list[str]:
        return []  # bytes entries are never unpickled

    def __enter__(self) -> DcpFolder:
        return self

    def __exit__(self, *_exception: object) -> None:
        self.close()

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()

    def shape_records(self) -> dict[str, TensorShape]:
        return {name: TensorShape(tensor.shape, tensor.dtype) for name, tensor in self.layout.tensors.items()}

    def shapes(self) -> dict[str, torch.Tensor]:
        """Meta tensors (shape and dtype, no data) for planning."""
        import torch

        return {name: torch.empty(tensor.shape, dtype=getattr(torch, tensor.dtype), device="meta")
                for name, tensor in self.layout.tensors.items()}

    def storage_spans(self) -> dict[str, tuple[str, int, int]]:
        """Each tensor's first nested archive: DCP stores every entry on its own, so none overlap (checked)."""
        spans = {}
        for name, tensor in self.layout.tensors.items():
            first = tensor.chunks[0] if tensor.chunks else None
            spans[name] = (f"{name}:", 0, 0) if first is None else \
                (f"{first.file}:{first.start}", first.start, first.start + first.length)
        return spans

    def stored_chunks(self, name: str) -> list[StoredChunk]:
        """Where each chunk of `name` lies (its nested archive is read the first time), each checked against its
        declared sizes and byte range; and the tensor no broadcast claiming far more elements than its chunks
        store. Nothing of the tensor's declared size is allocated here: call it before allocating."""
        tensor = self.layout.tensors[name]
        found = []
        for index, chunk in enumerate(tensor.chunks):
            key = (name, index)
            if key not in self._stored:
                where = (f"{self.path / chunk.file} (bytes {chunk.start}-{chunk.start + chunk.length}: the chunk of "
                         f"{name} at {list(chunk.offsets)})")
                self._stored[key] = _index_chunk(self.files[chunk.file].fileno(), tensor, chunk, where)
            found.append(self._stored[key])
        refuse_broadcast(f"{self.path}: {name}", math.prod(tensor.shape), sum(stored.span for stored in found))
        return found

    def _chunk_bytes(self, stored: StoredChunk) -> bytearray:
        """The chunk's elements' bytes, read straight into a buffer of their own (no intermediate copy)."""
        buffer = bytearray(stored.stop - stored.first)
        view, done = memoryview(buffer), 0
        while done < len(buffer):
            count = os.preadv(self.files[stored.chunk.file].fileno(), [view[done:]], stored.first + done)
            if count == 0:
                raise CheckpointError(f"{self.path / stored.chunk.file}: the file ended early (was it truncated "
                                      "while being read?)")
            done += count
        return buffer

    def arrays(self, names: Iterable[str]) -> dict[str, Any]:
        """numpy arrays of the named tensors, each assembled from its chunks (no torch needed)."""
        import numpy as np

        names = list(names)
        checked = {name: self.stored_chunks(name) for name in names}  # every chunk, before allocating anything
        result = {}
        for name in names:
            tensor = self.layout.tensors[name]
            full = np.empty(tensor.shape, dtype=storage_dtype(tensor.dtype))
            for stored in checked[name]:
                chunk = stored.chunk
                full[chunk.region] = stored_array(self._chunk_bytes(stored), stored.dtype, chunk.sizes, stored.stride)
            result[name] = as_values(tensor.dtype, full)
        return result

    def load(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """torch tensors of the named tensors, each assembled from its chunks."""
        import torch

        names = list(names)
        checked = {name: self.stored_chunks(name) for name in names}  # every chunk, before allocating anything
        result = {}
        for name in names:
            tensor = self.layout.tensors[name]
            dtype = getattr(torch, tensor.dtype)
            full = torch.empty(tensor.shape, dtype=dtype)
            for stored in checked[name]:
                raw = self._chunk_bytes(stored)
                if raw:
                    flat = torch.frombuffer(raw, dtype=dtype)
                    full[stored.chunk.region].copy_(torch.as_strided(flat, stored.chunk.sizes, stored.stride, 0))
            result[name] = full
        return result

    # -- writing

    def _patches(self, updates: dict[str, torch.Tensor]) -> list[tuple[StoredChunk, torch.Tensor]]:
        """Each chunk to overwrite with its new elements, after checking that every one can be patched exactly."""
        import torch

        patches = []
        for name, value in updates.items():
            tensor = self.layout.tensors.get(name)
            if tensor is None:
                raise OutputError(f"{name} is not a tensor of {self.path}; nothing was written")
            if tuple(value.shape) != tensor.shape or value.dtype != getattr(torch, tensor.dtype):
                raise OutputError(f"cannot write {name} as {str(value.dtype).removeprefix('torch.')} "
                                  f"{list(value.shape)}: the folder holds it as {tensor.dtype} {list(tensor.shape)}, "
                                  "and a DCP folder is rewritten in place; nothing was written")
            for stored in self.stored_chunks(name):
                if not stored.contiguous:
                    raise CheckpointError(f"{self.path / stored.chunk.file}: the chunk of {name} at "
                                          f"{list(stored.chunk.offsets)} is stored with strides {list(stored.stride)};"
                                          " rnninit patches contiguous chunks only")
                self._check_torch_reads(stored, name)
                patches.append((stored, value.detach().to("cpu")[stored.chunk.region]))
        return patches

    def _check_torch_reads(self, stored: StoredChunk, name: str) -> None:
        """torch's own zip reader must find the chunk's record where Python's zipfile did, or the patch would
        land where torch does not read."""
        import torch

        chunk = stored.chunk
        view = _FileView(self.files[chunk.file].fileno(), chunk.start, chunk.length)
        relative = stored.record.name.split("/", 1)[1]
        try:
            reader = torch._C.PyTorchFileReader(view)
            found = (reader.get_record_offset(relative), reader.get_record_size(relative))
        except Exception as error:  # RuntimeError from torch's reader on damage
            raise CheckpointError(f"{self.path / chunk.file}: torch cannot read the chunk of {name} at "
                                  f"{list(chunk.offsets)}: {first_line(str(error))}") from None
        if found != (stored.record.data_start - chunk.start, stored.record.size):
            raise CheckpointError(f"{self.path / chunk.file}: in the chunk of {name} at {list(chunk.offsets)}, "
                                  "torch's zip reader and Python's disagree on where the data lies; refused")

    def write(self, output: Path, updates: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        """Write a new DCP folder at OUTPUT: the input's files, with only the chunks of `updates` overwritten
        (and their zip records' CRC-32s), plus rnninit.json. It is built beside OUTPUT and renamed into place;
        the input is never touched."""
        patches = self._patches(updates)

        def fill(staging: Path) -> None:
            self._copy_into(staging)
            _patch(staging, patches)
            recorded = merge_metadata(self.recorded, metadata)
            if metadata:
                target = staging / METADATA_RECORD
                target.unlink(missing_ok=True)  # the input's copy may be a symbolic link: never write through it
                target.write_text(json.dumps(recorded, sort_keys=True, indent=1) + "\n")
                os.chmod(target, 0o666 & ~current_umask())
                _fsync_file(target)

        build_folder(output, self.path, fill)

    def _copy_into(self, staging: Path) -> None:
        """Every file of the input folder into `staging`: those .metadata names (and .metadata itself) as the
        bytes that were read, by the kernel; others as they are; symbolic links as links."""
        for source in sorted(self.path.rglob("*")):
            relative = source.relative_to(self.path)
            name = relative.as_posix()
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if name in self.files:
                with open(target, "wb") as sink:
                    copy_range(self.files[name].fileno(), sink.fileno(), 0, 0, self.sizes[name])
            elif name == METADATA_NAME:
                target.write_bytes(self.metadata_bytes)
            elif source.is_symlink():  # copied as the link it is: following it could copy out a file outside INPUT
                os.symlink(os.readlink(source), target)
                continue
            elif source.is_dir():
                target.mkdir(exist_ok=True)
                continue
            else:
                shutil.copyfile(source, target)
            shutil.copymode(source, target)
            _fsync_file(target)


def _patch(staging: Path, patches: list[tuple[StoredChunk, torch.Tensor]]) -> None:
    """Overwrite each chunk's elements in the copied files, then the CRC-32s of the records they lie in."""
    by_file: dict[str, list[tuple[StoredChunk, torch.Tensor]]] = {}
    for stored, value in patches:
        by_file.setdefault(stored.chunk.file, []).append((stored, value))
    for name, items in by_file.items():
        descriptor = os.open(staging / name, os.O_RDWR)
        try:
            for stored, value in items:
                _pwrite_tensor(descriptor, value, stored.first)
            for record in {id(stored.record): stored.record for stored, _ in items}.values():
                crc = struct.pack("<I", _crc_of(descriptor, record.data_start, record.size))
                for position in record.crc_positions:
                    os.pwrite(descriptor, crc, position)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


# --- opening ------------------------------------------------------------------------------------------------


def is_dcp_folder(path: Path) -> bool:
    """A folder holding a DCP `.metadata` file."""
    return path.is_dir() and (path / METADATA_NAME).is_file()


def _refuse_escaping(folder: Path, name: str, source: str) -> None:
    """A file .metadata names must be a plain relative path inside the folder, also after symbolic links."""
    parts = PurePosixPath(name).parts
    if not name or name.startswith(("/", "\\")) or "\\" in name or "\0" in name or ".." in parts or (
            len(name) > 1 and name[1] == ":"):
        raise CheckpointError(f"{source}: it names the file {name!r}, not a plain relative path inside the folder; "
                              "refused")
    try:
        resolved = (folder / name).resolve()
    except (OSError, RuntimeError):  # a symbolic link loop
        raise CheckpointError(f"{source}: {name!r} cannot be resolved (a symbolic link loop?)") from None
    if not resolved.is_relative_to(folder.resolve()) or resolved == folder.resolve():
        raise CheckpointError(f"{source}: {name!r} leads outside the folder (to {resolved}); refused")


def _check_ranges(layout: DcpLayout, sizes: dict[str, int], source: str,
                  identities: dict[str, tuple[int, int]]) -> None:
    """Every entry's byte range lies in its file, and no two overlap (a patch of one would change the other).
    Ranges meet by the file they lie in (`identities`: device and inode of each name's open file), whatever
    names lead there (a symbolic link to a folder, a hard link)."""
    ranges: dict[tuple[int, int], list[tuple[int, int, str, str]]] = {}
    for name, tensor in layout.tensors.items():
        for chunk in tensor.chunks:
            ranges.setdefault(identities[chunk.file], []).append((chunk.start, chunk.start + chunk.length, name,
                                                                  chunk.file))
    for name, item in layout.objects.items():
        ranges.setdefault(identities[item.file], []).append((item.start, item.start + item.length, name, item.file))
    for spans in ranges.values():
        spans.sort()
        for start, stop, name, file in spans:
            if stop > sizes[file]:
                raise CheckpointError(f"{source}: {name} lies at bytes {start}-{stop} of {file}, which holds "
                                      f"{sizes[file]} (truncated?)")
        for (_, stop, name, file), (start, _, following, other) in itertools.pairwise(spans):
            if start < stop:
                where = file if file == other else f"{file} (also named {other})"
                raise CheckpointError(f"{source}: {name} and {following} overlap in {where}; refused")


def _read_recorded(folder: Path) -> dict[str, str]:
    """rnninit.json of an earlier run (what it recorded); {} when absent or unreadable."""
    path = folder / METADATA_RECORD
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > SMALL_RECORD_LIMIT:
            return {}
        return string_map(json.loads(path.read_bytes()))
    except (OSError, ValueError, RecursionError):
        return {}


def open_dcp(path: Path) -> DcpFolder:
    """Index a DCP folder: read and check `.metadata` (restricted), open the files it names."""
    source = str(path / METADATA_NAME)
    _refuse_escaping(path, METADATA_NAME, source)
    try:
        with open_regular(path / METADATA_NAME) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > PICKLE_RECORD_LIMIT:
                raise CheckpointError(f"{source}: {size} bytes, more than the {PICKLE_RECORD_LIMIT} rnninit reads "
                                      "in a pickle; refused")
            data = read_exactly(handle.fileno(), 0, size, path / METADATA_NAME)
    except OSError as error:
        raise CheckpointError(f"cannot read {source}: {error.strerror or error}") from None
    layout = read_metadata(data, source)
    files: dict[str, BinaryIO] = {}
    try:
        for name in sorted(layout.files()):
            _refuse_escaping(path, name, source)
            if name in (METADATA_NAME, METADATA_RECORD):
                raise CheckpointError(f"{source}: it stores tensors or objects in {name}; refused")
            if not (path / name).exists():
                raise CheckpointError(f"{source}: it names {name}, which is not in the folder")
            try:
                files[name] = open_regular(path / name)
            except OSError as error:
                raise CheckpointError(f"cannot read {path / name}: {error.strerror or error}") from None
        status = {name: os.fstat(handle.fileno()) for name, handle in files.items()}
        sizes = {name: found.st_size for name, found in status.items()}
        _check_ranges(layout, sizes, source, {name: (found.st_dev, found.st_ino) for name, found in status.items()})
    except BaseException:
        for handle in files.values():
            handle.close()
        raise
    return DcpFolder(path, layout, data, files, sizes, _read_recorded(path))
