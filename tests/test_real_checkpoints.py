"""Real checkpoints as people write them: Lightning and hand-written training checkpoints with optimizer
state, DataParallel / torch.compile prefixes, tied weights, Hugging Face model folders (single files and
sharded with index files), every float dtype, legacy `.pt` files, and patched zip archives.

Every checkpoint is built with real torch / safetensors calls, and every output is read back with the
official loaders (`torch.load(weights_only=True)`, `safetensors.torch.load_file`, `json.load`, `zipfile`),
never with rnninit's own reader. Rewritten tensors are checked against independent math (orthonormal
columns of the whole `weight_hh`, Glorot bound of the whole `weight_ih`, effective forget bias 1), and
everything else is compared bit for bit with the input.
"""

from __future__ import annotations

import filecmp
import io
import json
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner, Result

from rnninit_cli.cli import app
from rnninit_cli.rewrite import RewriteOptions, rewrite

D, H = 3, 4  # input and hidden size of every recurrent layer here
VOCAB, EMBED = 7, 3
KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
RUNNER = CliRunner()


# ---------------------------------------------------------------------------------------------
# helpers (independent of rnninit)


def run(*args: Any) -> Result:
    """The rnninit CLI in-process; stdout (bytes) and stderr are captured apart."""
    return RUNNER.invoke(app, [str(a) for a in args])


def ok(*args: Any) -> Result:
    result = run(*args)
    assert result.exit_code == 0, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    return result


