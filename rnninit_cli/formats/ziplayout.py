"""One zip truth: refuse an archive that torch's reader (miniz, in `PyTorchFileReader`) and Python's `zipfile`
could read differently.

The two readers agree on an archive laid out as `torch.save` writes it: an end-of-central-directory record
(zip64 or not) at the very end with no comment, the central directory right before it, and each record's local
header, name, method and sizes as the central directory states them, the records one after another without
overlap. Where a file departs from that, they part ways:
- a name twice (miniz compares names ASCII-case-insensitively and finds either copy; `zipfile` takes the last);
- bytes before the archive (`zipfile` shifts every offset by them; torch does not);
- an entry count that disagrees with the central directory's size (miniz reads the count, `zipfile` the size);
- a local header that names, compresses or sizes its record otherwise than the central directory;
- records that overlap each other or the central directory.
Each is refused here, for every command, before any record is read. torch's reader also takes the archive's
folder from the first record's name and needs a readable version record: `archive_folder` and `check_version`.
"""

from __future__ import annotations

import re
import struct
import zipfile
from collections.abc import Callable
from itertools import pairwise
from typing import BinaryIO

from ..errors import CheckpointError

_END = struct.Struct("<4sHHHHIIH")  # end of central directory, 22 bytes
_LOCATOR = struct.Struct("<4sIQI")  # zip64 end of central directory locator, 20 bytes
_END64 = struct.Struct("<4sQHHIIQQQQ")  # zip64 end of central directory record, 56 bytes
_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # local file header, 30 bytes
MIN_VERSION, MAX_VERSION = 1, 10  # the file format versions torch 2.13's reader accepts (kMin/kMaxSupported...)


def _damaged(name: str, why: str) -> CheckpointError:
    return CheckpointError(f"{name}: not a readable torch.save file (damaged?): {why}; torch's zip reader and "
                           "Python's could read it differently, so rnninit refuses it")


def _read_at(handle: BinaryIO, offset: int, count: int) -> bytes:
    position = handle.tell()
    try:
        handle.seek(offset)
        return handle.read(count)
    finally:
        handle.seek(position)


def _directory_end(handle: BinaryIO, size: int, name: str) -> tuple[int, int, int]:
    """(entries, central directory offset, where it ends: where its end records begin, or -1 if it ends elsewhere)."""
    if size < _END.size:
        raise _damaged(name, "it is too short to hold a zip directory")
    end = _END.unpack(_read_at(handle, size - _END.size, _END.size))
    signature, disk, start_disk, disk_entries, entries, directory_size, directory_offset, comment = end
    if signature != b"PK\x05\x06" or comment:
        raise _damaged(name, "its zip directory does not end the file (a comment or trailing bytes)")
    if disk or start_disk or disk_entries != entries:
        raise _damaged(name, "it is a multi-disk zip")
    boundary = size - _END.size
    locator_at = boundary - _LOCATOR.size
    if locator_at >= 0 and _read_at(handle, locator_at, 4) == b"PK\x06\x07":
        _, locator_disk, end64_at, disks = _LOCATOR.unpack(_read_at(handle, locator_at, _LOCATOR.size))
        if locator_disk or disks != 1 or end64_at + _END64.size > locator_at:
            raise _damaged(name, "its zip64 locator is inconsistent")
        record = _END64.unpack(_read_at(handle, end64_at, _END64.size))
        signature64, record_size, _, _, disk64, start64, disk_entries64, entries64, size64, offset64 = record
        if signature64 != b"PK\x06\x06" or disk64 or start64 or disk_entries64 != entries64:
            raise _damaged(name, "its zip64 directory record is inconsistent")
        if end64_at + 12 + record_size != locator_at:
            raise _damaged(name, "bytes lie between its zip64 directory record and its locator")
        for narrow, wide, sentinel in ((entries, entries64, 0xFFFF), (directory_size, size64, 0xFFFFFFFF),
                                       (directory_offset, offset64, 0xFFFFFFFF)):
            if narrow not in (wide, sentinel):
                raise _damaged(name, "its zip and zip64 directory records disagree")
        return entries64, offset64, end64_at if offset64 + size64 == end64_at else -1
    return entries, directory_offset, boundary if directory_offset + directory_size == boundary else -1


