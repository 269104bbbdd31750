"""The `rnninit` command line, in-process through Typer's CliRunner (stdout and stderr captured apart).

Results are checked against independent math on the written files (read back with torch.load /
safetensors, never with rnninit's loader): orthogonality, Glorot bounds, effective biases, bit-exact
untouched tensors, and JSON statistics recomputed here.
"""

from __future__ import annotations

import errno
import filecmp
import json
import math
import os
import re
import zipfile
from pathlib import Path

import pytest
import torch
from builders import (
    GRU_HIDDEN,
    GRU_INPUT,
    LSTM_HIDDEN,
    LSTM_INPUT,
    file_format,
    read_metadata,
    read_tensor_bytes,
    read_tensors,
    stats,
    temp_leftovers,
)

import rnninit_cli

# (name template, gates, hidden size, input size, prefix, layer, direction) of every TinyModel layer.
LAYERS = [
    ("lstm.{}_l0", "ifgo", LSTM_HIDDEN, LSTM_INPUT, "lstm.", 0, "forward"),
    ("lstm.{}_l0_reverse", "ifgo", LSTM_HIDDEN, LSTM_INPUT, "lstm.", 0, "reverse"),
    ("lstm.{}_l1", "ifgo", LSTM_HIDDEN, 2 * LSTM_HIDDEN, "lstm.", 1, "forward"),
    ("lstm.{}_l1_reverse", "ifgo", LSTM_HIDDEN, 2 * LSTM_HIDDEN, "lstm.", 1, "reverse"),
    ("gru.{}_l0", "rzn", GRU_HIDDEN, GRU_INPUT, "gru.", 0, "forward"),
]
KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
RECURRENT_NAMES = {template.format(kind) for template, *_ in LAYERS for kind in KINDS}
UNTOUCHED = ("emb.weight", "head.weight", "head.bias")
BLOCKS = sum(len(gates) * len(KINDS) for _, gates, *_ in LAYERS)  # 4*4*4 + 3*4 = 76


