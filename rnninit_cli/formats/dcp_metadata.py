"""A DCP folder's `.metadata`: the pickle of torch.distributed.checkpoint's dataclasses, read by the restricted
unpickler with exactly the classes DCP pickles allowed, as inert records, then checked field by field: dtypes,
sizes, every tensor's chunks tiling it exactly once, every chunk's place in a rank's file."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, UnsafeCheckpointError, first_line
from .unpickle.machine import (
    RestrictedUnpickler,
    dangerous,
    hostile_message,
    too_big_message,
)
from .unpickle.records import DTYPES, DtypeRef, Foreign, HostilePickle, TooBig, key_text

if TYPE_CHECKING:
    pass



METADATA_NAME = ".metadata"



FORMAT = "dcp"



_DCP = "torch.distributed.checkpoint.metadata"



# the classes a FileSystemWriter's .metadata names (torch 2.x), read as inert records; pathlib: StorageMeta's
# checkpoint_id when the folder was given as a Path
METADATA_CLASSES = frozenset(
    {(_DCP, name) for name in ("Metadata", "TensorStorageMetadata", "ChunkStorageMetadata", "BytesStorageMetadata",
                               "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")}
    | {("torch.distributed.checkpoint.filesystem", "_StorageInfo")}
    | {(module, name) for module in ("pathlib", "pathlib._local")
       for name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")})



# torch values it names, built by the restricted unpickler's own builders (dtype records, tuples)
_TORCH_VALUES = frozenset({("torch", "Size"), ("torch.serialization", "_get_layout")}
                          | {("torch", name) for name in DTYPES})



class _NotMetadata(Exception):
    """The pickle names a global (the argument) that no DCP .metadata names."""



def _no_storage(pid: Any) -> Any:
    raise CheckpointError("it refers to a tensor storage, which no DCP .metadata does")



class _MetadataUnpickler(RestrictedUnpickler):
    """The restricted unpickler, allowing exactly the globals of a DCP .metadata: anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in METADATA_CLASSES or (module, name) in _TORCH_VALUES:
            return super().find_class(module, name)  # DCP classes become inert records, torch values records
        if dangerous(module, name):
            raise HostilePickle(f"{module}.{name}")
        raise _NotMetadata(f"{module}.{name}")



@dataclass(frozen=True)
class Chunk:
    """One stored piece of a tensor: its place in the full tensor, and the byte range of its nested archive."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str  # relative to the folder
    start: int
    length: int
    transforms: tuple[str, ...] = ()  # DCP stream transforms (compression...) it was written through

    @property
    def region(self) -> tuple[slice, ...]:
        return tuple(slice(offset, offset + size) for offset, size in zip(self.offsets, self.sizes, strict=True))

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)



@dataclass(frozen=True)
class DcpTensor:
    """A tensor entry of the state dict: dtype, full shape, and its chunks."""

    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[Chunk, ...]



@dataclass(frozen=True)
class DcpObject:
    """A bytes entry (any other object, torch.save'd): where it lies; never read."""

    file: str
    start: int
    length: int



@dataclass
class DcpLayout:
    """What `.metadata` says, checked."""

    # keyed by each entry's path in the saved (nested) state dict, keys joined by "/" as the .pt reader names them
    # ({"model": {"lstm.weight_ih_l0": ...}} → "model/lstm.weight_ih_l0", also in torch's dcp_to_torch_save .pt);
    # an entry the planner did not map keeps DCP's flattened name
    tensors: dict[str, DcpTensor]
    objects: dict[str, DcpObject]
    planner_paths: dict[str, tuple[Any, ...]]  # flattened name → path in the saved (nested) state dict
    version: str | None = None

    def files(self) -> set[str]:
        return {chunk.file for tensor in self.tensors.values() for chunk in tensor.chunks} | \
            {item.file for item in self.objects.values()}

    def optimizer_prefixes(self) -> list[str]:
        """Names of the saved optimizer state dicts, from the planner's paths: {"state", "param_groups"} (torch's,
        also keyed by parameter names as `get_optimizer_state_dict` saves them) or {"state", "hypers"} (fastai's);
        and of each "state" that holds only parameter ids (numbers) with their buffers (a hand-rolled optimizer's)."""
        children: set[tuple[tuple[Any, ...], Any]] = set()
        by_id: dict[tuple[Any, ...], bool] = {}
        for path in self.planner_paths.values():
            children.update((path[:index], key) for index, key in enumerate(path))
            for index, key in enumerate(path):
                if key == "state":
                    # DCP keeps an int key as its text
                    buffer = len(path) == index + 3 and str(path[index + 1]).isdigit()
                    by_id[path[:index + 1]] = by_id.get(path[:index + 1], True) and buffer
        found = {prefix for prefix, key in children if key == "state" and (
            (prefix, "param_groups") in children or (prefix, "hypers") in children)}
        found |= {prefix for prefix, only_ids in by_id.items() if only_ids and prefix[:-1] not in found}
        return sorted("/".join(map(key_text, prefix)) for prefix in found)



class _Damaged(Exception):
    """A field of .metadata that is not what DCP writes (the message says which)."""



def _state(value: Any, class_name: str, what: str) -> Any:
    """The state of an inert record of DCP class `class_name` (what the pickle's BUILD gave it)."""
    if not isinstance(value, Foreign) or value.qualified != class_name:
        raise _Damaged(f"{what} is not a {class_name.rsplit('.', 1)[-1]}")
    state = value.state
    if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)) \
            and isinstance(state[1], dict):
        state = {**(state[0] or {}), **state[1]}  # (__dict__, slots)
    return state



