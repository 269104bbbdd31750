"""`rnninit diff` reads both checkpoints as it compares them, a chunk of each block at a time (issue 22).

What it reports is checked block by block against each quantity's definition, computed here from the tensors as
torch loads (or builds) them: changed (any value differs; NaN = NaN), changed_count, max |b − a| over the changed
values in float64 (NaN against a number: inf), the dtypes, and the statistics of a and b: `value_stats` of the whole
block, which diff's one streamed pass must equal bit for bit, itself checked against numpy's mean and std. Every
checkpoint is compared with the default chunking and with chunks of 1,000 values (pieces that end mid-row, every
parameter streamed from its file, on one thread and on two)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from rnninit_cli.cli import app
from rnninit_cli.diagnostics import comparison, stats, value_stats

State = dict[str, torch.Tensor]
_MODULES = {"lstm.": ("ifgo", 8), "gru.": ("rzn", 6), "cell.": ("ifgo", 4)}  # prefix → gates, hidden size
_KIND = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh)(_l\d+(_reverse)?)?\Z")
_FIELDS = ("changed", "changed_count", "max_abs_delta", "before", "after", "dtype_a", "dtype_b")


def _state(seed: int, dtype: torch.dtype = torch.float32) -> State:
    """An LSTM (2 layers, both directions), a GRU and an LSTMCell under one seed, in `dtype`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = torch.nn.ModuleDict({"lstm": torch.nn.LSTM(12, 8, num_layers=2, bidirectional=True),
                                       "gru": torch.nn.GRU(16, 6), "cell": torch.nn.LSTMCell(5, 4)})
    return {name: tensor.detach().to(dtype).clone() for name, tensor in modules.state_dict().items()}


def _edited(state: State) -> State:
    """`state` with one gate block shifted, one value changed, one parameter redrawn, the rest as it was."""
    after = {name: tensor.clone() for name, tensor in state.items()}
    after["lstm.weight_hh_l1"][8:16] += 0.5  # gate f
    after["gru.bias_ih_l0"][7] = 3.0  # gate z, one value
    after["cell.weight_ih"] = _state(1, state["cell.weight_ih"].dtype)["cell.weight_ih"]
    return after


def _same_edits(dtype: torch.dtype) -> tuple[State, State]:
    before = _state(0, dtype)
    return before, _edited(before)


def _extremes() -> tuple[State, State]:
    """float64 values whose squares overflow or underflow (a second, scaled pass) and a difference that overflows."""
    before = _state(0, torch.float64)
    before["lstm.weight_ih_l0"] *= 1e300
    before["lstm.weight_hh_l0_reverse"] *= 1e-310
    after = _edited(before)
    after["lstm.weight_ih_l0"][0, 0], before["lstm.weight_ih_l0"][0, 0] = -1.7e308, 1.7e308
    after["lstm.weight_hh_l0_reverse"][9, 1] = 0.0
    return before, after


def _other_dtypes() -> tuple[State, State]:
    """B holds A's values in other dtypes: float64 (the same values), bfloat16 (rounded), float16."""
    before = _state(0)
    after = {name: tensor.to(torch.float64 if name.startswith("lstm") else
                             torch.bfloat16 if name.startswith("gru") else torch.float16)
             for name, tensor in _edited(before).items()}
    return before, after


def _nonfinite() -> tuple[State, State]:
    before, after = _state(0), _state(0)
    row_a = [math.nan, math.nan, math.inf, math.inf, 0.0, 1.0, 3e38, -math.inf]
    row_b = [math.nan, 1.0, math.inf, -math.inf, -0.0, math.nan, -3e38, -math.inf]
    before["lstm.weight_hh_l0"][0] = torch.tensor(row_a)
    after["lstm.weight_hh_l0"][0] = torch.tensor(row_b)
    before["gru.bias_hh_l0"][:6] = after["gru.bias_hh_l0"][:6] = math.nan  # gate r: nothing finite on either side
    after["cell.bias_ih"][4:8] = math.inf
    return before, after


