"""Whole `torch.save` files read without torch: the zip archive (and TorchScript archives), the legacy
format, and every tensor of a file by name, as records or as numpy arrays.
"""

from __future__ import annotations

import io
import math
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any

from ...errors import CheckpointError, UnsafeCheckpointError
from .arrays import tensor_array, tensor_span
from .machine import RestrictedUnpickler, hostile_message, storage_from_id, too_big_message, unpickle
from .records import (
    DTYPES,
    Builders,
    DamagedPickle,
    Foreign,
    HostilePickle,
    StorageRef,
    TensorRef,
    TooBig,
    _ForeignGlobal,
    foreign_classes,
)
from .torchscript import read_code, script_tensors

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C



LEGACY_PROTOCOL = 1001



@dataclass
class PickledFile:
    """A whole torch.save file read without torch: its object graph and where each storage's bytes are."""

    kind: str  # "zip", "torchscript" or "legacy"
    root: Any
    storages: dict[str, StorageRef]
    storage_bytes: dict[str, memoryview]  # key → the storage's bytes (at least its declared size)
    code: dict[str, str] = field(default_factory=dict)  # TorchScript: record path → source text
    builders: Builders = field(default_factory=lambda: Builders())  # what built the graph's tensors

    @property
    def foreign_classes(self) -> list[str]:
        return foreign_classes(self.root)



class _HeaderUnpickler(RestrictedUnpickler):
    """For the legacy format's small pickles (magic number, protocol, sys_info, storage keys): plain values
    only, within the same budget. Any global there is refused: no torch.save header names one."""

    def __init__(self, stream: io.BytesIO) -> None:
        super().__init__(stream, self._no_storage)

    @staticmethod
    def _no_storage(pid: Any) -> StorageRef:
        raise DamagedPickle("the legacy header refers to a storage")

    def find_class(self, module: str, name: str) -> Any:
        raise HostilePickle(f"{module}.{name}")



def _header_value(stream: io.BytesIO, source: str) -> Any:
    try:
        return _HeaderUnpickler(stream).load()
    except HostilePickle as error:
        raise UnsafeCheckpointError(hostile_message(source, str(error))) from None
    except TooBig as error:
        raise CheckpointError(too_big_message(source, int(str(error)))) from None
    except Exception as error:
        raise CheckpointError(f"{source}: not a readable torch.save file (truncated or damaged?): "
                              f"{(str(error) or type(error).__name__).splitlines()[0][:200]}") from None



def read_legacy(data: bytes, source: str, builders: Builders | None = None) -> PickledFile:
    """A legacy (non-zip) torch.save file: magic number, protocol, sys_info, data pickle, storage keys,
    then each storage as an 8-byte element count and its bytes."""
    stream = io.BytesIO(data)
    if _header_value(stream, source) != LEGACY_MAGIC:
        raise CheckpointError(f"{source}: not a readable torch.save file: invalid magic number (corrupt file?)")
    if _header_value(stream, source) != LEGACY_PROTOCOL:
        raise CheckpointError(f"{source}: not a readable torch.save file: unknown legacy protocol version")
    sys_info = _header_value(stream, source)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise CheckpointError(f"{source}: a big-endian torch.save file; rnninit reads little-endian files only")
    storages: dict[str, StorageRef] = {}
    claimed = [0]

    def persistent_load(pid: Any) -> StorageRef:
        known = len(storages)
        ref = storage_from_id(pid, storages, legacy=True)
        if len(storages) > known:  # a new storage: its bytes must fit in what the file holds
            claimed[0] += 8 + ref.nbytes
            if claimed[0] > len(data):
                raise CheckpointError(f"{source}: not a readable torch.save file (truncated or damaged?): its "
                                      f"storages claim more bytes than the file holds (storage {ref.key})")
        return ref

    builders = builders or Builders()
    root = unpickle(stream, persistent_load, source, builders)
    keys = _header_value(stream, source)
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise CheckpointError(f"{source}: not a readable torch.save file (damaged?): storage keys are malformed")
    position = stream.tell()
    view = memoryview(data)
    found: dict[str, memoryview] = {}
    for key in keys:
        if key not in storages:
            raise CheckpointError(f"{source}: not a readable torch.save file (damaged?): storage {key} is "
                                  "listed but never used")
        if position + 8 > len(data):
            raise CheckpointError(f"{source}: truncated: storage {key} lies past the end of the file")
        (count,) = struct.unpack("<q", data[position:position + 8])
        ref = storages[key]
        nbytes = count * DTYPES[ref.dtype][0]
        if count != ref.numel or position + 8 + nbytes > len(data):
            raise CheckpointError(f"{source}: not a readable torch.save file (truncated or damaged?): storage "
                                  f"{key} holds {count} elements, its reference {ref.numel}")
        found[key] = view[position + 8:position + 8 + nbytes]
        position += 8 + nbytes
    missing = sorted(set(storages) - set(found))
    if missing:
        raise CheckpointError(f"{source}: not a readable torch.save file (damaged?): storage {missing[0]} "
                              "has no data")
    return PickledFile("legacy", root, storages, found, builders=builders)




