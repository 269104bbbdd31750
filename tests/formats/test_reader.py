"""The restricted reader (rnninit_cli/formats/unpickle/): every torch.save file and TorchScript archive, read
without torch, exactly as torch reads it (issue 10, part 4).

- every kind of `.pt` file the suite builds, in every pickle protocol (2-5), zip and legacy, read in a
  process where `import torch` fails, tensor for tensor identical to torch.load (dtype, shape, stride, bits);
- the whole-load path (torch tensors built from the reader) keeps torch.load's values, types, strides and
  sharing;
- a TorchScript archive of an LSTM + LSTMCell: names as state_dict() gives them, `apply` writes a patched
  archive that torch.jit.load loads and runs;
- checkpoints carrying argparse.Namespace, an omegaconf-like config, a vocabulary and numpy scalars: read,
  patched with the objects' bytes kept, refused where they would have to be written again.
"""

from __future__ import annotations

import argparse
import io
import pickle
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from builders import build_state, flat_tensors
from torch import nn

from rnninit_cli.errors import OutputError
from rnninit_cli.formats.checkpoint import load_checkpoint
from rnninit_cli.formats.tensorfile import index_file

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parents[2]
MODULE = [PYTHON, "-m", "rnninit_cli"]
SCHEME = ["--scheme", "keras"]

# --- files -----------------------------------------------------------------------------------------------