def assert_error(result, code: int, *fragments: str) -> str:
    """Exit `code`, exactly one `error: ...` line on stderr holding every fragment, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.output
    if result.stdout:  # inspect and verify --json: the error's own document on its line (JSON Lines), nothing else
        document = json.loads(result.stdout)
        assert set(document) == {"input", "error", "exit_status"} and document["exit_status"] == code, result.stdout
        assert result.stdout.count("\n") == 1 and lines[0] == f"error: {document['error']}"
    return lines[0]


def gram_error(matrix: torch.Tensor) -> float:
    """max |MᵀM − I| in float64."""
    m = matrix.double()
    return (m.T @ m - torch.eye(m.shape[1], dtype=torch.float64)).abs().max().item()


def check_keras(tensors: dict[str, torch.Tensor], *, atol: float = 1e-5, rtol_bound: float = 1e-6,
                layers=LAYERS) -> None:
    """Keras defaults in PyTorch layout, checked from first principles on every given layer."""
    for template, gates, h, d, *_ in layers:
        g = len(gates)
        w_hh = tensors[template.format("weight_hh")]
        assert tuple(w_hh.shape) == (g * h, h)
        # orthogonal over the whole (G·h, h) matrix: orthonormal columns ...
        assert gram_error(w_hh) < atol, template
        # ... which does not make each (h, h) gate block orthogonal
        assert max(gram_error(w_hh[k * h:(k + 1) * h]) for k in range(g)) > 0.05, template

        w_ih = tensors[template.format("weight_ih")].double()
        bound = math.sqrt(6.0 / (d + g * h))  # Glorot uniform with fans of the whole matrix
        assert w_ih.abs().max().item() <= bound * (1 + rtol_bound), template
        assert w_ih.abs().max().item() > 0.6 * bound, template
        assert abs(w_ih.std().item() - bound / math.sqrt(3)) < 0.25 * bound, template

        b_ih = tensors[template.format("bias_ih")].double()
        b_hh = tensors[template.format("bias_hh")].double()
        assert torch.count_nonzero(b_hh) == 0, template
        for k, gate in enumerate(gates):
            expected = 1.0 if gate == "f" else 0.0
            assert torch.all(b_ih[k * h:(k + 1) * h] == expected), (template, gate)
            assert torch.all(b_ih[k * h:(k + 1) * h] + b_hh[k * h:(k + 1) * h] == expected), (template, gate)


def assert_untouched(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], names) -> None:
    for name in names:
        assert after[name].dtype == before[name].dtype, name
        assert torch.equal(after[name], before[name]), name


def summary_seed(report: str) -> int:
    found = re.findall(r"\bseed (\d+)", report)
    assert len(found) == 1, report
    return int(found[0])


# --------------------------------------------------------------------------------------------
# top level


def test_version(cli) -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"rnninit {rnninit_cli.__version__}"


def test_help_lists_the_commands(cli) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("apply", "inspect", "new", "schemes"):
        assert command in result.output


def test_schemes_table_lists_every_scheme(cli) -> None:
    result = cli("schemes")
    assert result.exit_code == 0
    for name in ("pytorch", "keras", "keras-gate", "flax", "orthogonal", "irnn", "chrono"):
        assert name in result.stdout
    assert "tmax" in result.stdout
    assert result.stderr == ""


def test_schemes_json_is_one_document(cli) -> None:
    result = cli("schemes", "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    by_name = {entry["name"]: entry for entry in document}
    assert {"keras", "chrono", "pytorch", "irnn"} <= set(by_name)
    assert by_name["chrono"]["signature"] == "chrono(tmax)"
    assert "bias_ih.f=ones" in by_name["keras"]["rules"]
    assert all(entry["reference"] for entry in document)
    assert result.stderr == ""


# --------------------------------------------------------------------------------------------
# apply: what is written


@pytest.mark.parametrize("fixture", ["model_pt", "model_safetensors"])
def test_apply_keras_semantics_and_untouched_tensors(cli, request, tmp_path: Path, fixture: str) -> None:
    source = request.getfixturevalue(fixture)
    output = tmp_path / ("out" + source.suffix)
    result = cli("apply", source, "--scheme", "keras", "--seed", "3", "-o", output)
    assert result.exit_code == 0, result.stderr
    before, after = read_tensors(source), read_tensors(output)
    assert file_format(output) == file_format(source)
    assert set(after) == set(before)
    for name in before:
        assert after[name].shape == before[name].shape and after[name].dtype == before[name].dtype, name
    check_keras(after)
    assert_untouched(before, after, UNTOUCHED)
    if file_format(output) == "pt":
        assert_valid_zip(output)
    for name in RECURRENT_NAMES - {n for n in RECURRENT_NAMES if "bias_hh" in n}:
        assert not torch.equal(after[name], before[name]), name


def test_apply_pt_keeps_key_order(cli, model_pt: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.pt"
    assert cli("apply", model_pt, "-s", "keras", "--seed", "1", "-o", output).exit_code == 0
    assert list(torch.load(output, weights_only=True)) == list(torch.load(model_pt, weights_only=True))


def test_apply_safetensors_keeps_metadata_and_adds_rnninit_keys(cli, model_safetensors: Path, tmp_path) -> None:
    output = tmp_path / "out.safetensors"
    result = cli("apply", model_safetensors, "-s", "keras", "--seed", "5", "-r", "bias_hh.f=constant(0.5)",
                 "-o", output)
    assert result.exit_code == 0, result.stderr
    metadata = read_metadata(output)
    assert metadata["author"] == "me"
    assert metadata["rnninit.scheme"] == "keras"
    assert metadata["rnninit.seed"] == "5"
    assert json.loads(metadata["rnninit.rules"]) == ["bias_hh.f=constant(0.5)"]
    assert metadata["rnninit.version"] == rnninit_cli.__version__


def test_pt_output_records_metadata_in_the_archive(cli, model_pt: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.pt"
    assert cli("apply", model_pt, "-s", "keras", "--seed", "9", "-o", output).exit_code == 0
    with zipfile.ZipFile(output) as archive:
        names = archive.namelist()
    folder = names[0].split("/")[0]  # torch names every record FOLDER/...; the record joins them
    assert f"{folder}/data.pkl" in names and f"{folder}/rnninit.json" in names
    metadata = read_metadata(output)
    assert metadata["rnninit.scheme"] == "keras"
    assert metadata["rnninit.seed"] == "9"
    # the extra record does not disturb torch.load
    assert set(torch.load(output, weights_only=True)) == set(read_tensors(model_pt))
    shown = json.loads(cli("inspect", output, "--json").stdout)["metadata"]
    assert shown == metadata


def test_reapplying_replaces_the_previous_rnninit_record(cli, model_safetensors: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert cli("apply", model_safetensors, "-s", "keras", "--seed", "1", "--only", "^gru", "-o", first).exit_code == 0
    assert read_metadata(first)["rnninit.only"] == "^gru"
    assert cli("apply", first, "-s", "orthogonal", "--seed", "2", "-o", second).exit_code == 0
    metadata = read_metadata(second)
    assert metadata["author"] == "me"
    assert metadata["rnninit.scheme"] == "orthogonal" and metadata["rnninit.seed"] == "2"
    assert "rnninit.only" not in metadata  # the second run touched every layer


def test_training_checkpoint_keeps_non_tensor_entries(cli, training_pt: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.ckpt"
    result = cli("apply", training_pt, "-s", "keras", "--seed", "4", "-o", output)
    assert result.exit_code == 0, result.stderr
    before = torch.load(training_pt, weights_only=True)
    after = torch.load(output, weights_only=True)
    assert after["epoch"] == 3 and after["hp"] == {"lr": 0.1} and after["history"] == [0.5, 0.25]
    assert list(after) == list(before)
    check_keras(after["state_dict"])
    assert_untouched(before["state_dict"], after["state_dict"], UNTOUCHED)

    document = json.loads(cli("inspect", output, "--json").stdout)
    assert {layer["prefix"] for layer in document["layers"]} == {"state_dict/lstm.", "state_dict/gru."}
    names = {param["name"] for layer in document["layers"] for param in layer["params"]}
    assert "state_dict/lstm.weight_ih_l0" in names and len(names) == len(RECURRENT_NAMES)


def test_training_checkpoint_to_safetensors_needs_tensors_only(cli, training_pt: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.safetensors"
    result = cli("apply", training_pt, "-s", "keras", "--seed", "4", "-o", output)
    assert_error(result, 4, "--tensors-only", "epoch")
    assert not output.exists()
    assert temp_leftovers(tmp_path) == []

    result = cli("apply", training_pt, "-s", "keras", "--seed", "4", "-o", output, "--tensors-only")
    assert result.exit_code == 0, result.stderr
    assert file_format(output) == "safetensors"
    after = read_tensors(output)
    source = torch.load(training_pt, weights_only=True)["state_dict"]
    assert set(after) == {f"state_dict/{name}" for name in source}
    assert torch.equal(after["state_dict/emb.weight"], source["emb.weight"])
    check_keras({name.removeprefix("state_dict/"): tensor for name, tensor in after.items()})


def assert_valid_zip(path: Path) -> None:
    """Every record's CRC-32 matches its bytes (a patched archive must keep them right)."""
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None


def test_reapplying_a_pt_output_rewrites_its_record(cli, model_pt: Path, tmp_path: Path) -> None:
    first, second, third = (tmp_path / f"{n}.pt" for n in ("first", "second", "third"))
    assert cli("apply", model_pt, "-s", "keras", "--seed", "1", "--only", "^lstm", "-o", first, "-q").exit_code == 0
    assert cli("apply", first, "-s", "chrono(tmax=9)", "--seed", "2", "-o", second, "-q").exit_code == 0
    long_only = "^(lstm|gru)|" + "|".join(f"never{i}" for i in range(800))  # > 4 KiB of metadata
    assert cli("apply", second, "-s", "keras", "--seed", "3", "--only", long_only, "-o", third, "-q").exit_code == 0
    for path in (first, second, third):
        assert_valid_zip(path)
        with zipfile.ZipFile(path) as archive:
            assert sum(name.endswith("/rnninit.json") for name in archive.namelist()) == 1
    assert read_metadata(first)["rnninit.only"] == "^lstm"
    assert read_metadata(second)["rnninit.seed"] == "2" and "rnninit.only" not in read_metadata(second)
    assert read_metadata(third)["rnninit.only"] == long_only
    check_keras(read_tensors(third))
    assert_untouched(read_tensors(model_pt), read_tensors(third), UNTOUCHED)


