"""torch.distributed.checkpoint folders (issue 14 §2, library side): rnninit_cli/formats/dcp.py.

The folders are written by torch's own `torch.distributed.checkpoint.save`: in one process (no process group), and
once by a 2-rank FSDP2 model (LSTM + GRU) on gloo, in a subprocess with a timeout. The values rnninit reads are
compared bit for bit with the tensors that were saved; a rewritten folder is read back by torch (`dcp.load` into an
unsharded module, `format_utils.dcp_to_torch_save`), its nested archives by `zipfile` (CRC-32s), and its bytes are
compared with the input's outside the patched ranges. Hostile and damaged `.metadata` files end in one typed error,
and the marker files their payloads would create never appear.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.filesystem import FileSystemWriter, SerializationFormat
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from rnninit_cli.errors import CheckpointError, OutputError, UnsafeCheckpointError
from rnninit_cli.formats import dcp as dcp_module
from rnninit_cli.formats import dcp_metadata
from rnninit_cli.formats.dcp import DcpFolder, open_dcp
from rnninit_cli.formats.dcp_metadata import _TORCH_VALUES, METADATA_CLASSES

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
FSDP_TIMEOUT = 180  # seconds for the 2-rank save (a hung rendezvous fails the test instead of hanging it)


class Net(torch.nn.Module):
    """The model of both folders (FSDP2's fully_shard wants a module with a forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 3, 2, bidirectional=True)
        self.gru = torch.nn.GRU(6, 5)  # 15 rows: 8 + 7 on two ranks
        self.head = torch.nn.Linear(5, 2)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(self.lstm(inputs)[0][..., :6])[0])


def _model() -> Net:
    torch.manual_seed(0)
    return Net()


def _plain_state() -> dict[str, Any]:
    """A state dict with what a DCP folder holds besides float32 parameters: bfloat16 and float16 tensors, a
    0-dim integer, a transposed (non-contiguous) tensor, an optimizer's state, and non-tensor entries."""
    net = _model()
    net.head.to(torch.bfloat16)
    optimizer = torch.optim.Adam(net.gru.parameters())
    net.gru(torch.randn(2, 1, 6))[0].sum().backward()
    optimizer.step()
    model = {name: value.detach().clone() for name, value in net.state_dict().items()}
    model["extra.half"] = torch.randn(7, dtype=torch.float16)
    model["extra.count"] = torch.tensor(12345678901, dtype=torch.int64)
    model["extra.transposed"] = torch.randn(4, 3).t()  # stride (1, 3): saved as it is
    return {"model": model, "optim": optimizer.state_dict(), "step": 5, "cfg": {"name": "tiny", "sizes": [4, 3]}}


def _flat_tensors(state: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """rnninit's names of the tensors in a nested state dict: their paths, keys joined with '/' (as the .pt reader
    names them; DCP's own flattened names join them with '.')."""
    found = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            found[name] = value
        elif isinstance(value, dict):
            found.update(_flat_tensors(value, f"{name}/"))
    return found


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("dcp-plain") / "ckpt"
    state = _plain_state()
    dcp.save(state, checkpoint_id=folder, no_dist=True)
    return folder, state


FSDP_SCRIPT = textwrap.dedent("""
    import datetime, sys
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    import torch.distributed.checkpoint as dcp
    from torch.distributed.fsdp import fully_shard

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(4, 3, 2, bidirectional=True)
            self.gru = torch.nn.GRU(6, 5)
            self.head = torch.nn.Linear(5, 2)

        def forward(self, inputs):
            return self.head(self.gru(self.lstm(inputs)[0][..., :6])[0])

    def model():
        torch.manual_seed(0)
        return Net()

    def work(rank, mode, folder, store, reference):
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=60))
        try:
            net = model()
            for part in (net.lstm, net.gru):
                fully_shard(part)
            fully_shard(net)
            state = net.state_dict()
            assert all(type(value).__name__ == "DTensor" for value in state.values())
            if mode == "save":
                dcp.save(state, checkpoint_id=folder)
            else:  # into the sharded model: each rank reads the rows of its shards
                for value in state.values():
                    value.to_local().zero_()
                dcp.load(state, checkpoint_id=folder)
            full = {name: value.full_tensor() for name, value in state.items()}
            if rank == 0:
                torch.save(full, reference)
        finally:
            dist.destroy_process_group()

    if __name__ == "__main__":
        mp.start_processes(work, args=tuple(sys.argv[1:5]), nprocs=2, start_method="fork")
""")


def _two_ranks(mode: str, folder: Path, work: Path) -> dict[str, torch.Tensor]:
    """Run FSDP_SCRIPT on 2 gloo ranks ("save" the model to `folder`, or "load" it from there into the sharded
    model); the full tensors it saved or loaded."""
    work.mkdir()
    script, reference = work / "fsdp.py", work / "reference.pt"
    script.write_text(FSDP_SCRIPT)
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script), mode, str(folder), str(work / "store"), str(reference)],
                            capture_output=True, text=True, timeout=FSDP_TIMEOUT, env=environment, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(reference)


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    root = tmp_path_factory.mktemp("dcp-fsdp")
    return root / "ckpt", _two_ranks("save", root / "ckpt", root / "save")


# --- helpers -------------------------------------------------------------------------------------------------