def mixed_state(*, float8: bool = True) -> dict[str, Any]:
    """Every dtype, views with offsets, shared storages, transposed and empty tensors, a parameter. (torch's
    legacy format cannot load float8 storages back: `float8` False leaves them out.)"""
    generator = torch.Generator().manual_seed(5)
    base = torch.randn(40, generator=generator)
    state: dict[str, Any] = {
        "rnn.weight_ih_l0": torch.randn(8, 3, generator=generator),
        "rnn.weight_hh_l0": nn.Parameter(torch.randn(8, 2, generator=generator)),
        "f64": torch.randn(3, 2, dtype=torch.float64, generator=generator),
        "f16": torch.randn(5, generator=generator).half(),
        "bf16": torch.randn(2, 3, generator=generator).bfloat16(),
        "i64": torch.arange(-3, 3), "i32": torch.arange(4, dtype=torch.int32),
        "i8": torch.tensor([-1, 2], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "c64": torch.randn(2, dtype=torch.complex64, generator=generator),
        "f8": torch.randn(4, generator=generator).to(torch.float8_e4m3fn),
        "base": base, "view": base[3:15].view(3, 4), "transposed": base[:12].view(3, 4).t(),
        "strided": base[1::3], "empty": torch.empty(0, 3), "empty_view": base[5:5], "scalar": torch.tensor(2.5),
        "nested": {"list": [torch.ones(2), (torch.zeros(1), 3)], "epoch": 3, "name": "x", "blob": b"\x00\x01"},
    }
    state["alias"] = state["rnn.weight_ih_l0"]
    if not float8:
        del state["f8"]
    return state


def suite_files() -> dict[str, bytes]:
    """The .pt files the existing suite builds (conftest's and test_real_checkpoints' builders), plus
    every protocol and layout of mixed_state()."""
    import test_real_checkpoints as real

    model = build_state()
    half = {name: tensor.to(torch.bfloat16 if name.startswith(("emb", "lstm")) else torch.float16)
            for name, tensor in build_state(seed=1).items()}
    objects: dict[str, Any] = {
        "model": model, "training": {"state_dict": model, "epoch": 3, "hp": {"lr": 0.1}, "history": [0.5, 0.25]},
        "half": half, "lightning": real.lightning_checkpoint(), "script": real.script_checkpoint(),
        "lstm": real.lstm_state(num_layers=2), "folder": real.folder_state(), "list": [real.lstm_state(seed=1)],
    }
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        objects[f"dtype-{dtype}"] = real.dtype_state(dtype)
    files = {}
    for name, value in objects.items():
        files[f"{name}.pt"] = save_bytes(value)
    for protocol in (2, 3, 4, 5):
        for legacy in (False, True):
            state = mixed_state(float8=not legacy)
            files[f"mixed-p{protocol}{'-legacy' if legacy else ''}.pt"] = save_bytes(state, protocol, legacy)
    files["training-p4-legacy.pt"] = save_bytes(objects["training"], 4, True)
    return files


def save_bytes(value: Any, protocol: int = 2, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer, pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def torch_reference(data: bytes) -> Any:
    """torch.load(weights_only=True) where torch accepts the file; our own trusted fixtures of protocol 4
    and 5 (which its weights-only unpickler refuses: FRAME) are loaded with weights_only=False."""
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except pickle.UnpicklingError:
        return torch.load(io.BytesIO(data), weights_only=False)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


# --- reading without torch --------------------------------------------------------------------------------

BLOCKED_READER = r"""
import importlib.abc, pickle, sys
from pathlib import Path

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked here ({name})")
        return None

sys.meta_path.insert(0, NoTorch())
sys.modules["torch"] = None
from rnninit_cli.formats.unpickle.files import read_arrays
from rnninit_cli.formats.tensorfile import index_file

folder = Path(sys.argv[1])
result = {}
for path in sorted(folder.iterdir()):
    data = path.read_bytes()
    whole = {name: (dtype, shape, stride, array.dtype.name, array.tobytes())
             for name, (dtype, shape, stride, array) in read_arrays(data, str(path)).items()}
    indexed = None
    if data.startswith(b"PK"):
        with index_file(path) as opened:
            arrays = opened.arrays(list(opened.locations))
            indexed = {name: (loc.dtype_name, loc.shape, loc.stride, arrays[name].dtype.name, arrays[name].tobytes())
                       for name, loc in opened.locations.items()}
    result[path.name] = (whole, indexed)
assert "torch" not in sys.modules or sys.modules["torch"] is None, "torch was imported"
sys.stdout.buffer.write(pickle.dumps(result))
"""


def read_without_torch(folder: Path) -> dict[str, Any]:
    done = subprocess.run([PYTHON, "-c", BLOCKED_READER, str(folder)], capture_output=True, timeout=120,
                          check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return pickle.loads(done.stdout)  # our own subprocess's output


@pytest.fixture(scope="module")
def suite_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reader-suite")
    for name, data in suite_files().items():
        (folder / name).write_bytes(data)
    return folder


def test_every_suite_file_reads_without_torch_as_torch_reads_it(suite_folder: Path) -> None:
    read = read_without_torch(suite_folder)
    assert len(read) == len(list(suite_folder.iterdir())) >= 20
    for path in sorted(suite_folder.iterdir()):
        expected = dict(flat_tensors(torch_reference(path.read_bytes())))
        whole, indexed = read[path.name]
        for found in (whole, indexed):
            if found is None:
                assert not path.read_bytes().startswith(b"PK"), path.name
                continue
            assert set(found) == set(expected), (path.name, sorted(set(found) ^ set(expected)))
            for name, tensor in expected.items():
                dtype, shape, stride, _, raw = found[name]
                where = f"{path.name}:{name}"
                assert dtype == str(tensor.dtype).removeprefix("torch."), where
                assert tuple(shape) == tuple(tensor.shape) and tuple(stride) == tensor.stride(), where
                assert raw == tensor_bytes(tensor), where  # bit for bit, bfloat16 and float8 included
    assert read["mixed-p5.pt"][0]["bf16"][3] == "bfloat16"  # a BFloat16Array (no ml_dtypes), not raw integers


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("legacy", [False, True])
def test_whole_load_is_torch_load(protocol: int, legacy: bool) -> None:
    """The whole-load path builds torch tensors from the reader: types, values, strides, requires_grad
    and storage sharing as torch.load gives them."""
    data = save_bytes(mixed_state(float8=not legacy), protocol, legacy)
    expected = torch_reference(data)
    loaded = load_checkpoint("-", data)
    flat = dict(flat_tensors(expected))
    assert set(loaded.tensors) == set(flat)
    for name, tensor in flat.items():
        ours = loaded.tensors[name]
        assert type(ours) is type(tensor) and ours.dtype == tensor.dtype, name
        assert ours.shape == tensor.shape and ours.stride() == tensor.stride(), name
        assert ours.storage_offset() == tensor.storage_offset() and ours.requires_grad == tensor.requires_grad
        assert tensor_bytes(ours) == tensor_bytes(tensor), name
    tensors = loaded.tensors
    assert tensors["view"].untyped_storage().data_ptr() == tensors["base"].untyped_storage().data_ptr()
    assert tensors["alias"] is tensors["rnn.weight_ih_l0"]
    assert loaded.root["nested"]["list"][1][1] == 3 and loaded.root["nested"]["blob"] == b"\x00\x01"


@pytest.mark.parametrize("protocol", [4, 5])
def test_protocol_4_and_5_files_work_in_every_command(protocol: int, tmp_path: Path, cli: Any) -> None:
    """flair saves with protocol 4: torch's weights-only unpickler refuses FRAME ("Unsupported operand 149"),
    so these were refused as "needs code to load"."""
    source = tmp_path / "p.pt"
    state = build_state()
    torch.save(state, source, pickle_protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match="Unsupported operand 149"):
        torch.load(source, weights_only=True)
    out = tmp_path / "out.pt"
    for args in (["inspect", source], ["apply", source, *SCHEME, "--seed", "1", "-o", out],
                 ["verify", out, *SCHEME], ["diff", source, out]):
        done = cli(*args)
        assert done.exit_code in (0, 1) and "error:" not in done.stderr, (args, done.stderr)
    written = torch.load(out, weights_only=False)
    assert not torch.equal(written["lstm.weight_hh_l0"], state["lstm.weight_hh_l0"])
    assert torch.equal(written["head.weight"], state["head.weight"])


# --- TorchScript ------------------------------------------------------------------------------------------


class Scripted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 8, num_layers=2)
        self.cell = nn.LSTMCell(4, 8)
        self.head = nn.Linear(8, 3)
        self.register_buffer("steps", torch.arange(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(x)
        hidden, _ = self.cell(x[0])
        return self.head(output[-1] + hidden) + self.steps.sum()


@pytest.fixture
def scripted(tmp_path: Path) -> tuple[Path, torch.jit.ScriptModule]:
    torch.manual_seed(0)
    module = torch.jit.script(Scripted())
    path = tmp_path / "scripted.pt"
    torch.jit.save(module, str(path))
    return path, module


def records(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_torchscript_names_are_state_dict_names(scripted: tuple[Path, torch.jit.ScriptModule]) -> None:
    path, module = scripted
    with index_file(path) as opened:
        assert list(opened.locations) == list(module.state_dict())  # not `rnn/_flat_weights/0`
        assert opened.torchscript and "__torch__.torch.nn.modules.rnn.LSTMCell" in opened.foreign_classes
        arrays = opened.arrays(opened.locations)
    for name, tensor in module.state_dict().items():
        assert arrays[name].tobytes() == tensor_bytes(tensor), name


def test_torchscript_apply_writes_a_loadable_patched_archive(scripted: tuple[Path, torch.jit.ScriptModule],
                                                               tmp_path: Path, cli: Any) -> None:
    path, module = scripted
    out = tmp_path / "out.pt"
    inspected = cli("inspect", path)
    assert inspected.exit_code == 0, inspected.stderr
    shown = inspected.stdout + inspected.stderr
    assert "rnn" in shown and "cell" in shown and "holds objects of classes: __torch__" in shown, shown
    done = subprocess.run([*MODULE, "apply", str(path), *SCHEME, "--seed", "4", "-o", str(out)],
                          capture_output=True, timeout=120, check=False)  # the real program, once
    assert done.returncode == 0, done.stderr.decode()
    loaded = torch.jit.load(str(out))
    assert loaded(torch.randn(5, 2, 4)).shape == (2, 3)
    before, after = module.state_dict(), loaded.state_dict()
    recurrent = [name for name in before if name.startswith(("rnn.", "cell."))]
    assert len(recurrent) == 12
    for name in recurrent:
        if "weight" in name or "bias" in name:
            assert not torch.equal(before[name], after[name]), name
    for name in ("head.weight", "head.bias", "steps"):
        assert tensor_bytes(before[name]) == tensor_bytes(after[name]), name
    old, new = records(path), records(out)
    changed = {name for name in old if old[name] != new.get(name)}
    assert all("/data/" in name for name in changed), changed  # code, data.pkl, constants: byte-identical
    extra = set(new) - set(old)
    assert all(name.endswith("/rnninit.json") for name in extra), extra


def test_torchscript_rewritten_whole_is_refused(scripted: tuple[Path, torch.jit.ScriptModule], tmp_path: Path,
                                                cli: Any) -> None:
    path, _ = scripted
    for args in (["-o", "-"], ["-o", str(tmp_path / "out.safetensors")]):
        done = cli("apply", path, *SCHEME, *args)
        lines = done.stderr.strip().splitlines()
        assert done.exit_code == 4 and len(lines) == 1 and lines[0].startswith("error:"), done.stderr
        assert "__torch__.torch.nn.modules.rnn.LSTMCell" in lines[0] and "TorchScript" in lines[0], lines[0]


# --- objects of other classes -------------------------------------------------------------------------------


def fake_class(module: str, name: str, namespace: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> type:
    """A class that pickles as `module.name` (a stand-in for a library that is not installed here)."""
    made = type(name, (), namespace)
    made.__module__, made.__qualname__ = module, name
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):  # pickle imports the module, parents first
        package = ".".join(parts[:depth])
        if package not in sys.modules:
            monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
    setattr(sys.modules[module], name, made)
    return made


def _config_getstate(self: Any) -> dict[str, Any]:
    return dict(self.__dict__)


def training_checkpoint(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """fairseq / OpenNMT-py / hydra-style: model weights beside argparse args, an omegaconf DictConfig (as
    omegaconf pickles it: __getstate__ with _metadata, _parent, _content of nodes that point back at
    their parent), a vocabulary object and numpy scalars."""
    metadata = fake_class("omegaconf.base", "ContainerMetadata", {}, monkeypatch)
    node = fake_class("omegaconf.nodes", "AnyNode", {"__getstate__": _config_getstate}, monkeypatch)
    config = fake_class("omegaconf.dictconfig", "DictConfig", {"__getstate__": _config_getstate}, monkeypatch)
    vocab = fake_class("fairseq.data.dictionary", "Dictionary", {}, monkeypatch)
    cfg = config()
    cfg._metadata = metadata()
    cfg._metadata.__dict__.update(ref_type=object, key=None, flags={})
    cfg._parent = None
    cfg._content = {}
    for key, value in (("lr", 0.001), ("arch", "lstm")):
        leaf = node()
        leaf.__dict__.update(_val=value, _parent=cfg, _metadata=None)
        cfg._content[key] = leaf
    dictionary = vocab()
    dictionary.__dict__.update(symbols=["<s>", "<pad>", "a"], count=[1, 1, 5], indices={"<s>": 0, "<pad>": 1, "a": 2})
    state = {f"decoder.rnn.{name}": tensor for name, tensor in nn.LSTM(3, 4).state_dict().items()}
    state["decoder.out.weight"] = torch.randn(5, 4)
    return {"args": argparse.Namespace(lr=[0.25], arch="lstm", dropout=0.1), "cfg": {"model": cfg},
            "model": state, "vocab": dictionary, "extra": {"best": np.float64(0.5), "step": np.int64(7)},
            "epoch": 3}


FOREIGN = ["argparse.Namespace", "fairseq.data.dictionary.Dictionary", "omegaconf.dictconfig.DictConfig"]


@pytest.mark.parametrize("protocol", [2, 4])
def test_foreign_objects_are_read_patched_around_and_kept(protocol: int, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, cli: Any) -> None:
    source = tmp_path / "train.pt"
    checkpoint = training_checkpoint(monkeypatch)
    torch.save(checkpoint, source, pickle_protocol=protocol)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(source, weights_only=True)
    for module in [name for name in sys.modules if name.startswith(("omegaconf", "fairseq"))]:
        monkeypatch.delitem(sys.modules, module)  # the reader must not need them
    with index_file(source) as opened:
        classes = opened.foreign_classes
    for name in FOREIGN:
        assert name in classes, classes
    assert any(name.startswith("numpy.") and name.endswith("scalar") for name in classes), classes
    inspected = cli("inspect", source)
    assert inspected.exit_code == 0, inspected.stderr
    shown = inspected.stdout + inspected.stderr
    assert "holds objects of classes: argparse.Namespace" in shown, shown
    out = tmp_path / "out.pt"
    done = cli("apply", source, *SCHEME, "--seed", "2", "-o", out)
    assert done.exit_code == 0, done.stderr
    old, new = records(source), records(out)
    pickled = next(name for name in old if name.endswith("/data.pkl"))
    assert old[pickled] == new[pickled]  # the objects' bytes, exactly as they were
    changed = {name for name in old if old[name] != new[name]}
    assert changed and all("/data/" in name for name in changed), changed
    with index_file(out) as written:
        arrays = written.arrays(["model/decoder.rnn.weight_hh_l0", "model/decoder.out.weight"])
    with index_file(source) as original:
        before = original.arrays(["model/decoder.rnn.weight_hh_l0", "model/decoder.out.weight"])
    assert not np.array_equal(arrays["model/decoder.rnn.weight_hh_l0"], before["model/decoder.rnn.weight_hh_l0"])
    assert arrays["model/decoder.out.weight"].tobytes() == before["model/decoder.out.weight"].tobytes()
    for args, data in ((["apply", source, *SCHEME, "-o", "-"], None),
                       (["apply", "-", *SCHEME, "-o", tmp_path / "stdin.pt"], source.read_bytes()),
                       (["apply", source, *SCHEME, "--tensors-only", "-o", tmp_path / "o.safetensors"], None),
                       (["apply", source, *SCHEME, "--drop-optimizer-state", "-o", tmp_path / "d.pt"], None)):
        refused = cli(*args, input=data)
        lines = refused.stderr.strip().splitlines()
        assert refused.exit_code == 4 and len(lines) == 1 and lines[0].startswith("error:"), (args, lines)
        assert "argparse.Namespace" in lines[0] and "omegaconf.dictconfig.DictConfig" in lines[0], lines[0]
    assert not (tmp_path / "stdin.pt").exists() and not (tmp_path / "d.pt").exists()


def test_foreign_objects_whole_load_refuses_to_serialize(monkeypatch: pytest.MonkeyPatch) -> None:
    data = save_bytes(training_checkpoint(monkeypatch), 2)
    loaded = load_checkpoint("-", data)
    assert set(FOREIGN) <= set(loaded.foreign_classes)
    assert "model/decoder.rnn.weight_ih_l0" in loaded.tensors
    assert loaded.root["args"].state["arch"] == "lstm"  # an inert record of what the pickle says
    from rnninit_cli.formats.checkpoint import serialize

    with pytest.raises(OutputError, match=r"argparse\.Namespace"):
        serialize(loaded, "pt", {}, io.BytesIO())
