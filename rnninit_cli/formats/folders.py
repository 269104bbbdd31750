"""Model folders (the Hugging Face layout): `model.safetensors`, `pytorch_model.bin`, or an
`*.index.json` whose `weight_map` names the shard of every tensor.

The output is a folder with the same files: shards that hold rewritten tensors are patched copies,
every other file (other shards, the index, config.json, tokenizer files) is copied byte for byte.
The new folder is built next to OUTPUT and renamed into place, so a failed run leaves nothing; an
existing OUTPUT folder is swapped with it in one step (Linux renameat2 RENAME_EXCHANGE), so after any
interruption the path holds the old folder or the new one. --in-place rewrites only the shards that
change, each to a temporary file beside it, then renames them all into place.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import CheckpointError, OutputError
from ..interruption import CommitLog
from .atomic import (
    OLD_SUFFIX,
    cleanup_held,
    create_temporary_file,
    create_temporary_folder,
    current_umask,
    fsync_folder,
    refuse_changed,
    signals_held,
    temporary_path,
    write_failure,
)
from .checkpoint import TensorShape, save_whole
from .outputs import output_kind, refuse_foreign_entries, refuse_unreplaceable
from .tensorfile import CannotPatch, TensorFile, copy_range, index_file

if TYPE_CHECKING:
    import torch

INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
INDEX_SIZE_LIMIT = 64 << 20  # an index names each tensor once: even huge models' indexes are a few MB
SINGLE_NAMES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class ModelFolder:
    """The shards of a model folder, indexed; tensors are named as in the index's weight_map."""

    path: Path
    shards: dict[str, TensorFile]  # file name (relative to the folder) → indexed shard
    owner: dict[str, str]  # tensor name → shard file name

    @property
    def source(self) -> str:
        return str(self.path)

    @property
    def format(self) -> str:
        formats = {shard.format for shard in self.shards.values()}
        return formats.pop() if len(formats) == 1 else "mixed"

    @property
    def metadata(self) -> dict[str, str]:
        first = next(iter(self.shards.values()))
        return dict(first.metadata) if len(self.shards) == 1 else {}

    @property
    def non_tensor_paths(self) -> list[str]:
        return [f"{name}:{path}" for name, shard in self.shards.items() for path in shard.non_tensor_paths]

    @property
    def optimizer_paths(self) -> list[str]:
        return []

    def shapes(self) -> dict[str, torch.Tensor]:
        return {name: tensor for shard in self.shards.values() for name, tensor in shard.shapes().items()}

    def shape_records(self) -> dict[str, TensorShape]:
        return {name: record for shard in self.shards.values() for name, record in shard.shape_records().items()}

    def arrays(self, names: Iterable[str]) -> dict[str, Any]:
        """numpy copies of the named tensors, each read from its shard (no torch needed)."""
        by_shard: dict[str, list[str]] = {}
        for name in names:
            by_shard.setdefault(self.owner[name], []).append(name)
        return {name: array for shard, wanted in by_shard.items() for name, array in
                self.shards[shard].arrays(wanted).items()}

    def load(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        by_shard: dict[str, list[str]] = {}
        for name in names:
            by_shard.setdefault(self.owner[name], []).append(name)
        return {name: tensor for shard, wanted in by_shard.items() for name, tensor in
                self.shards[shard].load(wanted).items()}

    def storage_spans(self) -> dict[str, tuple[str, int, int]]:
        return {name: (f"{shard_name}:{span[0]}", span[1], span[2])
                for shard_name, shard in self.shards.items() for name, span in shard.storage_spans().items()}

    def close(self) -> None:
        for shard in self.shards.values():
            shard.close()

    def _by_shard(self, updates: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        by_shard: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in updates.items():
            by_shard.setdefault(self.owner[name], {})[name] = tensor
        return by_shard

    def _write_shard(self, name: str, updates: dict[str, torch.Tensor], metadata: dict[str, str],
                     sink: BinaryIO) -> None:
        shard = self.shards[name]
        try:
            shard.write_patched(sink, updates, metadata)
        except CannotPatch:  # e.g. a non-contiguous tensor: re-save this shard whole
            sink.seek(0)
            sink.truncate()
            save_whole(shard.path, updates, metadata, sink, data=shard.read_all())
        sink.flush()
        os.fsync(sink.fileno())

    def write(self, output: Path, updates: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        """Build the output folder beside OUTPUT, then swap it into place (replacing OUTPUT)."""

        def fill(staging: Path) -> None:
            by_shard = self._by_shard(updates)
            for source in sorted(self.path.rglob("*")):
                relative = source.relative_to(self.path)
                target = staging / relative
                if source.is_symlink() and relative.as_posix() not in self.shards:
                    # copied as the link it is: following it could read (and copy out) a file outside INPUT
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(os.readlink(source), target)
                    continue
                if source.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                name = relative.as_posix()
                if name in by_shard:
                    with open(target, "w+b") as sink:
                        self._write_shard(name, by_shard[name], metadata, sink)
                    os.chmod(target, 0o666 & ~current_umask())
                    continue
                if name in self.shards:  # the very bytes that were indexed, not whatever is at the path now
                    shard = self.shards[name]
                    with open(target, "wb") as sink:
                        copy_range(shard.descriptor, sink.fileno(), 0, 0, shard.size)
                else:
                    shutil.copyfile(source, target)
                shutil.copymode(source, target)
                _fsync_file(target)

        build_folder(output, self.path, fill)

    def write_in_place(self, updates: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        """--in-place: write each shard that changes to a temporary file beside it, then rename them all
        into place at once (signals held meanwhile); nothing else in the folder changes. A shard that
        another writer changed since it was read is not replaced, and then none is."""
        temporary: dict[str, Path] = {}
        try:
            for name, shard_updates in self._by_shard(updates).items():
                shard = self.shards[name]
                descriptor, temporary[name] = create_temporary_file(shard.path.parent)
                with os.fdopen(descriptor, "w+b") as sink:
                    self._write_shard(name, shard_updates, metadata, sink)
                os.chmod(temporary[name], os.fstat(shard.descriptor).st_mode & 0o7777)
            with signals_held():
                for name in temporary:
                    shard = self.shards[name]
                    refuse_unreplaceable(shard.path)
                    if shard.identity is not None:
                        refuse_changed(shard.path, shard.identity)
                for name, temp in temporary.items():
                    os.replace(temp, self.shards[name].path)
                CommitLog.record()
        except BaseException as error:
            with cleanup_held():
                for temp in temporary.values():
                    temp.unlink(missing_ok=True)
            failed = write_failure(error)
            if failed is not None:
                raise OutputError(f"cannot write in {self.path}: {failed.strerror or failed}") from None
            raise
        for folder in {self.shards[name].path.parent for name in temporary}:
            fsync_folder(folder)


def _fsync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _entries(folder: Path) -> dict[str, str]:
    """Relative path → kind of everything in `folder` (the finished new folder: regular files and folders)."""
    return {path.relative_to(folder).as_posix(): "a folder" if path.is_dir() else "a regular file"
            for path in folder.rglob("*")}


def build_folder(output: Path, source: Path, fill: Callable[[Path], None]) -> None:
    """Write a folder at OUTPUT atomically: `fill` writes a temporary folder beside it, which then replaces OUTPUT
    (see `_replace_folder`; `source` is the input, never replaced). On any failure the temporary folder is removed
    and nothing at OUTPUT changes; OSErrors become one OutputError."""
    try:
        staging = create_temporary_folder(output.parent)
    except OSError as error:
        raise OutputError(f"cannot write in {output.parent}: {error.strerror or error}") from None
    try:
        os.chmod(staging, 0o777 & ~current_umask())
        fill(staging)
        _replace_folder(staging, output, source)
    except BaseException as error:
        with cleanup_held():
            shutil.rmtree(staging, ignore_errors=True)
        failed = write_failure(error)
        if failed is not None:
            raise OutputError(f"cannot write {output}: {failed.strerror or failed}") from None
        raise


def _replace_folder(staging: Path, output: Path, source: Path) -> None:
    """Put the finished folder `staging` at `output`. An existing OUTPUT is checked again first (it must
    hold only what the new folder holds, and not the input), then swapped with `staging` in one step
    where the system can (renameat2 RENAME_EXCHANGE), and deleted. Elsewhere it is renamed aside first:
    SIGINT and SIGTERM are held through both renames, only SIGKILL or a crash between them leaves the
    old folder under a `.*.rnninit-old` name beside OUTPUT and nothing at OUTPUT."""
    expected = _entries(staging)
    with signals_held():
        kind = output_kind(output)
        if kind == "absent":
            if not _renameat2(staging, output, _RENAME_NOREPLACE):
                os.rename(staging, output)
            CommitLog.record()
            fsync_folder(output.parent)
            return
        if kind != "a folder" or output.is_symlink():
            what = "a symbolic link" if output.is_symlink() else kind
            raise OutputError(f"{output} is now {what}; the output of a model folder is a folder; nothing was written")
        if source.resolve().is_relative_to(output.resolve()):
            raise OutputError(f"{output} now contains the input folder {source}; nothing was written")
        refuse_foreign_entries(output, expected)
        if _renameat2(staging, output, _RENAME_EXCHANGE):
            old = staging  # the exchange put the old folder where the new one was built
        else:
            old = temporary_path(output.parent, OLD_SUFFIX)
            os.rename(output, old)
            try:
                os.rename(staging, output)
            except BaseException:
                os.rename(old, output)
                raise
        CommitLog.record()
        fsync_folder(output.parent)
        shutil.rmtree(old, ignore_errors=True)


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2(source: Path, target: Path, flags: int) -> bool:
    """Linux renameat2(2): True when done, False where the C library, kernel or file system lacks it
    (the caller then falls back); OSError for a real failure (e.g. EEXIST with RENAME_NOREPLACE)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(target))


def _refuse_escaping_shard(folder: Path, name: object, index: Path | None) -> None:
    """A shard must be a plain relative path inside the folder, also after `..` and symbolic links are
    resolved: an index (or a link) must not make rnninit read, or claim to write, files elsewhere."""
    where = f"{index}: shard" if index is not None else f"{folder}:"
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{where} {name!r} is not a file name")
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or "\\" in name or "\0" in name or ".." in parts or (
            len(name) > 1 and name[1] == ":"):
        raise CheckpointError(f"{where} {name!r} is not a plain relative path inside the folder; refused")
    inside = folder.resolve()
    try:
        resolved = (folder / name).resolve()
    except (OSError, RuntimeError):  # a symbolic link loop
        raise CheckpointError(f"{where} {name!r} cannot be resolved (a symbolic link loop?)") from None
    if not resolved.is_relative_to(inside) or resolved == inside:
        raise CheckpointError(f"{where} {name!r} leads outside the folder (to {resolved}); refused")


def open_folder(path: Path) -> ModelFolder:
    """Index the shards of a model folder; CheckpointError when it holds no known layout."""
    index = next((path / name for name in INDEX_NAMES if (path / name).is_file()), None)
    if index is not None:
        if index.stat().st_size > INDEX_SIZE_LIMIT:
            raise CheckpointError(f"{index}: an index of {index.stat().st_size} bytes is not plausible (the limit "
                                  f"is {INDEX_SIZE_LIMIT}); refused")
        try:
            weight_map = json.loads(index.read_bytes())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested too deep
            raise CheckpointError(f"{index}: not a valid index (no weight_map object)") from None
        if not weight_map:
            raise CheckpointError(f"{index}: its weight_map is empty: it names no shard")
        for tensor, shard in weight_map.items():
            if not isinstance(shard, str):
                raise CheckpointError(f"{index}: the shard of {tensor!r} is {shard!r}, not a file name")
        shard_names = list(dict.fromkeys(weight_map.values()))
    else:
        single = next((name for name in SINGLE_NAMES if (path / name).is_file()), None)
        if single is None:
            raise CheckpointError(f"{path} is a folder without {', '.join(SINGLE_NAMES + INDEX_NAMES)}; "
                                  "give a checkpoint file or a model folder")
        shard_names, weight_map = [single], None
    for name in shard_names:
        _refuse_escaping_shard(path, name, index)
    shards: dict[str, TensorFile] = {}
    owner: dict[str, str] = {}
    try:
        for name in shard_names:
            shard_path = path / name
            if not shard_path.exists():
                raise CheckpointError(f"{index}: shard {name} does not exist")
            if not shard_path.is_file():
                raise CheckpointError(f"{index}: shard {name} is not a regular file (a folder, FIFO, socket or "
                                      "device)")
            try:
                shards[name] = index_file(shard_path)
            except CannotPatch as why:
                raise CheckpointError(f"{shard_path}: cannot be rewritten in a model folder ({why}); "
                                      "re-save it with torch.save or as safetensors") from None
            for tensor in shards[name].locations:
                if tensor in owner:
                    raise CheckpointError(f"{path}: tensor {tensor} is in both {owner[tensor]} and {name}")
                owner[tensor] = name
        if weight_map is not None:
            missing = [t for t, shard in weight_map.items() if owner.get(t) != shard]
            if missing:
                raise CheckpointError(f"{index}: {missing[0]} is not in {weight_map[missing[0]]} as the index says")
    except BaseException:
        for shard in shards.values():
            shard.close()
        raise
    return ModelFolder(path, shards, owner)
