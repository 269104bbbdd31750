"""Issue 19 §3: dtypes that cannot hold the drawn values, and quantized tensors.

- Every dtype torch has (enumerated from `torch`, so a new one fails `test_the_table_covers_every_torch_dtype`) gets
  a decided behaviour for `apply --scheme keras` and `--scheme pytorch` on an nn.LSTM whose recurrent tensors are
  stored in it: rewritten (the stored values are the draw rounded to the dtype), refused by name in one line
  (nothing written), skipped by name with a warning (quantized tensors; `--strict` makes it an error), or not
  saveable by torch at all.
- `verify` never calls such blocks consistent; a draw beyond a narrow dtype's range is refused.
- Quantized tensors (`_rebuild_qtensor`: per tensor and per channel) are read and kept byte for byte; torch's own
  checks of their parameters are made; `.safetensors` output refuses them by name.
- `quantize_dynamic` state dicts: the packed recurrent weights are skipped by name and kept byte for byte, and the
  quantized model still loads the rewritten state dict.
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from typer.testing import Result

from rnninit_cli import DtypeError, init_
from rnninit_cli.init.initializers import FLOAT_FORMATS, cannot_hold

KINDS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
RNN = tuple(f"rnn.{kind}" for kind in KINDS)
SCHEMES = ("keras", "pytorch")

# dtype → (how the recurrent tensors are made, behaviour under keras, behaviour under pytorch)
#   to: tensor.to(dtype); bytes: random bytes viewed as dtype (torch cannot convert to it); quantize:
#   torch.quantize_per_tensor; unsaveable: torch.save itself refuses tensors of it (so no file can hold one)
#   rewrite: values written; refuse: one-line error naming the tensors, nothing written; refuse-hh: only weight_hh
#   (orthogonal) is refused; skip: a warning naming the tensors, the rest rewritten, --strict an error
FLOATS = {name: ("to", "rewrite", "rewrite") for name in ("float64", "float32", "float16", "bfloat16")}
FLOAT8 = {name: ("to", "refuse-hh", "rewrite")
          for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")}
NOT_REAL = {name: ("to", "refuse", "refuse") for name in (
    "complex32", "complex64", "complex128", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
    "uint64")}
TABLE: dict[str, tuple[str, str, str]] = {
    **FLOATS, **FLOAT8, **NOT_REAL,
    "float8_e8m0fnu": ("to", "refuse", "refuse"),  # no sign bit, no zero, powers of two only
    "float4_e2m1fn_x2": ("bytes", "refuse", "refuse"),  # two values packed per element; torch cannot write into it
    **{f"bits{kind}": ("bytes", "refuse", "refuse") for kind in ("1x8", "2x4", "4x2", "8", "16")},
    **{name: ("quantize", "skip", "skip") for name in ("qint8", "quint8", "qint32", "quint4x2", "quint2x4")},
    **{f"{sign}int{bits}": ("unsaveable", "", "") for sign in ("", "u") for bits in range(1, 8)},
}


def torch_dtypes() -> dict[str, torch.dtype]:
    """Every dtype torch has, by its canonical name (aliases such as torch.half counted once)."""
    found = {value for value in vars(torch).values() if isinstance(value, torch.dtype)}
    return {str(dtype).removeprefix("torch."): dtype for dtype in found}


def test_the_table_covers_every_torch_dtype() -> None:
    assert set(torch_dtypes()) == set(TABLE)


def lstm_state(dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    """An nn.LSTM(3, 4) under `rnn.` and a float32 nn.GRU(4, 3) under `keep.` (so that a skip can still succeed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lstm, gru = torch.nn.LSTM(3, 4), torch.nn.GRU(4, 3)
    state = {f"rnn.{name}": value.detach().to(dtype) for name, value in lstm.state_dict().items()}
    return state | {f"keep.{name}": value.detach() for name, value in gru.state_dict().items()}


def convert(tensor: torch.Tensor, dtype: torch.dtype, how: str) -> torch.Tensor:
    """`tensor` stored in `dtype` as the table says."""
    if how == "to":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # complex32 is experimental
            return tensor.to(dtype)
    if how == "bytes":
        generator = torch.Generator().manual_seed(tensor.numel())
        raw = torch.randint(0, 256, (tensor.numel() * dtype.itemsize,), dtype=torch.uint8, generator=generator)
        return raw.view(dtype).reshape(tensor.shape)
    assert how == "quantize"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized tensors
        return torch.quantize_per_tensor(tensor, 0.01, 1, dtype)


def stored_state(name: str) -> dict[str, torch.Tensor]:
    dtype, (how, _, _) = torch_dtypes()[name], TABLE[name]
    return {key: convert(value, dtype, how) if key.startswith("rnn.") else value for key, value in lstm_state().items()}


def save(state: dict[str, Any], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(state, path)
    return path


def load(path: Path) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, weights_only=True)


def one_error_line(result: Result, code: int = 3) -> str:
    """One `error:` line and the exit status of an input rnninit cannot use (3), or `code`."""
    assert result.exit_code == code, (result.exit_code, result.stdout[-2000:], result.stderr[-2000:])
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    return result.stderr


def finfo(name: str) -> Any:
    """numpy's / ml_dtypes' finfo (torch.finfo(float8_e5m2fnuz).eps is 0.125, not 2**-2)."""
    return np.finfo(np.dtype(name)) if name in ("float64", "float32", "float16") else \
        ml_dtypes.finfo(getattr(ml_dtypes, name))


def check_rounded_draw(name: str, stored: torch.Tensor, draw: torch.Tensor) -> None:
    """`stored` is the float64-comparable `draw` rounded to the dtype: exactly torch's rounding, sign kept, zeros
    kept, relative error ≤ eps in the normal range (≤ the subnormal spacing below it)."""
    assert str(stored.dtype) == f"torch.{name}"
    assert torch.equal(stored.to(torch.float64), draw.to(stored.dtype).to(torch.float64))
    exact, got = draw.to(torch.float64), stored.to(torch.float64)
    info = finfo(name)
    assert torch.isfinite(got).all()
    assert torch.equal(torch.sign(got)[got != 0], torch.sign(exact)[got != 0])
    assert (got[exact == 0] == 0).all()
    normal = exact.abs() >= float(info.smallest_normal)
    assert ((got - exact).abs()[normal] <= float(info.eps) * exact.abs()[normal]).all()
    spacing = float(info.smallest_normal) * float(info.eps)
    assert ((got - exact).abs()[~normal] <= spacing).all()


@pytest.fixture(scope="module")
def draws() -> dict[tuple[str, str], dict[str, torch.Tensor]]:
    """The draws of each scheme at seed 0 in float32 (what every narrower float dtype is drawn in) and float64."""
    found = {}
    for scheme in SCHEMES:
        for dtype in (torch.float32, torch.float64):
            state = {key: value.to(dtype) for key, value in lstm_state().items()}
            init_(state, scheme, seed=0)
            found[(scheme, str(dtype).removeprefix("torch."))] = state
    return found


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("name", sorted(TABLE))
def test_every_dtype_has_a_decided_behaviour(cli: Callable[..., Result], tmp_path: Path, draws: Any, name: str,
                                             scheme: str) -> None:
    how, *behaviours = TABLE[name]
    if how == "unsaveable":
        with pytest.raises(Exception, match="not recognized"):
            torch.save({"w": torch.empty(4, dtype=torch_dtypes()[name])}, io.BytesIO())
        return
    behaviour = behaviours[SCHEMES.index(scheme)]
    source = save(stored_state(name), tmp_path / "model.pt")
    before = source.read_bytes()
    output = tmp_path / "out.pt"
    result = cli("apply", source, "--scheme", scheme, "--seed", "0", "-o", output)
    if behaviour.startswith("refuse"):
        message = one_error_line(result)
        refused = ["rnn.weight_hh_l0"] if behaviour == "refuse-hh" else RNN
        assert all(f"{tensor} ({name})" in message for tensor in refused), message
        assert not output.exists() and source.read_bytes() == before
        return
    if behaviour == "skip":
        assert result.exit_code == 0, result.stderr
        assert all(tensor in result.stderr for tensor in RNN) and "quantized" in result.stderr, result.stderr
        written, original = load(output), load(source)
        for tensor in RNN:
            assert written[tensor].is_quantized and written[tensor].dtype == original[tensor].dtype
            assert torch.equal(written[tensor].int_repr(), original[tensor].int_repr())
            assert bytes(written[tensor].untyped_storage()) == bytes(original[tensor].untyped_storage())
        assert not torch.equal(written["keep.weight_hh_l0"], original["keep.weight_hh_l0"])
        strict = cli("apply", source, "--scheme", scheme, "--seed", "0", "-o", tmp_path / "strict.pt", "--strict")
        assert all(tensor in one_error_line(strict) for tensor in RNN)
        return
    assert behaviour == "rewrite"
    assert result.exit_code == 0, result.stderr
    written = load(output)
    draw = draws[(scheme, "float64" if name == "float64" else "float32")]
    for tensor in RNN:
        check_rounded_draw(name, written[tensor], draw[tensor])


def test_dtypes_torch_cannot_convert_to_are_written_from_raw_bytes() -> None:
    """The table's `bytes` rows are there because torch cannot convert values into those dtypes."""
    for name, (how, _, _) in TABLE.items():
        if how == "bytes":
            with pytest.raises(RuntimeError):
                torch.zeros(2).to(torch_dtypes()[name])


def test_the_float_formats_agree_with_numpy_and_ml_dtypes() -> None:
    floats = {name for name, dtype in torch_dtypes().items() if dtype.is_floating_point}
    assert set(FLOAT_FORMATS) == floats - {"float4_e2m1fn_x2"}
    for name, form in FLOAT_FORMATS.items():
        info = finfo(name)
        assert (form.largest, form.smallest_normal) == (float(info.max), float(info.smallest_normal)), name
        assert 2.0 ** -form.fraction_bits == float(info.eps), name
        values = torch.tensor([-1.0, 0.0]).to(torch_dtypes()[name]).to(torch.float64)
        assert (values[0] == -1.0) == form.signed and (values[1] == 0.0) == form.zero, name


# the pure check, table-driven: (dtype, initializer, arguments) → a word the reason must hold, or None (it can)
HOLDS = [
    ("float32", "orthogonal", {"gain": 1.0}, None),
    ("bfloat16", "orthogonal", {"gain": 1.0}, None),
    ("float16", "xavier_uniform", {"gain": 1.0}, None),
    ("float8_e4m3fn", "orthogonal", {"gain": 1.0}, "orthogonal only to within"),
    ("float8_e5m2fnuz", "orthogonal", {"gain": 1.0}, "orthogonal only to within"),
    ("float8_e4m3fn", "uniform", {"a": -0.5, "b": 0.5}, None),
    ("float8_e4m3fn", "zeros", {}, None),
    ("float8_e4m3fn", "constant", {"value": 1000.0}, "largest finite"),
    ("float8_e4m3fnuz", "uniform", {"a": -300.0, "b": 300.0}, "largest finite"),
    ("float16", "constant", {"value": 1e-6}, "smallest normal"),
    ("float8_e8m0fnu", "xavier_uniform", {"gain": 1.0}, "no sign"),
    ("float8_e8m0fnu", "zeros", {}, "no zero"),
    ("float8_e8m0fnu", "identity", {"scale": 1.0}, "no zero"),
    ("float8_e8m0fnu", "ones", {}, None),
    ("float8_e8m0fnu", "constant", {"value": 0.25}, None),
    ("float8_e8m0fnu", "uniform", {"a": 0.5, "b": 1.0}, "powers of two"),
    ("float8_e8m0fnu", "chrono", {"tmax": 10.0, "negate": False}, "powers of two"),
    ("float4_e2m1fn_x2", "ones", {}, "packs two"),
    ("qint8", "zeros", {}, "quantized"),
    ("int8", "zeros", {}, "integer"),
    ("bool", "ones", {}, "true and false"),
    ("complex64", "zeros", {}, "complex"),
    ("bits8", "zeros", {}, "raw bits"),
    ("float8_e8m0fnu", "keep", {}, None),
]


@pytest.mark.parametrize(("dtype", "initializer", "args", "reason"), HOLDS)
def test_which_dtypes_hold_which_rules(dtype: str, initializer: str, args: dict[str, Any], reason: str | None) -> None:
    found = cannot_hold(dtype, initializer, args)
    assert found is None if reason is None else reason in (found or ""), found


def test_verify_never_calls_unholdable_blocks_consistent(cli: Callable[..., Result], tmp_path: Path) -> None:
    for name, scheme in (("float8_e8m0fnu", "pytorch"), ("float8_e8m0fnu", "keras"), ("float8_e4m3fn", "keras"),
                         ("complex64", "pytorch")):
        state = {key: value.double() for key, value in lstm_state().items()}
        init_(state, scheme, seed=0)  # the scheme's own values, then stored in a dtype that cannot hold them
        source = save({key: value.to(torch_dtypes()[name]) for key, value in state.items()
                       if key.startswith("rnn.")}, tmp_path / f"{name}-{scheme}.pt")
        result = cli("verify", source, "--scheme", scheme)
        assert result.exit_code == 1 and "NOT consistent" in result.stdout, (name, scheme, result.stdout)
        assert f"{name} cannot hold" in result.stdout, result.stdout
    state = {key: value.double() for key, value in lstm_state().items()}
    init_(state, "pytorch", seed=0)
    source = save({key: value.to(torch.float8_e4m3fn) for key, value in state.items()}, tmp_path / "f8.pt")
    assert cli("verify", source, "--scheme", "pytorch").exit_code == 0  # uniform draws: float8 holds them


def test_a_draw_beyond_a_narrow_dtype_is_refused(cli: Callable[..., Result], tmp_path: Path) -> None:
    """Fan-based bounds are known only once drawn: xavier_normal(gain=2000) in float8_e4m3fn (largest 448) would be
    stored saturated."""
    source = save(stored_state("float8_e4m3fn"), tmp_path / "f8.pt")
    before = source.read_bytes()
    output = tmp_path / "out.pt"
    result = cli("apply", source, "-s", "pytorch", "--rule", "weight_hh=xavier_normal(gain=2000)", "--seed", "0",
                 "-o", output)
    message = one_error_line(result)
    assert "rnn.weight_hh_l0 (float8_e4m3fn)" in message and "448" in message, message
    assert not output.exists() and source.read_bytes() == before


def test_the_library_refuses_before_writing() -> None:
    state = stored_state("float8_e8m0fnu")
    kept = {name: tensor.clone() for name, tensor in state.items()}
    with pytest.raises(DtypeError, match=r"rnn\.weight_hh_l0 \(float8_e8m0fnu\)"):
        init_(state, "pytorch", seed=0)
    assert all(torch.equal(state[name].float(), kept[name].float()) for name in state)


# ---------------------------------------------------------------------------------------------------------------
# Quantized tensors


def quantized_variants() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(4, 6, generator=generator)
    scales, zeros = torch.rand(4, generator=generator, dtype=torch.float64) / 10 + 0.01, torch.arange(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "tensor_qint8": torch.quantize_per_tensor(values, 0.05, 0, torch.qint8),
            "tensor_quint8": torch.quantize_per_tensor(values, 0.05, 128, torch.quint8),
            "tensor_qint32": torch.quantize_per_tensor(values, 0.001, 7, torch.qint32),
            "tensor_quint4x2": torch.quantize_per_tensor(torch.randn(5, 5, generator=generator), 0.3, 8,
                                                         torch.quint4x2),
            "tensor_quint2x4": torch.quantize_per_tensor(torch.randn(3, 7, generator=generator), 0.5, 1,
                                                         torch.quint2x4),
            "channel_qint8": torch.quantize_per_channel(values, scales, zeros, 0, torch.qint8),
            "channel_quint8_axis1": torch.quantize_per_channel(values, scales.repeat(2)[:6], torch.arange(6), 1,
                                                               torch.quint8),
            "float_qparams_quint8": torch.quantize_per_channel(values, scales.float(), zeros.float(), 0,
                                                               torch.quint8),
            "float_qparams_quint4x2": torch.quantize_per_channel(values, scales.float(), zeros.float(), 0,
                                                                 torch.quint4x2),
            "view_qint8": torch.quantize_per_tensor(values, 0.05, 0, torch.qint8)[:, 1:4],
        }


def same_qtensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if not (b.is_quantized and (a.dtype, a.qscheme(), a.shape, a.stride(), a.storage_offset())
            == (b.dtype, b.qscheme(), b.shape, b.stride(), b.storage_offset())):
        return False
    if bytes(a.untyped_storage()) != bytes(b.untyped_storage()) or not torch.equal(a.int_repr(), b.int_repr()):
        return False
    if a.qscheme() == torch.per_tensor_affine:
        return (a.q_scale(), a.q_zero_point()) == (b.q_scale(), b.q_zero_point())
    return (torch.equal(a.q_per_channel_scales(), b.q_per_channel_scales()) and a.q_per_channel_axis()
            == b.q_per_channel_axis() and torch.equal(a.q_per_channel_zero_points(), b.q_per_channel_zero_points()))


# how the output is written: a patched copy of a zip archive, pickled again whole (standard output, or a legacy
# file, which is never patched)
WRITES = ["patched", "stdout", "legacy"]


@pytest.mark.parametrize("how", WRITES)
def test_quantized_tensors_are_kept_byte_for_byte(cli: Callable[..., Result], tmp_path: Path, how: str) -> None:
    variants = quantized_variants()
    state = {**lstm_state(), **variants}
    source = tmp_path / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(state, source, _use_new_zipfile_serialization=how != "legacy")
    output = tmp_path / "out.pt"
    if how == "stdout":
        result = cli("apply", source, "-s", "keras", "--seed", "0", "-o", "-", "--quiet")
        assert result.exit_code == 0, result.stderr
        output.write_bytes(result.stdout_bytes)
    else:
        result = cli("apply", source, "-s", "keras", "--seed", "0", "-o", output)
        assert result.exit_code == 0, result.stderr
        assert "quantized" not in result.stderr  # not recurrent: nothing to warn about
    written = load(output)
    assert all(same_qtensor(value, written[name]) for name, value in variants.items())
    assert not torch.equal(written["rnn.weight_hh_l0"], state["rnn.weight_hh_l0"])
    inspected = cli("inspect", source)
    assert inspected.exit_code == 0, inspected.stderr
    assert "1 recurrent layer(s)" not in inspected.stdout and "2 recurrent layer(s)" in inspected.stdout
    line = next(line for line in inspected.stdout.splitlines() if line.startswith("quantized tensors, not recurrent"))
    assert f"({len(variants)} in all)" in line, line
    document = json.loads(cli("inspect", source, "--json").stdout)
    assert document["quantized"] == [f"{name} ({str(value.dtype).removeprefix('torch.')})"
                                     for name, value in variants.items()]
    assert not document["skipped"] and not document["suspects"]


def test_quantized_tensors_cannot_become_safetensors(cli: Callable[..., Result], tmp_path: Path) -> None:
    source = save({**lstm_state(), "q": quantized_variants()["tensor_qint8"]}, tmp_path / "model.pt")
    output = tmp_path / "out.safetensors"
    for extra in ((), ("--tensors-only",)):
        message = one_error_line(cli("apply", source, "-s", "keras", "--seed", "0", "-o", output, *extra), code=4)
        assert "q is a quantized tensor (qint8)" in message and "safetensors" in message, message
        assert not output.exists()


def qtensor_file(tmp_path: Path, name: str, args: tuple[Any, ...],
                 function: Callable[..., Any] = torch._utils._rebuild_qtensor) -> Path:
    """A file whose `q` torch.save writes as `function(*args)` (torch's own persistent ids for storages)."""

    class Crafted:
        def __reduce_ex__(self, _protocol: int) -> tuple[Any, ...]:
            return (function, args)

    path = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save({**lstm_state(), "q": Crafted()}, path)
    return path


def typed(dtype: torch.dtype, nbytes: int) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.storage.TypedStorage(wrap_storage=torch.UntypedStorage(nbytes).fill_(3), dtype=dtype,
                                          _internal=True)


def test_quantizer_parameters_torch_refuses_are_refused(cli: Callable[..., Result], tmp_path: Path) -> None:
    """What torch.load(weights_only=True) refuses in a quantized tensor, rnninit refuses in one line too; and a
    quantized storage behind a plain rebuilder, of which torch makes a tensor with no quantizer (unusable)."""
    scales, zeros = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    hooks = OrderedDict()
    crafted = {
        "axis": (typed(torch.qint8, 12), 0, (4, 3), (3, 1), (torch.per_channel_affine, scales, zeros, 2), False, hooks),
        "length": (typed(torch.qint8, 12), 0, (4, 3), (3, 1), (torch.per_channel_affine, scales[:3], zeros[:3], 0),
                   False, hooks),
        "qscheme": (typed(torch.qint8, 12), 0, (4, 3), (3, 1), (torch.per_tensor_symmetric, 0.1, 0), False, hooks),
    }
    plain = (typed(torch.qint8, 12), 0, (4, 3), (3, 1), False, hooks)  # a quantized storage, a plain rebuilder
    files = {name: qtensor_file(tmp_path, f"{name}.pt", args) for name, args in crafted.items()}
    files["plain"] = qtensor_file(tmp_path, "plain.pt", plain, torch._utils._rebuild_tensor_v2)
    for name, path in files.items():
        with pytest.raises(Exception), warnings.catch_warnings():  # noqa: B017 (torch raises ValueError or others)
            warnings.simplefilter("ignore")
            torch.load(path, weights_only=True)["q"].qscheme()
        for command in (("inspect", path), ("apply", path, "-s", "keras", "--seed", "0", "-o", tmp_path / "o.pt"),
                        ("apply", path, "-s", "keras", "--seed", "0", "-o", "-")):
            result = cli(*command)
            assert result.exit_code == 3 and result.stderr.startswith("error:"), (name, command, result.stderr)
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr


def test_per_channel_parameters_are_rebuilt_as_torch_loads_them(cli: Callable[..., Result], tmp_path: Path) -> None:
    """float32 scales with int64 zero points: torch converts them (a copy) when it makes the tensor, which it does
    after reading their bytes; a re-saved file holds torch's values, or the file is refused, never other scales."""
    scales = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float32)
    args = (typed(torch.qint8, 12), 0, (4, 3), (3, 1), (torch.per_channel_affine, scales, torch.arange(4), 0), False,
            OrderedDict())
    path = qtensor_file(tmp_path, "float-scales.pt", args)
    reference = load(path)["q"]
    result = cli("apply", path, "-s", "keras", "--seed", "0", "-o", "-", "--quiet")
    if result.exit_code == 0:
        assert same_qtensor(reference, torch.load(io.BytesIO(result.stdout_bytes), weights_only=True)["q"])
    else:
        one_error_line(result)