def _attributes(value: Any, class_name: str, what: str) -> dict[str, Any]:
    state = _state(value, f"{_DCP}.{class_name}" if "." not in class_name else class_name, what)
    if state is None:
        return {}
    if not isinstance(state, dict):
        raise _Damaged(f"{what} has no attributes")
    return state



def _int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise _Damaged(f"{what} is not a non-negative integer")
    return value



def _dims(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise _Damaged(f"{what} is not a tuple of integers")
    return tuple(_int(item, what) for item in value)



def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Damaged(f"{what} is not a string")
    return value



def _dtype(properties: Any, what: str) -> str:
    state = _state(properties, f"{_DCP}.TensorProperties", f"{what}'s properties")
    if isinstance(state, tuple) and len(state) == 5:  # TensorProperties.__getstate__: (dtype, layout, ...)
        dtype, layout = state[0], state[1]
    elif isinstance(state, dict):  # older torch: the dataclass' attributes
        dtype, layout = state.get("dtype"), state.get("layout", DtypeRef("strided"))
    else:
        raise _Damaged(f"{what}'s properties are malformed")
    if not isinstance(dtype, DtypeRef) or dtype.name not in DTYPES:
        raise _Damaged(f"{what}'s dtype is not a torch dtype")
    if not isinstance(layout, DtypeRef) or layout.name != "strided":
        raise _Damaged(f"{what} is not a strided (dense) tensor")
    return dtype.name



_Place = tuple[str, int, int, tuple[str, ...]]  # file, start, length, transforms



TILING_CORNER_LIMIT = 1 << 22  # corners of one tensor's chunks the tiling check sorts (chunks x 2^split dimensions)



def _storage_index(storage_data: Any) -> dict[tuple[str, tuple[int, ...] | None], _Place]:
    """(name, chunk offsets or None for a bytes entry) → where it lies."""
    if not isinstance(storage_data, dict):
        raise _Damaged("storage_data is not a dict")
    found: dict[tuple[str, tuple[int, ...] | None], _Place] = {}
    for key, value in storage_data.items():
        index = _attributes(key, "MetadataIndex", "a storage_data key")
        name = _text(index.get("fqn"), "a storage_data key's name")
        offset = index.get("offset")
        where = f"the storage of {name!r}"
        place = None if offset is None else _dims(offset, f"{where}'s offset")
        info = _attributes(value, "torch.distributed.checkpoint.filesystem._StorageInfo", where)
        transforms = info.get("transform_descriptors") or ()
        if not isinstance(transforms, (list, tuple)) or not all(isinstance(item, str) for item in transforms):
            raise _Damaged(f"{where}'s transform descriptors are not strings")
        if (name, place) in found:
            raise _Damaged(f"{where} is listed twice")
        found[(name, place)] = (_normal_file_name(_text(info.get("relative_path"), f"{where}'s file")),
                                _int(info.get("offset"), f"{where}'s offset"),
                                _int(info.get("length"), f"{where}'s length"), tuple(transforms))
    return found



def _normal_file_name(name: str) -> str:
    """One spelling per file ("./__0_0.distcp" and "__0_0.distcp" are the same file, and their byte ranges must
    meet in the overlap check): "." parts and repeated "/" dropped. Names that are not plain relative paths are
    kept as written, to be refused by _refuse_escaping."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or "\0" in name or ".." in name.split("/"):
        return name
    normal = "/".join(part for part in name.split("/") if part not in ("", "."))
    return normal or name



def _check_tiling(name: str, shape: tuple[int, ...], chunks: list[Chunk]) -> None:
    """The chunks lie inside the tensor, do not overlap and cover it: every element is stored exactly once.

    By signed corners, in O(n log n) time and O(n) memory for n chunks: a box's indicator is the signed sum of the
    orthants {x >= v} at its 2^d corners v (+ where v takes an even number of upper bounds, - an odd one), and
    orthants at distinct corners are linearly independent, so the chunks' indicators add up to the tensor's
    exactly when their corners' signed counts add up to the tensor's own corners'. Only the d dimensions the tensor
    is split along count (a dimension every chunk spans whole changes nothing)."""
    import numpy as np

    for chunk in chunks:
        if len(chunk.offsets) != len(shape) or len(chunk.sizes) != len(shape) or any(
                offset + size > dim for offset, size, dim in zip(chunk.offsets, chunk.sizes, shape, strict=True)):
            raise _Damaged(f"a chunk of {name!r} (offsets {list(chunk.offsets)}, sizes {list(chunk.sizes)}) lies "
                           f"outside its shape {list(shape)}")
    if sum(chunk.numel for chunk in chunks) != math.prod(shape):
        raise _Damaged(f"the chunks of {name!r} hold {sum(chunk.numel for chunk in chunks)} elements, its shape "
                       f"{list(shape)} {math.prod(shape)}")
    boxes = [chunk for chunk in chunks if chunk.numel]
    if len(boxes) < 2:  # inside, and as many elements as the tensor: the whole tensor, or nothing of an empty one
        return
    split = [dim for dim in range(len(shape)) if any(box.offsets[dim] or box.sizes[dim] != shape[dim]
                                                     for box in boxes)]
    if not split:  # several chunks, each the whole tensor (the count above already refuses it)
        raise _Damaged(f"two chunks of {name!r} overlap")
    if len(boxes) << len(split) > TILING_CORNER_LIMIT:
        raise _Damaged(f"{name!r} is split into {len(boxes)} chunks along {len(split)} dimensions: more corners "
                       f"than the {TILING_CORNER_LIMIT} rnninit checks")
    if max(shape[dim] for dim in split) >= 1 << 62:
        raise _Damaged(f"{name!r} declares a dimension of {max(shape[dim] for dim in split)} elements")
    starts = np.array([[box.offsets[dim] for dim in split] for box in boxes], dtype=np.int64)
    stops = starts + np.array([[box.sizes[dim] for dim in split] for box in boxes], dtype=np.int64)
    upper = (np.arange(1 << len(split))[:, None] >> np.arange(len(split))[None, :]) & 1 == 1  # [corner, dim]
    signs = np.where(upper.sum(axis=1) % 2 == 1, -1, 1).astype(np.int64)
    found = _signed_corners(np.where(upper[None], stops[:, None, :], starts[:, None, :]).reshape(-1, len(split)),
                            np.tile(signs, len(boxes)))
    full = np.array([shape[dim] for dim in split], dtype=np.int64)
    expected = _signed_corners(np.where(upper, full[None, :], 0), signs)
    if not all(np.array_equal(mine, theirs) for mine, theirs in zip(found, expected, strict=True)):
        # inside the tensor and as many elements as it holds, but not each element once: some twice
        raise _Damaged(f"two chunks of {name!r} overlap")



def _signed_corners(corners: Any, signs: Any) -> tuple[Any, Any]:
    """The distinct corners (rows, sorted) whose signs do not cancel, and their summed signs."""
    import numpy as np

    order = np.lexsort(corners.T[::-1])
    corners, signs = corners[order], signs[order]
    first = np.flatnonzero(np.concatenate([[True], np.any(corners[1:] != corners[:-1], axis=1)]))
    sums = np.add.reduceat(signs, first)
    kept = sums != 0
    return corners[first][kept], sums[kept]



def _layout(root: Any) -> DcpLayout:
    metadata = _attributes(root, "Metadata", "the pickled object")
    entries = metadata.get("state_dict_metadata")
    if not isinstance(entries, dict):
        raise _Damaged("state_dict_metadata is not a dict")
    stored = _storage_index(metadata.get("storage_data"))
    tensors: dict[str, DcpTensor] = {}
    objects: dict[str, DcpObject] = {}
    for name, entry in entries.items():
        name = _text(name, "a state-dict name")
        if isinstance(entry, Foreign) and entry.qualified == f"{_DCP}.BytesStorageMetadata":
            place = stored.get((name, None))
            if place is None:
                raise _Damaged(f"the bytes entry {name!r} has no storage")
            objects[name] = DcpObject(*place[:3])
            continue
        attributes = _attributes(entry, "TensorStorageMetadata", f"the entry of {name!r}")
        shape = _dims(attributes.get("size"), f"the size of {name!r}")
        dtype = _dtype(attributes.get("properties"), repr(name))
        listed = attributes.get("chunks")
        if not isinstance(listed, list):
            raise _Damaged(f"the chunks of {name!r} are not a list")
        chunks = []
        for item in listed:
            chunk = _attributes(item, "ChunkStorageMetadata", f"a chunk of {name!r}")
            offsets = _dims(chunk.get("offsets"), f"a chunk offset of {name!r}")
            sizes = _dims(chunk.get("sizes"), f"a chunk size of {name!r}")
            place = stored.get((name, offsets))
            if place is None:
                raise _Damaged(f"the chunk of {name!r} at {list(offsets)} has no storage")
            chunks.append(Chunk(offsets, sizes, *place))
        _check_tiling(name, shape, chunks)
        tensors[name] = DcpTensor(dtype, shape, tuple(chunks))
    version = metadata.get("version")
    paths = _planner_paths(metadata.get("planner_data"))
    names = _nested_names([*tensors, *objects], paths)
    return DcpLayout({names[name]: tensor for name, tensor in tensors.items()},
                     {names[name]: item for name, item in objects.items()}, paths,
                     version if isinstance(version, str) else None)



def _planner_paths(planner_data: Any) -> dict[str, tuple[Any, ...]]:
    """The default planner's flattening map (name → path of keys); {} for anything else (a custom planner's, or
    one whose paths do not flatten to their names as DCP flattens them: keys joined by ".")."""
    if not isinstance(planner_data, dict):
        return {}
    paths = {}
    for name, path in planner_data.items():
        if not isinstance(name, str) or not isinstance(path, tuple) or not path or \
                not all(type(key) in (str, int) for key in path) or ".".join(map(key_text, path)) != name:
            return {}
        paths[name] = path
    return paths



def _nested_names(flattened: list[str], paths: dict[str, tuple[Any, ...]]) -> dict[str, str]:
    """DCP's flattened name → the entry's name in rnninit: its path in the saved state dict, keys joined by "/"
    (what the .pt reader calls the same entry of torch's dcp_to_torch_save .pt, so that names, seeded draws and
    diff agree); the flattened name where the planner's map has no path."""
    names: dict[str, str] = {}
    taken: dict[str, str] = {}
    for name in flattened:
        path = paths.get(name)
        nested = name if path is None else "/".join(map(key_text, path))
        if nested in taken:
            raise _Damaged(f"the entries {taken[nested]!r} and {name!r} are both named {nested!r} in the saved "
                           "state dict")
        taken[nested] = name
        names[name] = nested
    return names