def test_non_contiguous_and_legacy_pt_inputs(cli, model_state, tmp_path: Path) -> None:
    # a recurrent weight stored as a transposed view, next to a tensor sharing nothing with it
    model_state["lstm.weight_hh_l1"] = model_state["lstm.weight_hh_l1"].t().contiguous().t()
    assert not model_state["lstm.weight_hh_l1"].is_contiguous()
    strided = tmp_path / "strided.pt"
    torch.save(model_state, strided)
    legacy = tmp_path / "legacy.pt"
    torch.save(model_state, legacy, _use_new_zipfile_serialization=False)
    assert not legacy.read_bytes().startswith(b"PK")
    for source in (strided, legacy):
        output = tmp_path / f"out-{source.name}"
        result = cli("apply", source, "-s", "keras", "--seed", "5", "-o", output)
        assert result.exit_code == 0, result.stderr
        assert_valid_zip(output)
        after = read_tensors(output)
        check_keras(after)
        assert_untouched(model_state, after, UNTOUCHED)
        assert read_metadata(output)["rnninit.seed"] == "5"


@pytest.mark.parametrize("fixture", ["half_pt", "half_safetensors"])
def test_half_precision_dtypes_are_kept(cli, request, tmp_path: Path, fixture: str) -> None:
    source = request.getfixturevalue(fixture)
    output = tmp_path / ("out" + source.suffix)
    result = cli("apply", source, "-s", "keras", "--seed", "11", "-o", output)
    assert result.exit_code == 0, result.stderr
    before, after = read_tensors(source), read_tensors(output)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype, name
    assert after["lstm.weight_hh_l0"].dtype == torch.bfloat16
    assert after["gru.weight_hh_l0"].dtype == torch.float16
    # bf16 keeps ~3 significant digits: orthogonality and bounds hold up to rounding
    check_keras(after, atol=3e-2, rtol_bound=2**-7)
    assert_untouched(before, after, UNTOUCHED)


@pytest.mark.parametrize(
    ("source_fixture", "source_name", "output_name", "requested", "expected"),
    [
        ("model_pt", "model.pt", "out.safetensors", None, "safetensors"),
        ("model_safetensors", "model.safetensors", "out.pt", None, "pt"),
        ("model_safetensors", "x.weights", "out.weights", None, "safetensors"),
        ("model_safetensors", "x.bin", "out.pth", None, "pt"),
        ("model_pt", "x.weights", "out", None, "pt"),
        ("model_pt", "x.weights", "out", "safetensors", "safetensors"),
        ("model_safetensors", "model.safetensors", "out.ckpt", "pt", "pt"),
    ],
)
def test_formats_by_content_and_output_choice(
    cli, request, tmp_path: Path, source_fixture, source_name, output_name, requested, expected
) -> None:
    source = request.getfixturevalue(source_fixture)
    renamed = tmp_path / "in" / source_name
    renamed.parent.mkdir()
    renamed.write_bytes(source.read_bytes())
    output = tmp_path / output_name
    args = ["apply", renamed, "-s", "keras", "--seed", "2", "-o", output]
    result = cli(*args, *(["--format", requested] if requested else []))
    assert result.exit_code == 0, result.stderr
    assert file_format(output) == expected
    before, after = read_tensors(source), read_tensors(output)
    assert set(after) == set(before)
    check_keras(after)
    assert_untouched(before, after, UNTOUCHED)
    inspected = json.loads(cli("inspect", renamed, "--json").stdout)
    assert inspected["format"] == file_format(source)
    assert len(inspected["layers"]) == len(LAYERS)


def test_drawn_seed_is_printed_recorded_and_reproduces(cli, model_pt: Path, model_safetensors, tmp_path) -> None:
    for source in (model_pt, model_safetensors):
        first = tmp_path / ("first" + source.suffix)
        result = cli("apply", source, "-s", "keras", "-o", first)
        assert result.exit_code == 0, result.stderr
        seed = summary_seed(result.stdout)
        assert read_metadata(first)["rnninit.seed"] == str(seed)
        again = tmp_path / ("again" + source.suffix)
        assert cli("apply", source, "-s", "keras", "--seed", seed, "-o", again, "-q").exit_code == 0
        assert filecmp.cmp(first, again, shallow=False)


@pytest.mark.parametrize("fixture", ["model_pt", "model_safetensors", "training_pt", "half_safetensors"])
def test_same_inputs_give_byte_identical_files(cli, request, tmp_path: Path, fixture: str) -> None:
    source = request.getfixturevalue(fixture)
    args = ["-s", "chrono(tmax=50)", "--seed", "123", "-r", "weight_hh.f=orthogonal(per=gate)", "-q"]
    outputs = [tmp_path / f"{name}{source.suffix}" for name in ("a", "b", "c")]
    for output in outputs[:2]:
        assert cli("apply", source, *args, "-o", output).exit_code == 0
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    other = [a if a != "123" else "124" for a in args]
    assert cli("apply", source, *other, "-o", outputs[2]).exit_code == 0
    assert outputs[2].read_bytes() != outputs[0].read_bytes()


