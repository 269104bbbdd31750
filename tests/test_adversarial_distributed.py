"""Adversarial tests for issue 14 (init_ on sharded / meta-device modules, torch.distributed.checkpoint folders).

Inputs made up here, not by the code's authors. Defects are `xfail(strict=True)` tests that state what should
happen; the other tests are attacks that found nothing but cover what tests/test_distributed_init.py and
tests/formats/test_dcp.py do not: 3 ranks (rows split unevenly, one rank with no rows), different thread counts per
rank, chrono's shared draws and per=matrix rules on shards, DTensors mixed with plain parameters, weight_norm under
FSDP2, a 2-D (HSDP) mesh on 4 ranks, parameters partly on the meta device; DCP folders written one file per item or
by several threads, parametrized and declared (transposed) layers in a DCP folder, symbolic links and FIFOs inside
it.

The ranks are this file run as a script (`python test_adversarial_distributed.py RANK WORLD STORE OUT CASES`), each
under a deadline and a memory limit; subprocesses that read hostile folders run under an address-space limit, so a
memory blow-up fails the test instead of the machine.
"""

from __future__ import annotations

import io
import os
import pickle
import resource
import shutil
import subprocess
import sys
import warnings
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from ranks import wait_for_ranks
from torch import nn

import rnninit_cli
from rnninit_cli import errors
from rnninit_cli.errors import MetaDeviceError, PlacementError, RnnInitError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

REPO = Path(__file__).resolve().parents[1]
SEED = 4242
CHRONO_ONLY = r"^(lstm|gru|lcell|gcell)\."  # chrono applies to LSTM/GRU layers only
# (scheme, rules, only): per=gate and per=matrix schemes, chrono (b_i = -b_f: one stream drawn by two blocks),
# a per=matrix rule inside a per=gate scheme, and per=matrix weight_ih with chrono rules on pytorch's scheme
CASES: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "keras": ("keras", (), None),
    "keras-gate": ("keras-gate", (), None),
    "chrono": ("chrono(tmax=50)", (), CHRONO_ONLY),
    "gate+matrix": ("keras-gate", ("weight_hh=orthogonal(per=matrix)",), None),
    "pytorch+rules": ("pytorch", ("weight_ih=xavier_uniform(per=matrix)", "bias_ih.f=chrono(10)",
                                  "bias_ih.i=chrono(10, negate=true)"), CHRONO_ONLY),
}
DEADLINE_S = 150
COLLECTIVE_TIMEOUT_S = 40
RANK_MEMORY = 3 << 30
HOSTILE_MEMORY = 2 << 30  # address space for a CLI run on a hostile folder: linear reading needs far less


