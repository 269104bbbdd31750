"""Checkpoint IO at the library level: format detection, safe loading, output rules, atomic writes,
and the deterministic safetensors writer (checked with the official safetensors reader)."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from builders import build_state, read_metadata, read_tensor_bytes, temp_leftovers
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from rnninit_cli.errors import CheckpointError, OutputError, UnsafeCheckpointError, UsageError
from rnninit_cli.formats.atomic import atomic_write
from rnninit_cli.formats.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, write_safetensors
from rnninit_cli.formats.kinds import detect_format
from rnninit_cli.formats.outputs import check_output, output_format

# --------------------------------------------------------------------------------------------
# detect_format


def _pt_bytes(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def test_detect_format_by_content() -> None:
    zip_pt = _pt_bytes({"a": torch.zeros(2)})
    legacy = _pt_bytes({"a": torch.zeros(2)}, _use_new_zipfile_serialization=False)
    safetensors = st_save({"a": torch.zeros(2)})
    assert detect_format(zip_pt[:16], len(zip_pt)) == "pt"
    assert detect_format(legacy[:16], len(legacy)) == "pt"
    assert detect_format(safetensors[:16], len(safetensors)) == "safetensors"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"hello world, this is text\n", "not a checkpoint"),
        (struct.pack("<Q", 10**9) + b'{"a":1}', "truncated|not a checkpoint"),  # header longer than the file
        (struct.pack("<Q", 4) + b"[1,2", "not a checkpoint"),  # header is not a JSON object
    ],
)
def test_detect_format_rejects(data: bytes, fragment: str) -> None:
    with pytest.raises(CheckpointError, match=fragment):
        detect_format(data[:16], len(data))


# --------------------------------------------------------------------------------------------
# load_checkpoint


def test_load_recognises_content_not_name(tmp_path: Path) -> None:
    state = build_state()
    as_bin = tmp_path / "x.bin"
    as_bin.write_bytes(st_save(state, metadata={"author": "me"}))
    as_weights = tmp_path / "x.weights"
    torch.save(state, as_weights)
    safetensors = load_checkpoint(as_bin)
    pt = load_checkpoint(as_weights)
    assert safetensors.format == "safetensors" and pt.format == "pt"
    assert safetensors.metadata == {"author": "me"} and pt.metadata == {}
    assert list(pt.tensors) == list(state)
    for checkpoint in (safetensors, pt):
        assert set(checkpoint.tensors) == set(state)
        for name, tensor in state.items():
            assert torch.equal(checkpoint.tensors[name], tensor) and checkpoint.tensors[name].dtype == tensor.dtype


def test_load_from_bytes_and_stdin(monkeypatch) -> None:
    state = build_state()
    data = _pt_bytes(state)
    assert set(load_checkpoint("-", data=data).tensors) == set(state)

    class Stdin:
        buffer = io.BytesIO(st_save(state))

    monkeypatch.setattr("sys.stdin", Stdin())
    checkpoint = load_checkpoint("-")
    assert checkpoint.format == "safetensors"
    assert torch.equal(checkpoint.tensors["lstm.weight_hh_l0"], state["lstm.weight_hh_l0"])


def test_training_checkpoint_paths(training_pt: Path) -> None:
    checkpoint = load_checkpoint(training_pt)
    assert "state_dict/lstm.weight_ih_l0" in checkpoint.tensors
    assert "state_dict/gru.bias_hh_l0" in checkpoint.tensors
    assert sorted(checkpoint.non_tensor_paths) == ["epoch", "history/0", "history/1", "hp/lr"]
    assert checkpoint.root["epoch"] == 3


def test_load_legacy_pt(tmp_path: Path) -> None:
    state = build_state()
    path = tmp_path / "legacy.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    checkpoint = load_checkpoint(path)
    assert checkpoint.format == "pt"
    assert all(torch.equal(checkpoint.tensors[name], tensor) for name, tensor in state.items())


@pytest.mark.parametrize("fixture", ["code_running_pt", "code_running_pickle"])
def test_code_running_pickles_are_refused(request, fixture: str) -> None:
    path, marker = request.getfixturevalue(fixture)
    with pytest.raises(UnsafeCheckpointError, match="needs code to load") as caught:
        load_checkpoint(path)
    assert "will not run" in str(caught.value)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint("-", data=path.read_bytes())
    assert not marker.exists()


def test_damaged_files(tmp_path: Path, model_pt: Path, model_safetensors: Path) -> None:
    pt = model_pt.read_bytes()
    safetensors = model_safetensors.read_bytes()
    cases = {
        "cut.pt": pt[: len(pt) // 3],
        "cut.safetensors": safetensors[:-20],
        "bad-header.safetensors": safetensors[:8] + b"{" + b"\xff" * (len(safetensors) - 9),
        "empty.pt": b"",
        "text.pt": b"epoch: 3\n",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path)
        assert name in str(caught.value), caught.value
        assert not isinstance(caught.value, UnsafeCheckpointError)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path)


# --------------------------------------------------------------------------------------------
# output_format, check_output


@pytest.mark.parametrize(
    ("output", "requested", "input_format", "expected"),
    [
        ("out.safetensors", None, "pt", "safetensors"),
        ("OUT.SAFETENSORS", None, "pt", "safetensors"),
        ("out.pt", None, "safetensors", "pt"),
        ("out.pth", None, "safetensors", "pt"),
        ("out.bin", None, "safetensors", "pt"),
        ("out.ckpt", None, "safetensors", "pt"),
        ("out", None, "safetensors", "safetensors"),
        ("out", None, "pt", "pt"),
        ("-", None, "safetensors", "safetensors"),
        ("out", "safetensors", "pt", "safetensors"),
        ("out.pth", "pt", "safetensors", "pt"),
    ],
)
def test_output_format(output: str, requested: str | None, input_format: str, expected: str) -> None:
    assert output_format(output, requested, input_format) == expected


def test_output_format_rejects_unknown_format() -> None:
    with pytest.raises(UsageError, match="onnx"):
        output_format("x.pt", "onnx", "pt")


def test_check_output(tmp_path: Path, monkeypatch) -> None:
    source = tmp_path / "in.pt"
    source.write_bytes(b"x")
    existing = tmp_path / "old.pt"
    existing.write_bytes(b"y")
    check_output(source, tmp_path / "new.pt", force=False, in_place=False)
    check_output(source, "-", force=False, in_place=False)
    check_output(source, existing, force=True, in_place=False)
    check_output(source, source, force=False, in_place=True)
    with pytest.raises(OutputError, match="--force"):
        check_output(source, existing, force=False, in_place=False)
    monkeypatch.chdir(tmp_path)
    for same in (source, "in.pt", "./in.pt", tmp_path / "." / "in.pt"):
        with pytest.raises(OutputError, match="--in-place"):
            check_output(source, same, force=True, in_place=False)
    link = tmp_path / "link.pt"
    link.symlink_to(source)
    with pytest.raises(OutputError, match="--in-place"):
        check_output(source, link, force=True, in_place=False)
    with pytest.raises(OutputError, match="folder"):
        check_output(source, tmp_path, force=True, in_place=False)
    with pytest.raises(OutputError, match="does not exist"):
        check_output(source, tmp_path / "nope" / "x.pt", force=False, in_place=False)


# --------------------------------------------------------------------------------------------
# atomic_write


def test_atomic_write_renames_a_temp_file_from_the_same_folder(tmp_path: Path, monkeypatch) -> None:
    seen = []
    real_replace = os.replace

    def spy(source, target) -> None:
        seen.append((Path(source), Path(target), Path(source).read_bytes()))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", spy)
    output = tmp_path / "out.pt"
    atomic_write(output, lambda sink: sink.write(b"payload"))
    assert output.read_bytes() == b"payload"
    [(source, target, written)] = seen
    assert source.parent == tmp_path and target == output and written == b"payload"
    assert re.fullmatch(r"\.[0-9a-f]{12}\.rnninit-tmp", source.name)  # fixed length, whatever OUTPUT's name
    assert temp_leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()])
def test_atomic_write_failure_keeps_old_file(tmp_path: Path, error: BaseException) -> None:
    existing = tmp_path / "out.pt"
    existing.write_bytes(b"old")
    fresh = tmp_path / "fresh.pt"

    def fail(sink) -> None:
        sink.write(b"partial" * 1000)
        raise error

    for output in (existing, fresh):
        with pytest.raises(type(error)):
            atomic_write(output, fail)
    assert existing.read_bytes() == b"old"
    assert not fresh.exists()
    assert temp_leftovers(tmp_path) == []


def test_atomic_write_os_errors_become_output_errors(tmp_path: Path) -> None:
    def fail(_sink) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="No space left"):
        atomic_write(tmp_path / "out.pt", fail)
    assert temp_leftovers(tmp_path) == [] and not (tmp_path / "out.pt").exists()
    with pytest.raises(OutputError):
        atomic_write(tmp_path / "missing" / "out.pt", lambda sink: sink.write(b"x"))


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o000, 0o666)])
def test_atomic_write_mode_follows_umask(tmp_path: Path, umask, mask: int, mode: int) -> None:
    umask(mask)
    output = tmp_path / "out.pt"
    atomic_write(output, lambda sink: sink.write(b"x"))
    assert output.stat().st_mode & 0o777 == mode


# --------------------------------------------------------------------------------------------
# write_safetensors


def _written(tensors, metadata) -> bytes:
    sink = io.BytesIO()
    write_safetensors(tensors, metadata, sink)
    return sink.getvalue()


def test_write_safetensors_is_read_back_by_the_official_library(half_state) -> None:
    tensors = {**half_state, "step": torch.tensor(7), "mask": torch.tensor([True, False]),
               "ids": torch.arange(5, dtype=torch.int32), "scale": torch.tensor([0.5], dtype=torch.float64)}
    data = _written(tensors, {"author": "me", "rnninit.seed": "1"})
    loaded = st_load(data)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    (size,) = struct.unpack("<Q", data[:8])
    assert json.loads(data[8:8 + size])["__metadata__"] == {"author": "me", "rnninit.seed": "1"}


def test_write_safetensors_bytes_do_not_depend_on_dict_order() -> None:
    state = build_state()
    forward = _written(state, {"b": "2", "a": "1"})
    backward = _written(dict(reversed(state.items())), {"a": "1", "b": "2"})
    assert forward == backward
    assert _written(state, {"a": "1"}) != forward


def test_write_safetensors_handles_views_and_empty_tensors() -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {"t": base.t(), "row": base[1], "empty": torch.zeros(0, 3)}
    loaded = st_load(_written(tensors, {}))
    assert torch.equal(loaded["t"], base.t()) and torch.equal(loaded["row"], base[1])
    assert loaded["empty"].shape == (0, 3)


def test_write_safetensors_refuses_unsupported_dtypes() -> None:
    with pytest.raises(OutputError, match="complex64"):
        _written({"z": torch.zeros(2, dtype=torch.complex64)}, {})


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.uint8,
          torch.bool]


@settings(max_examples=40, deadline=None)
@given(
    specs=st.dictionaries(
        st.text("abcdefghij._/", min_size=1, max_size=12).filter(lambda s: s != "__metadata__"),
        st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 4), max_size=3)),
        max_size=6,
    ),
    metadata=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    seed=st.integers(0, 2**16),
)
def test_write_safetensors_round_trip(specs, metadata, seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    tensors = {name: (torch.randn(shape, generator=generator) * 50).to(dtype) for name, (dtype, shape) in specs.items()}
    data = _written(tensors, metadata)
    loaded = st_load(data)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        assert torch.equal(loaded[name], tensor)
    (size,) = struct.unpack("<Q", data[:8])
    assert json.loads(data[8:8 + size]).get("__metadata__", {}) == metadata


# --------------------------------------------------------------------------------------------
# save_checkpoint


def test_save_pt_keeps_everything_and_records_metadata(training_pt: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(training_pt)
    output = tmp_path / "out.pt"
    save_checkpoint(checkpoint, output, "pt", metadata={"rnninit.seed": "4", "rnninit.scheme": "keras"})
    root = torch.load(output, weights_only=True)
    assert root["epoch"] == 3 and root["hp"] == {"lr": 0.1} and root["history"] == [0.5, 0.25]
    original = torch.load(training_pt, weights_only=True)["state_dict"]
    assert all(torch.equal(root["state_dict"][k], v) for k, v in original.items())
    assert read_metadata(output) == {"rnninit.seed": "4", "rnninit.scheme": "keras"}
    assert load_checkpoint(output).metadata == {"rnninit.seed": "4", "rnninit.scheme": "keras"}
    with zipfile.ZipFile(output) as archive:
        assert archive.testzip() is None
    again = tmp_path / "again.pt"
    save_checkpoint(load_checkpoint(training_pt), again, "pt", metadata={"rnninit.scheme": "keras",
                                                                           "rnninit.seed": "4"})
    assert again.read_bytes() == output.read_bytes()


def test_save_to_a_binary_file(model_pt: Path) -> None:
    sink = io.BytesIO()
    save_checkpoint(load_checkpoint(model_pt), sink, "safetensors", metadata={"k": "v"})
    tensors = read_tensor_bytes(sink.getvalue())
    assert torch.equal(tensors["head.weight"], torch.load(model_pt, weights_only=True)["head.weight"])


def test_save_safetensors_from_pt_with_extra_entries(training_pt: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(training_pt)
    output = tmp_path / "out.safetensors"
    with pytest.raises(OutputError, match="tensors_only=True"):
        save_checkpoint(checkpoint, output, "safetensors", metadata={"rnninit.seed": "1"})
    assert not output.exists() and temp_leftovers(tmp_path) == []
    save_checkpoint(checkpoint, output, "safetensors", metadata={"rnninit.seed": "1"}, tensors_only=True)
    with safe_open(str(output), framework="pt") as handle:
        assert "state_dict/lstm.weight_ih_l0" in handle.keys()  # noqa: SIM118 (safe_open is not a dict)
        assert handle.metadata() == {"rnninit.seed": "1"}


def test_save_safetensors_merges_metadata(model_safetensors: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(model_safetensors)
    first = tmp_path / "first.safetensors"
    save_checkpoint(checkpoint, first, metadata={"rnninit.seed": "1", "rnninit.only": "^gru"})
    assert read_metadata(first) == {"author": "me", "rnninit.seed": "1", "rnninit.only": "^gru"}
    second = tmp_path / "second.safetensors"
    save_checkpoint(load_checkpoint(first), second, metadata={"rnninit.seed": "2"})
    assert read_metadata(second) == {"author": "me", "rnninit.seed": "2"}
    plain = tmp_path / "plain.safetensors"
    save_checkpoint(load_checkpoint(first), plain)  # no new record: everything is kept
    assert read_metadata(plain) == read_metadata(first)


def test_saved_file_is_a_checkpoint_object(tmp_path: Path) -> None:
    tensors = {"rnn.weight_ih_l0": torch.ones(4, 2)}
    output = tmp_path / "x.safetensors"
    save_checkpoint(Checkpoint("pt", tensors, tensors), output, "safetensors")
    assert torch.equal(load_checkpoint(output).tensors["rnn.weight_ih_l0"], torch.ones(4, 2))