def _views() -> tuple[State, State]:
    """Every parameter a view into one flat buffer (one storage in the file), and one of them a transposed view
    (not contiguous); B is A's buffer with edits."""
    def shared(state: State) -> State:
        flat = torch.cat([tensor.reshape(-1) for tensor in state.values()])
        views, offset = {}, 0
        for name, tensor in state.items():
            views[name] = flat[offset:offset + tensor.numel()].view(tensor.shape)
            offset += tensor.numel()
        views["lstm.weight_hh_l0"] = state["lstm.weight_hh_l0"].t().contiguous().t()  # stride (1, 32)
        return views

    before = shared(_state(0))
    after = shared(_edited(_state(0)))
    after["lstm.weight_hh_l0"][3:5, 2] = 7.0
    return before, after


def _apart() -> tuple[State, State]:
    """B has no GRU, and its cell has no biases: a layer and two parameters present in A only."""
    before = _state(0)
    after = {name: tensor for name, tensor in _edited(before).items()
             if not name.startswith("gru.") and name not in ("cell.bias_ih", "cell.bias_hh")}
    return before, after


CASES: dict[str, Callable[[], tuple[State, State]]] = {
    "float32": lambda: _same_edits(torch.float32),
    "bfloat16": lambda: _same_edits(torch.bfloat16),
    "float16": lambda: _same_edits(torch.float16),
    "float64 extremes": _extremes,
    "dtypes differ": _other_dtypes,
    "NaN and inf": _nonfinite,
    "views of one buffer": _views,
    "in one file only": _apart,
}
FORMATS = {"pt": ("pt", "pt"), "safetensors": ("safetensors", "safetensors"), "mixed": ("pt", "safetensors")}