def check_zip_layout(archive: zipfile.ZipFile, size: int, name: str) -> None:
    """Refuse an archive that is not laid out as `torch.save` lays it out (see the module docstring)."""
    handle = archive.fp
    if handle is None:
        raise _damaged(name, "its archive is closed")
    infos = archive.infolist()
    entries, directory_offset, directory_end = _directory_end(handle, size, name)
    if entries != len(infos):
        raise _damaged(name, f"its directory counts {entries} records but lists {len(infos)}")
    if directory_offset != archive.start_dir or directory_end < 0:  # type: ignore[attr-defined]
        raise _damaged(name, "bytes lie before the archive or between its directory and its end")
    _check_directory_entries(handle, infos, directory_offset, directory_end, name)
    seen: dict[bytes, str] = {}
    spans = []
    for info in infos:
        _check_entry(info, name)
        key = info.orig_filename.encode("utf-8", "surrogateescape").lower()
        if key in seen:
            raise _damaged(name, f"zip record {info.orig_filename!r} is listed twice (as {seen[key]!r} too)")
        seen[key] = info.orig_filename
        spans.append(_local_span(handle, info, name))
    spans.sort()
    bounds = [*spans, (archive.start_dir, archive.start_dir, "the zip directory")]  # type: ignore[attr-defined]
    for (_, end, record), (start, _, following) in pairwise(bounds):
        if start < end:
            raise _damaged(name, f"zip record {record} overlaps {following}")


def _check_directory_entries(handle: BinaryIO, infos: list[zipfile.ZipInfo], start: int, end: int,
                             name: str) -> None:
    """The directory's entries, one after another, fill it exactly (miniz refuses an entry that reaches past it,
    zipfile reads what is there)."""
    position = start
    for info in infos:
        fixed = _read_at(handle, position, 46)
        if len(fixed) != 46 or fixed[:4] != b"PK\x01\x02":
            raise _damaged(name, "its zip directory is not a sequence of entries")
        name_length, extra_length, comment_length = struct.unpack("<HHH", fixed[28:34])
        position += 46 + name_length + extra_length + comment_length
        if position > end:
            raise _damaged(name, f"the directory entry of {info.orig_filename} reaches past the zip directory")
    if position != end:
        raise _damaged(name, "its zip directory holds bytes after its last entry")


def _check_entry(info: zipfile.ZipInfo, name: str) -> None:
    """A directory entry both readers take for the same plain file: a UTF-8 name without NUL (zipfile cuts a name
    at NUL and reads a name without the UTF-8 flag as cp437; torch decodes every name as UTF-8), not encrypted,
    on disk 0, and no directory (miniz treats one as having no bytes)."""
    record = info.orig_filename
    if "\x00" in record or (not info.flag_bits & 0x800 and not record.isascii()):
        raise _damaged(name, f"zip record {record!r} has a name the two readers decode differently")
    if info.flag_bits & 0x2061:  # encrypted, patched data, strong encryption, masked directory
        raise _damaged(name, f"zip record {record} is encrypted")
    if info.volume:
        raise _damaged(name, f"zip record {record} lies on another disk of a multi-disk zip")
    if info.external_attr & 0x10 or record.endswith("/"):
        raise _damaged(name, f"zip record {record} is a folder, which torch's reader reads as empty")


def _local_span(handle: BinaryIO, info: zipfile.ZipInfo, name: str) -> tuple[int, int, str]:
    """(first byte, end, name) of a record, after checking its local header against the central directory."""
    header = _read_at(handle, info.header_offset, _LOCAL.size)
    if len(header) != _LOCAL.size:
        raise _damaged(name, f"zip record {info.orig_filename} lies past the end of the file")
    signature, _, flags, method, _, _, crc, compressed, plain, name_length, extra_length = _LOCAL.unpack(header)
    stored_name = _read_at(handle, info.header_offset + _LOCAL.size, name_length)
    central_name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437", "surrogateescape")
    if signature != b"PK\x03\x04" or stored_name != central_name:
        raise _damaged(name, f"zip record {info.orig_filename}'s local header names another record")
    if method != info.compress_type or (flags ^ info.flag_bits) & 0x08:
        raise _damaged(name, f"zip record {info.orig_filename}'s local header and directory entry differ")
    if not flags & 0x08 and (crc != info.CRC or compressed not in (info.compress_size, 0xFFFFFFFF)
                             or plain not in (info.file_size, 0xFFFFFFFF)):
        raise _damaged(name, f"zip record {info.orig_filename}'s local header and directory entry differ")
    end = info.header_offset + _LOCAL.size + name_length + extra_length + info.compress_size
    if flags & 0x08:  # a data descriptor follows: 12 or 20 bytes (zip64), with or without a signature
        wide = info.compress_size >= 0xFFFFFFFF or info.file_size >= 0xFFFFFFFF or info.header_offset >= 0xFFFFFFFF
        end += (20 if wide else 12) + (4 if _read_at(handle, end, 4) == b"PK\x07\x08" else 0)
    return info.header_offset, end, info.orig_filename


