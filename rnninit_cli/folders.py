"""Model folders (the Hugging Face layout): `model.safetensors`, `pytorch_model.bin`, or an
`*.index.json` whose `weight_map` names the shard of every tensor.

The output is a folder with the same files: shards that hold rewritten tensors are patched copies,
every other file (other shards, the index, config.json, tokenizer files) is copied byte for byte.
The new folder is built next to OUTPUT and renamed into place, so a failed run leaves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import current_umask, save_whole, write_failure
from .errors import CheckpointError, OutputError
from .tensorfile import CannotPatch, TensorFile, index_file

if TYPE_CHECKING:
    import torch

INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
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

    def load(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        by_shard: dict[str, list[str]] = {}
        for name in names:
            by_shard.setdefault(self.owner[name], []).append(name)
        return {name: tensor for shard, wanted in by_shard.items() for name, tensor in
                self.shards[shard].load(wanted).items()}

    def storage_spans(self) -> dict[str, tuple[str, int, int]]:
        return {name: (f"{shard_name}:{span[0]}", span[1], span[2])
                for shard_name, shard in self.shards.items() for name, span in shard.storage_spans().items()}

    def write(self, output: Path, updates: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        """Build the output folder beside OUTPUT, then rename it into place (replacing OUTPUT)."""
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".rnninit-tmp", dir=output.parent))
        try:
            os.chmod(staging, 0o777 & ~current_umask())
            by_shard: dict[str, dict[str, torch.Tensor]] = {}
            for name, tensor in updates.items():
                by_shard.setdefault(self.owner[name], {})[name] = tensor
            for source in sorted(self.path.rglob("*")):
                relative = source.relative_to(self.path)
                target = staging / relative
                if source.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                shard_updates = by_shard.get(relative.as_posix())
                if shard_updates:
                    with open(target, "w+b") as sink:
                        try:
                            self.shards[relative.as_posix()].write_patched(sink, shard_updates, metadata)
                        except CannotPatch:  # e.g. a non-contiguous tensor: re-save this shard whole
                            sink.seek(0)
                            sink.truncate()
                            save_whole(source, shard_updates, metadata, sink)
                        sink.flush()
                        os.fsync(sink.fileno())
                    os.chmod(target, 0o666 & ~current_umask())
                else:
                    shutil.copyfile(source, target)
                    shutil.copymode(source, target)
            _replace_folder(staging, output)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            failed = write_failure(error)
            if failed is not None:
                raise OutputError(f"cannot write {output}: {failed.strerror or failed}") from None
            raise


def _replace_folder(staging: Path, output: Path) -> None:
    if not output.exists():
        os.rename(staging, output)
        return
    # os.rename cannot replace a non-empty folder: move the old one aside first, then drop it
    aside = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".rnninit-old", dir=output.parent))
    os.rename(output, aside / output.name)
    os.rename(staging, output)
    shutil.rmtree(aside, ignore_errors=True)


def open_folder(path: Path) -> ModelFolder:
    """Index the shards of a model folder; CheckpointError when it holds no known layout."""
    index = next((path / name for name in INDEX_NAMES if (path / name).is_file()), None)
    if index is not None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(f"{index}: not a valid index (no weight_map object)") from None
        shard_names = list(dict.fromkeys(weight_map.values()))
    else:
        single = next((name for name in SINGLE_NAMES if (path / name).is_file()), None)
        if single is None:
            raise CheckpointError(f"{path} is a folder without {', '.join(SINGLE_NAMES + INDEX_NAMES)}; "
                                  "give a checkpoint file or a model folder")
        shard_names, weight_map = [single], None
    shards = {}
    owner: dict[str, str] = {}
    for name in shard_names:
        shard_path = path / name
        if not shard_path.is_file():
            raise CheckpointError(f"{index}: shard {name} does not exist")
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
    return ModelFolder(path, shards, owner)