def warnings_of(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning:")]


def load_pt(source: Path | bytes) -> Any:
    """torch.load with weights_only=True: the official safe loader must accept every output."""
    data = source if isinstance(source, bytes) else source.read_bytes()
    return torch.load(io.BytesIO(data), weights_only=True)


def flatten(node: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of nested dicts / lists / tuples by path ("state_dict/model.rnn.weight_ih_l0")."""
    if isinstance(node, torch.Tensor):
        return {prefix: node}
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, (list, tuple)):
        items = enumerate(node)
    else:
        return {}
    found: dict[str, torch.Tensor] = {}
    for key, value in items:
        found.update(flatten(value, f"{prefix}/{key}" if prefix else str(key)))
    return found


def raw_bytes(tensor: torch.Tensor) -> bytes:
    return bytes(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())


def assert_bit_equal(before: torch.Tensor, after: torch.Tensor, name: str) -> None:
    assert after.dtype == before.dtype, (name, before.dtype, after.dtype)
    assert after.shape == before.shape, (name, before.shape, after.shape)
    assert torch.equal(after, before), name
    assert raw_bytes(after) == raw_bytes(before), name


def assert_same_tree(before: Any, after: Any, *, changed: Collection[str] = (), path: str = "") -> None:
    """`after` has the structure, types and values of `before`; tensors at `changed` paths (rewritten:
    callers check their values) only keep their dtype and shape."""
    assert type(after) is type(before), (path, type(before), type(after))
    if isinstance(before, torch.Tensor):
        if path in changed:
            assert (after.dtype, after.shape) == (before.dtype, before.shape), path
        else:
            assert_bit_equal(before, after, path)
    elif isinstance(before, dict):
        assert list(after) == list(before), path
        for key in before:
            assert_same_tree(before[key], after[key], changed=changed, path=f"{path}/{key}" if path else str(key))
    elif isinstance(before, (list, tuple)):
        assert len(after) == len(before), path
        for index, (old, new) in enumerate(zip(before, after, strict=True)):
            assert_same_tree(old, new, changed=changed, path=f"{path}/{index}" if path else str(index))
    else:
        assert after == before, (path, before, after)


def gram_error(matrix: torch.Tensor) -> float:
    """max |MᵀM − I| in float64."""
    m = matrix.detach().double()
    return (m.T @ m - torch.eye(m.shape[1], dtype=torch.float64)).abs().max().item()


def gram_tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 4 * torch.finfo(dtype).eps)


def check_keras_lstm(tensors: Mapping[str, torch.Tensor], prefix: str, *, input_size: int = D,
                     suffix: str = "_l0", dtype: torch.dtype = torch.float32) -> None:
    """Keras defaults in PyTorch layout, from first principles: Glorot uniform over the whole weight_ih,
    orthonormal columns of the whole weight_hh (gate blocks are not orthogonal), biases 0 except an
    effective forget bias (bias_ih + bias_hh on the f block) of exactly 1."""
    name = {kind: f"{prefix}{kind}{suffix}" for kind in KINDS}
    for kind in KINDS:
        assert tensors[name[kind]].dtype == dtype, (name[kind], tensors[name[kind]].dtype)
    w_hh = tensors[name["weight_hh"]]
    assert tuple(w_hh.shape) == (4 * H, H)
    assert gram_error(w_hh) < gram_tolerance(dtype), (name["weight_hh"], gram_error(w_hh))
    assert min(gram_error(w_hh[k * H:(k + 1) * H]) for k in range(4)) > 0.05  # whole matrix, not per gate

    w_ih = tensors[name["weight_ih"]].double()
    assert tuple(w_ih.shape) == (4 * H, input_size)
    bound = math.sqrt(6.0 / (input_size + 4 * H))
    slack = 1e-6 if dtype in (torch.float32, torch.float64) else torch.finfo(dtype).eps
    assert w_ih.abs().max().item() <= bound * (1 + slack), name["weight_ih"]
    assert w_ih.abs().max().item() > 0.4 * bound, name["weight_ih"]

    b_ih, b_hh = tensors[name["bias_ih"]], tensors[name["bias_hh"]]
    effective = b_ih.double() + b_hh.double()
    for k, gate in enumerate("ifgo"):
        expected = 1.0 if gate == "f" else 0.0
        assert torch.all(effective[k * H:(k + 1) * H] == expected), (prefix, gate, effective)
    assert torch.count_nonzero(b_hh) == 0  # the 1 is in one of the two vectors, not in both


def check_orthogonal_scheme(tensors: Mapping[str, torch.Tensor], names: list[str]) -> None:
    """The `orthogonal` scheme: every (h, ·) gate block of both weights orthogonal on its own, biases 0."""
    for name in names:
        tensor = tensors[name]
        if "weight" in name:
            blocks = [tensor[k * H:(k + 1) * H] for k in range(4)]
            # an (h, d) block with d < h has orthonormal rows, otherwise orthonormal columns
            assert max(gram_error(b if b.shape[0] >= b.shape[1] else b.T) for b in blocks) < 1e-5, name
        else:
            assert torch.count_nonzero(tensor) == 0, name


def lstm_state(prefix: str = "rnn.", *, seed: int = 0, input_size: int = D, num_layers: int = 1,
               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A real nn.LSTM state dict (PyTorch's own init), under a fixed seed, keys prefixed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lstm = torch.nn.LSTM(input_size, H, num_layers=num_layers)
    return {prefix + key: value.detach().clone().to(dtype) for key, value in lstm.state_dict().items()}


def recurrent_names(prefix: str, *, layers: int = 1) -> list[str]:
    return [f"{prefix}{kind}_l{k}" for k in range(layers) for kind in KINDS]


class Net(torch.nn.Module):
    """LSTM -> Linear, trained for one step so that Adam's exp_avg / exp_avg_sq buffers exist."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(D, H)
        self.head = torch.nn.Linear(H, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


def trained(seed: int = 0) -> tuple[Net, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Net()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
        net(torch.randn(5, 2, D)).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
    assert optimizer.state_dict()["state"][0]["exp_avg"].abs().sum() > 0
    return net, optimizer, scheduler


def lightning_checkpoint() -> dict[str, Any]:
    """What pytorch_lightning's Trainer.save_checkpoint writes, with an EMA callback holding a copy."""
    net, optimizer, scheduler = trained()
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    return {
        "epoch": 3,
        "global_step": 7,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": state,
        "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 4, "completed": 3}}}},
        "callbacks": {"EMA": {"decay": 0.999, "ema_state_dict": {k: v.clone() for k, v in state.items()}}},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "hyper_parameters": {"hidden": H, "lr": 1e-3, "name": "tiny", "sizes": [D, H], "flag": None},
    }


def script_checkpoint() -> dict[str, Any]:
    """What a hand-written training loop saves: model, optimizer and step."""
    net, optimizer, _ = trained()
    return {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": 100}


def zip_records(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def assert_valid_zip(path: Path) -> None:
    """testzip() passes, and every record's CRC-32, recomputed here, is right in the central directory,
    the local header and the data descriptor (whichever the writer used)."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        for info in archive.infolist():
            local = data[info.header_offset:info.header_offset + 30]
            assert local[:4] == b"PK\x03\x04", info.filename
            (flags,) = struct.unpack("<H", local[6:8])
            (local_crc,) = struct.unpack("<I", local[14:18])
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_length + extra_length
            assert info.compress_type == zipfile.ZIP_STORED, info.filename
            crc = zlib.crc32(data[start:start + info.compress_size])
            assert crc == info.CRC, info.filename
            if flags & 0x08:
                tail = data[start + info.compress_size:start + info.compress_size + 16]
                tail = tail[4:] if tail[:4] == b"PK\x07\x08" else tail
                assert struct.unpack("<I", tail[:4])[0] == crc, info.filename
                assert local_crc in (0, crc), info.filename
            else:
                assert local_crc == crc, info.filename


def pt_metadata(path: Path | bytes) -> dict[str, str]:
    """The rnninit JSON record of a .pt zip archive, read with zipfile."""
    source = io.BytesIO(path) if isinstance(path, bytes) else path
    with zipfile.ZipFile(source) as archive:
        records = [n for n in archive.namelist() if n.endswith("/rnninit.json")]
        assert len(records) == 1, records
        return json.loads(archive.read(records[0]))


def safetensors_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".rnninit-" in p.name)


# ---------------------------------------------------------------------------------------------
# 1. nested .pt checkpoints


@pytest.fixture
def lightning_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "epoch=3-step=7.ckpt"
    torch.save(lightning_checkpoint(), path)
    return path


@pytest.fixture
def script_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "train.pt"
    torch.save(script_checkpoint(), path)
    return path


def test_lightning_checkpoint_only_selects_by_path(lightning_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.ckpt"
    result = ok("apply", lightning_ckpt, "-s", "keras", "--seed", 5, "--only", "^state_dict/", "-o", out, "--json")
    document = json.loads(result.stdout)
    shown = [param["name"] for layer in document["layers"] for param in layer["params"]]
    assert sorted(shown) == sorted(recurrent_names("state_dict/model.rnn."))
    assert [layer["prefix"] for layer in document["layers"]] == ["state_dict/model.rnn."]

    before, after = load_pt(lightning_ckpt), load_pt(out)
    assert_same_tree(before, after, changed=recurrent_names("state_dict/model.rnn."))
    check_keras_lstm(after["state_dict"], "model.rnn.")
    # the EMA copy under callbacks/ was not selected by --only and is bit-identical (checked above)
    assert torch.equal(after["callbacks"]["EMA"]["ema_state_dict"]["model.rnn.weight_hh_l0"],
                       before["state_dict"]["model.rnn.weight_hh_l0"])
    assert (after["epoch"], after["global_step"]) == (3, 7)
    assert after["hyper_parameters"] == {"hidden": H, "lr": 1e-3, "name": "tiny", "sizes": [D, H], "flag": None}


def test_lightning_checkpoint_without_only_rewrites_every_copy(lightning_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.ckpt"
    result = ok("apply", lightning_ckpt, "-s", "keras", "--seed", 5, "-o", out)
    assert "state_dict/model.rnn." in result.stdout and "callbacks/EMA/ema_state_dict/model.rnn." in result.stdout
    ema = "callbacks/EMA/ema_state_dict/model.rnn."
    before, after = load_pt(lightning_ckpt), load_pt(out)
    assert_same_tree(before, after, changed=recurrent_names("state_dict/model.rnn.") + recurrent_names(ema))
    check_keras_lstm(after["state_dict"], "model.rnn.")
    check_keras_lstm(after["callbacks"]["EMA"]["ema_state_dict"], "model.rnn.")


def test_script_checkpoint_keeps_everything_else(script_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.pt"
    result = ok("apply", script_ckpt, "-s", "keras", "--seed", 1, "-o", out)
    assert "model/rnn." in result.stdout
    before, after = load_pt(script_ckpt), load_pt(out)
    assert_same_tree(before, after, changed=recurrent_names("model/rnn."))
    check_keras_lstm(after["model"], "rnn.")
    assert after["step"] == 100
    assert set(after["optimizer"]["state"]) == set(range(6))  # the Adam buffers are all still there


@pytest.mark.parametrize("container", [list, tuple])
def test_list_or_tuple_of_state_dicts(container: type, tmp_path: Path) -> None:
    path, out = tmp_path / "pair.pt", tmp_path / "out.pt"
    torch.save(container([lstm_state(seed=1), lstm_state(seed=2)]), path)
    found = json.loads(ok("inspect", path, "--json").stdout)
    assert [layer["prefix"] for layer in found["layers"]] == ["0/rnn.", "1/rnn."]

    ok("apply", path, "-s", "keras", "--seed", 2, "--only", "^1/", "-o", out)
    before, after = load_pt(path), load_pt(out)
    assert type(after) is container
    assert_same_tree(before, after, changed=recurrent_names("1/rnn."))
    check_keras_lstm(after[1], "rnn.")


# ---------------------------------------------------------------------------------------------
# 2. optimizer state


@pytest.mark.parametrize(("fixture", "key"), [("lightning_ckpt", "optimizer_states"), ("script_ckpt", "optimizer")])
def test_optimizer_state_is_kept_with_a_warning(request: pytest.FixtureRequest, tmp_path: Path, fixture: str,
                                                key: str) -> None:
    source: Path = request.getfixturevalue(fixture)
    out = tmp_path / "out.pt"
    result = ok("apply", source, "-s", "keras", "--seed", 3, "-o", out)
    stale = [line for line in warnings_of(result) if "optimizer" in line]
    assert len(stale) == 1, result.stderr
    assert key in stale[0] and "stale" in stale[0] and "--drop-optimizer-state" in stale[0]
    before, after = load_pt(source), load_pt(out)
    prefix = "state_dict/model.rnn." if key == "optimizer_states" else "model/rnn."
    changed = recurrent_names(prefix) + (recurrent_names("callbacks/EMA/ema_state_dict/model.rnn.")
                                         if key == "optimizer_states" else [])
    assert_same_tree(before, after, changed=changed)
    assert [path for path in flatten(after[key]) if path.endswith("exp_avg")]


@pytest.mark.parametrize(("fixture", "key", "prefixes"), [
    ("lightning_ckpt", "optimizer_states", ["state_dict/model.rnn.", "callbacks/EMA/ema_state_dict/model.rnn."]),
    ("script_ckpt", "optimizer", ["model/rnn."]),
])
def test_drop_optimizer_state(request: pytest.FixtureRequest, tmp_path: Path, fixture: str, key: str,
                              prefixes: list[str]) -> None:
    source: Path = request.getfixturevalue(fixture)
    out = tmp_path / "out.pt"
    result = ok("apply", source, "-s", "keras", "--seed", 3, "-o", out, "--drop-optimizer-state")
    assert not [line for line in warnings_of(result) if "optimizer" in line], result.stderr
    assert f"reset optimizer state (per-parameter buffers removed, hyper-parameters kept): {key}" in result.stderr
    before, after = load_pt(source), load_pt(out)
    states = lambda checkpoint: checkpoint[key] if isinstance(checkpoint[key], list) else [checkpoint[key]]  # noqa: E731
    assert [state["state"] for state in states(after)] == [{}]  # the moments are gone...
    assert [state["param_groups"] for state in states(after)] == [state["param_groups"] for state in states(before)]
    for checkpoint in (before, after):
        checkpoint[key] = None
    assert_same_tree(before, after, changed=[name for prefix in prefixes for name in recurrent_names(prefix)])
    assert not [path for path in flatten(after) if "exp_avg" in path]
    _net, optimizer, _ = trained()  # ...and torch's optimizer takes what is left, as a resumed run does
    optimizer.load_state_dict(states(load_pt(out))[0])
    assert optimizer.state_dict()["state"] == {} and optimizer.param_groups[0]["lr"] == 1e-3


def test_drop_optimizer_state_writing_safetensors_removes_it(tmp_path: Path) -> None:
    """safetensors holds no optimizer state: there it is removed whole, leaving tensors only."""
    source, out = tmp_path / "script.pt", tmp_path / "out.safetensors"
    torch.save({"model": lstm_state(), "optimizer": trained()[1].state_dict()}, source)
    result = ok("apply", source, "-s", "keras", "--seed", 3, "-o", out, "--drop-optimizer-state")
    assert "removed optimizer state: optimizer" in result.stderr
    from safetensors.torch import load_file

    assert sorted(load_file(out)) == sorted(f"model/{name}" for name in lstm_state())


def test_drop_optimizer_state_without_any_says_so(tmp_path: Path) -> None:
    path, out = tmp_path / "plain.pt", tmp_path / "out.pt"
    torch.save({"model": lstm_state(), "step": 1}, path)
    result = ok("apply", path, "-s", "keras", "--seed", 3, "-o", out, "--drop-optimizer-state")
    assert "no optimizer state to remove" in result.stderr
    assert_same_tree(load_pt(path), load_pt(out), changed=recurrent_names("model/rnn."))


# ---------------------------------------------------------------------------------------------
# 3. DataParallel and torch.compile prefixes


def prefixed_state(wrapper: str) -> dict[str, torch.Tensor]:
    net, _, _ = trained()
    if wrapper == "module.":
        state = torch.nn.DataParallel(net).state_dict()
        assert next(iter(state)).startswith("module.")
        return dict(state)
    return {f"_orig_mod.{k}": v for k, v in net.state_dict().items()}  # what torch.compile's module saves


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("wrapper", ["module.", "_orig_mod."])
def test_wrapper_prefixes(tmp_path: Path, wrapper: str, fmt: str) -> None:
    state = prefixed_state(wrapper)
    path, out = tmp_path / f"model.{fmt}", tmp_path / f"out.{fmt}"
    if fmt == "pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    found = json.loads(ok("inspect", path, "--json").stdout)
    assert [layer["prefix"] for layer in found["layers"]] == [f"{wrapper}rnn."]
    assert found["layers"][0]["cell"] == "lstm" and found["layers"][0]["hidden_size"] == H

    ok("apply", path, "-s", "keras", "--seed", 4, "-o", out)
    after = load_pt(out) if fmt == "pt" else load_file(str(out))
    assert list(after) == list(state) if fmt == "pt" else set(after) == set(state)
    assert_same_tree(dict(state), dict(after) if fmt == "pt" else {k: after[k] for k in state},
                     changed=recurrent_names(f"{wrapper}rnn."))
    check_keras_lstm(after, f"{wrapper}rnn.")


# ---------------------------------------------------------------------------------------------
# 4. tied / shared tensors


@pytest.fixture
def tied_pt(tmp_path: Path) -> Path:
    """Embedding tied to the output head, and rnn.weight_hh_l0 saved a second time under another key
    (the same tensor) and as a view of its f block."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(6)
        emb = torch.nn.Embedding(VOCAB, EMBED)
        head = torch.nn.Linear(EMBED, VOCAB)
        head.weight = emb.weight
        lstm = torch.nn.LSTM(EMBED, H)
    state: dict[str, torch.Tensor] = {}
    state.update({f"emb.{k}": v for k, v in emb.state_dict().items()})
    state.update({f"rnn.{k}": v for k, v in lstm.state_dict().items()})
    state.update({f"head.{k}": v for k, v in head.state_dict().items()})
    state["extra.hh_copy"] = state["rnn.weight_hh_l0"]
    state["extra.hh_forget_view"] = state["rnn.weight_hh_l0"][H:2 * H]
    assert state["emb.weight"].data_ptr() == state["head.weight"].data_ptr()
    path = tmp_path / "tied.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("output", ["file", "stdout"])
def test_tied_weights_stay_tied(tied_pt: Path, tmp_path: Path, output: str) -> None:
    out = tmp_path / "out.pt"
    result = ok("apply", tied_pt, "-s", "keras", "--seed", 8, "-o", "-" if output == "stdout" else out)
    after = load_pt(result.stdout_bytes if output == "stdout" else out)
    before = load_pt(tied_pt)

    assert_bit_equal(before["emb.weight"], after["emb.weight"], "emb.weight")
    assert after["emb.weight"].untyped_storage().data_ptr() == after["head.weight"].untyped_storage().data_ptr()
    assert after["extra.hh_copy"].untyped_storage().data_ptr() == \
        after["rnn.weight_hh_l0"].untyped_storage().data_ptr()

    shared = [line for line in warnings_of(result) if "rnn.weight_hh_l0" in line]
    assert len(shared) == 1, result.stderr
    assert "extra.hh_copy" in shared[0] and "extra.hh_forget_view" in shared[0]
    assert not [line for line in warnings_of(result) if "emb.weight" in line or "head.weight" in line]

    check_keras_lstm(after, "rnn.", input_size=EMBED)
    assert torch.equal(after["extra.hh_copy"], after["rnn.weight_hh_l0"])
    assert torch.equal(after["extra.hh_forget_view"], after["rnn.weight_hh_l0"][H:2 * H])
    untouched = [n for n in before if not n.startswith(("rnn.", "extra."))]
    for name in untouched:
        assert_bit_equal(before[name], after[name], name)


def test_tied_weights_warnings_from_the_library(tied_pt: Path, tmp_path: Path) -> None:
    result = rewrite(str(tied_pt), str(tmp_path / "out.pt"), "keras", RewriteOptions(seed=8))
    shared = [line for line in result.warnings if "shares its storage" in line]
    assert len(shared) == 1
    assert shared[0].startswith("rnn.weight_hh_l0 ") and "extra.hh_copy" in shared[0]


# ---------------------------------------------------------------------------------------------
# 5. model folders


def folder_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Embedding -> 2-layer LSTM -> Linear, as a flat state dict."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        emb = torch.nn.Embedding(VOCAB, EMBED)
        lstm = torch.nn.LSTM(EMBED, H, num_layers=2)
        head = torch.nn.Linear(H, VOCAB)
    state = {"emb.weight": emb.weight.detach().clone()}
    state.update({f"rnn.{k}": v.detach().clone() for k, v in lstm.state_dict().items()})
    state.update({f"head.{k}": v.detach().clone() for k, v in head.state_dict().items()})
    return state


FOLDER_RNN = recurrent_names("rnn.", layers=2)
# layout → (file format, shards as lists of tensor names, or None for a single file)
LAYOUTS: dict[str, tuple[str, list[list[str]] | None]] = {
    "single-safetensors": ("safetensors", None),
    "sharded-safetensors": ("safetensors", [["emb.weight", "head.weight", "head.bias"], FOLDER_RNN]),
    "sharded-bin": ("bin", [["emb.weight", "head.weight", "head.bias"], FOLDER_RNN]),
    "single-bin": ("bin", None),
    # layer 1 of the LSTM spans two shards: weight_ih_l1 / bias_ih_l1 in one, weight_hh_l1 / bias_hh_l1 in the other
    "split-safetensors": ("safetensors", [["emb.weight"], FOLDER_RNN[:6], [*FOLDER_RNN[6:], "head.weight",
                                                                           "head.bias"]]),
    "split-bin": ("bin", [["emb.weight"], FOLDER_RNN[:6], [*FOLDER_RNN[6:], "head.weight", "head.bias"]]),
}


def write_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    if path.suffix == ".safetensors":
        save_file(tensors, str(path), metadata={"format": "pt"})  # as transformers writes them
    else:
        torch.save(tensors, path)


def read_shard(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path)) if path.suffix == ".safetensors" else dict(load_pt(path))


def make_folder(path: Path, layout: str, seed: int = 0) -> Path:
    """A Hugging Face style model folder with config.json and tokenizer.json next to the weights."""
    fmt, shards = LAYOUTS[layout]
    state = folder_state(seed)
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "tiny-lstm", "hidden_size": H}, indent=2) + "\n")
    (path / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"vocab": {"a": 0}}}) + "\n")
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    if shards is None:
        write_shard(state, path / f"{stem}.{ext}")
        return path
    assert sorted(name for shard in shards for name in shard) == sorted(state)
    weight_map = {}
    for index, names in enumerate(shards, 1):
        file_name = f"{stem}-{index:05d}-of-{len(shards):05d}.{ext}"
        write_shard({name: state[name] for name in names}, path / file_name)
        weight_map.update(dict.fromkeys(names, file_name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index_file = path / f"{stem}.{ext}.index.json"
    index_file.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return path


def rnn_shards(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")
                  and any(name.startswith("rnn.") for name in read_shard(p)))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_model_folder(tmp_path: Path, layout: str) -> None:
    source, out = make_folder(tmp_path / "model", layout), tmp_path / "out"
    found = json.loads(ok("inspect", source, "--json").stdout)
    assert [(layer["prefix"], layer["layer"], layer["input_size"]) for layer in found["layers"]] == \
        [("rnn.", 0, EMBED), ("rnn.", 1, H)]

    document = json.loads(ok("apply", source, "-s", "keras", "--seed", 3, "-o", out, "--json").stdout)
    assert document["seed"] == 3 and len(document["layers"]) == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in source.iterdir())

    rewritten = rnn_shards(source)
    merged_before: dict[str, torch.Tensor] = {}
    merged_after: dict[str, torch.Tensor] = {}
    for file in sorted(source.iterdir()):
        if file.name in rewritten:
            before, after = read_shard(file), read_shard(out / file.name)
            assert list(after) == list(before) if file.suffix == ".bin" else set(after) == set(before)
            merged_before.update(before)
            merged_after.update(after)
            metadata = safetensors_metadata(out / file.name) if file.suffix == ".safetensors" else \
                pt_metadata(out / file.name)
            assert metadata["rnninit.seed"] == "3" and metadata["rnninit.scheme"] == "keras"
            if file.suffix == ".safetensors":
                assert metadata["format"] == "pt"
        else:
            assert filecmp.cmp(file, out / file.name, shallow=False), file.name
    assert sorted(merged_after) == sorted(merged_before)
    assert_same_tree(merged_before, merged_after, changed=FOLDER_RNN)
    check_keras_lstm(merged_after, "rnn.", input_size=EMBED, suffix="_l0")
    check_keras_lstm(merged_after, "rnn.", input_size=H, suffix="_l1")

    index = next(out.glob("*.index.json"), None)
    if index is not None:
        with open(index) as handle:
            weight_map = json.load(handle)["weight_map"]
        assert sorted(weight_map) == sorted(folder_state())

    shown = json.loads(ok("inspect", out, "--json").stdout)
    assert [(layer["prefix"], layer["layer"]) for layer in shown["layers"]] == [("rnn.", 0), ("rnn.", 1)]
    hh = next(p for p in shown["layers"][1]["params"] if p["kind"] == "weight_hh")
    assert hh["name"] == "rnn.weight_hh_l1" and hh["shape"] == [4 * H, H]
    if LAYOUTS[layout][1] is None:
        assert shown["metadata"]["rnninit.seed"] == "3"


@pytest.mark.parametrize("layout", ["sharded-safetensors", "single-bin"])
def test_model_folder_output_exists(tmp_path: Path, layout: str) -> None:
    source, out = make_folder(tmp_path / "model", layout), tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run("apply", source, "-s", "keras", "--seed", 3, "-o", out)
    assert result.exit_code == 4, result.stderr
    assert result.stderr.startswith("error: ") and "already exists" in result.stderr and "--force" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # --force replaces only a folder holding nothing but what the new folder will hold (issue 9)
    result = run("apply", source, "-s", "keras", "--seed", 3, "-o", out, "--force")
    assert result.exit_code == 4 and "keep.txt" in result.stderr, result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    (out / "keep.txt").unlink()
    out.rmdir()
    ok("apply", source, "-s", "pytorch", "--seed", 1, "-o", out)  # an earlier output
    ok("apply", source, "-s", "keras", "--seed", 3, "-o", out, "--force")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in source.iterdir())
    for name in rnn_shards(source):
        check_keras_lstm(read_shard(out / name), "rnn.", input_size=EMBED)
    assert leftovers(tmp_path) == []