def _save(state: State, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.fixture(params=["default chunks", "small chunks", "small chunks, two threads"])
def chunking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Chunks of 1,000 values (a block's pieces end mid-row), every parameter streamed from its file (none read
    whole), on one thread or on two (every block on the pool)."""
    if request.param != "default chunks":
        monkeypatch.setattr(stats, "CHUNK", 1000)
        monkeypatch.setattr(comparison, "CHUNK", 1000)
        monkeypatch.setattr(comparison, "_READ_WHOLE", 0)
        threads = 2 if "two" in request.param else 1
        monkeypatch.setattr(comparison, "worker_count", lambda: threads)
        monkeypatch.setattr(comparison, "_WORTH_A_THREAD", 1)
    return str(request.param)


def _diff(*args: Any) -> Any:
    return CliRunner().invoke(app, ["diff", *map(str, args)])


def _numbers(block: torch.Tensor) -> np.ndarray:
    """The values as numbers: float64 (exact for every float dtype), integers as they are."""
    return block.numpy() if not (block.is_floating_point() or block.is_complex()) else block.double().numpy()


def _block_reference(before: torch.Tensor, after: torch.Tensor) -> dict[str, Any]:
    old, new = _numbers(before), _numbers(after)
    same = (old == new) | (np.isnan(old) & np.isnan(new))
    changed = ~same
    with np.errstate(over="ignore"):  # 1.7e308 against -1.7e308: inf, as diff says
        delta = np.abs(new[changed].astype(np.float64) - old[changed].astype(np.float64))
    delta[np.isnan(delta)] = math.inf
    for block, found in ((before, value_stats(before)), (after, value_stats(after))):
        _check_stats(block, found)
    return {"changed": bool(changed.any()), "changed_count": int(changed.sum()),
            "max_abs_delta": float(delta.max()) if delta.size else 0.0,
            "before": value_stats(before), "after": value_stats(after),
            "dtype_a": str(before.dtype).removeprefix("torch."), "dtype_b": str(after.dtype).removeprefix("torch.")}


def _check_stats(block: torch.Tensor, found: dict[str, Any]) -> None:
    """The reference statistics themselves, against numpy's mean and std over the finite values."""
    values = _numbers(block).reshape(-1)
    finite = values[np.isfinite(values)]
    assert (found["count"], found["nan"]) == (values.size, int(np.isnan(values).sum()))
    assert found["inf"] == int(np.isinf(values).sum())
    if not finite.size:
        assert all(math.isnan(found[key]) for key in ("mean", "std", "min", "max", "max_abs"))
        return
    assert (found["min"], found["max"]) == (finite.min(), finite.max())
    scale = float(np.abs(finite).max()) or 1.0  # numpy's own mean of 1e300s overflows: compare scaled values
    assert found["mean"] / scale == pytest.approx(np.mean(finite / scale), rel=1e-9, abs=1e-12)
    assert found["std"] / scale == pytest.approx(np.std(finite / scale), rel=1e-9, abs=1e-12)


def _blocks(before: State, after: State, only: str | None = None) -> Iterator[tuple[str, str, int, int]]:
    """(name, gate, start, stop) of every gate block of a parameter both sides hold in the same shape."""
    for name, tensor in before.items():
        prefix = name[:name.index(".") + 1]
        if not _KIND.search(name) or name not in after or after[name].shape != tensor.shape:
            continue
        if only is not None and not re.search(only, name):
            continue
        gates, hidden = _MODULES[prefix]
        for index, gate in enumerate(gates):
            yield name, gate, index * hidden, (index + 1) * hidden


def _finite_or_none(value: Any) -> Any:
    """As the JSON document writes values: non-finite floats as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    return value


def _reference(before: State, after: State, only: str | None = None) -> dict[tuple[str, str, int, int], Any]:
    return {key: _finite_or_none(_block_reference(before[key[0]][key[2]:key[3]], after[key[0]][key[2]:key[3]]))
            for key in _blocks(before, after, only)}


def _reported(document: dict[str, Any]) -> dict[tuple[str, str, int, int], Any]:
    return {(block["name"], block["gate"], *block["rows"]): {field: block[field] for field in _FIELDS}
            for layer in document["layers"] for block in layer["blocks"]}


def _table_rows(stdout: str) -> set[tuple[str, str, str, str]]:
    """(parameter, gate, changed, max |Δ|) of each row of the human table."""
    rows = set()
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 6:
            rows.add(tuple(cells[:4]))
    return rows  # type: ignore[return-value]


def _check_both_outputs(a: Path, b: Path, before: State, after: State, *options: str,
                        only: str | None = None) -> dict[str, Any]:
    expected = _reference(before, after, only)
    result = _diff(a, b, "--json", *options)
    document = json.loads(result.stdout)
    assert _reported(document) == expected
    changed = {key: block for key, block in expected.items() if block["changed"]}
    assert document["changed_blocks"] == len(changed)
    assert result.exit_code == (0 if document["identical"] else 1)
    human = _diff(a, b, *options)
    assert human.exit_code == result.exit_code
    assert _table_rows(human.stdout) == {
        (name, gate, f"{block['changed_count']}/{block['before']['count']}",
         f"{block['max_abs_delta'] if block['max_abs_delta'] is not None else math.inf:.3g}")
        for (name, gate, _, _), block in changed.items()}
    assert human.stdout.splitlines()[-1].endswith(f": {len(changed)} block(s) differ" if changed else ": identical")
    return document


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("formats", FORMATS)
def test_diff_reports_each_block_as_its_definition_says(case: str, formats: str, chunking: str,
                                                        tmp_path: Path) -> None:
    before, after = CASES[case]()
    if case == "views of one buffer" and formats != "pt":
        pytest.skip("safetensors stores no views")
    suffix_a, suffix_b = FORMATS[formats]
    a, b = _save(before, tmp_path / f"a.{suffix_a}"), _save(after, tmp_path / f"b.{suffix_b}")
    document = _check_both_outputs(a, b, before, after)
    if case == "in one file only":
        assert document["only_in_a"] == ["gru.: GRU layer 0, forward"]
        (cell,) = [layer for layer in document["layers"] if layer["title"].startswith("cell.")]
        assert cell["params_only_in_a"] == ["cell.bias_ih", "cell.bias_hh"]


def test_a_checkpoint_compared_with_itself_is_identical(chunking: str, tmp_path: Path) -> None:
    before = _views()[0]
    a = _save(before, tmp_path / "a.pt")
    document = _check_both_outputs(a, a, before, before)
    assert document["identical"]


def test_only_selects_the_blocks_compared(tmp_path: Path) -> None:
    before, after = _same_edits(torch.float32)
    a, b = _save(before, tmp_path / "a.pt"), _save(after, tmp_path / "b.safetensors")
    _check_both_outputs(a, b, before, after, "--only", r"weight_hh|cell\.", only=r"weight_hh|cell\.")


def test_a_block_larger_than_a_chunk_is_read_in_pieces(tmp_path: Path) -> None:
    """Default chunking: gate blocks of 281,600 values (more than a chunk), streamed from the file."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        before = {f"lstm.{name}": tensor.detach().clone()
                  for name, tensor in torch.nn.LSTM(1100, 256).state_dict().items()}
    after = {name: tensor.clone() for name, tensor in before.items()}
    after["lstm.weight_ih_l0"][300:512, 1000:] *= -1  # gate f, past the first chunk
    after["lstm.weight_ih_l0"][600, 7] = math.nan
    a, b = _save(before, tmp_path / "a.pt"), _save(after, tmp_path / "b.safetensors")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(_MODULES, "lstm.", ("ifgo", 256))
        _check_both_outputs(a, b, before, after)