class Net(nn.Module):
    """Rows split unevenly over 3 ranks: LSTM 28 rows (10/10/8, a cut inside the f block), weight_hr 3 rows (1/1/1),
    GRU 15 (5/5/5), RNN 4 (2/2/0), LSTMCell 8 (3/3/2), GRUCell 3 (1/1/1), RNNCell 1 (1/0/0)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3)
        self.gru = nn.GRU(6, 5)
        self.rnn = nn.RNN(3, 4)
        self.lcell = nn.LSTMCell(3, 2)
        self.gcell = nn.GRUCell(2, 1)
        self.rcell = nn.RNNCell(3, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.lstm(inputs[..., :5])[0].sum() + self.gru(inputs)[0].sum() + self.rnn(inputs[..., :3])[0].sum()


def make_model() -> Net:
    torch.manual_seed(0)
    return Net()


def _init(model: Any, case: str) -> None:
    scheme, rules, only = CASES[case]
    rnninit_cli.init_(model, scheme, seed=SEED, rules=rules, only=only)


def reference(case: str) -> dict[str, torch.Tensor]:
    model = make_model()
    _init(model, case)
    return {name: value.detach().clone() for name, value in model.named_parameters()}


# --- the ranks -----------------------------------------------------------------------------------------------------


def _gather(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().clone()
            for name, value in model.named_parameters()}


def _distribute(model: nn.Module, mesh: Any, placements: list[Any], skip: tuple[str, ...] = ()) -> nn.Module:
    from torch.distributed.tensor import distribute_tensor

    for module_name, module in list(model.named_modules()):
        if module_name in skip:
            continue
        for name, parameter in list(module.named_parameters(recurse=False)):
            module.register_parameter(name, nn.Parameter(distribute_tensor(parameter.detach(), mesh, placements)))
    return model


def _fully_shard(model: Net, mesh: Any, **options: Any) -> Net:
    from torch.distributed.fsdp import fully_shard

    for part in (model.lstm, model.gru, model.rnn, model.lcell, model.gcell, model.rcell, model):
        fully_shard(part, mesh=mesh, **options)
    return model


def _attempt(results: dict[str, Any], key: str, model: nn.Module, case: str) -> None:
    try:
        _init(model, case)
        results[key] = _gather(model)
    except Exception as error:  # what happened is the result
        results[key] = (type(error).__name__, str(error))


def _run_cases(cases: list[str], world: int) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard

    mesh = init_device_mesh("cpu", (world,))
    results: dict[str, Any] = {}
    if "uneven" in cases:
        for case in CASES:
            # the GRU and the RNNCell stay plain tensors: written whole, beside sharded ones
            _attempt(results, f"mixed:{case}", _distribute(make_model(), mesh, [Shard(0)], skip=("gru", "rcell")), case)
            _attempt(results, f"fsdp2:{case}", _fully_shard(make_model(), mesh), case)
    if "noreshard" in cases:
        # FSDP2 keeps the unsharded parameters registered after a forward with reshard_after_forward=False
        model = _fully_shard(make_model(), mesh, reshard_after_forward=False)
        model(torch.randn(2, 1, 6))
        results["noreshard:registered"] = sorted({type(value).__name__ for value in model.parameters()})
        try:
            _init(model, "keras-gate")
        except Exception as error:
            results["noreshard:error"] = (type(error).__name__, str(error))
        for part in (model.lstm, model.gru, model.rnn, model.lcell, model.gcell, model.rcell, model):
            part.reshard()
        results["noreshard:values"] = _gather(model)
    if "weight_norm" in cases:
        for kind in ("parametrizations", "old"):
            model = make_model()
            if kind == "parametrizations":
                torch.nn.utils.parametrizations.weight_norm(model.lstm, "weight_hh_l0")
            else:
                torch.nn.utils.weight_norm(model.gru, "weight_hh_l0")
            before = _gather(model)
            _fully_shard(model, mesh)
            try:
                _init(model, "keras-gate")
                results[f"weight_norm:{kind}"] = ("no error", "")
            except Exception as error:
                results[f"weight_norm:{kind}"] = (type(error).__name__, str(error))
            after = _gather(model)
            results[f"weight_norm:{kind}:changed"] = [name for name in after if not torch.equal(after[name],
                                                                                                 before[name])]
    if "hsdp" in cases:
        mesh2 = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
        for case in ("keras", "keras-gate", "chrono"):
            model = _fully_shard(make_model(), mesh2)  # HSDP: (Replicate(), Shard(0))
            results["hsdp:placements"] = str(model.lstm.weight_hh_l0.placements)
            _attempt(results, f"hsdp:{case}", model, case)
            _attempt(results, f"shard-shard:{case}", _distribute(make_model(), mesh2, [Shard(0), Shard(0)]), case)
            _attempt(results, f"shard-rep:{case}", _distribute(make_model(), mesh2, [Shard(0), Replicate()]), case)
    return results


def run_rank(rank: int, world: int, store: str, out: Path, cases: list[str]) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    torch.set_num_threads(1 + rank % 2)  # ranks at 1 and 2 threads must write the same bits
    results = _run_cases(cases, world)
    torch.save(results, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _limit(limit: int) -> Any:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def _launch(folder: Path, world: int, cases: list[str]) -> list[dict[str, Any]]:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([sys.executable, __file__, str(rank), str(world), str(folder / "store"), str(folder),
                                   ",".join(cases)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, preexec_fn=_limit(RANK_MEMORY))
                 for rank in range(world)]
    wait_for_ranks(processes, DEADLINE_S)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


@pytest.fixture(scope="module")
def three_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _launch(tmp_path_factory.mktemp("three_ranks"), 3, ["uneven", "noreshard", "weight_norm"])


def _differences(results: list[dict[str, Any]], key: str, case: str) -> list[tuple[int, str]]:
    expected = reference(case)
    found = []
    for rank, result in enumerate(results):
        value = result[key]
        assert isinstance(value, dict), (rank, key, value)
        found += [(rank, name) for name, tensor in expected.items() if not torch.equal(value[name], tensor)]
    return found


# --- init_ on shards: attacks that found nothing ---------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_three_uneven_ranks_write_what_one_process_writes(three_ranks: list[dict[str, Any]], case: str) -> None:
    """Shard(0) DTensors beside plain parameters, and FSDP2, on 3 ranks at 1 and 2 threads: the assembled tensors
    are bit for bit single-process init_, for chrono's shared draws and per=matrix rules too."""
    for layout in ("mixed", "fsdp2"):
        assert not _differences(three_ranks, f"{layout}:{case}", case), layout