def test_failing_folder_run_leaves_nothing_behind(tmp_path: Path) -> None:
    source = make_folder(tmp_path / "model", "sharded-safetensors")
    os.mkfifo(source / "vocab.fifo")  # copying a FIFO is refused: the run fails midway
    result = run("apply", source, "-s", "keras", "--seed", 3, "-o", tmp_path / "new")
    assert result.exit_code == 4 and result.stderr.startswith("error: cannot write"), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert not (tmp_path / "new").exists()
    assert leftovers(tmp_path) == []

    existing = make_folder(tmp_path / "existing", "sharded-safetensors", seed=9)  # what --force may replace
    snapshot = {p.name: p.read_bytes() for p in existing.iterdir()}
    result = run("apply", source, "-s", "keras", "--seed", 3, "-o", existing, "--force")
    assert result.exit_code == 4 and result.stderr.startswith("error: cannot write"), result.stderr
    assert {p.name: p.read_bytes() for p in existing.iterdir()} == snapshot
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["file", "folder"])
def test_non_contiguous_recurrent_tensor(tmp_path: Path, where: str) -> None:
    """A transposed (non-contiguous) weight_hh cannot be byte-patched: a file falls back to a full load,
    a model folder re-saves that shard; both give the values of the contiguous case."""
    state = folder_state(seed=4)
    state["rnn.weight_hh_l0"] = state["rnn.weight_hh_l0"].t().contiguous().t()
    assert not state["rnn.weight_hh_l0"].is_contiguous()
    contiguous = tmp_path / "contiguous.pt"
    torch.save(folder_state(seed=4), contiguous)
    ok("apply", contiguous, "-s", "keras", "--seed", 5, "-o", tmp_path / "reference.pt")
    reference = load_pt(tmp_path / "reference.pt")
    if where == "file":
        source, out = tmp_path / "model.pt", tmp_path / "out.pt"
        torch.save(state, source)
    else:
        source, out = tmp_path / "model", tmp_path / "out"
        source.mkdir()
        torch.save(state, source / "pytorch_model.bin")
        (source / "config.json").write_text("{}\n")
    ok("apply", source, "-s", "keras", "--seed", 5, "-o", out)
    written = out if where == "file" else out / "pytorch_model.bin"
    after = load_pt(written)
    assert_same_tree(state, dict(after), changed=FOLDER_RNN)
    check_keras_lstm(after, "rnn.", input_size=EMBED)
    check_keras_lstm(after, "rnn.", input_size=H, suffix="_l1")
    for name in FOLDER_RNN:
        assert_bit_equal(reference[name], after[name], name)
    assert pt_metadata(written)["rnninit.seed"] == "5"
    if where == "folder":
        assert filecmp.cmp(source / "config.json", out / "config.json", shallow=False)
        assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# 6. dtypes