def read_zip(data: bytes, source: str, builders: Builders | None = None) -> PickledFile:
    """A zip torch.save archive or TorchScript archive held in memory (the whole-load path)."""
    from ..safety import check_zip_records, read_record
    from ..ziplayout import check_storage_record, check_torch_records

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"{source}: not a readable torch.save file (truncated or damaged?): {error}") from None
    with archive:
        check_zip_records(archive, len(data), source)
        names = archive.namelist()
        folder = check_torch_records(names, lambda record: read_record(archive, record), source)
        pickled = read_record(archive, f"{folder}/data.pkl")
        code = read_code(archive, folder)
        storages: dict[str, StorageRef] = {}

        def persistent_load(pid: Any) -> StorageRef:  # checked before a caller's builder allocates anything
            ref = storage_from_id(pid, storages)
            record = f"{folder}/data/{ref.key}"
            stored = archive.getinfo(record).file_size if record in names else None
            check_storage_record(record, ref.nbytes, stored, source)
            return ref

        builders = builders or Builders()
        root = unpickle(pickled, persistent_load, source, builders)
        found = {key: memoryview(read_record(archive, f"{folder}/data/{key}")) for key in storages}
    return PickledFile("torchscript" if code else "zip", root, storages, found, code, builders)



def read_file(data: bytes, source: str, builders: Builders | None = None) -> PickledFile:
    """A whole torch.save file (zip, legacy) or TorchScript archive, from its bytes."""
    if data.startswith(b"PK"):
        return read_zip(data, source, builders)
    return read_legacy(data, source, builders)



def named_tensors(pickled: PickledFile) -> dict[str, Any]:
    """The tensors of a whole file by name: state-dict paths for a TorchScript archive, paths of the
    object graph otherwise ("tensor" for a file that holds one tensor)."""
    from .objects import walk

    leaves = [(path or "tensor", value) for path, value in walk(pickled.root, "")]  # also enforces the limits
    pickled.builders.refuse_hidden(value for _, value in leaves)
    if pickled.kind == "torchscript":
        return dict(script_tensors(pickled.root, pickled.code))
    return {path: value for path, value in leaves if not isinstance(value, (Foreign, _ForeignGlobal))
            and _is_tensor_like(value)}



def _is_tensor_like(value: Any) -> bool:
    if isinstance(value, TensorRef):
        return True
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)



def read_arrays(data: bytes, source: str) -> dict[str, tuple[str, tuple[int, ...], tuple[int, ...], Any]]:
    """name → (dtype name, shape, stride, numpy array) of every tensor of a whole torch.save file or
    TorchScript archive, without torch."""

    from .objects import refuse_broadcast

    pickled = read_file(data, source)
    result = {}
    for name, ref in named_tensors(pickled).items():
        first, stop = tensor_span(ref)
        refuse_broadcast(name, math.prod(ref.shape), stop - first)
        result[name] = (ref.dtype, ref.shape, ref.stride, tensor_array(ref, pickled.storage_bytes[ref.storage.key]))
    return result
