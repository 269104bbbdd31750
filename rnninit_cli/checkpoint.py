"""Checkpoint IO: read `torch.save` and `.safetensors` files safely, write them atomically.

`.pt` files are only ever loaded with `weights_only=True`: a file that would need code to load is
refused. Tensors nested in containers (training checkpoints) are found and named by their path,
e.g. `state_dict/model.rnn.weight_ih_l0`; everything that is not rewritten is kept as it was.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .errors import CheckpointError, OutputError, UnsafeCheckpointError, UsageError

if TYPE_CHECKING:
    import torch

FORMATS = ("pt", "safetensors")
PT_EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt")
METADATA_RECORD = "rnninit.json"  # extra record in a .pt zip archive; torch.load ignores it
METADATA_RECORD_SIZE = 4096  # the record is padded so that a re-run can overwrite it in place
STDIO = "-"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the original object and a flat view of its tensors by path."""

    format: str
    root: Any
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = STDIO

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

    def load(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The named tensors themselves: writing into them changes this checkpoint."""
        return {name: self.tensors[name] for name in names}

    def storage_spans(self) -> dict[str, tuple[int, int, int]]:
        """(storage id, first byte, last byte + 1) of every tensor, to find tensors that share memory."""
        spans = {}
        for name, tensor in self.tensors.items():
            storage = tensor.untyped_storage()
            start = tensor.storage_offset() * tensor.element_size()
            spans[name] = (storage.data_ptr(), start, start + tensor.numel() * tensor.element_size())
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


def _is_optimizer_state(node: Any) -> bool:
    return isinstance(node, dict) and "state" in node and "param_groups" in node


def optimizer_state_paths(root: Any) -> list[str]:
    """Paths of optimizer state dicts ({"state", "param_groups"}); a list of them (Lightning's
    `optimizer_states`) is named as the list itself."""
    if _is_optimizer_state(root):
        return [""]
    if isinstance(root, dict):
        children: Any = root.items()
    elif isinstance(root, (list, tuple)):
        if any(_is_optimizer_state(item) for item in root):
            return [""]
        children = enumerate(root)
    else:
        return []
    return [join(str(key), sub) if sub else str(key)
            for key, value in children for sub in optimizer_state_paths(value)]


def is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def join(prefix: str, key: Any) -> str:
    return f"{prefix}/{key}" if prefix else str(key)


def walk(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(path, leaf) for every leaf of nested dicts, lists and tuples."""
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, (list, tuple)):
        items = enumerate(node)
    else:
        yield prefix, node
        return
    for key, value in items:
        yield from walk(value, join(prefix, key))


def detect_format(head: bytes, size: int) -> str:
    """'pt' or 'safetensors' from the first bytes of a file; CheckpointError otherwise."""
    if size == 0:
        raise CheckpointError("the file is empty")
    if head.startswith(b"PK\x03\x04"):
        return "pt"
    # safetensors before pickles: a header length whose low byte is 0x80 starts like a pickle does
    if len(head) >= 9 and head[8:9] == b"{":
        (header_size,) = struct.unpack("<Q", head[:8])
        if header_size <= size - 8:
            return "safetensors"
        if head[:1] != b"\x80":
            raise CheckpointError(f"safetensors header claims {header_size} bytes but the file has only {size}: "
                                  "truncated or damaged")
    if head[:1] == b"\x80":
        return "pt"
    raise CheckpointError("not a checkpoint: neither a torch.save file nor a .safetensors file")


def read_input(source: str | Path) -> bytes:
    """The bytes of `source`, or of standard input for '-'."""
    if str(source) == STDIO:
        return sys.stdin.buffer.read()
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


def load_checkpoint(source: str | Path, data: bytes | None = None) -> Checkpoint:
    """Load a `torch.save` or `.safetensors` checkpoint, recognised by content, from a path or '-'."""
    data = read_input(source) if data is None else data
    name = str(source)
    try:
        fmt = detect_format(data[:16], len(data))
    except CheckpointError as error:
        raise CheckpointError(f"{name}: {error}") from None
    if fmt == "pt":
        return _load_pt(data, name)
    return _load_safetensors(data, name)


_UNSAFE_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|global) ([\w.]+)", re.IGNORECASE)


def _load_pt(data: bytes, name: str) -> Checkpoint:
    import pickle

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        if "Weights only load failed" in text or "Unsupported" in text:
            raise UnsafeCheckpointError(unsafe_message(name, text)) from None
        raise CheckpointError(f"{name}: not a readable torch.save file: {first_line(text)}") from None
    except Exception as error:  # torch raises RuntimeError, EOFError, ValueError... on damage
        raise CheckpointError(f"{name}: not a readable torch.save file (truncated or damaged?): "
                              f"{first_line(str(error))}") from None
    tensors = {path or "tensor": value for path, value in walk(root, "") if is_tensor(value)}
    metadata = _read_pt_metadata(data)
    return Checkpoint("pt", root, tensors, metadata, name)


def unsafe_message(name: str, text: str) -> str:
    """The refusal for a pickle that would need code: name what it refers to, say nothing ran."""
    found = _UNSAFE_GLOBAL.search(text)
    what = f" (it refers to {found.group(1)})" if found else ""
    return (f"{name}: this file needs code to load{what}; rnninit will not run it. "
            "Only tensors, containers and plain values are accepted (weights_only=True)")


def first_line(text: str) -> str:
    line = (text.strip().splitlines() or ["unknown error"])[0]
    return line.split(". ")[0][:200]