def read_metadata(data: bytes, source: str) -> DcpLayout:
    """A DCP `.metadata` pickle read by the restricted unpickler, allowing exactly DCP's classes; nothing in it
    is imported or run. UnsafeCheckpointError for known-dangerous globals, CheckpointError for anything else
    that is not what DCP writes."""
    try:
        root = _MetadataUnpickler(data, _no_storage).load()
        return _layout(root)
    except HostilePickle as error:
        raise UnsafeCheckpointError(hostile_message(source, str(error))) from None
    except _NotMetadata as error:
        raise UnsafeCheckpointError(f"{source}: it names {error}, which no torch.distributed.checkpoint metadata "
                                    "holds; refused (nothing in it was imported or run)") from None
    except TooBig as error:
        raise CheckpointError(too_big_message(source, int(str(error)))) from None
    except _Damaged as error:
        raise CheckpointError(f"{source}: not torch.distributed.checkpoint metadata as rnninit knows it: "
                              f"{error}") from None
    except MemoryError:
        raise
    except RecursionError:
        raise CheckpointError(f"{source}: not a readable torch.distributed.checkpoint metadata file (damaged?): "
                              "its pickle nests too deeply") from None
    except Exception as error:  # DamagedPickle, and pickle's own errors on a truncated or malformed stream
        raise CheckpointError(f"{source}: not a readable torch.distributed.checkpoint metadata file (truncated "
                              f"or damaged?): {first_line(str(error)) or type(error).__name__}") from None
