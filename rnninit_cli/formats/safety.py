"""What a file may make rnninit do: limits checked before anything is loaded or allocated.

- `validate_safetensors_header`: one header validator for every path, exactly as strict as the official
  `safetensors` library (its JSON parser included), so that rnninit accepts what `safetensors` loads and
  nothing else.
- `check_zip_records`: no zip record is decompressed beyond a small bound (zip bombs), tensor records
  are stored as `torch.save` writes them.
- `read_stdin`: standard input is recognised from its first bytes and read with a bound.
- `MAX_NESTING`, `max_entries`: the bounds of the checkpoint's object graph (see `unpickle.objects.walk`);
  `pickle_budget`: the bound on the objects unpickling builds (see `unpickle.machine.RestrictedUnpickler`).
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
import zipfile
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..errors import CheckpointError
from .ziplayout import check_zip_layout

# --- limits (README "Safety" documents them) ---------------------------------------------------------

MAX_SAFETENSORS_HEADER = 100_000_000  # the official library's MAX_HEADER_SIZE
MAX_NESTING = 500  # containers within containers; Python's own recursion limit (pickling, printing) is 1000
MAX_ENTRIES_VARIABLE = "RNNINIT_MAX_ENTRIES"
DEFAULT_MAX_ENTRIES = 5_000_000  # leaves and containers of one checkpoint's object graph
STDIN_LIMIT_VARIABLE = "RNNINIT_STDIN_LIMIT"
DEFAULT_STDIN_LIMIT = 4 << 30
SMALL_RECORD_LIMIT = 64 << 10  # byteorder, version, serialization_id, rnninit.json... (rnninit's is 4 KiB)
PICKLE_RECORD_LIMIT = 64 << 20  # data.pkl: ~200 bytes a tensor, so about 300,000 tensors
CODE_RECORD_LIMIT = 16 << 20  # a TorchScript archive's code/ record (source or debug pickle), each
SMALL_RECORDS = frozenset({"byteorder", "version", ".data/version", ".data/serialization_id", ".format_version",
                           ".storage_alignment", "rnninit.json"})  # a torch.save archive's records besides data

_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _limit_from_environment(variable: str, default: int) -> int:
    value = os.environ.get(variable, "").strip().upper().removesuffix("B").removesuffix("I")
    if not value:
        return default
    found = re.fullmatch(r"(\d+)([KMGT]?)", value)
    if not found:
        raise CheckpointError(f"{variable}={os.environ[variable]!r} is not a size (e.g. 8G, 500M, 1000000)")
    return int(found.group(1)) * _SIZE_SUFFIXES[found.group(2)]


def max_entries() -> int:
    """How many leaves and containers a checkpoint may hold (RNNINIT_MAX_ENTRIES overrides it)."""
    return _limit_from_environment(MAX_ENTRIES_VARIABLE, DEFAULT_MAX_ENTRIES)


PICKLE_BUDGET_PER_ENTRY = 4  # units of about 16 bytes of built objects per entry RNNINIT_MAX_ENTRIES allows
PICKLE_BUDGET_FLOOR = 1 << 20  # units any file may spend (16 MiB of objects: ~20,000 tensors at ~50 units each)


def pickle_budget() -> int:
    """How many units (about 16 bytes of built objects each) unpickling a checkpoint may spend: a bound on
    memory, not a count of entries (`max_entries` counts those): 4 per entry RNNINIT_MAX_ENTRIES allows
    (20,000,000 by default) plus a floor, so that a small limit still reads a file of that many tensors."""
    return PICKLE_BUDGET_PER_ENTRY * max_entries() + PICKLE_BUDGET_FLOOR


def stdin_limit() -> int:
    """How many bytes standard input may hold (RNNINIT_STDIN_LIMIT overrides it, e.g. 16G)."""
    return _limit_from_environment(STDIN_LIMIT_VARIABLE, DEFAULT_STDIN_LIMIT)


# --- safetensors headers -----------------------------------------------------------------------------

SAFETENSORS_BITS = {  # every dtype code of the safetensors format → bits per element
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
    "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
# the codes `safetensors.torch.load` reads → torch dtype names (rnninit's writer knows fewer: SAFETENSORS_DTYPES)
SAFETENSORS_TORCH_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2": "float8_e5m2", "F8_E5M2FNUZ": "float8_e5m2fnuz", "C64": "complex64",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "F8_E8M0": "float8_e8m0fnu",
}
_U64 = 1 << 64
_JSON_DEPTH = 127  # serde_json's recursion limit (128) counts the containers' levels from 1
_SURROGATE = re.compile("[\ud800-\udfff]")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


@dataclass(frozen=True)
class SafetensorsEntry:
    dtype: str  # safetensors code, e.g. "F32"
    shape: tuple[int, ...]
    begin: int  # [begin, end) in the data section
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: tensors in header order (a repeated name keeps its last entry, as the library)."""

    metadata: dict[str, str] | None
    entries: dict[str, SafetensorsEntry]
    header_size: int  # bytes after the 8-byte length
    data_size: int

    @property
    def data_start(self) -> int:
        return 8 + self.header_size

    def as_json(self) -> dict[str, Any]:
        """The header as the library reads it (normalized: extra fields and sequence forms dropped)."""
        header: dict[str, Any] = {} if self.metadata is None else {"__metadata__": dict(self.metadata)}
        for name, entry in self.entries.items():
            header[name] = {"dtype": entry.dtype, "shape": list(entry.shape), "data_offsets": [entry.begin, entry.end]}
        return header