def _read_pt_metadata(data: bytes) -> dict[str, str]:
    if not data.startswith(b"PK"):
        return {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            record = next((n for n in archive.namelist() if n.endswith("/" + METADATA_RECORD)), None)
            return string_map(json.loads(archive.read(record))) if record else {}
    except Exception:  # zipfile cannot read an archive torch could (NotImplementedError...): no record then
        return {}


def string_map(value: Any) -> dict[str, str]:
    """Metadata read from a file as a str → str map; what a damaged record holds besides is dropped."""
    if not isinstance(value, dict):
        return {}
    return {key: item for key, item in value.items() if isinstance(key, str) and isinstance(item, str)}


def _load_safetensors(data: bytes, name: str) -> Checkpoint:
    from safetensors.torch import load

    (header_size,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + header_size])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{name}: damaged safetensors header: {error}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{name}: damaged safetensors header: not a JSON object")
    metadata = header.get("__metadata__") or {}
    try:
        loaded = load(data)
    except Exception as error:  # SafetensorError and friends
        raise CheckpointError(f"{name}: not a readable safetensors file (truncated or damaged?): "
                              f"{first_line(str(error))}") from None
    order = [key for key in header if key != "__metadata__"]
    tensors = {key: loaded[key] for key in order if key in loaded}
    return Checkpoint("safetensors", tensors, tensors, dict(metadata), name)


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
    """Refuse an existing OUTPUT without `force`, and OUTPUT == INPUT without `in_place`."""
    if str(output) == STDIO:
        return
    out = Path(output)
    same = str(source) != STDIO and out.exists() and Path(source).exists() and out.samefile(source)
    if same and not in_place:
        raise OutputError(f"{out} is the input file; pass --in-place to rewrite it")
    folder_input = str(source) != STDIO and Path(source).is_dir()  # a model folder's output is a folder
    if out.is_dir() and not folder_input:
        raise OutputError(f"{out} is a folder; give a file name for the output")
    if out.exists() and not same and not force:
        raise OutputError(f"{out} already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent} does not exist; create the folder first")


def refuse_non_tensors(non_tensor_paths: list[str], tensors_only: bool) -> None:
    """Safetensors holds tensors only: refuse to silently drop other entries of a .pt."""
    if non_tensor_paths and not tensors_only:
        shown = ", ".join(non_tensor_paths[:5]) + (", ..." if len(non_tensor_paths) > 5 else "")
        raise OutputError(f"the checkpoint holds non-tensor entries ({shown}) that safetensors cannot "
                          "store; write .pt, or pass --tensors-only to keep only the tensors")


SAFETENSORS_DTYPES = {  # torch dtype name → safetensors dtype code
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
    "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "uint16": "U16",
    "uint32": "U32", "uint64": "U64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}


def write_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], sink: BinaryIO) -> None:
    """Write a .safetensors file with a deterministic header: sorted metadata, tensors ordered by
    element size (largest first, for alignment) then name. The official library's writer orders
    metadata by a hash map, so its bytes differ between runs."""
    import torch

    def dtype_name(tensor: torch.Tensor) -> str:
        name = str(tensor.dtype).removeprefix("torch.")
        if name not in SAFETENSORS_DTYPES:
            raise OutputError(f"safetensors cannot store dtype {name}; write .pt instead")
        return SAFETENSORS_DTYPES[name]

    order = sorted(tensors, key=lambda key: (-tensors[key].element_size(), key))
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset = 0
    for key in order:
        tensor = tensors[key]
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": dtype_name(tensor), "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
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
    if fmt == "safetensors":
        refuse_non_tensors(checkpoint.non_tensor_paths, tensors_only)
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
    fmt: str | None = None, *, tensors_only: bool = False,
) -> None:
    """Load `source` whole, copy `updates` into it, and write it to `sink` (for files that cannot
    be patched byte by byte, e.g. a non-contiguous rewritten tensor)."""
    whole = load_checkpoint(source)
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


def atomic_write(output: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary file in OUTPUT's folder, fsync it, then rename it onto OUTPUT.

    On any error the temporary file is removed and OUTPUT is left as it was.
    """
    out = Path(output)
    mode = _default_mode(out)
    try:
        handle, temp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".rnninit-tmp",
                                             dir=out.parent)
    except OSError as error:
        raise OutputError(f"cannot write in {out.parent}: {error.strerror or error}") from None
    try:
        with os.fdopen(handle, "w+b") as sink:
            write(sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.chmod(temp_name, mode)
        os.replace(temp_name, out)
    except BaseException as error:
        Path(temp_name).unlink(missing_ok=True)
        failed = write_failure(error)
        if failed is not None:
            raise OutputError(f"cannot write {out}: {failed.strerror or failed}") from None
        raise
    _fsync_folder(out.parent)


def write_failure(error: BaseException) -> OSError | None:
    """The OSError behind a failed write (a full disk, a file size limit...): the error itself, or the
    one that torch.save's zip writer turned into a RuntimeError ("unexpected pos ...")."""
    if isinstance(error, OSError):
        return error
    if isinstance(error, RuntimeError) and isinstance(error.__context__, OSError):
        return error.__context__
    return None


def _fsync_folder(folder: Path) -> None:
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
) -> None:
    """Write `checkpoint` to a path (atomically), to '-' (standard output) or to a binary file."""
    fmt = fmt or checkpoint.format
    metadata = metadata or {}
    if isinstance(output, (str, Path)) and str(output) != STDIO:
        atomic_write(output, lambda sink: serialize(checkpoint, fmt, metadata, sink,
                                                    tensors_only=tensors_only))
        return
    buffer = io.BytesIO()
    serialize(checkpoint, fmt, metadata, buffer, tensors_only=tensors_only)
    sink = sys.stdout.buffer if str(output) == STDIO else output
    sink.write(buffer.getvalue())  # type: ignore[union-attr]
    sink.flush()  # type: ignore[union-attr]
