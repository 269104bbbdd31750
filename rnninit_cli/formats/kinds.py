"""Checkpoint file kinds: the formats, their file extensions, the name of stdin/stdout, rnninit's metadata record,
and the format of a file told from its first bytes."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..errors import CheckpointError

if TYPE_CHECKING:
    pass



FORMATS = ("pt", "safetensors")



PT_EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt")



METADATA_RECORD = "rnninit.json"  # extra record in a .pt zip archive; torch.load ignores it



METADATA_RECORD_SIZE = 4096  # the record is padded so that a re-run can overwrite it in place



STDIO = "-"



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