class _Number:
    """A JSON number as written (the library's parser tells 1 from 1.0 and -0 from 0)."""

    __slots__ = ("integer", "text")

    def __init__(self, text: str, integer: bool) -> None:
        self.text = text
        self.integer = integer


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object as its (key, value) pairs, duplicates kept."""


class _Refused(ValueError):
    pass


def _refuse_constant(text: str) -> Any:
    raise _Refused(f"{text} is not JSON")


def safetensors_header_size(prefix: bytes, size: int, name: str) -> int:
    """The header length from a file's first 8 bytes, refused when the library would refuse it."""
    if len(prefix) < 8:
        raise CheckpointError(f"{name}: damaged safetensors file: shorter than its 8-byte header length")
    (header_size,) = struct.unpack("<Q", prefix[:8])
    if header_size > MAX_SAFETENSORS_HEADER:
        raise CheckpointError(f"{name}: damaged safetensors header: it claims {header_size} bytes, more than "
                              f"the {MAX_SAFETENSORS_HEADER} the format allows")
    if 8 + header_size > size:
        raise CheckpointError(f"{name}: safetensors header claims {header_size} bytes but the file has only "
                              f"{size}: truncated or damaged")
    return header_size


def validate_safetensors_header(raw: bytes, file_size: int | None, name: str, *,
                                loadable: Collection[str] | None = None) -> SafetensorsHeader:
    """Parse and check the header bytes `raw` (after the 8-byte length) of a `file_size`-byte file exactly as
    the official library does (`safetensors.torch.load` / `safe_open`): CheckpointError where it refuses.

    `file_size=None` checks everything but the file's length (standard input, before its data is read).
    `loadable`: the dtype codes this torch can hold (default: rnninit's table); others are refused."""

    def damaged(why: str) -> CheckpointError:
        return CheckpointError(f"{name}: damaged safetensors header: {why}")

    if len(raw) > MAX_SAFETENSORS_HEADER:
        raise damaged(f"{len(raw)} bytes, more than the {MAX_SAFETENSORS_HEADER} the format allows")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise damaged(f"not UTF-8 ({error.reason} at byte {error.start})") from None
    if _json_depth(raw) > _JSON_DEPTH:
        raise damaged(f"JSON nested deeper than {_JSON_DEPTH} levels")
    try:
        parsed = json.loads(text, object_pairs_hook=_Pairs, parse_int=lambda s: _Number(s, True),
                            parse_float=lambda s: _Number(s, False), parse_constant=_refuse_constant)
    except (_Refused, json.JSONDecodeError) as error:
        raise damaged(f"not valid JSON: {error}") from None
    problem = _json_problem(parsed)
    if problem:
        raise damaged(problem)
    if not isinstance(parsed, _Pairs):
        raise damaged("not a JSON object")

    metadata: dict[str, str] | None = None
    seen_metadata = False
    entries: dict[str, SafetensorsEntry] = {}
    for key, value in parsed:
        if key == "__metadata__":
            if seen_metadata:
                raise damaged("__metadata__ appears twice")
            seen_metadata = True
            if value is None:
                continue
            if not isinstance(value, _Pairs) or not all(isinstance(item, str) for _, item in value):
                raise damaged("__metadata__ is not a str → str map")
            metadata = dict(value)
            continue
        entries[key] = _tensor_entry(key, value, damaged)

    if loadable is None:
        loadable = _loadable_codes()
    data_size = _check_offsets(entries, damaged)
    if file_size is not None and 8 + len(raw) + data_size != file_size:
        raise CheckpointError(f"{name}: damaged safetensors file: its data section has "
                              f"{file_size - 8 - len(raw)} bytes, its tensors {data_size} (truncated or damaged?)")
    for key, entry in entries.items():
        if entry.dtype not in loadable:
            raise damaged(f"{key!r} has dtype {entry.dtype}, which torch cannot hold here")
        if any(dim >= 1 << 63 for dim in entry.shape):
            raise damaged(f"{key!r} has a dimension of 2**63 or more")
    _check_empty_shapes(entries, damaged)
    return SafetensorsHeader(metadata, entries, len(raw), data_size)


