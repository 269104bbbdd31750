"""`inspect`, `verify`, `diff` and `schemes` read every kind of checkpoint without torch (issue 11 §3), and
bfloat16 and float16 ones without ml_dtypes either (issue 22: its import alone takes longer than such a command).

Each command runs in a real process where `import torch` and `import ml_dtypes` raise (`torch` and `ml_dtypes`
packages first on PYTHONPATH whose `__init__` raises ImportError and records that it was tried), and must print
exactly what the same command prints where both can be imported. The values it reads are checked against torch's
own: per gate block, the statistics of `inspect --json` against those of the module's parameters as torch computes
them (weight_norm included), and the dtype names against torch's. The inputs are built here from real torch.nn
modules: .safetensors, .pt zip archives of pickle protocols 2 and 4, a legacy .pt, a TorchScript archive, a sharded
model folder, standard input (a zip .pt and a .safetensors), bfloat16, float16, an LSTM with weight_norm
parametrizations, and a torch.distributed.checkpoint folder. float8 files, which numpy alone cannot read, are read
with ml_dtypes (and still without torch).
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint
from safetensors.torch import save_file

from rnninit_cli.formats.safety import _torch_can_make
from rnninit_cli.layouts.views import WeightNormView, weight_norm

MODULE = [sys.executable, "-m", "rnninit_cli"]
TIMEOUT = 120
OTHER = "other.safetensors"  # another LSTM of the same shapes, beside the inputs: what `diff` compares them with
LABELS = ["safetensors", "pt-protocol-2", "pt-protocol-4", "pt-legacy", "torchscript", "folder", "stdin-pt",
          "stdin-safetensors", "bfloat16", "bfloat16-pt", "float16", "float16-pt", "weight-norm", "dcp"]
INPUT, HIDDEN, LAYERS = 32, 64, 2


@dataclass
class Case:
    """One input: how it is given (a path, or '-' with `stdin` on standard input), and the effective tensors torch
    computes with."""

    argument: str
    reference: dict[str, torch.Tensor]  # effective parameter name → torch's value
    stdin: str | None = None  # a file whose bytes are the command's standard input


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone().contiguous() for name, tensor in module.state_dict().items()}


def _lstm(seed: int, dtype: torch.dtype = torch.float32) -> torch.nn.LSTM:
    torch.manual_seed(seed)
    return torch.nn.LSTM(INPUT, HIDDEN, LAYERS).to(dtype)


def _weight_normed() -> tuple[torch.nn.LSTM, dict[str, torch.Tensor]]:
    """An LSTM with weight_norm parametrizations on weight_hh_l0 (dim 0) and weight_ih_l1 (dim 1), their g moved
    off ‖v‖ so that g·v/‖v‖ is not v; and the effective parameters as torch computes them."""
    from torch.nn.utils.parametrizations import weight_norm as parametrize

    lstm = _lstm(3)
    parametrize(lstm, "weight_hh_l0", dim=0)
    parametrize(lstm, "weight_ih_l1", dim=1)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name in ("weight_hh_l0", "weight_ih_l1"):
            magnitude = getattr(lstm.parametrizations, name).original0
            magnitude.mul_(0.5 + torch.rand(magnitude.shape, generator=generator))
    with torch.no_grad():
        effective = {name: getattr(lstm, name).detach().clone() for name in
                     ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                      "weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1")}
    return lstm, effective


def _blocking_packages(folder: Path, names: tuple[str, ...]) -> Path:
    """`folder`, holding for each name a package whose import raises, and appends to $TORCH_TRIED_MARKER first."""
    for name in names:
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(textwrap.dedent(f"""
            import os, sys
            marker = os.environ.get("TORCH_TRIED_MARKER")
            if marker:
                with open(marker, "a") as record:
                    record.write(f"import {name} was tried: {{sys.argv}}\\n")
            raise ImportError("{name} is blocked in this test")
        """))
    return folder


@pytest.fixture(scope="module")
def blocker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding `torch` and `ml_dtypes` packages whose imports raise (and are recorded)."""
    return _blocking_packages(tmp_path_factory.mktemp("no_torch"), ("torch", "ml_dtypes"))