def dtype_state(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """An LSTM in `dtype` next to a BatchNorm-like int64 counter and a bool mask."""
    state = lstm_state(seed=10, dtype=dtype)
    state["norm.num_batches_tracked"] = torch.tensor(123456789012, dtype=torch.int64)
    state["norm.running_mean"] = torch.linspace(-1, 1, H, dtype=dtype)
    state["attn.mask"] = torch.tensor([True, False, True, True, False])
    return state


def save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path)) if path.suffix == ".safetensors" else dict(load_pt(path))


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: str(d).removeprefix("torch."))
def test_dtypes_are_kept(tmp_path: Path, fmt: str, dtype: torch.dtype) -> None:
    path, out = tmp_path / f"model.{fmt}", tmp_path / f"out.{fmt}"
    state = dtype_state(dtype)
    save_state(state, path)
    ok("apply", path, "-s", "keras", "--seed", 11, "-o", out)
    after = load_state(out)
    assert set(after) == set(state)
    for name, tensor in state.items():
        assert after[name].dtype == tensor.dtype, name
    assert_same_tree({k: state[k] for k in sorted(state)}, {k: after[k] for k in sorted(state)},
                     changed=recurrent_names("rnn."))
    check_keras_lstm(after, "rnn.", dtype=dtype)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_low_precision_values_are_float32_values_cast(tmp_path: Path, fmt: str) -> None:
    """Values are computed in float32 and then cast: the same seed and names give, in float16 / bfloat16,
    exactly the float32 result rounded to that dtype."""
    results = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        path, out = tmp_path / f"{dtype}.{fmt}", tmp_path / f"{dtype}-out.{fmt}"
        save_state(dtype_state(dtype), path)
        ok("apply", path, "-s", "keras", "--seed", 12, "-o", out)
        results[dtype] = load_state(out)
    for dtype in (torch.float16, torch.bfloat16):
        for name in recurrent_names("rnn."):
            assert_bit_equal(results[torch.float32][name].to(dtype), results[dtype][name], f"{dtype} {name}")