def _json_depth(raw: bytes) -> int:
    """How deeply arrays and objects nest in the JSON text `raw` (strings skipped)."""
    import numpy as np

    brackets = re.sub(rb"[^\[\]{}]", b"", _STRING.sub(b"", raw))
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def _json_problem(root: Any) -> str | None:
    """What the library's parser refuses that Python's accepts: lone surrogates, numbers beyond float."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, _Pairs):
            for key, value in node:
                if _SURROGATE.search(key):
                    return f"the key {key!r} holds a lone surrogate"
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str):
            if _SURROGATE.search(node):
                return f"the string {node!r} holds a lone surrogate"
        elif isinstance(node, _Number) and float(node.text) in (float("inf"), float("-inf")):
            return f"the number {node.text[:40]} is out of range"
    return None


def _usize(value: Any) -> int | None:
    if not isinstance(value, _Number) or not value.integer or value.text.startswith("-") or len(value.text) > 20:
        return None
    number = int(value.text)
    return number if number < _U64 else None


def _tensor_entry(key: str, value: Any, damaged: Any) -> SafetensorsEntry:
    """A tensor's entry: {"dtype", "shape", "data_offsets"} (other fields ignored) or the sequence form
    [dtype, shape, data_offsets] that the library's deserializer also takes."""
    if isinstance(value, _Pairs):
        fields: dict[str, Any] = {}
        for field_name, item in value:
            if field_name in ("dtype", "shape", "data_offsets"):
                if field_name in fields:
                    raise damaged(f"{key!r} has two {field_name} fields")
                fields[field_name] = item
        if len(fields) != 3:
            missing = sorted({"dtype", "shape", "data_offsets"} - set(fields))
            raise damaged(f"{key!r} has no {missing[0]}")
        dtype, shape, offsets = fields["dtype"], fields["shape"], fields["data_offsets"]
    elif isinstance(value, list) and len(value) == 3:
        dtype, shape, offsets = value
    else:
        raise damaged(f"bad entry for {key!r}: not a tensor description")
    if isinstance(dtype, _Pairs) and len(dtype) == 1 and dtype[0][1] is None:
        dtype = dtype[0][0]  # serde's map form of an enum variant: {"F32": null}
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_BITS:
        raise damaged(f"{key!r} has an unknown dtype {dtype if isinstance(dtype, str) else type(dtype).__name__}")
    if not isinstance(shape, list) or isinstance(shape, _Pairs):
        raise damaged(f"{key!r} has a shape that is not a list")
    dims = [_usize(dim) for dim in shape]
    if None in dims:
        raise damaged(f"{key!r} has a shape that is not a list of non-negative integers")
    if not isinstance(offsets, list) or isinstance(offsets, _Pairs) or len(offsets) != 2:
        raise damaged(f"{key!r} has data_offsets that are not two integers")
    begin, end = _usize(offsets[0]), _usize(offsets[1])
    if begin is None or end is None:
        raise damaged(f"{key!r} has data_offsets that are not two non-negative integers")
    return SafetensorsEntry(dtype, tuple(dims), begin, end)  # type: ignore[arg-type]