def _raw(value: Any) -> bytes:
    """The bytes of a numpy array (a BFloat16Array's bits) or torch tensor, element by element in row-major order."""
    if isinstance(value, torch.Tensor):
        return value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return value.tobytes()


def _digest(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _new_values(folder: DcpFolder, names: list[str], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = folder.shapes()
    return {name: torch.randn(shapes[name].shape, generator=generator).to(shapes[name].dtype) for name in names}


def _check_only_patched(source: Path, output: Path, folder: DcpFolder, names: list[str]) -> None:
    """Every byte of OUTPUT equals INPUT's except the elements of the rewritten chunks and the CRC-32 fields of
    their records, and each patched nested archive is a valid zip (zipfile checks every CRC-32)."""
    allowed: dict[str, list[tuple[int, int]]] = {}
    for name in names:
        for stored in folder.stored_chunks(name):
            ranges = allowed.setdefault(stored.chunk.file, [])
            ranges.append((stored.first, stored.stop))
            ranges.extend((position, position + 4) for position in stored.record.crc_positions)
            blob = (output / stored.chunk.file).read_bytes()[stored.chunk.start:stored.chunk.start
                                                             + stored.chunk.length]
            assert zipfile.ZipFile(io.BytesIO(blob)).testzip() is None, f"a CRC-32 of {name}'s archive is wrong"
    inputs, outputs = _digest(source), _digest(output)
    assert set(outputs) == set(inputs) | {"rnninit.json"}
    for name in inputs:
        before = np.frombuffer((source / name).read_bytes(), np.uint8)
        after = np.frombuffer((output / name).read_bytes(), np.uint8)
        assert before.size == after.size, name
        outside = before != after
        for start, stop in allowed.get(name, []):
            outside[start:stop] = False
        assert not outside.any(), f"{name}: byte {np.flatnonzero(outside)[0]} changed outside the patched ranges"


def _torch_reads(output: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    converted = tmp_path / "converted.pt"
    dcp_to_torch_save(output, converted)
    return _flat_tensors(torch.load(converted))


# --- .metadata: which classes -------------------------------------------------------------------------------


def _globals(metadata: bytes) -> set[tuple[str, str]]:
    """The globals a pickle torch just wrote names (the test's own, trusting unpickler records them)."""
    named: set[tuple[str, str]] = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            named.add((module, name))
            return super().find_class(module, name)

    Recording(io.BytesIO(metadata)).load()
    return named


def test_metadata_names_only_whitelisted_globals(plain: tuple[Path, dict[str, Any]],
                                                 fsdp: tuple[Path, dict[str, torch.Tensor]]) -> None:
    """What torch writes (plain and FSDP2 folders) names only the globals the reader allows, and needs them all:
    DCP's dataclasses, pathlib (checkpoint_id), torch.Size, dtypes and torch.serialization._get_layout."""
    named = _globals((plain[0] / ".metadata").read_bytes()) | _globals((fsdp[0] / ".metadata").read_bytes())
    assert named <= METADATA_CLASSES | _TORCH_VALUES, named - (METADATA_CLASSES | _TORCH_VALUES)
    dcp_classes = {name for module, name in named if module.startswith("torch.distributed")}
    assert dcp_classes == {"Metadata", "TensorStorageMetadata", "ChunkStorageMetadata", "BytesStorageMetadata",
                           "TensorProperties", "_MEM_FORMAT_ENCODING", "MetadataIndex", "StorageMeta", "_StorageInfo"}
    assert ("pathlib", "PosixPath") in named and ("torch", "bfloat16") in named


# --- reading ------------------------------------------------------------------------------------------------


def test_plain_folder_reads_bit_for_bit(plain: tuple[Path, dict[str, Any]]) -> None:
    source, state = plain
    expected = _flat_tensors(state)
    with open_dcp(source) as folder:
        assert folder.format == "dcp" and folder.metadata == {}
        records = folder.shape_records()
        assert set(records) == set(expected)
        for name, tensor in expected.items():
            assert records[name].shape == tuple(tensor.shape)
            assert records[name].dtype == str(tensor.dtype).removeprefix("torch.")
        arrays, loaded = folder.arrays(list(expected)), folder.load(list(expected))
        for name, tensor in expected.items():
            assert arrays[name].shape == tuple(tensor.shape) and _raw(arrays[name]) == _raw(tensor), name
            assert loaded[name].dtype == tensor.dtype and _raw(loaded[name]) == _raw(tensor), name
        objects = folder.non_tensor_paths  # DCP flattens dicts, and lists holding dicts: named by their paths
        assert {"cfg/name", "cfg/sizes", "step", "optim/param_groups/0/lr"} <= set(objects)
        assert not set(objects) & set(expected)
        assert folder.optimizer_paths == ["optim"]
        assert not folder.stored_chunks("model/extra.transposed")[0].contiguous


# --- writing ------------------------------------------------------------------------------------------------


def test_plain_folder_write_patches_only_the_chunks(plain: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    source, state = plain
    before = _digest(source)
    output = tmp_path / "out"
    with open_dcp(source) as folder:
        names = [name for name in folder.layout.tensors if name.startswith(("model/lstm.", "model/gru."))]
        names += ["model/head.weight", "model/extra.half"]  # bfloat16 and float16 chunks
        updates = _new_values(folder, names, seed=1)
        folder.write(output, updates, {"rnninit.seed": "1", "rnninit.scheme": "keras"})
        _check_only_patched(source, output, folder, names)
    assert _digest(source) == before, "the input folder changed"
    expected = {**_flat_tensors(state), **updates}
    converted = _torch_reads(output, tmp_path)
    assert set(converted) == set(expected)
    for name, value in expected.items():
        assert converted[name].dtype == value.dtype and _raw(converted[name]) == _raw(value), name
    net = _model()
    net.head.to(torch.bfloat16)
    for parameter in net.parameters():
        parameter.data.zero_()
    dcp.load({"model": net.state_dict()}, checkpoint_id=output, no_dist=True)  # into an unsharded module
    for name, value in net.state_dict().items():
        assert _raw(value) == _raw(expected[f"model/{name}"]), name
    with open_dcp(output) as written:
        assert written.metadata == {"rnninit.seed": "1", "rnninit.scheme": "keras"}
        assert _raw(written.arrays(["model/gru.weight_hh_l0"])["model/gru.weight_hh_l0"]) == \
            _raw(updates["model/gru.weight_hh_l0"])


def test_fsdp_two_ranks_read_and_write(fsdp: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    """A 2-rank FSDP2 model (LSTM + GRU; the GRU's 15 rows split 8 + 7) saved by dcp.save on gloo: every tensor
    assembled from its two chunks equals full_tensor(); rewritten, torch reads exactly the new values, into an
    unsharded module, through dcp_to_torch_save, and into the sharded model on 2 ranks."""
    source, reference = fsdp
    output = tmp_path / "out"
    before = _digest(source)
    with open_dcp(source) as folder:
        assert sorted({chunk.file for tensor in folder.layout.tensors.values() for chunk in tensor.chunks}) == \
            ["__0_0.distcp", "__1_0.distcp"]
        assert [chunk.sizes for chunk in folder.layout.tensors["gru.weight_ih_l0"].chunks] == [(8, 6), (7, 6)]
        arrays = folder.arrays(list(reference))
        for name, tensor in reference.items():
            assert _raw(arrays[name]) == _raw(tensor), name
        names = [name for name in reference if name.startswith(("lstm.", "gru."))]
        updates = _new_values(folder, names, seed=2)
        folder.write(output, updates, {"rnninit.seed": "2"})
        _check_only_patched(source, output, folder, names)
    assert _digest(source) == before, "the input folder changed"
    expected = {**reference, **updates}
    converted = _torch_reads(output, tmp_path)
    assert {name: _raw(value) for name, value in converted.items()} == \
        {name: _raw(value) for name, value in expected.items()}
    net = _model()
    for parameter in net.parameters():
        parameter.data.zero_()
    dcp.load(net.state_dict(), checkpoint_id=output, no_dist=True)  # into an unsharded module
    assert {name: _raw(value) for name, value in net.state_dict().items()} == \
        {name: _raw(value) for name, value in expected.items()}
    sharded = _two_ranks("load", output, tmp_path / "load")  # into the FSDP2 model on 2 ranks
    assert {name: _raw(value) for name, value in sharded.items()} == \
        {name: _raw(value) for name, value in expected.items()}


def test_failed_writes_leave_nothing(plain: tuple[Path, dict[str, Any]], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before anything is written (a chunk stored transposed, a new value of another dtype), or failing
    midway (a full disk): one typed error, and nothing beside OUTPUT."""
    source = plain[0]
    output = tmp_path / "out"
    with open_dcp(source) as folder:
        transposed = folder.load(["model/extra.transposed"])
        with pytest.raises(CheckpointError, match="strides") as caught:
            folder.write(output, transposed, {})
        assert "\n" not in str(caught.value)
        wrong = {"model/gru.weight_hh_l0": torch.zeros(15, 5, dtype=torch.float64)}
        with pytest.raises(OutputError, match="float64"):
            folder.write(output, wrong, {})

        def full_disk(*_arguments: Any) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(dcp_module, "_patch", full_disk)  # fails after the new folder was begun
        with pytest.raises(OutputError, match="No space left"):
            folder.write(output, _new_values(folder, ["model/gru.weight_hh_l0"], seed=3), {"rnninit.seed": "3"})
    assert list(tmp_path.iterdir()) == [], "something was left beside OUTPUT"


def test_recorded_metadata_goes_to_rnninit_json(plain: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """What rnninit records goes into rnninit.json beside .metadata (DCP ignores it), replacing an earlier run's
    record; an input's rnninit.json that is a symbolic link is neither read nor written through."""
    source = _copy(plain[0], tmp_path / "in")
    outside = tmp_path / "outside.json"
    outside.write_text('{"rnninit.seed": "0"}')
    (source / "rnninit.json").symlink_to(outside)
    with open_dcp(source) as folder:
        assert folder.metadata == {}
        folder.write(tmp_path / "out", {}, {"rnninit.seed": "4", "rnninit.only": "gru"})
    assert outside.read_text() == '{"rnninit.seed": "0"}'
    assert not (tmp_path / "out" / "rnninit.json").is_symlink()
    with open_dcp(tmp_path / "out") as first:
        assert first.metadata == {"rnninit.seed": "4", "rnninit.only": "gru"}
        first.write(tmp_path / "again", {}, {"rnninit.seed": "5"})
    with open_dcp(tmp_path / "again") as second:
        assert second.metadata == {"rnninit.seed": "5"}


# --- damaged and hostile folders -------------------------------------------------------------------------------


def _copy(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def _edited(source: Path, target: Path, edit: Any) -> Path:
    """A copy of `source` whose .metadata is torch's Metadata object after `edit(metadata)` (the test's own
    pickle.load of a file torch just wrote)."""
    folder = _copy(source, target)
    with open(folder / ".metadata", "rb") as handle:
        metadata = pickle.load(handle)
    edit(metadata)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    return folder


def _storage(metadata: Any, name: str) -> tuple[Any, Any]:
    return next((key, value) for key, value in metadata.storage_data.items() if key.fqn == name)


def _set_storage(metadata: Any, name: str, **changes: Any) -> None:
    _, value = _storage(metadata, name)
    for attribute, change in changes.items():
        setattr(value, attribute, change)


def _grow_chunk(metadata: Any) -> None:
    metadata.state_dict_metadata["model.gru.weight_hh_l0"].chunks[0].sizes = torch.Size([16, 5])


def _overlap_entries(metadata: Any) -> None:
    _, first = _storage(metadata, "model.gru.weight_hh_l0")
    _set_storage(metadata, "model.gru.weight_ih_l0", offset=first.offset + 8)


def _drop_storage(metadata: Any) -> None:
    del metadata.storage_data[_storage(metadata, "model.gru.bias_hh_l0")[0]]


def _rebuild_distcp(folder: Path, blobs: dict[str, bytes]) -> None:
    """Replace the named entries' nested archives (appended to the file) and point .metadata at them."""
    with open(folder / ".metadata", "rb") as handle:
        metadata = pickle.load(handle)
    for name, blob in blobs.items():
        _, info = _storage(metadata, name)
        with open(folder / info.relative_path, "ab") as handle:
            info.offset, info.length = handle.tell(), len(blob)
            handle.write(blob)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))


def _saved(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return buffer.getvalue()


DAMAGED = {
    "chunk too big": (_grow_chunk, "outside its shape"),
    "entries overlap": (_overlap_entries, "overlap"),
    "no storage": (_drop_storage, "has no storage"),
    "file escapes": (lambda m: _set_storage(m, "model.gru.bias_ih_l0", relative_path="../x.distcp"),
                     "not a plain relative path"),
    "file missing": (lambda m: _set_storage(m, "model.gru.bias_ih_l0", relative_path="__9_0.distcp"),
                     "not in the folder"),
    "past the end": (lambda m: _set_storage(m, "model.gru.bias_ih_l0", length=1 << 30), "truncated"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_metadata_is_one_checkpoint_error(case: str, plain: tuple[Path, dict[str, Any]],
                                                  tmp_path: Path) -> None:
    edit, expected = DAMAGED[case]
    folder = _edited(plain[0], tmp_path / "ckpt", edit)
    with pytest.raises(CheckpointError, match=expected) as caught:
        open_dcp(folder)
    assert "\n" not in str(caught.value) and not isinstance(caught.value, UnsafeCheckpointError)


def test_unreadable_chunks_are_refused(plain: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """Chunks rnninit cannot read exactly: one stored in another dtype, one written through a stream transform,
    a folder in DCP's safetensors serialization format (which torch's own FileSystemReader cannot load)."""
    source = plain[0]
    other_dtype = _copy(source, tmp_path / "dtype")
    _rebuild_distcp(other_dtype, {"model.gru.bias_ih_l0": _saved(torch.zeros(15, dtype=torch.float64))})
    transformed = _edited(source, tmp_path / "transform", lambda m: _set_storage(
        m, "model.gru.bias_ih_l0", transform_descriptors=["zstd"]))
    safetensors_format = tmp_path / "safetensors"
    dcp.save({"model.gru.bias_ih_l0": torch.zeros(15)}, no_dist=True,
             storage_writer=FileSystemWriter(safetensors_format, serialization_format=SerializationFormat.SAFETENSORS))
    for folder, name, expected in ((other_dtype, "model/gru.bias_ih_l0", "stored as float64"),
                                   (transformed, "model/gru.bias_ih_l0", "transforms"),
                                   (safetensors_format, "model.gru.bias_ih_l0", "not a torch.save archive")):
        with open_dcp(folder) as opened, pytest.raises(CheckpointError, match=expected) as caught:
            opened.arrays([name])
        assert "\n" not in str(caught.value)


class _Reduce:
    """Pickles as a call of `function(*args)`: what an unsafe unpickler would run."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.function, self.args)


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(value: str) -> bytes:
    return b"X" + len(value.encode()).to_bytes(4, "little") + value.encode()


EVIL_MODULE = "rnninit_dcp_evil"


@pytest.fixture
def markers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder where payloads would leave files, and an importable module that leaves one when imported or run."""
    found = tmp_path / "markers"
    found.mkdir()
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / f"{EVIL_MODULE}.py").write_text(
        f"from pathlib import Path\nPath({str(found)!r}, 'import').touch()\n"
        f"def run(*args):\n    Path({str(found)!r}, 'run').touch()\n")
    monkeypatch.syspath_prepend(str(modules))
    yield found
    sys.modules.pop(EVIL_MODULE, None)


def _hostile_metadata(source: Path, markers: Path) -> dict[str, tuple[bytes, type[Exception], str]]:
    """name → (.metadata bytes, the error expected, what its message must name)."""
    real = (source / ".metadata").read_bytes()
    with open(source / ".metadata", "rb") as handle:
        metadata = pickle.load(handle)
    metadata.planner_data = {"x": _Reduce(eval, f"open({str(markers / 'eval')!r}, 'w')")}
    inside = pickle.dumps(metadata)  # a valid structure around builtins.eval
    touch = f"touch '{markers / 'system'}'"
    return {
        "os.system": (pickle.dumps(_Reduce(os.system, touch)), UnsafeCheckpointError, "os.system"),
        "posix.system, protocol 0": (pickle.dumps(_Reduce(os.system, touch), protocol=0), UnsafeCheckpointError,
                                     "system"),
        "eval inside real metadata": (inside, UnsafeCheckpointError, "builtins.eval"),
        "getattr chain": (b"\x80\x02" + _global("builtins", "getattr") + b"(" + _global("builtins", "__import__")
                          + b"(" + _text("os") + b"tR" + _text("system") + b"tR(" + _text(touch) + b"tR.",
                          UnsafeCheckpointError, "builtins.getattr"),
        "unknown module": (b"\x80\x02" + _global(EVIL_MODULE, "run") + b"(" + _text("x") + b"tR.",
                           UnsafeCheckpointError, EVIL_MODULE),
        "whitelisted class applied twice": (b"\x80\x02" + _global("torch.distributed.checkpoint.metadata", "Metadata")
                                            + b")R)R.", CheckpointError, "not a constructor"),
        "torch.Size applied to its result": (b"\x80\x02" + _global("torch", "Size") + b")R)R.", CheckpointError,
                                             "not a constructor"),
        "truncated": (real[:len(real) // 2], CheckpointError, "truncated or damaged"),
        "empty": (b"", CheckpointError, "truncated or damaged"),
    }


def test_hostile_or_damaged_metadata_runs_nothing(plain: tuple[Path, dict[str, Any]], markers: Path,
                                                  tmp_path: Path) -> None:
    for case, (data, error, named) in _hostile_metadata(plain[0], markers).items():
        folder = _copy(plain[0], tmp_path / case.replace(" ", "-").replace(",", ""))
        (folder / ".metadata").write_bytes(data)
        with pytest.raises(CheckpointError) as caught:
            open_dcp(folder)
        assert type(caught.value) is error, (case, caught.value)
        assert named in str(caught.value) and "\n" not in str(caught.value), (case, caught.value)
    assert sorted(path.name for path in markers.iterdir()) == [], "a payload ran"
    assert EVIL_MODULE not in sys.modules


def test_metadata_read_does_not_need_torch(plain: tuple[Path, dict[str, Any]]) -> None:
    """Reading a folder (metadata and arrays) in a process where `import torch` fails."""
    blocker = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked here")
        sys.meta_path.insert(0, Block())
        from pathlib import Path
        from rnninit_cli.formats.dcp import open_dcp
        with open_dcp(Path({str(plain[0])!r})) as folder:
            arrays = folder.arrays(list(folder.layout.tensors))
            import hashlib
            print(len(arrays), hashlib.sha256(arrays["model/head.weight"].tobytes()).hexdigest())
    """)
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = _flat_tensors(plain[1])
    count, digest = result.stdout.split()
    assert int(count) == len(expected)
    assert digest == hashlib.sha256(_raw(expected["model/head.weight"])).hexdigest()  # bfloat16, its bits


# --- the CLI on DCP folders ----------------------------------------------------------------------------------


def _rnninit(*args: object, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rnninit_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, check=False, input=None if stdin is None else stdin.decode())


def test_cli_apply_on_the_fsdp_folder_equals_a_single_process_apply(
        fsdp: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    """`rnninit apply FOLDER --scheme keras -o OUT` on the 2-rank FSDP2 folder: only the recurrent chunks' bytes
    change; torch reads back exactly what `rnninit apply` writes into the same model saved as one .pt with the
    same seed (unsharded, through dcp_to_torch_save, and into the sharded model on 2 ranks); the values have the
    scheme's properties (checked here from the definitions, and by `verify`)."""
    source, reference = fsdp
    output = tmp_path / "out"
    before = _digest(source)
    result = _rnninit("apply", source, "--scheme", "keras", "--seed", 5, "-o", output)
    assert result.returncode == 0, result.stderr
    assert _digest(source) == before, "the input folder changed"
    single = tmp_path / "single.pt"
    torch.save(reference, single)
    assert _rnninit("apply", single, "--scheme", "keras", "--seed", 5, "-o", tmp_path / "single-keras.pt",
                    "-q").returncode == 0
    expected = torch.load(tmp_path / "single-keras.pt", weights_only=True)
    recurrent = [name for name in reference if name.startswith(("lstm.", "gru."))]
    assert any(not torch.equal(expected[name], reference[name]) for name in recurrent)
    with open_dcp(source) as folder:
        _check_only_patched(source, output, folder, recurrent)
    converted = _torch_reads(output, tmp_path)
    assert {name: _raw(value) for name, value in converted.items()} == \
        {name: _raw(value) for name, value in expected.items()}
    sharded = _two_ranks("load", output, tmp_path / "load")
    assert {name: _raw(value) for name, value in sharded.items()} == \
        {name: _raw(value) for name, value in expected.items()}
    for name in ("lstm.weight_hh_l0", "gru.weight_hh_l0"):  # keras: orthogonal per matrix, W tall: WᵀW = I
        weight = converted[name].double()
        assert torch.allclose(weight.T @ weight, torch.eye(weight.shape[1], dtype=torch.float64), atol=1e-5)
    hidden = converted["lstm.weight_hh_l0"].shape[1]
    effective = converted["lstm.bias_ih_l0"] + converted["lstm.bias_hh_l0"]  # keras: unit forget bias, else 0
    assert torch.equal(effective, torch.cat([torch.zeros(hidden), torch.ones(hidden), torch.zeros(2 * hidden)]))
    assert not (converted["gru.bias_ih_l0"].any() or converted["gru.bias_hh_l0"].any())
    verified = _rnninit("verify", output, "--scheme", "keras")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    inspected = _rnninit("inspect", output, "--json")
    assert inspected.returncode == 0 and json.loads(inspected.stdout)["format"] == "dcp"
    assert _rnninit("diff", source, output).returncode == 1


def test_cli_refuses_what_it_cannot_write_into_a_dcp_folder(plain: tuple[Path, dict[str, Any]],
                                                              tmp_path: Path) -> None:
    source = plain[0]
    before = _digest(source)
    for args, words in ((["--in-place"], "new folder with -o"), (["-o", "-"], "must be a folder"),
                        (["-o", tmp_path / "x", "--format", "pt"], "keeps its format"),
                        (["-o", tmp_path / "y", "--drop-optimizer-state"], "drop-optimizer-state")):
        result = _rnninit("apply", source, "--scheme", "keras", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:") and words in result.stderr
        assert "Traceback" not in result.stderr
    assert _digest(source) == before
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_on_hostile_metadata_prints_one_error_and_runs_nothing(plain: tuple[Path, dict[str, Any]],
                                                                   tmp_path: Path) -> None:
    folder = tmp_path / "hostile"
    shutil.copytree(plain[0], folder)
    marker = tmp_path / "ran"
    payload = pickle.dumps(_Hostile(f"touch {marker}"), protocol=2)
    (folder / ".metadata").write_bytes(payload)
    for command in (["inspect", folder], ["verify", folder, "--scheme", "keras"], ["diff", folder, plain[0]],
                    ["apply", folder, "--scheme", "keras", "-o", tmp_path / "out"]):
        result = _rnninit(*command)
        assert result.returncode == 3, (command, result.stderr)
        assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1, result.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


class _Hostile:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


# --- regressions of the adversarial review (issue 14) ---------------------------------------------------------


def _nested_state() -> dict[str, Any]:
    """What DCP users save: a model under a key, an optimizer nested deeper, a key with a dot, a list."""
    torch.manual_seed(0)
    gru = torch.nn.GRU(3, 2)
    optimizer = torch.optim.Adam(gru.parameters())
    gru(torch.randn(1, 1, 3))[0].sum().backward()
    optimizer.step()
    return {"model": {f"gru.{name}": value.detach().clone() for name, value in gru.state_dict().items()},
            "train": {"optim": optimizer.state_dict(), "step": 3}, "a.b": {"c": torch.zeros(1)},
            "list": [torch.ones(2), {"k": torch.ones(3)}], "flat.name": torch.zeros(4)}


def test_nested_entries_are_named_as_in_the_folders_pt(tmp_path: Path) -> None:
    """A tensor is named by its path in the saved state dict, keys joined by '/', as the .pt reader names it in
    torch's dcp_to_torch_save .pt of the folder (so that seeded draws and diff agree); DCP's flattened name where
    the planner's map lacks a path or does not flatten to it; two entries reaching the same name are refused."""
    from rnninit_cli.rewrite import close_source, open_source

    source = tmp_path / "nested"
    dcp.save(_nested_state(), checkpoint_id=source, no_dist=True)
    dcp_to_torch_save(source, tmp_path / "nested.pt")
    single = open_source(str(tmp_path / "nested.pt"))
    try:
        with open_dcp(source) as folder:
            assert set(folder.shape_records()) == set(single.shape_records())
            assert "model/gru.weight_ih_l0" in folder.shape_records() and "a.b/c" in folder.shape_records()
            assert folder.optimizer_paths == single.optimizer_paths == ["train/optim"]
    finally:
        close_source(single)
    result = _rnninit("diff", source, tmp_path / "nested.pt")
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr

    def unmapped(metadata: Any) -> None:
        metadata.planner_data = None

    def misleading(metadata: Any) -> None:  # a path that does not flatten to its name: the map is not trusted
        metadata.planner_data["model.gru.bias_ih_l0"] = ("elsewhere", "x")

    for edit in (unmapped, misleading):
        with open_dcp(_edited(source, tmp_path / edit.__name__, edit)) as folder:
            assert "model.gru.weight_ih_l0" in folder.shape_records() and "a.b.c" in folder.shape_records()
    clash = tmp_path / "clash"
    dcp.save({"a/b": torch.zeros(1), "a": {"b": torch.ones(1)}}, checkpoint_id=clash, no_dist=True)
    with pytest.raises(CheckpointError, match="both named 'a/b'") as caught:
        open_dcp(clash)
    assert "\n" not in str(caught.value)


def _brute_force_tiles(shape: tuple[int, ...], boxes: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> bool:
    grid = np.zeros(shape, dtype=np.int64)
    for offsets, sizes in boxes:
        if any(offset + size > dim for offset, size, dim in zip(offsets, sizes, shape, strict=True)):
            return False
        grid[tuple(slice(offset, offset + size) for offset, size in zip(offsets, sizes, strict=True))] += 1
    return bool((grid == 1).all())


def _random_tiling(shape: tuple[int, ...], generator: np.random.Generator) -> list[tuple[tuple[int, ...],
                                                                                         tuple[int, ...]]]:
    """Boxes that tile `shape`: cut a box in two along a random dimension, a few times."""
    boxes = [((0,) * len(shape), shape)]
    for _ in range(int(generator.integers(0, 6))):
        offsets, sizes = boxes.pop(int(generator.integers(len(boxes))))
        dims = [dim for dim, size in enumerate(sizes) if size > 1]
        if not dims:
            boxes.append((offsets, sizes))
            continue
        dim = int(generator.choice(dims))
        cut = int(generator.integers(1, sizes[dim]))
        boxes.append((offsets, (*sizes[:dim], cut, *sizes[dim + 1:])))
        boxes.append(((*offsets[:dim], offsets[dim] + cut, *offsets[dim + 1:]),
                      (*sizes[:dim], sizes[dim] - cut, *sizes[dim + 1:])))
    return boxes


def test_tiling_check_agrees_with_counting_every_element() -> None:
    """The signed-corner tiling check accepts exactly the chunk sets that store every element once (counted
    element by element here): random tilings of 1-4 dimensions, some with one chunk moved (then the element
    count still adds up, but some elements are stored twice and others never), some with an empty chunk."""
    from rnninit_cli.formats.dcp_metadata import Chunk, _check_tiling, _Damaged

    generator = np.random.default_rng(14)
    outcomes = {True: 0, False: 0}
    for _ in range(1500):
        shape = tuple(int(size) for size in generator.integers(1, 6, size=int(generator.integers(1, 5))))
        boxes = _random_tiling(shape, generator)
        if generator.random() < 0.8:
            index = int(generator.integers(len(boxes)))
            offsets, sizes = boxes[index]
            dim = int(generator.integers(len(shape)))
            moved = min(max(offsets[dim] + int(generator.choice([-2, -1, 1, 2])), 0), shape[dim] - sizes[dim])
            boxes[index] = ((*offsets[:dim], moved, *offsets[dim + 1:]), sizes)
        if generator.random() < 0.2:
            boxes.append(((0,) * len(shape), (0,) * len(shape)))
        expected = _brute_force_tiles(shape, boxes)
        try:
            _check_tiling("x", shape, [Chunk(offsets, sizes, "f", 0, 0) for offsets, sizes in boxes])
            accepted = True
        except _Damaged:
            accepted = False
        assert accepted == expected, (shape, boxes)
        outcomes[expected] += 1
    assert min(outcomes.values()) > 250, outcomes  # both kinds were tried


def test_tiling_check_is_linear_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """100,000 one-element chunks are checked in under a second with a few MB (the pairwise check needed 80 GB);
    beyond the corner limit a tensor is refused, not checked at any cost."""
    import time

    from rnninit_cli.formats.dcp_metadata import Chunk, _check_tiling, _Damaged

    count = 100_000
    chunks = [Chunk((index,), (1,), "f", 0, 0) for index in range(count)]
    began = time.perf_counter()
    _check_tiling("x", (count,), chunks)
    assert time.perf_counter() - began < 20
    with pytest.raises(_Damaged, match="overlap"):
        _check_tiling("x", (count,), [*chunks[:-2], Chunk((0,), (1,), "f", 0, 0), chunks[-1]])
    monkeypatch.setattr(dcp_metadata, "TILING_CORNER_LIMIT", 1000)
    with pytest.raises(_Damaged, match="more corners than the 1000"):
        _check_tiling("x", (count,), chunks)


def _aliased_metadata(metadata: Any, spelling: str) -> None:
    """gru.bias_hh_l0 stored at gru.bias_ih_l0's bytes, its file spelled `spelling` + the file name."""
    _, first = _storage(metadata, "model.gru.bias_ih_l0")
    _set_storage(metadata, "model.gru.bias_hh_l0", offset=first.offset, length=first.length,
                 relative_path=spelling + first.relative_path)


def test_one_file_under_several_names_meets_in_the_overlap_check(plain: tuple[Path, dict[str, Any]],
                                                                 tmp_path: Path) -> None:
    """The same bytes listed under two spellings of one file ('./', '//'), through a symbolic link to the folder,
    or through a hard link, are refused as overlapping; a file spelled './x' alone is read as 'x'."""
    source = plain[0]
    for case, spelling in (("dot", "./"), ("slashes", ".//"), ("link", "same/"), ("hard", "hard-")):
        folder = _edited(source, tmp_path / case, lambda metadata, spelling=spelling: _aliased_metadata(metadata,
                                                                                                       spelling))
        (folder / "same").symlink_to(".")
        for path in list(folder.glob("__*.distcp")):
            os.link(path, folder / f"hard-{path.name}")
        with pytest.raises(CheckpointError, match="overlap") as caught:
            open_dcp(folder)
        assert "\n" not in str(caught.value)

    def dotted(metadata: Any) -> None:
        for value in metadata.storage_data.values():
            value.relative_path = "./" + value.relative_path

    with open_dcp(_edited(source, tmp_path / "dotted", dotted)) as folder, open_dcp(source) as original:
        assert folder.layout.files() == original.layout.files()
        names = list(original.layout.tensors)
        assert all(_raw(mine) == _raw(theirs) for mine, theirs in zip(folder.arrays(names).values(),
                                                                      original.arrays(names).values(), strict=True))


def test_force_replaces_an_earlier_output_only(plain: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """--force may replace an earlier DCP output (the input's files plus rnninit.json); not a folder holding
    anything else, and a model folder's output holding an rnninit.json is still someone else's."""
    from rnninit_cli.formats.outputs import check_output

    source, output = plain[0], tmp_path / "out"
    with open_dcp(source) as folder:
        folder.write(output, {}, {"rnninit.seed": "1"})
    with pytest.raises(OutputError, match="already exists"):
        check_output(source, output, force=False, in_place=False)
    check_output(source, output, force=True, in_place=False)
    (output / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"notes\.txt"):
        check_output(source, output, force=True, in_place=False)
    model, other = tmp_path / "model", tmp_path / "other"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"")
    shutil.copytree(model, other)
    (other / "rnninit.json").write_text("{}")
    with pytest.raises(OutputError, match=r"rnninit\.json"):
        check_output(model, other, force=True, in_place=False)


def _chunked(folder: Path, shape: tuple[int, ...], chunks: list[tuple[tuple[int, ...], torch.Tensor]]) -> Path:
    """A DCP folder of one float32 tensor "x" of `shape`, made of the given (offsets, saved tensor) chunks."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    folder.mkdir()
    entries, places = [], {}
    with open(folder / "__0_0.distcp", "wb") as handle:
        for offsets, tensor in chunks:
            blob = _saved(tensor)
            places[MetadataIndex(fqn="x", offset=torch.Size(offsets))] = _StorageInfo(
                relative_path="__0_0.distcp", offset=handle.tell(), length=len(blob))
            handle.write(blob)
            entries.append(ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=tensor.shape))
    entry = TensorStorageMetadata(properties=TensorProperties(dtype=torch.float32), size=torch.Size(shape),
                                  chunks=entries)
    (folder / ".metadata").write_bytes(pickle.dumps(Metadata(state_dict_metadata={"x": entry}, storage_data=places)))
    return folder


def test_broadcast_chunks_are_refused_before_allocating(tmp_path: Path) -> None:
    """A chunk saved as an expand()ed view claiming more than BROADCAST_LIMIT elements is refused, like a .pt's; so
    is a tensor whose chunks, each under the limit, claim more than the limit beyond what they store together. A
    small broadcast chunk is read as the values it shows, and never patched. A chunk stored smaller than declared is
    refused before the declared tensor (4 TiB) is allocated."""
    from torch.distributed.checkpoint.metadata import MetadataIndex

    from rnninit_cli.formats.unpickle.objects import BROADCAST_LIMIT

    large = _chunked(tmp_path / "large", (BROADCAST_LIMIT + 1,), [((0,), torch.ones(1).expand(BROADCAST_LIMIT + 1))])
    half = BROADCAST_LIMIT // 2 + 1
    halves = _chunked(tmp_path / "halves", (2 * half,), [((0,), torch.ones(1).expand(half)),
                                                         ((half,), torch.ones(1).expand(half))])
    for folder, expected in ((large, "the chunk of x at [0]"), (halves, "x is a broadcast view")):
        with open_dcp(folder) as opened:
            for read in (opened.arrays, opened.load):
                with pytest.raises(CheckpointError, match="broadcast view") as caught:
                    read(["x"])
                assert expected in str(caught.value) and "\n" not in str(caught.value)
    small = _chunked(tmp_path / "small", (6,), [((0,), torch.full((1,), 2.0).expand(3)), ((3,), torch.ones(3))])
    with open_dcp(small) as opened:
        assert opened.arrays(["x"])["x"].tolist() == [2, 2, 2, 1, 1, 1]
        with pytest.raises(CheckpointError, match="strides"):
            opened.write(tmp_path / "out", {"x": torch.zeros(6)}, {})
    side = 1 << 20

    def declare_huge(metadata: Any) -> None:  # [2^21, 2^20] float32 over the chunks' 6 stored elements
        entry = metadata.state_dict_metadata["x"]
        entry.size = torch.Size([2 * side, side])
        places = list(metadata.storage_data.values())
        metadata.storage_data = {}
        for index, (chunk, place) in enumerate(zip(entry.chunks, places, strict=True)):
            chunk.sizes, chunk.offsets = torch.Size([side, side]), torch.Size([index * side, 0])
            metadata.storage_data[MetadataIndex(fqn="x", offset=chunk.offsets)] = place

    with open_dcp(_edited(small, tmp_path / "declared", declare_huge)) as opened:
        for read in (opened.arrays, opened.load):
            with pytest.raises(CheckpointError, match=r"stored with shape \[3\]"):
                read(["x"])