# ---------------------------------------------------------------------------------------------
# 7. byte patching and full load give the same values; each is byte-deterministic


def test_patch_and_full_load_paths_agree_on_pt(script_ckpt: Path, tmp_path: Path) -> None:
    names = recurrent_names("model/rnn.")
    runs: dict[str, list[Any]] = {}
    for attempt in (1, 2):
        patch = tmp_path / f"patch{attempt}.pt"
        converted = tmp_path / f"converted{attempt}.safetensors"
        dropped = tmp_path / f"dropped{attempt}.pt"
        ok("apply", script_ckpt, "-s", "keras", "--seed", 9, "-o", patch)
        ok("apply", script_ckpt, "-s", "keras", "--seed", 9, "-o", converted, "--tensors-only")
        stdout = ok("apply", script_ckpt, "-s", "keras", "--seed", 9, "-o", "-", "-q").stdout_bytes
        ok("apply", script_ckpt, "-s", "keras", "--seed", 9, "-o", dropped, "--drop-optimizer-state")
        for key, data in (("patch", patch.read_bytes()), ("converted", converted.read_bytes()), ("stdout", stdout),
                          ("dropped", dropped.read_bytes())):
            runs.setdefault(key, []).append(data)
    for key, (first, second) in runs.items():
        assert first == second, f"{key}: two runs gave different bytes"

    patched = flatten(load_pt(runs["patch"][0]))
    check_keras_lstm(patched, "model/rnn.")
    converted_tensors = load_file(str(tmp_path / "converted1.safetensors"))
    assert sorted(converted_tensors) == sorted(flatten(load_pt(script_ckpt)))  # every tensor, non-tensors dropped
    for other in (converted_tensors, flatten(load_pt(runs["stdout"][0])), flatten(load_pt(runs["dropped"][0]))):
        for name in names:
            assert_bit_equal(patched[name], other[name], name)

    # the patched copy really is the input's archive with only the rewritten records changed
    source, output = zip_records(script_ckpt), zip_records(tmp_path / "patch1.pt")
    added = [name for name in output if name not in source]
    assert len(added) == 1 and added[0].endswith("/rnninit.json")
    changed = [name for name in source if source[name] != output[name]]
    assert len(changed) == len(names) and all("/data/" in name for name in changed)
    assert_same_tree(load_pt(script_ckpt), load_pt(runs["stdout"][0]), changed=names)