def _check_offsets(entries: dict[str, SafetensorsEntry], damaged: Any) -> int:
    """The library's coverage rule: sorted by offsets, each tensor starts where the previous one ended, and
    holds exactly its shape's bytes (counted in 64 bits, as the library does). Returns the data size."""
    covered = 0
    for key, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != covered or entry.end < entry.begin:
            if entry.begin < covered:
                raise damaged(f"{key!r} overlaps the tensor before it (offsets [{entry.begin}, {entry.end}))")
            raise damaged(f"bytes [{covered}, {entry.begin}) before {key!r} belong to no tensor"
                          if entry.end >= entry.begin else f"{key!r} has offsets [{entry.begin}, {entry.end})")
        covered = entry.end
        elements = 1
        for dim in entry.shape:
            elements *= dim
            if elements >= _U64:
                raise damaged(f"{key!r} has a shape whose size overflows")
        bits = elements * SAFETENSORS_BITS[entry.dtype]
        if bits >= _U64:
            raise damaged(f"{key!r} has a shape whose size overflows")
        if bits % 8:
            raise damaged(f"{key!r} does not fill whole bytes")
        if entry.end - entry.begin != bits // 8:
            raise damaged(f"{key!r} has offsets [{entry.begin}, {entry.end}) that do not fit its shape "
                          f"{list(entry.shape)} of {entry.dtype}")
    return covered


def _check_empty_shapes(entries: dict[str, SafetensorsEntry], damaged: Any) -> None:
    """A tensor without elements may still have a shape torch cannot make (sizes that overflow its 64-bit
    arithmetic); `safetensors.torch.load` fails on those."""
    for key, entry in entries.items():
        if entry.begin == entry.end and entry.shape and 0 in entry.shape and not _torch_can_make(entry.shape):
            raise damaged(f"{key!r} has a shape {list(entry.shape)} that torch cannot make")


def _torch_can_make(shape: tuple[int, ...]) -> bool:
    """Whether torch.empty(shape) works, by torch's own arithmetic, without torch: the element count multiplied
    left to right in unsigned 64 bits (an overflow before a 0 still counts) must fit in int64, and so must every
    contiguous stride (the product of the later sizes, 0 counted as 1). The byte count cannot overflow then: a
    shape that reaches here holds a 0, so it has no elements."""
    count, overflowed = 1, False
    for size in shape:
        count *= size
        if count >= _U64:
            overflowed, count = True, count % _U64
    if overflowed or count >= 1 << 63:
        return False
    stride = 1
    for size in reversed(shape[1:]):
        stride *= max(size, 1)
        if stride >= 1 << 63:
            return False
    return True