# ---------------------------------------------------------------------------------------------------------------
# torch.ao.quantization.quantize_dynamic


class Model(torch.nn.Module):
    """A bidirectional LSTM and a GRU that quantize_dynamic packs, an RNN it leaves in float, a Linear it packs."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
        self.gru = torch.nn.GRU(8, 4)
        self.rnn = torch.nn.RNN(4, 4)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(self.gru(self.lstm(x)[0])[0])[0])


def quantized_model(dtype: torch.dtype) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(0)
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(Model(), {torch.nn.LSTM, torch.nn.GRU, torch.nn.Linear},
                                                      dtype=dtype)


PACKED = [f"lstm._all_weight_values.{index}.param" for index in range(4)] + ["gru._all_weight_values.0.param"]


@pytest.mark.parametrize("dtype", [torch.qint8, torch.float16])
def test_dynamically_quantized_state_dicts(cli: Callable[..., Result], tmp_path: Path, dtype: torch.dtype) -> None:
    model = quantized_model(dtype)
    source = tmp_path / "quantized.pt"
    torch.save(model.state_dict(), source)
    with pytest.raises(pickle.UnpicklingError, match="ScriptObject"):
        torch.load(source, weights_only=True)  # torch's weights-only loader refuses it; rnninit reads it inert
    inspected = cli("inspect", source)
    assert inspected.exit_code == 0 and "1 recurrent layer(s)" in inspected.stdout, inspected.stderr
    assert "not recognised" not in inspected.stderr, inspected.stderr  # its packed tensors are no suspects
    output = tmp_path / "out.pt"
    result = cli("apply", source, "-s", "pytorch", "--seed", "0", "-o", output)
    assert result.exit_code == 0, result.stderr
    # the packed layers are planned as their float parameters and packed again (tests/formats/test_requantize.py
    # checks the values against torch's own quantization): nothing is skipped
    assert "skipped" not in result.stderr and all(f"packed (dynamically quantized) {cell}" in result.stderr
                                                  for cell in ("LSTM lstm", "GRU gru")), result.stderr
    loaded = torch.load(output, weights_only=False)
    again = quantized_model(dtype)
    again.load_state_dict(loaded)
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(again.lstm(x)[0], model.lstm(x)[0])  # the packed weights were rewritten
    assert torch.isfinite(again(x)).all() and again(x).shape == (5, 2, 2)
    strict = cli("apply", source, "-s", "pytorch", "--seed", "0", "-o", tmp_path / "strict.pt", "--strict")
    assert strict.exit_code == 0, strict.stderr
    assert "ScriptObject" in one_error_line(cli("apply", source, "-s", "pytorch", "--seed", "0", "-o", "-"), code=4)



@pytest.mark.parametrize(("dtype", "rule"), [(torch.float16, "weight_ih=normal(0,1e-8)"),
                                             (torch.float16, "weight_ih=uniform(-1e-8,1e-8)"),
                                             (torch.bfloat16, "weight_hh=orthogonal(gain=1e-40)"),
                                             (torch.float8_e4m3fn, "weight_ih=normal(0,0.001)")])
def test_draws_below_the_smallest_normal_value_are_refused(dtype: torch.dtype, rule: str, tmp_path: Path,
                                                           cli: Callable[..., Any]) -> None:
    """Every drawn value would become 0 or keep a bit or two: refused, nothing written."""
    source = tmp_path / "small.pt"
    torch.save({name: value.detach().to(dtype) for name, value in torch.nn.RNN(3, 4).state_dict().items()}, source)
    result = cli("apply", source, "--scheme", "pytorch", "--rule", rule, "--seed", "0", "-o", tmp_path / "out.pt")
    assert result.exit_code != 0 and "smallest normal" in result.stderr, result.stderr
    assert not (tmp_path / "out.pt").exists()


def test_e8m0_constants_must_be_powers_of_two(tmp_path: Path, cli: Callable[..., Any]) -> None:
    source = tmp_path / "e8m0.pt"
    state = {name: value.detach() for name, value in torch.nn.RNN(3, 4).state_dict().items()}
    state["bias_ih_l0"] = torch.ones(4).to(torch.float8_e8m0fnu)
    state["bias_hh_l0"] = torch.ones(4).to(torch.float8_e8m0fnu)
    torch.save(state, source)
    refused = cli("apply", source, "--scheme", "pytorch", "--rule", "bias=constant(3)", "--seed", "0",
                  "-o", tmp_path / "out.pt")
    assert refused.exit_code != 0 and "powers of two" in refused.stderr, refused.stderr
    accepted = cli("apply", source, "--scheme", "pytorch", "--rule", "bias=constant(4)", "--seed", "0",
                   "-o", tmp_path / "out.pt")
    assert accepted.exit_code == 0, accepted.stderr
    assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True)["bias_ih_l0"].float(), torch.full((4,), 4.0))