def archive_folder(names: list[str], source: str) -> str:
    """The folder torch's reader looks in: the first record's, which must hold data.pkl and every other record."""
    folder = names[0].split("/")[0] if names and "/" in names[0] else ""
    if not folder or f"{folder}/data.pkl" not in names:
        raise CheckpointError(f"{source}: not a readable torch.save file (damaged?): no data.pkl record in the "
                              "folder of the archive's first record, where torch looks for it")
    outside = next((name for name in names if not name.startswith(f"{folder}/")), None)
    if outside is not None:
        raise CheckpointError(f"{source}: not a readable torch.save file (damaged?): record {outside!r} lies "
                              f"outside the archive's folder {folder}/, which torch's reader refuses")
    return folder


_VERSION = re.compile(rb"[ \t\n\v\f\r]*\+?([0-9]+)")  # what std::stoull reads


def check_version(names: list[str], folder: str, read: Callable[[str], bytes], source: str) -> None:
    """torch's reader needs a version record (`.data/version`, else `version`) holding a supported version."""
    record = next((f"{folder}/{n}" for n in (".data/version", "version") if f"{folder}/{n}" in names), None)
    if record is None:
        raise CheckpointError(f"{source}: not a readable torch.save file (damaged?): it has no version record")
    content = read(record)
    found = _VERSION.match(content)
    if found is None or not MIN_VERSION <= int(found.group(1)) <= MAX_VERSION:
        raise CheckpointError(f"{source}: not a readable torch.save file: {record} holds "
                              f"{content[:20]!r}, not a version from {MIN_VERSION} to {MAX_VERSION} that torch reads")


def check_byteorder(names: list[str], folder: str, read: Callable[[str], bytes], source: str) -> None:
    """A byteorder record, where there is one, says `little` exactly (torch refuses other words, swaps `big`)."""
    record = f"{folder}/byteorder"
    if record in names and read(record) != b"little":
        raise CheckpointError(f"{source}: a big-endian (or unknown byte order) torch.save archive; rnninit reads "
                              "little-endian files only")


def check_torch_records(names: list[str], read: Callable[[str], bytes], source: str) -> str:
    """The archive's folder, after the records torch's reader decodes before any tensor: the version, the
    byte order and the serialization id (UTF-8 text); `read` gives a record's bytes."""
    folder = archive_folder(names, source)
    check_version(names, folder, read, source)
    check_byteorder(names, folder, read, source)
    if f"{folder}/.storage_alignment" in names:  # torch.load takes int() of it
        try:
            int(read(f"{folder}/.storage_alignment"))
        except ValueError:
            raise CheckpointError(f"{source}: not a readable torch.save file (damaged?): its .storage_alignment "
                                  "record is not an integer") from None
    for name in names:
        if name.startswith(f"{folder}/") and not name.startswith(f"{folder}/data/"):
            content = read(name)  # decompressed and its CRC-32 checked, as zipfile reads it
            if name == f"{folder}/.data/serialization_id":
                try:
                    content.decode("utf-8")
                except UnicodeDecodeError:
                    raise CheckpointError(f"{source}: not a readable torch.save file (damaged?): its serialization "
                                          "id is not UTF-8 text") from None
    return folder


def check_storage_record(record: str, declared: int, stored: int | None, source: str) -> None:
    """A storage's record must hold exactly the bytes its persistent id declares, as torch's reader requires."""
    if stored is None:
        raise CheckpointError(f"{source}: record {record} is missing from the archive")
    if stored != declared:
        raise CheckpointError(f"{source}: not a readable torch.save file (damaged?): record {record} holds "
                              f"{stored} bytes where its storage declares {declared} (torch refuses that too)")