def test_no_large_tensor_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """diff reads a tensor of more than 1 MiB a chunk at a time, never whole (it held both files before)."""
    from rnninit_cli.formats.tensorfile import TensorFile

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        before = {name: tensor.detach().clone() for name, tensor in torch.nn.LSTM(600, 256).state_dict().items()}
    after = {name: tensor + 1 for name, tensor in before.items()}
    a, b = _save(before, tmp_path / "a.pt"), _save(after, tmp_path / "b.safetensors")
    whole = TensorFile.arrays

    def small_only(self: TensorFile, names: Any) -> dict[str, Any]:
        names = list(names)
        assert all(math.prod(self.locations[name].shape) * 4 <= 1 << 20 for name in names), names
        return whole(self, names)

    monkeypatch.setattr(TensorFile, "arrays", small_only)
    result = _diff(a, b, "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["changed_blocks"] == 16


def test_views_composed_when_read_standard_input_and_folders(tmp_path: Path) -> None:
    """A weight-normalized parameter (composed from g and v when it is read), A from standard input (read whole),
    B a model folder and a DCP folder."""
    import torch.distributed.checkpoint as dcp

    before, after = _same_edits(torch.float32)
    normalized = {name: tensor for name, tensor in before.items() if name != "lstm.weight_hh_l0"}
    magnitude = before["lstm.weight_hh_l0"].norm(dim=1, keepdim=True)
    normalized["lstm.parametrizations.weight_hh_l0.original0"] = magnitude
    normalized["lstm.parametrizations.weight_hh_l0.original1"] = before["lstm.weight_hh_l0"]
    composed = dict(before)
    composed["lstm.weight_hh_l0"] = torch._weight_norm(before["lstm.weight_hh_l0"], magnitude, 0)
    a = _save(normalized, tmp_path / "a.pt")
    folder = tmp_path / "model"
    folder.mkdir()
    _save(after, folder / "model.safetensors")
    dcp.save({name: tensor.clone() for name, tensor in after.items()}, checkpoint_id=tmp_path / "dcp", no_dist=True)
    for b in (folder, tmp_path / "dcp"):
        expected = _reference(composed, after)
        result = CliRunner().invoke(app, ["diff", "-", str(b), "--json"], input=a.read_bytes())
        reported = _reported(json.loads(result.stdout))
        weight_norm = {key: reported.pop(key) for key in list(reported) if key[0] == "lstm.weight_hh_l0"}
        for key, block in weight_norm.items():  # composed in float32 as torch composes it: equal within rounding
            assert block["before"]["mean"] == pytest.approx(expected.pop(key)["before"]["mean"], abs=1e-6)
        assert reported == expected