def test_patch_and_full_load_paths_agree_on_safetensors(tmp_path: Path) -> None:
    state = lstm_state(seed=13) | {"head.weight": torch.randn(2, H, generator=torch.Generator().manual_seed(1))}
    flat_pt, path = tmp_path / "flat.pt", tmp_path / "model.safetensors"
    torch.save(state, flat_pt)
    save_file(state, str(path), metadata={"format": "pt"})
    outputs: dict[str, list[bytes]] = {}
    for attempt in (1, 2):
        patch, full = tmp_path / f"patch{attempt}.safetensors", tmp_path / f"full{attempt}.pt"
        ok("apply", path, "-s", "keras", "--seed", 14, "-o", patch)
        ok("apply", path, "-s", "keras", "--seed", 14, "-o", full)
        stdout = ok("apply", path, "-s", "keras", "--seed", 14, "-o", "-", "-q").stdout_bytes
        ok("apply", flat_pt, "-s", "keras", "--seed", 14, "-o", tmp_path / f"pt{attempt}.pt")
        for key, data in (("patch", patch.read_bytes()), ("full", full.read_bytes()), ("stdout", stdout),
                          ("pt", (tmp_path / f"pt{attempt}.pt").read_bytes())):
            outputs.setdefault(key, []).append(data)
    for key, (first, second) in outputs.items():
        assert first == second, f"{key}: two runs gave different bytes"

    patched = load_file(str(tmp_path / "patch1.safetensors"))
    check_keras_lstm(patched, "rnn.")
    assert_bit_equal(state["head.weight"], patched["head.weight"], "head.weight")
    assert safetensors_metadata(tmp_path / "patch1.safetensors")["format"] == "pt"
    from safetensors.torch import load

    for other in (load_pt(outputs["full"][0]), load(outputs["stdout"][0]), load_pt(outputs["pt"][0])):
        for name in recurrent_names("rnn."):
            assert_bit_equal(patched[name], other[name], name)
        assert_bit_equal(state["head.weight"], other["head.weight"], "head.weight")