def test_rules_apply_after_the_scheme(cli, model_pt: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.pt"
    rules = ["bias_ih.f=zeros", "bias_hh.f=constant(2)", "weight_ih.z=zeros"]
    args = [a for rule in rules for a in ("--rule", rule)]
    result = cli("apply", model_pt, "-s", "keras", "--seed", "1", *args, "-o", output)
    assert result.exit_code == 0, result.stderr
    after = read_tensors(output)
    h = LSTM_HIDDEN
    for template, gates, *_ in LAYERS[:4]:
        effective = after[template.format("bias_ih")] + after[template.format("bias_hh")]
        assert torch.all(after[template.format("bias_ih")][h:2 * h] == 0)
        assert torch.all(effective[h:2 * h] == 2.0), template
        assert torch.all(effective[:h] == 0) and torch.all(effective[2 * h:] == 0)
        assert gates == "ifgo"
    g = GRU_HIDDEN
    assert torch.count_nonzero(after["gru.weight_ih_l0"][g:2 * g]) == 0
    assert torch.count_nonzero(after["gru.weight_ih_l0"][:g]) > 0
    assert json.loads(read_metadata(output)["rnninit.rules"]) == rules


def test_chrono(cli, model_safetensors: Path, tmp_path: Path) -> None:
    tmax = 200
    output = tmp_path / "out.safetensors"
    result = cli("apply", model_safetensors, "--scheme", f"chrono(tmax={tmax})", "--seed", "8", "-o", output)
    assert result.exit_code == 0, result.stderr
    after = read_tensors(output)
    high = math.log(tmax - 1)
    for template, gates, h, *_ in LAYERS:
        b_ih = after[template.format("bias_ih")].double()
        b_hh = after[template.format("bias_hh")].double()
        assert torch.count_nonzero(b_hh) == 0, template  # drawn once per unit, into bias_ih only
        blocks = {gate: b_ih[k * h:(k + 1) * h] for k, gate in enumerate(gates)}
        timed = blocks["f"] if "f" in blocks else blocks["z"]
        assert torch.all(timed >= 0) and torch.all(timed <= high + 1e-6), template
        assert len(set(timed.tolist())) == h  # one draw per unit
        forget = torch.sigmoid(timed)
        assert torch.all(forget >= 0.5) and torch.all(forget <= (tmax - 1) / tmax + 1e-6)
        if "f" in blocks:
            assert torch.equal(blocks["i"], -blocks["f"])
            assert torch.count_nonzero(blocks["g"]) == 0 and torch.count_nonzero(blocks["o"]) == 0
        else:
            assert torch.count_nonzero(blocks["r"]) == 0 and torch.count_nonzero(blocks["n"]) == 0
    assert read_metadata(output)["rnninit.scheme"] == f"chrono(tmax={tmax})"


def test_only_selects_by_regex(cli, model_pt: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.pt"
    result = cli("apply", model_pt, "-s", "keras", "--seed", "1", "--only", r"^gru\.", "-o", output)
    assert result.exit_code == 0, result.stderr
    before, after = read_tensors(model_pt), read_tensors(output)
    lstm = [name for name in before if name.startswith("lstm.")]
    assert_untouched(before, after, [*lstm, *UNTOUCHED])
    assert gram_error(after["gru.weight_hh_l0"]) < 1e-5
    assert not torch.equal(after["gru.weight_ih_l0"], before["gru.weight_ih_l0"])
    assert read_metadata(output)["rnninit.only"] == r"^gru\."
    assert "1 layer(s)" in result.stdout


def test_only_matching_nothing_is_an_error(cli, model_pt: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.pt"
    assert_error(cli("apply", model_pt, "-s", "keras", "--only", "^decoder", "-o", output), 2, "^decoder")
    assert not output.exists()


def test_dry_run_prints_the_plan_and_writes_nothing(cli, model_pt: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.pt"
    snapshot = model_pt.read_bytes()
    result = cli("apply", model_pt, "-s", "keras", "--dry-run", "-o", output)
    assert result.exit_code == 0, result.stderr
    assert not output.exists()
    assert model_pt.read_bytes() == snapshot
    assert "bias_ih.f=ones" in result.stdout and "weight_hh=orthogonal(per=matrix)" in result.stdout
    assert "LSTM layer 1, reverse" in result.stdout
    assert result.stderr == ""

    result = cli("apply", model_pt, "-s", "keras", "--dry-run", "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert document["dry_run"] is True and document["output"] is None
    assert sorted(tmp_path.iterdir()) == [model_pt]


def test_quiet_prints_nothing(cli, model_pt: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.pt"
    result = cli("apply", model_pt, "-s", "keras", "-q", "-o", output)
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""
    assert output.exists()
    # errors are still printed
    assert_error(cli("apply", model_pt, "-s", "keras", "-q", "-o", output), 4, "exists")


def test_apply_report_goes_to_stdout(cli, model_pt: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.pt"
    result = cli("apply", model_pt, "-s", "keras", "--seed", "17", "-o", output)
    assert result.exit_code == 0
    assert result.stderr == ""
    err = result.stdout
    for column in ("parameter", "gate", "rule", "mean before → after", "std before → after"):
        assert column in err
    assert err.count("LSTM layer") == 4 and err.count("GRU layer") == 1
    assert "+1.000" in err  # forget bias after
    summary = err.strip().splitlines()[-1]
    assert summary.startswith(f"{len(LAYERS)} layer(s), {BLOCKS} block(s)")
    assert "keras" in summary and "seed 17" in summary and str(output) in summary


def check_layer_docs(layers: list[dict], tensors: dict[str, torch.Tensor], *, prefix: str = "",
                     dtype: str = "float32") -> None:
    """Compare the JSON layer documents with the TinyModel layout and statistics computed here."""
    by_key = {(doc["prefix"], doc["layer"], doc["direction"]): doc for doc in layers}
    assert len(by_key) == len(layers) == len(LAYERS)
    for template, gates, h, d, layer_prefix, index, direction in LAYERS:
        doc = by_key[(prefix + layer_prefix, index, direction)]
        assert doc["cell"] == ("lstm" if gates == "ifgo" else "gru")
        assert doc["is_cell"] is False
        assert (doc["input_size"], doc["hidden_size"], doc["proj_size"], doc["bias"]) == (d, h, 0, True)
        assert [param["kind"] for param in doc["params"]] == list(KINDS)
        for param in doc["params"]:
            name = prefix + template.format(param["kind"])
            tensor = tensors[name]
            assert param["name"] == name
            assert param["shape"] == list(tensor.shape)
            assert param["dtype"] == dtype
            assert [block["gate"] for block in param["blocks"]] == list(gates)
            for k, block in enumerate(param["blocks"]):
                expected = stats(tensor[k * h:(k + 1) * h])
                for key, value in expected.items():
                    assert block[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, k, key)
        total = tensors[prefix + template.format("bias_ih")].double() + tensors[
            prefix + template.format("bias_hh")].double()
        assert [entry["gate"] for entry in doc["effective_bias"]] == list(gates)
        for k, entry in enumerate(doc["effective_bias"]):
            expected = stats(total[k * h:(k + 1) * h])
            for key, value in expected.items():
                assert entry[key] == pytest.approx(value, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("fixture", ["model_pt", "model_safetensors"])
def test_apply_json_matches_the_files(cli, request, tmp_path: Path, fixture: str) -> None:
    source = request.getfixturevalue(fixture)
    output = tmp_path / ("out" + source.suffix)
    result = cli("apply", source, "-s", "keras", "--seed", "21", "-r", "bias_hh.o=constant(0.25)", "-o", output,
                 "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)  # one document and nothing else
    assert document["input"] == str(source)
    assert document["output"] == str(output)
    assert document["format"] == file_format(source)
    assert document["scheme"] == "keras"
    assert document["rules"] == ["bias_hh.o=constant(0.25)"]
    assert document["seed"] == 21
    assert document["only"] is None
    before, after = read_tensors(source), read_tensors(output)
    check_layer_docs(document["layers"], after)
    for doc in document["layers"]:
        h = doc["hidden_size"]
        for param in doc["params"]:
            for k, block in enumerate(param["blocks"]):
                expected = stats(before[param["name"]][k * h:(k + 1) * h])
                for key, value in expected.items():
                    assert block["before"][key] == pytest.approx(value, rel=1e-9, abs=1e-12)
                if param["kind"] == "weight_hh":
                    assert (block["rule"], block["per"]) == ("weight_hh=orthogonal(per=matrix)", "matrix")
                    assert block["initializer"].startswith("orthogonal")
                if param["kind"] == "bias_ih" and block["gate"] == "f":
                    assert (block["rule"], block["per"]) == ("bias_ih.f=ones", "gate")
                    assert block["initializer"].startswith("ones")
                if param["kind"] == "bias_hh" and block["gate"] == "o":
                    assert block["rule"] == "bias_hh.o=constant(0.25)"
                    assert block["initializer"].startswith("constant(")
                    assert block["min"] == block["max"] == 0.25


@pytest.mark.parametrize("fixture", ["model_pt", "training_pt", "half_safetensors"])
def test_inspect_json_matches_the_file(cli, request, fixture: str) -> None:
    source = request.getfixturevalue(fixture)
    result = cli("inspect", source, "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert {"input", "format", "metadata", "layers"} <= set(document)  # diagnostics add fields, none removed
    assert document["input"] == str(source)
    assert document["format"] == file_format(source)
    tensors = read_tensors(source)
    if fixture == "half_safetensors":
        assert document["metadata"] == {"author": "me"}
        lstm = [d for d in document["layers"] if d["cell"] == "lstm"]
        assert {p["dtype"] for d in lstm for p in d["params"]} == {"bfloat16"}
        tensors = {k: v.float() for k, v in tensors.items()}  # exact: bf16/f16 -> f32 is lossless
        for doc in document["layers"]:
            for param in doc["params"]:
                param["dtype"] = "float32"
        check_layer_docs(document["layers"], tensors)
    else:
        assert document["metadata"] == {}
        check_layer_docs(document["layers"], tensors, prefix="state_dict/" if fixture == "training_pt" else "")


def test_inspect_human_tables(cli, model_pt: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.pt"
    assert cli("apply", model_pt, "-s", "keras", "--seed", "31", "-o", output).exit_code == 0
    result = cli("inspect", output, "--wide")
    assert result.exit_code == 0
    assert result.stderr == ""
    err = result.stdout
    for column in ("parameter", "gate", "shape", "dtype", "mean", "std", "min", "max"):
        assert column in err
    assert err.count("effective bias") == len(LAYERS)
    assert err.count("LSTM layer") == 4 and err.count("GRU layer") == 1
    assert f"{4 * LSTM_HIDDEN}x{LSTM_INPUT}" in err and f"{3 * GRU_HIDDEN}x{GRU_HIDDEN}" in err
    assert "float32" in err
    provenance = err.splitlines()[1]  # the recorded metadata
    assert "seed 31" in provenance and "keras" in provenance


def test_inspect_only(cli, model_pt: Path) -> None:
    result = cli("inspect", model_pt, "--only", r"weight_hh_l1_reverse$", "--json")
    assert result.exit_code == 0
    layers = json.loads(result.stdout)["layers"]
    assert [(d["prefix"], d["layer"], d["direction"]) for d in layers] == [("lstm.", 1, "reverse")]
    assert [p["name"] for p in layers[0]["params"]] == ["lstm.weight_hh_l1_reverse"]
    human = cli("inspect", model_pt, "--only", "^gru")
    assert human.exit_code == 0 and "GRU layer" in human.stdout and "LSTM layer" not in human.stdout
    assert_error(cli("inspect", model_pt, "--only", "(unclosed"), 2, "--only")


def test_no_recurrent_parameters(cli, no_recurrent_pt: Path, tmp_path: Path) -> None:
    result = cli("inspect", no_recurrent_pt)
    assert result.exit_code == 0
    assert "no recurrent parameters" in result.stdout
    document = json.loads(cli("inspect", no_recurrent_pt, "--json").stdout)
    assert document["layers"] == [] and document["format"] == "pt"

    output = tmp_path / "out.pt"
    assert_error(cli("apply", no_recurrent_pt, "-s", "keras", "-o", output), 2, "no recurrent parameters")
    assert not output.exists()
    assert temp_leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------
# apply / inspect: errors


def _damaged_inputs(tmp_path: Path, model_pt: Path, model_safetensors: Path) -> dict[str, tuple[Path, str]]:
    folder = tmp_path / "a_folder.pt"
    folder.mkdir()
    truncated_pt = tmp_path / "truncated.pt"
    truncated_pt.write_bytes(model_pt.read_bytes()[: model_pt.stat().st_size // 2])
    data = model_safetensors.read_bytes()
    truncated_st = tmp_path / "truncated.safetensors"
    truncated_st.write_bytes(data[:-16])
    text = tmp_path / "notes.pt"
    text.write_text("just some text, not a checkpoint\n")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    return {
        "missing": (tmp_path / "missing.pt", "missing.pt"),
        "folder": (folder, "folder"),
        "truncated pt": (truncated_pt, "truncated.pt"),
        "truncated safetensors": (truncated_st, "truncated.safetensors"),
        "text": (text, "not a checkpoint"),
        "empty": (empty, "empty"),
    }


@pytest.mark.parametrize("case", ["missing", "folder", "truncated pt", "truncated safetensors", "text", "empty"])
@pytest.mark.parametrize("command", ["apply", "inspect"])
def test_unreadable_inputs(cli, tmp_path: Path, model_pt: Path, model_safetensors: Path, case: str,
                           command: str) -> None:
    source, fragment = _damaged_inputs(tmp_path, model_pt, model_safetensors)[case]
    output = tmp_path / "out.pt"
    args = ["apply", source, "-s", "keras", "-o", output] if command == "apply" else ["inspect", source]
    assert_error(cli(*args), 3, fragment)
    assert not output.exists()
    assert temp_leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
@pytest.mark.parametrize("command", ["apply", "inspect"])
def test_files_that_need_code_are_refused(cli, request, tmp_path: Path, kind: str, command: str) -> None:
    source, marker = request.getfixturevalue("code_running_pt" if kind == "torch.save" else "code_running_pickle")
    output = tmp_path / "out.pt"
    args = ["apply", source, "-s", "keras", "-o", output] if command == "apply" else ["inspect", source, "--json"]
    line = assert_error(cli(*args), 3, "needs code to load", "will not run")
    assert str(source) in line
    assert not marker.exists()
    assert not output.exists()


def test_unknown_scheme_lists_the_known_ones(cli, model_pt: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.pt"
    line = assert_error(cli("apply", model_pt, "--scheme", "glorot", "-o", output), 2, "glorot")
    for name in ("keras", "chrono", "orthogonal", "pytorch"):
        assert name in line
    assert not output.exists()


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        ("bias_ih", "TARGET=INIT"),
        ("bias_ih=", "TARGET=INIT"),
        ("bias_ix.f=ones", "'bias_ix'"),
        ("bias_ih.q=ones", "bias_ih.q"),  # no such gate: the rule hits no block
        ("bias_ih.f=ones(", "ones("),
        ("bias_ih.f=constant(x=1)", "'x'"),
        ("weight_hh=orthogonal(per=diagonal)", "per"),
        ("bias_ih.f=constant(1", "constant(1"),
        ("weight_hh=nosuch", "nosuch"),
        ("bias_ih.f=orthogonal", "2-D"),
        ("weight_hr=zeros", "weight_hr"),  # TinyModel has no projection: the rule hits nothing
    ],
)
def test_malformed_rules(cli, model_pt: Path, tmp_path: Path, rule: str, fragment: str) -> None:
    output = tmp_path / "out.pt"
    assert_error(cli("apply", model_pt, "-s", "keras", "--rule", rule, "-o", output), 2, fragment)
    assert not output.exists()


@pytest.mark.parametrize("command", ["apply", "inspect --strict", "verify --strict"])
def test_inconsistent_layout_names_the_parameter(cli, bad_layout_pt: Path, tmp_path: Path, command: str) -> None:
    output = tmp_path / "out.pt"
    args = {"apply": ["apply", bad_layout_pt, "-s", "keras", "-o", output],
            "inspect --strict": ["inspect", bad_layout_pt, "--strict"],
            "verify --strict": ["verify", bad_layout_pt, "-s", "keras", "--strict"]}[command]
    assert_error(cli(*args), 2 if command == "apply" else 3, "bias_ih_l0", "15")  # apply: nothing else to do
    assert not output.exists()


def test_inspect_skips_an_inconsistent_group_with_a_warning(cli, bad_layout_pt: Path) -> None:
    result = cli("inspect", bad_layout_pt)
    assert result.exit_code == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning: skipped")]
    assert len(warning) == 1 and "bias_ih_l0" in warning[0] and "15" in warning[0], result.stderr


def test_chrono_on_a_plain_rnn_names_the_layer(cli, rnn_pt: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.pt"
    assert_error(cli("apply", rnn_pt, "-s", "chrono(tmax=20)", "-o", output), 2, "rnn.", "RNN layer 0")
    assert not output.exists()
    assert_error(cli("apply", rnn_pt, "-s", "chrono", "-o", output), 2, "tmax")


def test_existing_output_needs_force(cli, model_pt: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.pt"
    output.write_bytes(b"precious")
    assert_error(cli("apply", model_pt, "-s", "keras", "-o", output), 4, "--force")
    assert output.read_bytes() == b"precious"
    assert cli("apply", model_pt, "-s", "keras", "-o", output, "--force", "-q").exit_code == 0
    check_keras(read_tensors(output))


def test_output_equal_to_input_needs_in_place(cli, model_pt: Path, monkeypatch) -> None:
    snapshot = model_pt.read_bytes()
    monkeypatch.chdir(model_pt.parent)
    for output in (model_pt, "./model.pt"):
        assert_error(cli("apply", model_pt, "-s", "keras", "-o", output, "--force"), 4, "--in-place")
        assert model_pt.read_bytes() == snapshot
    result = cli("apply", "model.pt", "-s", "keras", "--seed", "1", "--in-place")
    assert result.exit_code == 0, result.stderr
    after = read_tensors(model_pt)
    check_keras(after)
    assert_untouched(read_tensor_bytes(snapshot), after, UNTOUCHED)
    assert temp_leftovers(model_pt.parent) == []


def test_usage_errors(cli, model_pt: Path, tmp_path: Path) -> None:
    assert_error(cli("apply", model_pt, "-s", "keras"), 2, "-o")
    assert_error(cli("apply", model_pt, "-s", "keras", "--json", "-o", "-"), 2, "--json")
    assert_error(cli("apply", "-", "-s", "keras", "--in-place", input=model_pt.read_bytes()), 2, "--in-place")
    assert cli("apply", model_pt, "-o", tmp_path / "x.pt").exit_code == 2  # --scheme is required
    assert cli("apply", model_pt, "-s", "keras", "--format", "onnx", "-o", tmp_path / "x.pt").exit_code == 2
    new = ["--input-size", "2", "--hidden-size", "2", "-s", "keras", "-o", tmp_path / "x.pt"]
    assert cli("new", "transformer", *new).exit_code == 2
    assert cli("new", "lstm", *new, "--num-layers", "0").exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_output_folder_problems(cli, model_pt: Path, tmp_path: Path) -> None:
    assert_error(cli("apply", model_pt, "-s", "keras", "-o", tmp_path / "nope" / "out.pt"), 4, "nope")
    assert_error(cli("apply", model_pt, "-s", "keras", "-o", tmp_path, "--force"), 4, "folder")


def test_markup_in_messages_is_shown_literally(cli, tmp_path: Path, model_pt: Path) -> None:
    folder = tmp_path / "[red]"
    folder.mkdir()
    assert_error(cli("inspect", folder / "gone.pt"), 3, "[red]/gone.pt")
    assert_error(cli("apply", model_pt, "-s", "keras", "--only", "[a-z]x", "-o", tmp_path / "o.pt"), 2,
                 "'[a-z]x'")


# --------------------------------------------------------------------------------------------
# standard input / output


def test_stdin_to_stdout_then_inspect_stdin(cli, model_pt: Path, tmp_path: Path) -> None:
    result = cli("apply", "-", "--scheme", "keras", "--seed", "1", "-o", "-", input=model_pt.read_bytes())
    assert result.exit_code == 0, result.stderr
    data = result.stdout_bytes
    assert data.startswith(b"PK\x03\x04")  # only the checkpoint on stdout
    assert "standard output" in result.stderr and "seed 1" in result.stderr
    check_keras(read_tensor_bytes(data))

    # the same values as a file-to-file run (which patches the input's bytes instead of re-saving)
    reference = tmp_path / "ref.pt"
    assert cli("apply", model_pt, "--scheme", "keras", "--seed", "1", "-o", reference, "-q").exit_code == 0
    expected = read_tensors(reference)
    assert all(torch.equal(tensor, expected[name]) for name, tensor in read_tensor_bytes(data).items())
    again = cli("apply", "-", "--scheme", "keras", "--seed", "1", "-o", "-", "-q", input=model_pt.read_bytes())
    assert again.stdout_bytes == data

    inspected = cli("inspect", "-", "--json", input=data)
    assert inspected.exit_code == 0
    document = json.loads(inspected.stdout)
    assert document["input"] == "-" and document["format"] == "pt"
    assert document["metadata"]["rnninit.seed"] == "1"
    check_layer_docs(document["layers"], read_tensor_bytes(data))


def test_stdout_format_follows_input_or_format_option(cli, model_safetensors: Path) -> None:
    result = cli("apply", model_safetensors, "-s", "keras", "--seed", "1", "-o", "-", "-q")
    assert result.exit_code == 0
    data = result.stdout_bytes
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert header["__metadata__"]["author"] == "me"
    result = cli("apply", model_safetensors, "-s", "keras", "--seed", "1", "-o", "-", "--format", "pt", "-q")
    assert result.exit_code == 0 and result.stdout_bytes.startswith(b"PK")
    check_keras(read_tensor_bytes(result.stdout_bytes))


# --------------------------------------------------------------------------------------------
# files on disk: permissions, atomicity


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_output_mode_follows_umask(cli, umask, model_pt: Path, tmp_path: Path, mask, mode, suffix) -> None:
    umask(mask)
    output = tmp_path / f"out{suffix}"
    assert cli("apply", model_pt, "-s", "keras", "-q", "-o", output).exit_code == 0
    assert output.stat().st_mode & 0o777 == mode
    created = tmp_path / f"new{suffix}"
    assert cli("new", "gru", "--input-size", "3", "--hidden-size", "2", "-s", "keras", "-o", created,
               "-q").exit_code == 0
    assert created.stat().st_mode & 0o777 == mode


def test_failed_write_over_existing_file_leaves_it_intact(cli, model_state, tmp_path: Path) -> None:
    model_state["spectrum"] = torch.zeros(3, dtype=torch.complex64)  # safetensors cannot store it
    source = tmp_path / "model.pt"
    torch.save(model_state, source)
    output = tmp_path / "out.safetensors"
    output.write_bytes(b"old contents")
    assert_error(cli("apply", source, "-s", "keras", "-o", output, "--force"), 4, "complex64")
    assert output.read_bytes() == b"old contents"
    assert temp_leftovers(tmp_path) == []
    fresh = tmp_path / "fresh.safetensors"
    assert_error(cli("apply", source, "-s", "keras", "-o", fresh), 4, "complex64")
    assert not fresh.exists()
    assert temp_leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("source_fixture", "output_name", "extra"),
    [
        ("model_pt", "out.pt", []),  # patched copy of the input's bytes
        ("model_safetensors", "out.safetensors", []),
        ("model_pt", "out.safetensors", []),  # a change of format: the checkpoint is re-serialized
        ("training_pt", "out.ckpt", ["--drop-optimizer-state"]),
    ],
)
def test_disk_full_leaves_output_intact(cli, request, tmp_path: Path, monkeypatch, source_fixture, output_name,
                                        extra) -> None:
    source = request.getfixturevalue(source_fixture)
    snapshot = source.read_bytes()
    output = tmp_path / output_name
    output.write_bytes(b"old contents")

    def no_space(_descriptor: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    result = cli("apply", source, "-s", "keras", "-o", output, "--force", *extra)
    assert_error(result, 4, str(output), os.strerror(errno.ENOSPC))
    assert output.read_bytes() == b"old contents"
    assert source.read_bytes() == snapshot
    assert temp_leftovers(tmp_path) == []
    fresh = tmp_path / ("fresh" + output.suffix)
    assert_error(cli("apply", source, "-s", "keras", "-o", fresh, *extra), 4, str(fresh))
    assert not fresh.exists()
    assert_error(cli("new", "gru", "--input-size", "2", "--hidden-size", "2", "-s", "keras", "-o", fresh), 4,
                 str(fresh))
    assert not fresh.exists()
    assert temp_leftovers(tmp_path) == []


def test_crash_while_writing_leaves_output_intact(cli, model_pt: Path, tmp_path: Path, monkeypatch) -> None:
    import rnninit_cli.formats.tensorfile as tensorfile

    def crash(descriptor: int, _tensor, position: int) -> None:
        os.pwrite(descriptor, b"half a tensor", position)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tensorfile, "_pwrite_tensor", crash)
    output = tmp_path / "out.pt"
    output.write_bytes(b"old contents")
    assert_error(cli("apply", model_pt, "-s", "keras", "-o", output, "--force"), 5, "internal error", "disk on fire")
    assert output.read_bytes() == b"old contents"
    assert temp_leftovers(tmp_path) == []

    result = cli("--debug", "apply", model_pt, "-s", "keras", "-o", output, "--force")
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)
    assert output.read_bytes() == b"old contents"
    assert temp_leftovers(tmp_path) == []


def test_debug_shows_tracebacks(cli, tmp_path: Path) -> None:
    result = cli("--debug", "inspect", tmp_path / "missing.pt")
    assert result.exit_code == 3
    assert "Traceback" in result.stderr and "error: " in result.stderr


# --------------------------------------------------------------------------------------------
# new


NEW_CASES = [
    ("lstm", {"num_layers": 2, "bidirectional": True}),
    ("lstm", {"num_layers": 2, "proj_size": 3}),
    ("gru", {"num_layers": 2, "bidirectional": True, "bias": False}),
    ("rnn", {"num_layers": 3}),
    ("rnncell", {}),
    ("grucell", {"bias": False}),
    ("lstmcell", {}),
]
MODULES = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM", "rnncell": "RNNCell", "grucell": "GRUCell",
           "lstmcell": "LSTMCell"}


def _new_args(cell: str, options: dict) -> list[str]:
    args = ["new", cell, "--input-size", "5", "--hidden-size", "8"]
    if "num_layers" in options:
        args += ["--num-layers", str(options["num_layers"])]
    if options.get("bidirectional"):
        args.append("--bidirectional")
    if options.get("proj_size"):
        args += ["--proj-size", str(options["proj_size"])]
    if options.get("bias") is False:
        args.append("--no-bias")
    return args


@pytest.mark.parametrize(("cell", "options"), NEW_CASES)
@pytest.mark.parametrize("prefix", ["", "encoder.rnn"])
def test_new_matches_the_torch_module(cli, tmp_path: Path, cell: str, options: dict, prefix: str) -> None:
    output = tmp_path / "new.pt"
    args = _new_args(cell, options) + (["--prefix", prefix] if prefix else [])
    result = cli(*args, "-s", "orthogonal", "--seed", "6", "-o", output)
    assert result.exit_code == 0, result.stderr
    module = getattr(torch.nn, MODULES[cell])(5, 8, **options)
    expected = module.state_dict()
    written = torch.load(output, weights_only=True)
    dot = prefix + "." if prefix else ""
    assert list(written) == [dot + name for name in expected]
    for name, tensor in expected.items():
        assert written[dot + name].shape == tensor.shape and written[dot + name].dtype == tensor.dtype
    module.load_state_dict({name.removeprefix(dot): tensor for name, tensor in written.items()}, strict=True)
    h = 8
    for name, tensor in written.items():
        if "weight_hh" in name:  # orthogonal per gate block
            for k in range(tensor.shape[0] // h):
                assert gram_error(tensor[k * h:(k + 1) * h]) < 1e-5, name
        if "bias" in name:
            assert torch.count_nonzero(tensor) == 0
    assert read_metadata(output)["rnninit.seed"] == "6"


def test_new_keras_safetensors_and_json(cli, tmp_path: Path) -> None:
    output = tmp_path / "enc.safetensors"
    result = cli("new", "lstm", "--input-size", "5", "--hidden-size", "6", "--num-layers", "2", "--bidirectional",
                 "--prefix", "lstm", "-s", "keras", "--seed", "2", "-o", output, "--json")
    assert result.exit_code == 0, result.stderr
    assert file_format(output) == "safetensors"
    tensors = read_tensors(output)
    assert set(tensors) == {template.format(kind) for template, *_ in LAYERS[:4] for kind in KINDS}
    check_keras(tensors, layers=LAYERS[:4])
    document = json.loads(result.stdout)
    assert document["seed"] == 2 and document["scheme"] == "keras" and document["output"] == str(output)
    assert len(document["layers"]) == 4
    assert read_metadata(output)["rnninit.scheme"] == "keras"


def test_new_to_stdout_and_reproducible(cli, tmp_path: Path) -> None:
    args = ["new", "grucell", "--input-size", "4", "--hidden-size", "3", "-s", "keras", "--seed", "5"]
    first = cli(*args, "-o", "-")
    second = cli(*args, "-o", "-")
    assert first.exit_code == 0 and first.stdout_bytes.startswith(b"PK")
    assert first.stdout_bytes == second.stdout_bytes
    state = read_tensor_bytes(first.stdout_bytes)
    torch.nn.GRUCell(4, 3).load_state_dict(state, strict=True)
    assert gram_error(state["weight_hh"]) < 1e-5
    assert "standard output" in first.stderr


@pytest.mark.parametrize(
    ("extra", "code", "fragment"),
    [
        (["gru", "--input-size", "5", "--hidden-size", "8", "--proj-size", "2"], 2, "lstm"),
        (["rnncell", "--input-size", "5", "--hidden-size", "8", "--num-layers", "2"], 2, "rnncell"),
        (["lstm", "--input-size", "5", "--hidden-size", "4", "--proj-size", "4"], 2, "proj_size"),
        (["rnn", "--input-size", "5", "--hidden-size", "4", "-s", "chrono(tmax=9)"], 2, "RNN layer 0"),
        (["lstm", "--input-size", "5", "--hidden-size", "4", "--no-bias", "-s", "chrono(tmax=9)"], 2, "bias"),
        (["lstm", "--input-size", "5", "--hidden-size", "4", "--json", "-o", "-"], 2, "--json"),
    ],
)
def test_new_errors(cli, tmp_path: Path, extra: list[str], code: int, fragment: str) -> None:
    output = tmp_path / "new.pt"
    args = [*extra, *(["-s", "keras"] if "-s" not in extra else []), *(["-o", output] if "-o" not in extra else [])]
    assert_error(cli("new", *args), code, fragment)
    assert not output.exists()


def test_new_refuses_existing_output(cli, tmp_path: Path) -> None:
    output = tmp_path / "new.pt"
    output.write_bytes(b"keep me")
    args = ["new", "lstm", "--input-size", "2", "--hidden-size", "2", "-s", "keras", "-o", output]
    assert_error(cli(*args), 4, "--force")
    assert output.read_bytes() == b"keep me"
    assert cli(*args, "--force", "-q").exit_code == 0
    torch.nn.LSTM(2, 2).load_state_dict(torch.load(output, weights_only=True), strict=True)


@pytest.mark.parametrize("rule", ["weight_ih=uniform(1, 0)", "weight_ih=normal(0, -1)",
                                  "weight_ih=uniform(-1e100, 1e100)", "bias=constant(1e300)"])
def test_arguments_torch_rejects_are_rule_errors(rule: str, cli, tmp_path: Path) -> None:
    output = tmp_path / "out.pt"
    result = cli("new", "lstm", "--input-size", "4", "--hidden-size", "4", "--scheme", "keras", "--seed", "0",
                 "--rule", rule, "-o", str(output))
    assert_error(result, 2, "torch rejects these arguments", rule.split("=")[0])
    assert not output.exists()
