"""Issue 23 §3: `apply` rewrites dynamically quantized LSTM/GRU layers (`quantize_dynamic`) and packs them again.

Checked against torch itself, on files torch wrote: the output loads (`torch.load(weights_only=False)` of the
test's own file) strictly into the quantized module, which runs; per cell, the int8 values and the scale are what
torch's own weight quantization (`default_dynamic_qconfig.weight` observer, then `_quantize_weight`, as
`RNNBase.from_float` does) makes of the float values rnninit draws for the float layer of the same names and seed
(rnninit run on a float copy); fp16 cells hold those values rounded to float16; biases are the float copy's. Every
byte outside the rewritten storages, the 8-byte scales in data.pkl, CRCs and rnninit's record is the input's.
"""

from __future__ import annotations

import json
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_packed_layers import MODELS, Holder, quantized, save, torch_cells
from typer.testing import Result

SCHEMES = ("keras", "pytorch", "orthogonal")


def float_copy(kind: str, options: dict[str, Any], path: Path) -> Path:
    """The float module of the same shapes and names (its values do not matter: the scheme redraws them all). With
    biases always: torch's dynamic modules made with bias=False hold biases in their records too, and use them."""
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    return save(Holder(cls(5, 4, **{**options, "bias": True})), path)


def float_suffix(path: str, options: dict[str, Any]) -> str:
    """`_l1_reverse`: the float layer's parameter suffix of record `rnn._all_weight_values.{k}.param`, k counting
    layers then directions as torch's packed list does."""
    layer, direction = divmod(int(path.split(".")[-2]), 2 if options.get("bidirectional") else 1)
    return f"_l{layer}{'_reverse' if direction else ''}"


def loaded(path: Path) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, weights_only=False)  # the test's own file, written just now