# ---------------------------------------------------------------------------------------------
# 8. legacy (non-zip) .pt


def test_legacy_pt_takes_the_full_load_path(tmp_path: Path) -> None:
    legacy, modern = tmp_path / "legacy.pt", tmp_path / "modern.pt"
    checkpoint = script_checkpoint()
    torch.save(checkpoint, legacy, _use_new_zipfile_serialization=False)
    torch.save(checkpoint, modern)
    assert not legacy.read_bytes().startswith(b"PK")

    found = json.loads(ok("inspect", legacy, "--json").stdout)
    assert [layer["prefix"] for layer in found["layers"]] == ["model/rnn."]

    out, reference = tmp_path / "out.pt", tmp_path / "reference.pt"
    result = ok("apply", legacy, "-s", "keras", "--seed", 15, "-o", out)
    assert [line for line in warnings_of(result) if "optimizer" in line]
    ok("apply", modern, "-s", "keras", "--seed", 15, "-o", reference)
    after = load_pt(out)
    assert_same_tree(load_pt(legacy), after, changed=recurrent_names("model/rnn."))
    check_keras_lstm(after["model"], "rnn.")
    expected = flatten(load_pt(reference))
    for name in recurrent_names("model/rnn."):
        assert_bit_equal(expected[name], flatten(after)[name], name)
    assert pt_metadata(out)["rnninit.seed"] == "15"