@pytest.fixture(scope="module")
def torch_blocker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a `torch` package whose import raises (and is recorded); ml_dtypes stays importable."""
    return _blocking_packages(tmp_path_factory.mktemp("no_torch_only"), ("torch",))


def _environments(blocker: Path, marker: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(blocked, normal) environments for the child processes."""
    normal = {**os.environ, "COLUMNS": "200"}
    normal.pop("TORCH_TRIED_MARKER", None)
    path = os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH", "")]))
    return {**normal, "PYTHONPATH": path, "TORCH_TRIED_MARKER": str(marker)}, normal


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    folder = tmp_path_factory.mktemp("torch_free_inputs")
    lstm = _lstm(0)
    state = _state(lstm)
    found: dict[str, Case] = {}

    def add(label: str, file_name: str, write: object, reference: Mapping[str, torch.Tensor] = state) -> Path:
        path = folder / file_name
        write(path)  # type: ignore[operator]
        found[label] = Case(str(path), dict(reference))
        return path

    add("safetensors", "small.safetensors", lambda path: save_file(state, str(path)))
    add("pt-protocol-2", "p2.pt", lambda path: torch.save(state, path))
    add("pt-protocol-4", "p4.pt", lambda path: torch.save(state, path, pickle_protocol=4))
    add("pt-legacy", "legacy.pt", lambda path: torch.save(state, path, _use_new_zipfile_serialization=False))
    add("torchscript", "script.pt", lambda path: torch.jit.save(torch.jit.script(lstm), str(path)))
    half = _state(_lstm(1, torch.bfloat16))
    add("bfloat16", "bf16.safetensors", lambda path: save_file(half, str(path)), half)
    add("bfloat16-pt", "bf16.pt", lambda path: torch.save(half, path), half)
    ieee_half = _state(_lstm(2, torch.float16))
    add("float16", "f16.safetensors", lambda path: save_file(ieee_half, str(path)), ieee_half)
    add("float16-pt", "f16.pt", lambda path: torch.save(ieee_half, path), ieee_half)
    normed, effective = _weight_normed()
    add("weight-norm", "weight_norm.pt", lambda path: torch.save(_state(normed), path), effective)

    model = folder / "model"
    model.mkdir()
    names = list(state)
    shards = {"model-00001-of-00002.safetensors": names[:3], "model-00002-of-00002.safetensors": names[3:]}
    for shard, members in shards.items():
        save_file({name: state[name] for name in members}, str(model / shard))
    (model / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {name: shard for shard, members in shards.items() for name in members}}))
    (model / "config.json").write_text("{}")
    found["folder"] = Case(str(model), state)

    dcp_folder = folder / "dcp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ...: saving in a single process"
        torch.distributed.checkpoint.save(state, checkpoint_id=str(dcp_folder))
    found["dcp"] = Case(str(dcp_folder), state)

    found["stdin-pt"] = Case("-", state, stdin=found["pt-protocol-2"].argument)
    found["stdin-safetensors"] = Case("-", state, stdin=found["safetensors"].argument)
    save_file(_state(_lstm(7)), str(folder / OTHER))
    return found


# Runs each command of the JSON list in argv[1] ({"argv": [...], "stdin": a file or null}) through the CLI's entry
# point, one after the other in this one process (so that imports are paid once), and prints as JSON what each
# printed on standard output and standard error, and its exit status.
DRIVER = """
import io, json, sys
import rnninit_cli.cli as cli

results = []
for command in json.loads(sys.argv[1]):
    sys.argv = ["rnninit", *command["argv"]]
    data = b"" if command["stdin"] is None else open(command["stdin"], "rb").read()
    out, err = io.BytesIO(), io.BytesIO()
    streams = [io.TextIOWrapper(out, encoding="utf-8"), io.TextIOWrapper(err, encoding="utf-8"),
               io.TextIOWrapper(io.BytesIO(data))]
    sys.stdout, sys.stderr, sys.stdin = streams
    code = 0
    try:
        cli.main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.stdout, sys.stderr, sys.stdin = sys.__stdout__, sys.__stderr__, sys.__stdin__
        for stream in streams:
            stream.flush()
            stream.detach()  # the buffers outlive their wrappers
    results.append({"code": code, "stdout": out.getvalue().decode(), "stderr": err.getvalue().decode()})
print(json.dumps(results))
"""


def _commands(case: Case, folder: str) -> list[list[str]]:
    source = case.argument
    return [["inspect", source], ["inspect", source, "--json"], ["verify", source, "-s", "pytorch"],
            ["diff", source, str(Path(folder) / OTHER)]]