def torch_quantized(weight: torch.Tensor) -> torch.Tensor:
    """What RNNBase.from_float makes of a float weight: the default dynamic qconfig's weight observer, then
    torch's _quantize_weight (quantize_per_tensor and the clamp to the observer's range)."""
    from torch.ao.nn.quantized.modules.utils import _quantize_weight
    from torch.ao.quantization.qconfig import default_dynamic_qconfig

    observer = default_dynamic_qconfig.weight()
    observer(weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _quantize_weight(weight.float(), observer)


def apply(cli: Callable[..., Result], source: Path, output: Path, scheme: str, seed: int = 11) -> Result:
    result = cli("apply", source, "-o", output, "--scheme", scheme, "--seed", seed)
    assert result.exit_code == 0, result.stderr
    return result


def runs(module: torch.nn.Module, state: dict[str, Any]) -> None:
    module.load_state_dict(state, strict=True)
    if module.rnn.mode == "LSTM" and not module.rnn.bias:
        return  # torch's quantized LSTM runs only with biases ("quantized LSTM requires biases"), as made too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        output, _ = module.rnn(torch.randn(3, 2, 5))
    assert torch.isfinite(output).all()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("model", sorted(MODELS))
def test_qint8_layers_are_packed_again_as_torch_packs_the_drawn_values(cli: Callable[..., Result], tmp_path: Path,
                                                                       model: str, scheme: str) -> None:
    kind, options = MODELS[model]
    source = save(quantized(kind, **options), tmp_path / "q.pt")
    output = tmp_path / "out.pt"
    result = apply(cli, source, output, scheme)
    assert "skipped" not in result.stderr and "packed (dynamically quantized)" in result.stderr
    drawn = tmp_path / "float-out.pt"
    apply(cli, float_copy(kind, options, tmp_path / "float.pt"), drawn, scheme)
    floats = torch.load(drawn, weights_only=True)
    runs(quantized(kind, **options), loaded(output))
    before, after = torch_cells(source), torch_cells(output)
    for path, (tag, weights, biases) in after.items():
        suffix = float_suffix(path, options)
        assert tag == "quantized_dynamic"
        for kind_name, weight in zip(("ih", "hh"), weights, strict=True):
            expected = torch_quantized(floats[f"rnn.weight_{kind_name}{suffix}"])
            assert weight.q_scale() == expected.q_scale() and weight.q_zero_point() == 0, (path, kind_name)
            assert torch.equal(weight.int_repr(), expected.int_repr()), (path, kind_name)
            # the scale is a float32 value, as the observer computes it
            assert weight.q_scale() == float(torch.tensor(weight.q_scale(), dtype=torch.float32))
        for kind_name, bias in zip(("ih", "hh"), biases, strict=True):
            assert torch.equal(bias.detach(), floats[f"rnn.bias_{kind_name}{suffix}"]), (path, kind_name)
        assert not torch.equal(weights[1].int_repr(), before[path][1][1].int_repr())


def test_the_same_as_quantize_dynamic_of_the_float_output(cli: Callable[..., Result], tmp_path: Path) -> None:
    """quantize_dynamic then apply == apply then quantize_dynamic (same seed): state dicts equal, value for value."""
    source = save(quantized("lstm", num_layers=2, bidirectional=True), tmp_path / "q.pt")
    apply(cli, source, tmp_path / "out.pt", "keras", seed=5)
    drawn = tmp_path / "float-out.pt"
    apply(cli, float_copy("lstm", {"num_layers": 2, "bidirectional": True}, tmp_path / "f.pt"), drawn, "keras", 5)
    module = Holder(torch.nn.LSTM(5, 4, num_layers=2, bidirectional=True))
    module.load_state_dict(torch.load(drawn, weights_only=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(torch.ao.quantization.quantize_dynamic(module, {torch.nn.LSTM}).state_dict(), tmp_path / "t.pt")
    ours, theirs = torch_cells(tmp_path / "out.pt"), torch_cells(tmp_path / "t.pt")
    assert set(ours) == set(theirs)
    for path in ours:
        for a, b in zip(ours[path][1], theirs[path][1], strict=True):
            assert a.q_scale() == b.q_scale() and torch.equal(a.int_repr(), b.int_repr())
        for a, b in zip(ours[path][2], theirs[path][2], strict=True):
            assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("model", ["lstm-2-layers-bidirectional", "gru", "gru-no-bias"])
def test_fp16_layers_hold_the_drawn_values_rounded_to_float16(cli: Callable[..., Result], tmp_path: Path,
                                                              model: str) -> None:
    kind, options = MODELS[model]
    source = save(quantized(kind, torch.float16, **options), tmp_path / "q.pt")
    output = tmp_path / "out.pt"
    apply(cli, source, output, "orthogonal")
    drawn = tmp_path / "float-out.pt"
    apply(cli, float_copy(kind, options, tmp_path / "float.pt"), drawn, "orthogonal")
    floats = torch.load(drawn, weights_only=True)
    fresh = quantized(kind, torch.float16, **options)
    runs(fresh, loaded(output))
    for path, (tag, weights, biases) in torch_cells(output).items():
        suffix = float_suffix(path, options)
        assert tag == "quantized_fp16"
        for kind_name, weight in zip(("ih", "hh"), weights, strict=True):
            assert torch.equal(weight, floats[f"rnn.weight_{kind_name}{suffix}"].half().float())
        for kind_name, bias in zip(("ih", "hh"), biases, strict=True):
            assert torch.equal(bias.detach(), floats[f"rnn.bias_{kind_name}{suffix}"])
    # what the loaded module computes with: exactly the stored values (fbgemm's fp16 packing keeps them)
    for name, value in fresh.rnn.get_weight().items():
        assert torch.equal(value.float(), floats[f"rnn.{name}"].half().float()), name


def changed_bytes(a: bytes, b: bytes) -> list[int]:
    assert len(a) == len(b)
    return [index for index, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]


def test_every_other_byte_is_kept_and_outputs_are_reproducible(cli: Callable[..., Result], tmp_path: Path) -> None:
    source = save(quantized("gru", num_layers=2, bidirectional=True), tmp_path / "q.pt")
    apply(cli, source, tmp_path / "a.pt", "pytorch", seed=3)
    apply(cli, source, tmp_path / "b.pt", "pytorch", seed=3)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    apply(cli, source, tmp_path / "c.pt", "pytorch", seed=4)
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "c.pt").read_bytes()
    old_scales = [w.q_scale() for _, weights, _ in torch_cells(source).values() for w in weights]
    new_scales = [w.q_scale() for _, weights, _ in torch_cells(tmp_path / "a.pt").values() for w in weights]
    with zipfile.ZipFile(source) as before, zipfile.ZipFile(tmp_path / "a.pt") as after:
        for info in before.infolist():
            old, new = before.read(info.filename), after.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                # only the scales' 8 bytes changed: each old scale's BINFLOAT holds its new scale at the same place
                slots = {old.index(b"G" + struct.pack(">d", s)): t for s, t in zip(old_scales, new_scales, strict=True)}
                assert all(new[start:start + 9] == b"G" + struct.pack(">d", t) for start, t in slots.items())
                assert all(any(start < index < start + 9 for start in slots) for index in changed_bytes(old, new))
            elif "/data/" not in info.filename:
                assert old == new, info.filename
        assert len(after.infolist()) == len(before.infolist()) + 1  # rnninit's record


def test_inspect_and_dry_run_say_what_apply_does(cli: Callable[..., Result], tmp_path: Path) -> None:
    source = save(quantized("lstm", num_layers=2), tmp_path / "q.pt")
    document = json.loads(cli("inspect", source, "--json").stdout)
    assert [(layer["rewritten"], layer["reason"]) for layer in document["quantized_layers"]] == [(True, None)] * 2
    assert document["skipped"] == []
    human = cli("inspect", source)
    assert "2 quantized layer(s) (rewritten by apply)" in human.stdout and "skipped" not in human.stderr
    dry = json.loads(cli("apply", source, "--dry-run", "--json", "--seed", "1", "--scheme", "keras").stdout)
    real = json.loads(cli("apply", source, "-o", tmp_path / "o.pt", "--json", "--seed", "1", "--scheme",
                          "keras").stdout)
    blocks = [(p["name"], b["gate"], b["rule"]) for layer in real["layers"] for p in layer["params"]
              for b in p["blocks"]]
    assert blocks == [(p["name"], b["gate"], b["rule"]) for layer in dry["layers"] for p in layer["params"]
                      for b in p["blocks"]]
    assert {name for name, _, _ in blocks} == {f"rnn.{k}_l{n}" for k in ("weight_ih", "weight_hh", "bias_ih",
                                                                          "bias_hh") for n in (0, 1)}
    assert dry["skipped"] == real["skipped"] == [] and dry["notes"] == real["notes"]


# ---------------------------------------------------------------------------------------------------------------
# what is kept, and hostile inputs


def test_a_legacy_file_keeps_its_packed_records_with_why(cli: Callable[..., Result], tmp_path: Path) -> None:
    state = quantized("lstm").state_dict()
    state["extra.weight_ih_l0"] = torch.zeros(16, 5)  # something to plan beside it
    state["extra.weight_hh_l0"] = torch.zeros(16, 4)
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    document = json.loads(cli("inspect", tmp_path / "legacy.pt", "--json").stdout)
    (layer,) = document["quantized_layers"]
    assert not layer["rewritten"] and "torch.save zip archive" in layer["reason"]


def test_a_float_parameter_of_the_same_module_keeps_the_packed_records(cli: Callable[..., Result],
                                                                       tmp_path: Path) -> None:
    state = quantized("lstm").state_dict()
    state["rnn.weight_hh_l1"] = torch.zeros(16, 4)
    torch.save(state, tmp_path / "clash.pt")
    document = json.loads(cli("inspect", tmp_path / "clash.pt", "--json").stdout)
    (layer,) = document["quantized_layers"]
    assert not layer["rewritten"] and "also holds rnn.weight_hh_l1" in layer["reason"]


def test_a_float_equal_to_a_scale_elsewhere_is_kept(cli: Callable[..., Result], tmp_path: Path) -> None:
    """Another BINFLOAT holding the same value as a scale: only the weight's own is patched."""
    state = quantized("lstm").state_dict()
    scale = torch_cells_of(state)[0].q_scale()
    state["a_number"] = scale
    torch.save(state, tmp_path / "twin.pt")
    apply(cli, tmp_path / "twin.pt", tmp_path / "out.pt", "keras")
    after = loaded(tmp_path / "out.pt")
    assert after.pop("a_number") == scale
    assert torch_cells_of(after)[0].q_scale() != scale
    runs(quantized("lstm"), after)


def torch_cells_of(state: dict[str, Any]) -> list[torch.Tensor]:
    (_, _, _, _, packed), _ = state["rnn._all_weight_values.0.param"].__getstate__()
    return [record.__getstate__()[0][0] for record in packed]


def test_a_shared_quantizer_keeps_the_records(cli: Callable[..., Result], tmp_path: Path) -> None:
    """weight_hh's quantizer tuple made a BINGET of weight_ih's: one scale for both, refused (kept, with why)."""
    source = save(quantized("lstm"), tmp_path / "q.pt")

    def share(data: bytes) -> bytes:
        import re

        first = re.search(rb"G.{8}K\x00\x87q(.)", data, re.DOTALL)  # scale, zero point 0, TUPLE3, BINPUT n
        assert first is not None
        second = re.search(rb"h.G.{8}K\x00\x87q.", data[first.end():], re.DOTALL)  # the next, after BINGET qscheme
        assert second is not None
        start, stop = first.end() + second.start(), first.end() + second.end()
        # BINGET the first tuple, EMPTY_TUPLE + POP pairs as filler (every offset kept), BINPUT as before
        replacement = b"h" + first[1] + b")0" * 6 + data[stop - 2:stop]
        assert len(replacement) == stop - start
        return data[:start] + replacement + data[stop:]

    from test_packed_layers import rezipped

    tampered = rezipped(source, tmp_path / "shared.pt", share)
    cells = torch_cells(tampered)["rnn._all_weight_values.0.param"][1]
    assert cells[0].q_scale() == cells[1].q_scale()  # torch reads one scale for both
    document = json.loads(cli("inspect", tampered, "--json").stdout)
    (layer,) = document["quantized_layers"]
    assert not layer["rewritten"] and "scale" in layer["reason"], layer["reason"]
    result = cli("apply", tampered, "-o", tmp_path / "out.pt", "--scheme", "keras")
    assert result.exit_code != 0 or "skipped rnn._all_weight_values.0.param" in result.stderr


def test_values_fp16_cannot_hold_are_refused_before_writing(cli: Callable[..., Result], tmp_path: Path) -> None:
    source = save(quantized("gru", torch.float16), tmp_path / "q.pt")
    result = cli("apply", source, "-o", tmp_path / "out.pt", "--scheme", "pytorch", "--rule",
                 "weight_hh=constant(value=100000)")
    assert result.exit_code != 0 and result.stderr.startswith("error:"), result.stderr
    assert "65504" in result.stderr and not (tmp_path / "out.pt").exists()


def test_apply_says_why_it_keeps_a_record_it_cannot_read(cli: Callable[..., Result], tmp_path: Path) -> None:
    """A record inspect cannot describe (here a scale of 0) is kept by apply too, and apply says why, as inspect
    does."""
    from test_packed_layers import first_scale, replace_once, rezipped

    source = save(quantized("lstm"), tmp_path / "q.pt")
    scale = struct.pack(">d", first_scale(source))
    tampered = rezipped(source, tmp_path / "zero.pt", replace_once(b"G" + scale, b"G" + struct.pack(">d", 0.0)))
    result = cli("apply", tampered, "-o", tmp_path / "out.pt", "--scheme", "keras")
    line = next(line for line in result.stderr.splitlines() if "skipped rnn._all_weight_values.0.param" in line)
    assert "scale 0.0" in line, line
    assert not (tmp_path / "out.pt").exists()
    inspected = cli("inspect", tampered)
    line = next(line for line in inspected.stderr.splitlines() if "skipped rnn._all_weight_values.0.param" in line)
    assert "inspect cannot show it" in line and line.count("scale 0.0") == 1, line


def test_a_whole_pickled_module_keeps_its_records_and_says_to_save_the_state_dict(cli: Callable[..., Result],
                                                                                    tmp_path: Path) -> None:
    """torch.save(model) names the records by module path, not `….{k}.param`: kept, with what to do instead."""
    model = quantized("lstm")
    model.extra = torch.nn.LSTM(5, 4)  # a float layer to plan beside it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model, tmp_path / "module.pt")
    document = json.loads(cli("inspect", tmp_path / "module.pt", "--json").stdout)
    (layer,) = document["quantized_layers"]
    assert not layer["rewritten"] and "save model.state_dict()" in layer["reason"]