def test_weight_norm_under_fsdp2_is_refused_and_untouched(three_ranks: list[dict[str, Any]]) -> None:
    for result in three_ranks:
        for kind in ("parametrizations", "old"):
            kind_name, message = result[f"weight_norm:{kind}"]
            assert kind_name == PlacementError.__name__, message
            assert "before sharding" in message and "\n" not in message
            assert result[f"weight_norm:{kind}:changed"] == []


def test_partly_meta_module_is_refused_before_anything_is_written() -> None:
    torch.manual_seed(0)
    model = nn.Module()
    model.gru = nn.GRU(3, 4)
    with torch.device("meta"):
        model.lstm = nn.LSTM(3, 2)
    before = {name: value.detach().clone() for name, value in model.gru.named_parameters()}
    with pytest.raises(MetaDeviceError, match=r"to_empty\(device=\.\.\.\)"):
        rnninit_cli.init_(model, "keras", seed=SEED)
    assert all(torch.equal(value, before[name]) for name, value in model.gru.named_parameters())
    rnninit_cli.init_(model, "keras", seed=SEED, only=r"^gru\.")  # the real part alone is written
    assert not any(torch.equal(value, before[name]) for name, value in model.gru.named_parameters()
                   if "weight" in name)


# --- init_ on shards: defects ----------------------------------------------------------------------------------------


def test_fsdp2_unsharded_after_forward_is_written_or_refused(three_ranks: list[dict[str, Any]]) -> None:
    original = {name: value.detach().clone() for name, value in make_model().named_parameters()}
    for rank, result in enumerate(three_ranks):
        assert "Parameter" in result["noreshard:registered"], result["noreshard:registered"]  # really unsharded
        error = result.get("noreshard:error")
        if error is not None:  # a refusal is fine, if typed and nothing changed
            typed = {name for name, value in vars(errors).items() if isinstance(value, type)
                     and issubclass(value, RnnInitError)}
            assert error[0] in typed and "\n" not in error[1], error
            assert all(torch.equal(result["noreshard:values"][name], value) for name, value in original.items())
        else:
            assert not _differences([result], "noreshard:values", "keras-gate"), f"rank {rank}: init_ was lost"


@pytest.mark.slow
def test_hsdp_two_dimensional_mesh_on_four_ranks(tmp_path: Path) -> None:
    """HSDP (Replicate(), Shard(0)) on a 2 x 2 mesh, and distribute_tensor with (Shard(0), Shard(0)) and
    (Shard(0), Replicate()): bit for bit single-process init_."""
    results = _launch(tmp_path, 4, ["hsdp"])
    assert all(result["hsdp:placements"] == "(Replicate(), Shard(dim=0))" for result in results)
    for case in ("keras", "keras-gate", "chrono"):
        for layout in ("hsdp", "shard-shard", "shard-rep"):
            assert not _differences(results, f"{layout}:{case}", case), (layout, case)


# --- DCP folders ---------------------------------------------------------------------------------------------------


def _rnninit(*args: object, limit: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rnninit_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, check=False, cwd=REPO, preexec_fn=None if limit is None else _limit(limit))


def _dcp_save(state: dict[str, Any], folder: Path, **writer: Any) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.filesystem import FileSystemWriter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, storage_writer=FileSystemWriter(folder, **writer), no_dist=True)
    return folder


def _to_pt(folder: Path, target: Path) -> dict[str, Any]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_to_torch_save(folder, target)
    return torch.load(target, weights_only=False)