@dataclass
class Runs:
    """What every command printed where torch is blocked and where it is not, and what the real program printed."""

    blocked: dict[tuple[str, ...], dict]  # (case label or "", *argv) → code, stdout, stderr
    normal: dict[tuple[str, ...], dict]
    program: dict[str, subprocess.CompletedProcess[bytes]]  # label → `python -m rnninit_cli inspect SOURCE`, blocked
    marker: Path


def _start(args: list[str], env: dict[str, str], stdin: str | None) -> subprocess.Popen[bytes]:
    with open(stdin or os.devnull, "rb") as source:
        return subprocess.Popen([sys.executable, *args], stdin=source, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env)


def _finish(process: subprocess.Popen[bytes]) -> subprocess.CompletedProcess[bytes]:
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def runs(cases: dict[str, Case], blocker: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Every command of every case in two processes (torch blocked, torch importable), and `python -m rnninit_cli
    inspect` of each case in a blocked process of its own: a few processes at a time."""
    folder = tmp_path_factory.mktemp("torch_free_runs")
    driver = folder / "run_commands.py"
    driver.write_text(DRIVER)
    marker = folder / "torch_tried"
    blocked_env, normal_env = _environments(blocker, marker)
    inputs = str(Path(cases["safetensors"].argument).parent)
    commands = [(label, command, case.stdin) for label, case in cases.items() for command in _commands(case, inputs)]
    commands += [("", ["diff", cases["pt-legacy"].argument, cases["folder"].argument, "--json"], None),
                 ("", ["schemes"], None), ("", ["schemes", "--json"], None)]
    listed = json.dumps([{"argv": argv, "stdin": stdin} for _, argv, stdin in commands])
    drivers = [_start([str(driver), listed], env, None) for env in (blocked_env, normal_env)]
    program = {}
    try:
        for label, case in cases.items():
            program[label] = _finish(_start(["-m", "rnninit_cli", "inspect", case.argument], blocked_env, case.stdin))
    finally:
        blocked, normal = (_finish(process) for process in drivers)
    assert blocked.returncode == 0 and normal.returncode == 0, (blocked.stderr + normal.stderr).decode()
    keys = [(label, *argv) for label, argv, _ in commands]
    return Runs(dict(zip(keys, json.loads(blocked.stdout), strict=True)),
                dict(zip(keys, json.loads(normal.stdout), strict=True)), program, marker)


def _without_torch(runs: Runs, argv: list[str], label: str = "") -> dict:
    """What `argv` (of case `label`) printed where `import torch` and `import ml_dtypes` raise, checked to be what it
    prints where both can be imported, with exit status 0 or 1 and no error; and no command tried to import either."""
    assert not runs.marker.exists(), runs.marker.read_text()
    found = runs.blocked[(label, *argv)]
    assert "error:" not in found["stderr"] and found["code"] in (0, 1), (argv, found)
    assert found == runs.normal[(label, *argv)], f"{argv}: the output without torch differs from the output with it"
    return found


def test_the_blocker_really_blocks_torch(blocker: Path, tmp_path: Path) -> None:
    marker = tmp_path / "tried"
    blocked_env, _ = _environments(blocker, marker)
    result = subprocess.run([sys.executable, "-c", "import torch"], env=blocked_env, capture_output=True,
                            timeout=TIMEOUT, check=False)
    assert result.returncode != 0 and b"torch is blocked in this test" in result.stderr
    assert marker.read_text().startswith("import torch was tried")  # attempts are recorded, even caught ones
    result = subprocess.run([sys.executable, "-c", "import torch.nn"], env=blocked_env, capture_output=True,
                            timeout=TIMEOUT, check=False)
    assert result.returncode != 0
    result = subprocess.run([sys.executable, "-c", "import ml_dtypes"], env=blocked_env, capture_output=True,
                            timeout=TIMEOUT, check=False)
    assert result.returncode != 0 and b"ml_dtypes is blocked in this test" in result.stderr
    assert "import ml_dtypes was tried" in marker.read_text()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_float8_files_are_read_with_ml_dtypes_and_without_torch(suffix: str, blocker: Path, torch_blocker: Path,
                                                                 tmp_path: Path) -> None:
    """numpy has no float8 types: `inspect` of a float8 file imports ml_dtypes (where it cannot, the blocker sees the
    attempt: what the read commands above would show if they tried), and still never torch."""
    state = {name: tensor.to(torch.float8_e4m3fn) for name, tensor in _state(_lstm(5)).items()}
    path = tmp_path / f"f8{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    marker = tmp_path / "tried"
    torch_blocked, _ = _environments(torch_blocker, marker)
    result = _finish(_start(["-m", "rnninit_cli", "inspect", str(path), "--json"], torch_blocked, None))
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert not marker.exists()
    document = json.loads(result.stdout)
    assert {param["dtype"] for layer in document["layers"] for param in layer["params"]} == {"float8_e4m3fn"}
    _check_against_torch(document, state, 1e-9)
    both_blocked, _ = _environments(blocker, marker)
    result = _finish(_start(["-m", "rnninit_cli", "inspect", str(path)], both_blocked, None))
    assert "import ml_dtypes was tried" in marker.read_text() and "import torch" not in marker.read_text()
    assert result.returncode != 0


def _float64_stats(values: torch.Tensor) -> dict[str, float]:
    data = values.detach().double()
    return {"mean": data.mean().item(), "std": data.std(unbiased=False).item(), "min": data.min().item(),
            "max": data.max().item()}


def _check_against_torch(document: dict, reference: Mapping[str, torch.Tensor], rel: float) -> None:
    """Every parameter of `inspect --json`: torch's dtype name and shape, and per gate block torch's statistics."""
    seen = set()
    for layer in document["layers"]:
        for param in layer["params"]:
            tensor = reference[param["name"]]
            seen.add(param["name"])
            assert param["dtype"] == str(tensor.dtype).removeprefix("torch."), param["name"]
            assert param["shape"] == list(tensor.shape), param["name"]
            rows = tensor.shape[0] // len(param["blocks"])
            for index, block in enumerate(param["blocks"]):
                expected = _float64_stats(tensor[index * rows:(index + 1) * rows])
                for stat, value in expected.items():
                    assert math.isclose(block[stat], value, rel_tol=rel, abs_tol=rel * 1e-3), (
                        param["name"], block["gate"], stat, block[stat], value)
    assert seen == set(reference)


@pytest.mark.parametrize("label", LABELS)
def test_read_commands_never_import_torch(label: str, cases: dict[str, Case], runs: Runs) -> None:
    case = cases[label]
    table, as_json, verified, changed = (_without_torch(runs, argv, label) for argv in
                                         _commands(case, str(Path(cases["safetensors"].argument).parent)))
    assert "2 recurrent layer(s)" in table["stdout"]
    # weight_norm is computed as torch does, in float32, where summation orders may differ by an ulp or two
    _check_against_torch(json.loads(as_json["stdout"]), case.reference, 1e-6 if label == "weight-norm" else 1e-9)
    assert "checked against pytorch" in verified["stdout"]
    assert changed["code"] == 1 and "block(s) differ" in changed["stdout"]
    # the real program, `python -m rnninit_cli` in a process of its own, prints what the entry point printed
    program = runs.program[label]
    assert (program.returncode, program.stdout.decode(), program.stderr.decode()) == (
        table["code"], table["stdout"], table["stderr"])


def test_diff_of_one_model_in_two_formats_is_identical_without_torch(cases: dict[str, Case], runs: Runs) -> None:
    same = _without_torch(runs, ["diff", cases["pt-legacy"].argument, cases["folder"].argument, "--json"])
    assert same["code"] == 0 and json.loads(same["stdout"])["identical"] is True


def test_schemes_never_import_torch(runs: Runs) -> None:
    assert "chrono" in _without_torch(runs, ["schemes"])["stdout"]
    assert json.loads(_without_torch(runs, ["schemes", "--json"])["stdout"])


def test_plot_never_imports_torch(cases: dict[str, Case], blocker: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    marker = tmp_path / "tried"
    output = tmp_path / "plot.png"
    blocked_env, _ = _environments(blocker, marker)
    result = _finish(_start(["-m", "rnninit_cli", "inspect", cases["weight-norm"].argument, "--plot", str(output)],
                            blocked_env, None))
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert not marker.exists()
    assert output.read_bytes().startswith(b"\x89PNG")


# --- the numpy equivalents of torch's arithmetic, checked against torch itself -------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("shape", "dim", "magnitude_shape"), [((48, 16), 0, (48, 1)), ((48, 16), 1, (1, 16)),
                                                                ((48, 16), -1, ()), ((16,), 0, (16,)),
                                                                ((6, 4, 3), 1, (1, 4, 1))])
def test_numpy_weight_norm_is_torchs(dtype: torch.dtype, shape: tuple[int, ...], dim: int,
                                     magnitude_shape: tuple[int, ...]) -> None:
    import ml_dtypes

    from rnninit_cli.bfloat16 import BFloat16Array

    generator = torch.Generator().manual_seed(len(shape) * 10 + dim)
    direction = torch.randn(shape, generator=generator).to(dtype)
    magnitude = (torch.rand(magnitude_shape, generator=generator) + 0.5).to(dtype)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    expected = torch._weight_norm(direction.to(compute), magnitude.to(compute), dim).to(dtype)
    # bfloat16 as the reader holds it (its bits, without ml_dtypes) and as a caller may pass it (ml_dtypes)
    forms = [lambda tensor: BFloat16Array(tensor.view(torch.int16).numpy().view(np.uint16)),
             lambda tensor: tensor.float().numpy().astype(ml_dtypes.bfloat16)] if dtype == torch.bfloat16 \
        else [lambda tensor: tensor.numpy()]

    view = WeightNormView("w", "g", "v", dim, "test")
    ulp = {torch.float32: 2.0**-23, torch.float64: 2.0**-52, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[dtype]
    for as_numpy in forms:
        found = view.compose({"v": as_numpy(direction), "g": as_numpy(magnitude)})
        assert type(found) is type(as_numpy(direction)) and found.dtype == as_numpy(direction).dtype
        assert found.shape == tuple(expected.shape)
        # one rounding of the result apart at most (torch sums the squares in another order)
        np.testing.assert_allclose(found.astype(np.float64), expected.double().numpy(), rtol=4 * ulp, atol=0)
    # and the torch path of the same view is torch's
    assert torch.equal(view.compose({"v": direction, "g": magnitude}), expected)


def test_numpy_weight_norm_of_a_zero_row_is_nan_without_a_warning() -> None:
    direction = np.zeros((2, 3), dtype=np.float32)
    with np.errstate(all="raise"):
        found = weight_norm(direction, np.ones((2, 1), dtype=np.float32), 0)
    assert np.isnan(found).all()


def test_empty_shapes_torch_cannot_make_are_told_without_torch() -> None:
    """safetensors refuses an empty tensor whose shape overflows torch's 64-bit arithmetic; rnninit tells which
    without torch, by torch's own rules (checked here against torch on shapes around the limits)."""
    sizes = [0, 1, 2, 3, 2**20, 2**31, 2**32, 2**40, 2**62, 2**63 - 1]
    chooser = random.Random(0)
    checked = 0
    for _ in range(2000):
        shape = [chooser.choice([*sizes, chooser.randrange(2**63)]) for _ in range(chooser.randint(1, 5))]
        shape[chooser.randrange(len(shape))] = 0  # only shapes without elements are asked about
        try:
            torch.empty(shape, dtype=torch.float32, device="meta")
            torch_makes = True
        except RuntimeError:
            torch_makes = False
        assert _torch_can_make(tuple(shape)) == torch_makes, shape
        checked += 1
    assert checked == 2000


# --- rendering: the width check that spares measuring a table where it surely fits -----------------------------

def test_tables_change_layout_exactly_where_measuring_says_they_do_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_Fitted` measures a layout (as costly as drawing it) only when a bound from its cells' text says it may not
    fit; at every width around the table's natural width, what it draws is what it draws when it always measures."""
    from rich.console import Console
    from rich.measure import Measurement

    from rnninit_cli import report
    from rnninit_cli.layouts.discovery import discover

    arrays = {name: tensor.numpy() for name, tensor in _state(_lstm(0)).items()}
    layer = discover(arrays).layers[0]

    def drawn(width: int) -> str:
        console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
        console.print(report.inspect_table(layer, arrays, ["weight_ih", "bias_ih"]))
        return console.export_text()

    fitted = next(part for part in report.inspect_table(layer, arrays, ["weight_ih", "bias_ih"]).renderables
                  if isinstance(part, report._Fitted))
    natural = Measurement.get(Console(width=1000), Console(width=1000).options, fitted.layouts[0]()).maximum
    bounded = {width: drawn(width) for width in range(natural - 3, natural + 4)}
    monkeypatch.setattr(report, "_table_width_bound", lambda table: None)
    for width, text in bounded.items():
        assert text == drawn(width), width