# ---------------------------------------------------------------------------------------------
# 9. patched .pt archives are valid zips, and can be patched again


def test_patched_pt_is_a_valid_zip_and_can_be_reapplied(lightning_ckpt: Path, tmp_path: Path) -> None:
    assert_valid_zip(lightning_ckpt)
    first, second, third = tmp_path / "first.ckpt", tmp_path / "second.ckpt", tmp_path / "third.ckpt"
    ok("apply", lightning_ckpt, "-s", "keras", "--seed", 21, "-o", first)
    assert_valid_zip(first)
    assert pt_metadata(first)["rnninit.seed"] == "21"

    ok("apply", first, "-s", "orthogonal", "--seed", 22, "-o", second)
    assert_valid_zip(second)
    assert second.stat().st_size == first.stat().st_size  # the rnninit record was overwritten in place
    assert list(zip_records(second)) == list(zip_records(first))
    shown = json.loads(ok("inspect", second, "--json").stdout)
    assert shown["metadata"]["rnninit.seed"] == "22" and shown["metadata"]["rnninit.scheme"] == "orthogonal"

    ok("apply", second, "-s", "keras", "--seed", 23, "--only", "^state_dict/", "-o", third)
    assert_valid_zip(third)
    shown = json.loads(ok("inspect", third, "--json").stdout)
    assert shown["metadata"]["rnninit.seed"] == "23" and shown["metadata"]["rnninit.only"] == "^state_dict/"

    ema = recurrent_names("callbacks/EMA/ema_state_dict/model.rnn.")
    second_tree, third_tree = load_pt(second), load_pt(third)
    assert_same_tree(load_pt(lightning_ckpt), second_tree, changed=recurrent_names("state_dict/model.rnn.") + ema)
    assert_same_tree(second_tree, third_tree, changed=recurrent_names("state_dict/model.rnn."))
    check_keras_lstm(third_tree["state_dict"], "model.rnn.")
    check_orthogonal_scheme(flatten(third_tree), ema)  # the EMA copy keeps what the second run wrote


def test_reapplying_a_full_load_output(script_ckpt: Path, tmp_path: Path) -> None:
    """A .pt written by the full-load path (its rnninit record is not padded) can be rewritten again."""
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    ok("apply", script_ckpt, "-s", "keras", "--seed", 31, "-o", first, "--drop-optimizer-state")
    ok("apply", first, "-s", "orthogonal", "--seed", 32, "-o", second)
    assert_valid_zip(second)
    assert pt_metadata(second)["rnninit.seed"] == "32"
    assert_same_tree(load_pt(first), load_pt(second), changed=recurrent_names("model/rnn."))
    check_orthogonal_scheme(load_pt(second)["model"], recurrent_names("rnn."))