def _flat(state: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    found = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            found[f"{prefix}{key}"] = value
        elif isinstance(value, dict):
            found.update(_flat(value, f"{prefix}{key}."))
    return found


def _raw(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _lstm_state(hidden: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {name: value.detach().clone() for name, value in nn.LSTM(4, hidden, 2).state_dict().items()}


def _check_only_patched(source: Path, output: Path, names: list[str]) -> None:
    """Bytes outside the rewritten chunks' elements and CRC-32 fields are the input's; patched archives are valid."""
    import numpy as np

    from rnninit_cli.formats.dcp import open_dcp

    allowed: dict[str, list[tuple[int, int]]] = {}
    with open_dcp(source) as folder:
        for name in names:
            for stored in folder.stored_chunks(name):
                allowed.setdefault(stored.chunk.file, []).append((stored.first, stored.stop))
                allowed[stored.chunk.file] += [(position, position + 4) for position in stored.record.crc_positions]
                blob = (output / stored.chunk.file).read_bytes()[stored.chunk.start:stored.chunk.start
                                                                 + stored.chunk.length]
                assert zipfile.ZipFile(io.BytesIO(blob)).testzip() is None
    for path in source.iterdir():
        before = np.frombuffer(path.read_bytes(), np.uint8)
        after = np.frombuffer((output / path.name).read_bytes(), np.uint8)
        assert before.size == after.size
        outside = before != after
        for start, stop in allowed.get(path.name, []):
            outside[start:stop] = False
        assert not outside.any(), path.name


@pytest.mark.parametrize("writer", [{"single_file_per_rank": False}, {"thread_count": 3}],
                         ids=["file-per-item", "three-threads"])
def test_dcp_written_per_item_or_by_threads(writer: dict[str, Any], tmp_path: Path) -> None:
    """Folders of one file per item, or one per writer thread: apply writes what init_ writes into the same
    tensors (named by their path in the saved state dict, "lstm/weight_ih_l0", as in the folder's .pt), and only the
    rewritten chunks' bytes change."""
    source = _dcp_save({"lstm": _lstm_state()}, tmp_path / "in", **writer)
    assert len([path for path in source.iterdir() if path.suffix == ".distcp"]) > 1
    result = _rnninit("apply", source, "--scheme", "keras", "--seed", SEED, "-o", tmp_path / "out", "-q")
    assert result.returncode == 0, result.stderr
    before = _flat(_to_pt(source, tmp_path / "in.pt"))
    after = _flat(_to_pt(tmp_path / "out", tmp_path / "out.pt"))
    expected = {name.replace(".", "/", 1): value.clone() for name, value in before.items()}  # {"lstm": {...}}
    rnninit_cli.init_(expected, "keras", seed=SEED)
    assert {name: _raw(value) for name, value in after.items()} == \
        {name.replace("/", ".", 1): _raw(value) for name, value in expected.items()}
    _check_only_patched(source, tmp_path / "out", [name.replace(".", "/", 1) for name in before
                                                   if not torch.equal(before[name], after[name])])


def test_dcp_views_and_declared_layouts_equal_the_pt_apply(tmp_path: Path) -> None:
    """weight_norm (parametrizations and old g/v) and a declared transposed GRU in a DCP folder: apply writes what it
    writes into the same tensors saved as one flat .pt (same names)."""
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 3)
    torch.nn.utils.parametrizations.weight_norm(lstm, "weight_hh_l0")
    gru = nn.GRU(5, 2)
    state = {f"lstm.{name}": value.detach().clone() for name, value in lstm.state_dict().items()}
    state |= {"enc.Wx": gru.weight_ih_l0.detach().t().contiguous(),
              "enc.Wh": gru.weight_hh_l0.detach().t().contiguous(),
              "enc.b": gru.bias_ih_l0.detach().clone(), "old.weight_hh_l0_g": torch.rand(12, 1),
              "old.weight_hh_l0_v": torch.randn(12, 3), "old.weight_ih_l0": torch.randn(12, 2),
              "old.bias_ih_l0": torch.randn(12), "old.bias_hh_l0": torch.randn(12)}
    source = _dcp_save(state, tmp_path / "in")
    torch.save(state, tmp_path / "in.pt")
    layout = "cell=gru weight_ih=enc.Wx weight_hh=enc.Wh bias_ih=enc.b transposed=weight_ih,weight_hh"
    for argument, output in ((source, tmp_path / "out"), (tmp_path / "in.pt", tmp_path / "out.pt")):
        result = _rnninit("apply", argument, "--scheme", "keras-gate", "--seed", SEED, "--layout", layout,
                          "-o", output, "-q")
        assert result.returncode == 0, result.stderr
    written = _to_pt(tmp_path / "out", tmp_path / "converted.pt")
    expected = torch.load(tmp_path / "out.pt", weights_only=True)
    assert set(written) == set(expected)
    assert all(torch.equal(written[name], expected[name]) for name in expected)
    assert all(not torch.equal(expected[name], state[name]) for name in state)  # every tensor was rewritten


def test_dcp_symlink_outside_and_fifo_inside(tmp_path: Path) -> None:
    """A .distcp that is a symbolic link leading outside is refused on reading; a FIFO beside the files ends apply
    with one error line and no output (the copy does not block on it)."""
    source = _dcp_save({"lstm": _lstm_state()}, tmp_path / "in")
    linked = tmp_path / "linked"
    shutil.copytree(source, linked)
    (linked / "__0_0.distcp").rename(tmp_path / "elsewhere.distcp")
    (linked / "__0_0.distcp").symlink_to(tmp_path / "elsewhere.distcp")
    result = _rnninit("inspect", linked)
    assert result.returncode == 3 and "leads outside the folder" in result.stderr and result.stderr.count("\n") == 1
    piped = tmp_path / "piped"
    shutil.copytree(source, piped)
    os.mkfifo(piped / "pipe")
    result = _rnninit("apply", piped, "--scheme", "keras", "--seed", 1, "-o", tmp_path / "out")
    assert result.returncode == 4 and result.stderr.startswith("error:") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_nested_dcp_apply_equals_the_apply_on_its_pt(tmp_path: Path) -> None:
    source = _dcp_save({"model": {f"lstm.{name}": value for name, value in _lstm_state().items()}, "step": 3},
                       tmp_path / "in")
    _to_pt(source, tmp_path / "in.pt")  # torch's own .pt of the folder: {"model": {...}, "step": 3}
    for argument, output in ((source, tmp_path / "out"), (tmp_path / "in.pt", tmp_path / "out.pt")):
        result = _rnninit("apply", argument, "--scheme", "keras", "--seed", SEED, "-o", output, "-q")
        assert result.returncode == 0, result.stderr
    written = _flat(_to_pt(tmp_path / "out", tmp_path / "converted.pt"))
    expected = _flat(torch.load(tmp_path / "out.pt", weights_only=True))
    assert set(written) == set(expected)
    different = [name for name in expected if not torch.equal(written[name], expected[name])]
    assert not different, f"differ from the .pt apply with the same seed: {different}"


def test_force_replaces_an_earlier_dcp_output(tmp_path: Path) -> None:
    source = _dcp_save({"lstm": _lstm_state()}, tmp_path / "in")
    output = tmp_path / "out"
    first = _rnninit("apply", source, "--scheme", "keras", "--seed", 1, "-o", output, "-q")
    assert first.returncode == 0, first.stderr
    again = _rnninit("apply", source, "--scheme", "keras", "--seed", 2, "-o", output, "-q", "--force")
    assert again.returncode == 0, again.stderr
    assert '"rnninit.seed": "2"' in (output / "rnninit.json").read_text()


def _alias_bias_hh(metadata: Any, _folder: Path) -> None:
    """bias_hh_l0 stored at bias_ih_l0's bytes, its file spelled './__0_0.distcp' (the same file)."""
    places = {key.fqn: value for key, value in metadata.storage_data.items()}
    first, second = places["lstm.bias_ih_l0"], places["lstm.bias_hh_l0"]
    second.offset, second.length, second.relative_path = first.offset, first.length, "./" + first.relative_path


def test_entries_aliased_by_another_spelling_of_their_file(tmp_path: Path) -> None:
    source = _dcp_save({f"lstm.{name}": value for name, value in _lstm_state(2).items()}, tmp_path / "in")
    folder = _edited_metadata(source, tmp_path / "aliased", _alias_bias_hh)
    result = _rnninit("apply", folder, "--scheme", "keras", "--seed", 1, "-o", tmp_path / "out")
    if result.returncode == 0:  # then torch must read what keras writes: b_ih + b_hh = (0, 1, 0, 0) per gate
        written = _to_pt(tmp_path / "out", tmp_path / "out.pt")
        effective = written["lstm.bias_ih_l0"] + written["lstm.bias_hh_l0"]
        assert torch.equal(effective, torch.tensor([0.0, 0, 1, 1, 0, 0, 0, 0])), effective
    else:
        assert "overlap" in result.stderr and result.stderr.count("\n") == 1, result.stderr


def _edited_metadata(source: Path, target: Path, edit: Any) -> Path:
    """A copy of `source` whose .metadata is torch's object after `edit(metadata, folder)` (the test's own
    pickle.loads of a file torch just wrote)."""
    shutil.copytree(source, target)
    metadata = pickle.loads((target / ".metadata").read_bytes())
    edit(metadata, target)
    (target / ".metadata").write_bytes(pickle.dumps(metadata))
    return target


def _assert_one_clean_error_or_success(result: subprocess.CompletedProcess[str]) -> None:
    assert "internal error" not in result.stderr and "MemoryError" not in result.stderr, result.stderr[-500:]
    assert result.returncode in (0, 1, 2, 3) and "Traceback" not in result.stderr, result.stderr[-500:]
    if result.returncode:
        assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1, result.stderr[-500:]


def test_many_chunks_do_not_take_quadratic_memory(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    count = 40_000
    folder = tmp_path / "many"
    folder.mkdir()
    (folder / "__0_0.distcp").write_bytes(b"")
    place = _StorageInfo(relative_path="__0_0.distcp", offset=0, length=0)
    entry = TensorStorageMetadata(properties=TensorProperties(dtype=torch.float32), size=torch.Size([count]),
                                  chunks=[ChunkStorageMetadata(offsets=torch.Size([index]), sizes=torch.Size([1]))
                                          for index in range(count)])
    metadata = Metadata(state_dict_metadata={"x": entry},
                        storage_data={MetadataIndex(fqn="x", offset=torch.Size([index])): place
                                      for index in range(count)})
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    assert (folder / ".metadata").stat().st_size < 6 << 20
    _assert_one_clean_error_or_success(_rnninit("inspect", folder, limit=HOSTILE_MEMORY))


def _huge_lstm(hidden: int, broadcast: bool) -> Any:
    """An LSTM whose weight_ih is real ([4h, 3]) and whose weight_hh [4h, h] is declared in .metadata only: stored
    as 4 elements (shape [4, 1]), or as one stored element broadcast (expand()ed) to the declared shape."""

    def edit(metadata: Any, folder: Path) -> None:
        entry = metadata.state_dict_metadata["lstm.weight_hh_l0"]
        entry.size = entry.chunks[0].sizes = torch.Size([4 * hidden, hidden])
        if broadcast:
            buffer = io.BytesIO()
            torch.save(torch.full((1,), 0.5).expand(4 * hidden, hidden), buffer)
            info = next(value for key, value in metadata.storage_data.items() if key.fqn == "lstm.weight_hh_l0")
            with open(folder / info.relative_path, "ab") as handle:
                info.offset, info.length = handle.tell(), len(buffer.getvalue())
                handle.write(buffer.getvalue())
    return edit


@pytest.mark.parametrize("command", ["inspect", "apply"])
def test_declared_size_is_checked_before_allocating(command: str, tmp_path: Path) -> None:
    hidden = 1 << 14
    source = _dcp_save({"lstm.weight_ih_l0": torch.zeros(4 * hidden, 3), "lstm.weight_hh_l0": torch.zeros(4, 1)},
                       tmp_path / "real")
    folder = _edited_metadata(source, tmp_path / "declared", _huge_lstm(hidden, broadcast=False))
    extra = ["--scheme", "keras", "--seed", 1, "-o", tmp_path / "out"] if command == "apply" else []
    result = _rnninit(command, folder, *extra, limit=HOSTILE_MEMORY)
    _assert_one_clean_error_or_success(result)
    assert "stored with shape [4, 1]" in result.stderr


def test_broadcast_chunk_is_refused_like_in_a_pt(tmp_path: Path) -> None:
    hidden = 1 << 14
    source = _dcp_save({"lstm.weight_ih_l0": torch.zeros(4 * hidden, 3), "lstm.weight_hh_l0": torch.zeros(4, 1)},
                       tmp_path / "real")
    folder = _edited_metadata(source, tmp_path / "broadcast", _huge_lstm(hidden, broadcast=True))
    result = _rnninit("inspect", folder, limit=HOSTILE_MEMORY)
    _assert_one_clean_error_or_success(result)
    assert "broadcast" in result.stderr


if __name__ == "__main__":
    run_rank(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), sys.argv[5].split(","))