def _loadable_codes() -> set[str]:
    """The safetensors dtype codes this process can hold: those of the torch it has loaded (apply, new), else
    (reading without torch) all of them: numpy holds each, bfloat16 as its bits (rnninit_cli/bfloat16.py), with
    ml_dtypes (>= 0.3) for float8."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return {code for code, dtype in SAFETENSORS_TORCH_DTYPES.items() if hasattr(torch, dtype)}
    return set(SAFETENSORS_TORCH_DTYPES)


# --- zip archives ------------------------------------------------------------------------------------


def check_zip_records(archive: zipfile.ZipFile, size: int, name: str) -> None:
    """Refuse an archive that would make torch.load or zipfile decompress more than a small bound: tensor
    records (`*/data/*`) must be stored, as torch.save writes them; other compressed records must declare
    a small size (data.pkl: PICKLE_RECORD_LIMIT), and the readers stop at the declared size. Only the
    central directory is read."""
    check_zip_layout(archive, size, name)
    for info in archive.infolist():
        record = info.filename
        parts = record.split("/")
        if info.header_offset + info.compress_size > size:
            raise CheckpointError(f"{name}: not a readable torch.save file (damaged?): zip record {record} "
                                  "lies past the end of the file")
        is_pickle = len(parts) == 2 and parts[1] == "data.pkl"
        if "/".join(parts[1:]) in SMALL_RECORDS and info.file_size > SMALL_RECORD_LIMIT:
            raise CheckpointError(f"{name}: zip record {record} declares {info.file_size} bytes, more than the "
                                  f"{SMALL_RECORD_LIMIT} such a record may hold; refused (zip bomb?)")
        if is_pickle and info.file_size > PICKLE_RECORD_LIMIT:
            raise CheckpointError(f"{name}: zip record {record} declares {info.file_size} bytes, more than the "
                                  f"{PICKLE_RECORD_LIMIT} rnninit reads in a data.pkl; refused")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != info.file_size:
                raise CheckpointError(f"{name}: not a readable torch.save file (damaged?): stored zip record "
                                      f"{record} has two sizes")
            continue
        if len(parts) >= 3 and parts[1] == "data":
            raise CheckpointError(f"{name}: zip record {record} is compressed; torch.save stores tensor data "
                                  "uncompressed, so this archive was rewritten: refused (a zip bomb is possible)")
        if info.compress_type != zipfile.ZIP_DEFLATED:
            raise CheckpointError(f"{name}: zip record {record} uses a compression torch.load cannot read")
        if len(parts) >= 3 and parts[1] == "code" and info.file_size <= CODE_RECORD_LIMIT:
            continue  # a TorchScript archive's source and debug records (torch.jit.save compresses them)
        if not is_pickle and info.file_size > SMALL_RECORD_LIMIT:
            raise CheckpointError(f"{name}: compressed zip record {record} declares {info.file_size} bytes, more "
                                  f"than the {SMALL_RECORD_LIMIT} such a record may hold; refused (zip bomb?)")


def read_record(archive: zipfile.ZipFile, record: str) -> bytes:
    """A record's bytes, decompressing no further than its declared size (checked by check_zip_records);
    zipfile checks its CRC-32 at the end."""
    info = archive.getinfo(record)
    with archive.open(info) as stream:
        data = stream.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise CheckpointError(f"zip record {record} holds {len(data)} bytes, not the {info.file_size} it declares")
    return data


# --- standard input ----------------------------------------------------------------------------------


_CHUNK = 1 << 20


def _read_exactly(stream: BinaryIO, count: int) -> bytes:
    parts = []
    while count > 0:
        chunk = stream.read(min(count, 16 * _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        count -= len(chunk)
    return b"".join(parts)


def read_stdin(stream: BinaryIO | None = None) -> bytes:
    """Standard input, read no further than a checkpoint can reach: a .safetensors exactly (8 bytes, its
    header, its data; trailing bytes refused), a torch.save zip or pickle up to `stdin_limit()` bytes.
    Anything that does not start like a checkpoint is refused after its first bytes."""
    try:
        return _read_stdin(sys.stdin.buffer if stream is None else stream)
    except CheckpointError as error:
        text = str(error)
        raise CheckpointError(text if text.startswith("-: ") else f"-: {text}") from None


def _read_stdin(stream: BinaryIO) -> bytes:
    try:
        head = _read_exactly(stream, 16)
        if not head:
            raise CheckpointError("the file is empty")
        if len(head) >= 9 and head[8:9] in b"{ \t\r\n" and not head.startswith(b"PK\x03\x04"):
            (header_size,) = struct.unpack("<Q", head[:8])
            if header_size <= MAX_SAFETENSORS_HEADER or head[:1] != b"\x80":
                return _read_safetensors_stdin(stream, head, header_size)
        if not (head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05")):
            raise CheckpointError("not a checkpoint: neither a torch.save file nor a .safetensors file")
        limit = stdin_limit()
        parts = [head]
        total = len(head)
        while True:
            chunk = stream.read(16 * _CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise CheckpointError(f"standard input holds more than {limit} bytes (the limit for a torch.save "
                                      f"stream); pass the file by name, or raise {STDIN_LIMIT_VARIABLE}")
            parts.append(chunk)
        return b"".join(parts)
    except MemoryError:
        raise CheckpointError("standard input does not fit in memory; pass the file by name") from None


def _read_safetensors_stdin(stream: BinaryIO, head: bytes, header_size: int) -> bytes:
    if header_size > MAX_SAFETENSORS_HEADER:
        raise CheckpointError(f"damaged safetensors header: it claims {header_size} bytes, more than the "
                              f"{MAX_SAFETENSORS_HEADER} the format allows")
    raw = head[8:] + _read_exactly(stream, header_size - (len(head) - 8))
    if len(raw) < header_size:
        raise CheckpointError(f"safetensors header claims {header_size} bytes but standard input ended after "
                              f"{len(raw)}: truncated")
    data_size = validate_safetensors_header(raw[:header_size], None, "-").data_size
    data = _read_exactly(stream, data_size - (len(raw) - header_size))
    body = raw + data
    if len(body) < header_size + data_size:
        raise CheckpointError(f"standard input ended after {8 + len(body)} bytes of a {8 + header_size + data_size}"
                              "-byte safetensors file: truncated")
    if stream.read(1):
        raise CheckpointError("standard input goes on after the safetensors file's last tensor: trailing bytes")
    return head[:8] + body
