"""Issue 23 §3: dynamically quantized LSTM/GRU layers (`torch.ao.quantization.quantize_dynamic`) shown by inspect
(rewritten by apply: tests/formats/test_requantize.py).

Checkpoints are made by torch itself; what inspect reports is checked against torch's own unpacking of the same
file (`torch.load(weights_only=False)` of the file the test has just written, never in the library): every layer
found, its gates, each packed weight's scale and zero point equal to `q_scale()` / `q_zero_point()`, and per gate the
statistics of `q.dequantize()` and of the float biases (to a tolerance). Hostile variants of a real file (truncated,
NaN scale, wrong sizes, huge dims, a zero point out of range) give one error line, or the layer skipped with why.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import Result

from rnninit_cli.plain import plain_text
from rnninit_cli.report import quantized_table
from rnninit_cli.rewrite import inspect_checkpoint

GATES = {"lstm": ["i", "f", "g", "o"], "gru": ["r", "z", "n"]}


class Holder(torch.nn.Module):
    """quantize_dynamic swaps child modules only: a bare nn.LSTM would come back in float."""

    def __init__(self, rnn: torch.nn.Module) -> None:
        super().__init__()
        self.rnn = rnn


def quantized(kind: str, dtype: torch.dtype = torch.qint8, **options: Any) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(0)
        warnings.simplefilter("ignore")
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
        if options.get("bias") is False:  # from_float refuses bias=False: the quantized class made directly
            dynamic = {"lstm": torch.ao.nn.quantized.dynamic.LSTM, "gru": torch.ao.nn.quantized.dynamic.GRU}[kind]
            return Holder(dynamic(5, 4, dtype=dtype, **options))
        return torch.ao.quantization.quantize_dynamic(Holder(cls(5, 4, **options)), {cls}, dtype=dtype)


MODELS = {
    "lstm": ("lstm", {}),
    "lstm-2-layers": ("lstm", {"num_layers": 2}),
    "lstm-bidirectional": ("lstm", {"bidirectional": True}),
    "lstm-2-layers-bidirectional": ("lstm", {"num_layers": 2, "bidirectional": True}),
    "lstm-no-bias": ("lstm", {"bias": False}),
    "gru": ("gru", {}),
    "gru-2-layers-bidirectional": ("gru", {"num_layers": 2, "bidirectional": True}),
    "gru-no-bias": ("gru", {"bias": False}),
}


def save(module: torch.nn.Module, path: Path) -> Path:
    torch.save(module.state_dict(), path)
    return path


def torch_cells(path: Path) -> dict[str, tuple[str, list[torch.Tensor], list[torch.Tensor]]]:
    """path → (tag, [weight_ih, weight_hh], [bias_ih, bias_hh]) as torch unpacks the file (the test's own file)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = torch.load(path, weights_only=False)
    cells = {}
    for name, value in state.items():
        (tag, biases, _, _, packed), _cls = value.__getstate__()
        unpacked = [record.__getstate__()[0] for record in packed]  # (weight, bias) per packed record
        weights = [weight for weight, _ in unpacked]
        cells[name] = (tag, weights, list(biases) or [bias for _, bias in unpacked])
    return cells


def expected_blocks(values: torch.Tensor, gates: list[str]) -> list[dict[str, Any]]:
    """Per gate: mean, population std, min, max of `values` in float64 (numpy, independently of rnninit)."""
    array = values.detach().double().numpy()
    rows = array.shape[0] // len(gates)
    return [{"gate": gate, "mean": float(part.mean()), "std": float(part.std()), "min": float(part.min()),
             "max": float(part.max())} for gate, part in ((g, array[i * rows:(i + 1) * rows]) for i, g in
                                                            enumerate(gates))]


def same_blocks(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
    return [block["gate"] for block in got] == [block["gate"] for block in expected] and all(
        math.isclose(a[key], b[key], rel_tol=1e-6, abs_tol=1e-7)
        for a, b in zip(got, expected, strict=True) for key in ("mean", "std", "min", "max"))


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("dtype", [torch.qint8, torch.float16])
def test_inspect_shows_each_quantized_layer_as_torch_unpacks_it(cli: Callable[..., Result], tmp_path: Path,
                                                                model: str, dtype: torch.dtype) -> None:
    kind, options = MODELS[model]
    source = save(quantized(kind, dtype, **options), tmp_path / "model.pt")
    cells = torch_cells(source)
    result = cli("inspect", source, "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    shown = {layer["path"]: layer for layer in document["quantized_layers"]}
    assert set(shown) == set(cells)
    directions = 2 if options.get("bidirectional") else 1
    for path, (tag, weights, biases) in cells.items():
        layer = shown[path]
        index = int(path.split(".")[-2])
        assert (layer["cell"], layer["packing"], layer["gates"], layer["index"]) == (kind, tag, GATES[kind], index)
        assert (layer["hidden_size"], layer["input_size"]) == (4, weights[0].shape[1])
        # input 5, hidden 4: only one arrangement of the cells fits their shapes
        assert layer["layer"] == index // directions
        assert layer["direction"] == ("forward", "reverse")[index % directions]
        assert layer["rewritten"] and layer["reason"] is None  # apply packs it again (tests/formats/test_requantize.py)
        params = {param["kind"]: param for param in layer["params"]}
        assert list(params) == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
        for kind_name, weight in zip(("weight_ih", "weight_hh"), weights, strict=True):
            param = params[kind_name]
            assert param["shape"] == list(weight.shape)
            if dtype == torch.qint8:
                assert weight.is_quantized and param["dtype"] == "qint8"
                assert param["scale"] == weight.q_scale() and param["zero_point"] == weight.q_zero_point() == 0
                values = weight.dequantize()
            else:
                assert param["scale"] is None and param["zero_point"] is None
                values = weight
            assert same_blocks(param["blocks"], expected_blocks(values, GATES[kind])), (path, kind_name)
        for kind_name, bias in zip(("bias_ih", "bias_hh"), biases, strict=True):
            assert same_blocks(params[kind_name]["blocks"], expected_blocks(bias, GATES[kind])), (path, kind_name)
    human = cli("inspect", source)
    assert human.exit_code == 0, human.stderr
    assert f"{len(cells)} quantized layer(s)" in human.stdout.splitlines()[0]
    for path, (_, weights, _) in cells.items():
        assert f"{path}: quantized {kind.upper()}" in human.stdout
        if dtype == torch.qint8:
            assert all(f"{weight.q_scale():.6g}" in human.stdout for weight in weights)
        assert f"skipped {path}" not in human.stderr  # apply rewrites it


def test_the_quantized_table_off_a_terminal_is_what_rich_prints(tmp_path: Path) -> None:
    source = save(quantized("lstm", num_layers=2, bidirectional=True), tmp_path / "model.pt")
    found = inspect_checkpoint(str(source))
    assert len(found.packed) == 4
    console = Console(file=io.StringIO(), width=100_000, highlight=False, emoji=False)
    for layer in found.packed:
        table = quantized_table(layer)
        fast = plain_text(table, console)
        console.file = io.StringIO()
        console.print(table)
        assert fast is not None and fast == console.file.getvalue()
    for width in (60, 40, 20):  # a narrow terminal: stacked, never a cut number
        narrow = Console(file=io.StringIO(), width=width, highlight=False, emoji=False)
        narrow.print(quantized_table(found.packed[0]))
        text = narrow.file.getvalue()
        assert "…" not in text
        assert f"{found.packed[0].params[0].scale:.6g}" in text


def test_only_selects_quantized_layers_by_path(cli: Callable[..., Result], tmp_path: Path) -> None:
    source = save(quantized("lstm", num_layers=2), tmp_path / "model.pt")
    document = json.loads(cli("inspect", source, "--json", "--only", r"values\.1\.").stdout)
    assert [layer["path"] for layer in document["quantized_layers"]] == ["rnn._all_weight_values.1.param"]


# ---------------------------------------------------------------------------------------------------------------
# hostile variants of a real file


def rezipped(source: Path, target: Path, change: Callable[[bytes], bytes]) -> Path:
    """`source` with its pickle changed by `change` (every other record as it was), archived again."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as copy:
        for info in original.infolist():
            data = original.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                changed = change(data)
                assert changed != data, "the change found nothing to change"
                data = changed
            copy.writestr(info.filename, data)
    return target


def first_scale(source: Path) -> float:
    return torch_cells(source)["rnn._all_weight_values.0.param"][1][0].q_scale()


def replace_once(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        assert data.count(old) >= 1, old
        return data.replace(old, new, 1)
    return change


def one_error_line(result: Result) -> str:
    assert result.exit_code == 3, (result.exit_code, result.stdout[-1000:], result.stderr[-1000:])
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return result.stderr


def skipped_with(result: Result, path: str, words: str) -> None:
    assert result.exit_code == 0, result.stderr
    line = next(line for line in result.stderr.splitlines() if f"skipped {path}:" in line)
    assert "inspect cannot show it" in line and words in line, line
    assert f"{path}: quantized" not in result.stdout


@pytest.fixture
def lstm_file(tmp_path: Path) -> Path:
    return save(quantized("lstm"), tmp_path / "model.pt")


def test_a_rezipped_file_still_reads(cli: Callable[..., Result], lstm_file: Path, tmp_path: Path) -> None:
    """The hostile variants below are re-archived by zipfile: the unchanged re-archive reads as the original."""
    with zipfile.ZipFile(lstm_file) as original, zipfile.ZipFile(tmp_path / "copy.pt", "w") as target:
        for info in original.infolist():
            target.writestr(info.filename, original.read(info.filename))
    a = json.loads(cli("inspect", lstm_file, "--json").stdout)["quantized_layers"]
    b = json.loads(cli("inspect", tmp_path / "copy.pt", "--json").stdout)["quantized_layers"]
    assert a == b and len(a) == 1


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_a_truncated_file_is_one_error_line(cli: Callable[..., Result], lstm_file: Path, tmp_path: Path,
                                            cut: float) -> None:
    data = lstm_file.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[:int(len(data) * cut)])
    one_error_line(cli("inspect", truncated))


def test_a_nan_scale_skips_the_layer_with_why(cli: Callable[..., Result], lstm_file: Path, tmp_path: Path) -> None:
    scale = struct.pack(">d", first_scale(lstm_file))
    tampered = rezipped(lstm_file, tmp_path / "nan.pt", replace_once(b"G" + scale, b"G" + struct.pack(">d", math.nan)))
    skipped_with(cli("inspect", tampered), "rnn._all_weight_values.0.param", "scale nan")
    document = json.loads(cli("inspect", tampered, "--json").stdout)
    assert document["quantized_layers"] == []


def test_a_negative_scale_skips_the_layer(cli: Callable[..., Result], lstm_file: Path, tmp_path: Path) -> None:
    scale = struct.pack(">d", first_scale(lstm_file))
    tampered = rezipped(lstm_file, tmp_path / "neg.pt", replace_once(b"G" + scale, b"G" + struct.pack(">d", -0.5)))
    skipped_with(cli("inspect", tampered), "rnn._all_weight_values.0.param", "scale -0.5")


def test_sizes_that_are_no_lstm_skip_the_layer(cli: Callable[..., Result], lstm_file: Path, tmp_path: Path) -> None:
    """weight_hh's rows cut from 16 to 12 (still inside its storage): ih and hh disagree."""
    tampered = rezipped(lstm_file, tmp_path / "rows.pt", replace_once(b"K\x10K\x04\x86", b"K\x0cK\x04\x86"))
    skipped_with(cli("inspect", tampered), "rnn._all_weight_values.0.param", "no LSTM's or GRU's")


def test_a_zero_point_out_of_range_skips_the_layer(cli: Callable[..., Result], lstm_file: Path,
                                                   tmp_path: Path) -> None:
    scale = struct.pack(">d", first_scale(lstm_file))
    tampered = rezipped(lstm_file, tmp_path / "zero.pt",
                        replace_once(b"G" + scale + b"K\x00", b"G" + scale + b"M\xe8\x03"))  # zero point 1000
    skipped_with(cli("inspect", tampered), "rnn._all_weight_values.0.param", "zero point 1000")


@pytest.mark.parametrize("dims", [b"J\x00\x00\x00\x40K\x04\x86",  # 2**30 rows
                                  b"\x8a\x05\x00\x00\x00\x00\x01K\x04\x86"])  # 2**32 rows (LONG1)
def test_huge_dims_are_one_error_line_without_allocating(cli: Callable[..., Result], lstm_file: Path, tmp_path: Path,
                                                         dims: bytes) -> None:
    tampered = rezipped(lstm_file, tmp_path / "huge.pt", replace_once(b"K\x10K\x04\x86", dims))
    message = one_error_line(cli("inspect", tampered))
    assert "outside its storage" in message, message


def test_a_broadcast_weight_of_huge_dims_is_refused(cli: Callable[..., Result], lstm_file: Path,
                                                    tmp_path: Path) -> None:
    """Rows 2**30 at stride 0 read inside the storage: refused as a broadcast view, never expanded."""
    def change(data: bytes) -> bytes:  # size (16, 4) → (2**30, 4), stride (4, 1) → (0, 1); q<memo> between them
        return re.sub(rb"K\x10K\x04\x86(q.)K\x04K\x01\x86",
                      lambda found: b"J\x00\x00\x00\x40K\x04\x86" + found[1] + b"K\x00K\x01\x86", data, count=1,
                      flags=re.DOTALL)

    tampered = rezipped(lstm_file, tmp_path / "broadcast.pt", change)
    result = cli("inspect", tampered)
    if result.exit_code == 0:
        skipped_with(result, "rnn._all_weight_values.0.param", "")
    else:
        assert "broadcast" in one_error_line(result)


def test_the_library_never_unpickles_the_script_objects(lstm_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """inspect reads the packed weights without torch's unpickler (none of its loaders is called)."""
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
    found = inspect_checkpoint(str(lstm_file))
    assert [layer.path for layer in found.packed] == ["rnn._all_weight_values.0.param"]
    assert np.isfinite([stats["std"] for param in found.packed[0].params for _, stats in param.blocks]).all()
