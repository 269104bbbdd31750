"""Issue #19 §1–§3: what rnninit reads is what `torch.load(weights_only=True)` reads, or it refuses.

Each case is a file on which the two readers could part ways (or that could make the reader build without
bound); each test shows first that torch really reads the file as the case says (the case is real), then that
every reading path of rnninit (whole load with torch, torch-free arrays, the patch index, the commands)
refuses it or agrees with torch."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from rnninit_cli.errors import RnnInitError
from rnninit_cli.formats.checkpoint import load_checkpoint, read_checkpoint
from rnninit_cli.formats.tensorfile import index_file
from rnninit_cli.formats.unpickle.arrays import view_span
from rnninit_cli.formats.unpickle.rebuilders import TENSOR_DESCRIPTORS

# --- a tiny protocol-2 pickle assembler: the opcodes torch's weights-only reader knows -------------------


class Pickle:
    """Emit pickle opcodes one by one (protocol 2)."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")

    def op(self, code: bytes) -> Pickle:
        self.out += code
        return self

    def glob(self, module: str, name: str) -> Pickle:
        return self.op(b"c" + f"{module}\n{name}\n".encode())

    def int(self, value: int) -> Pickle:
        return self.op(b"J" + struct.pack("<i", value))

    def text(self, value: str) -> Pickle:
        data = value.encode()
        return self.op(b"X" + struct.pack("<I", len(data)) + data)

    def ints(self, values: tuple[int, ...]) -> Pickle:
        self.op(b"(")
        for value in values:
            self.int(value)
        return self.op(b"t")

    def storage(self, key: str, numel: int, kind: str = "FloatStorage") -> Pickle:
        self.op(b"(").text("storage").glob("torch", kind).text(key).text("cpu").int(numel)
        return self.op(b"tQ")

    def hooks(self) -> Pickle:
        return self.glob("collections", "OrderedDict").op(b")R")

    def tensor(self, key: str, numel: int, size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0,
               metadata: Callable[[Pickle], Any] | None = None) -> Pickle:
        """_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict()[, metadata])."""
        self.glob("torch._utils", "_rebuild_tensor_v2").op(b"(").storage(key, numel).int(offset)
        self.ints(size).ints(stride).op(b"\x89").hooks()
        if metadata is not None:
            metadata(self)
        return self.op(b"tR")

    def pickled(self) -> bytes:
        return bytes(self.out + b".")


def archive(pickled: bytes, storages: dict[str, bytes], *, extra: list[tuple[str, bytes]] = (),
            version: bytes = b"3\n", byteorder: bytes | None = b"little") -> bytes:
    """A torch.save-like zip: data.pkl, byteorder, data/KEY records, version."""
    records = [("archive/data.pkl", pickled)]
    if byteorder is not None:
        records.append(("archive/byteorder", byteorder))
    records += [(f"archive/data/{key}", data) for key, data in storages.items()]
    records += [("archive/version", version), *extra]
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as written:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate names some cases write on purpose
        for name, data in records:
            written.writestr(name, data)
    return buffer.getvalue()


def floats(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def one_tensor_state(tensor: Callable[[Pickle], Any]) -> bytes:
    """{'rnn.weight_hh_l0': <tensor>} as a pickle."""
    writer = Pickle().op(b"}").text("rnn.weight_hh_l0")
    tensor(writer)
    return writer.op(b"s").pickled()


def torch_reads(data: bytes) -> dict[str, torch.Tensor] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), weights_only=True)
    except Exception:
        return None


def rnninit_paths(data: bytes, tmp_path: Path) -> dict[str, Any]:
    """What each reading path of rnninit gives (a dict name → values) or the RnnInitError it raises."""
    path = tmp_path / "case.pt"
    path.write_bytes(data)
    found: dict[str, Any] = {}
    for label, read in (("whole", lambda: load_checkpoint(path).tensors),
                        ("arrays", lambda: (lambda c: c.arrays(c.shape_records()))(read_checkpoint(path))),
                        ("index", lambda: (lambda f: f.load(f.locations))(index_file(path)))):
        try:
            found[label] = {name: torch.as_tensor(value).clone() for name, value in read().items()}
        except RnnInitError as error:
            found[label] = error
    return found


def assert_agrees_or_refuses(data: bytes, tmp_path: Path, *, must_refuse: bool = False) -> None:
    oracle = torch_reads(data)
    for label, seen in rnninit_paths(data, tmp_path).items():
        if isinstance(seen, RnnInitError):
            continue
        assert not must_refuse, f"{label} read a file it must refuse"
        assert oracle is not None, f"{label} read a file torch.load refuses"
        assert set(seen) == set(oracle), label
        for name, values in seen.items():
            expected = oracle[name]
            assert values.dtype == expected.dtype and values.shape == expected.shape, (label, name)
            assert torch.equal(values, expected), (label, name, values, expected)


def assert_every_command_refuses(cli: Callable[..., Any], path: Path, *fragments: str) -> None:
    for args in (["inspect", path], ["inspect", path, "--json"], ["verify", path, "--scheme", "pytorch"],
                 ["diff", path, path], ["apply", path, "--scheme", "keras", "--seed", "0", "-o",
                                        path.with_name("out.pt")]):
        result = cli(*args)
        assert result.exit_code != 0, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
        for fragment in fragments:
            assert fragment in lines[0], (args, lines[0])
    assert not path.with_name("out.pt").exists()


# --- §1: one zip truth ------------------------------------------------------------------------------------


def _plain_case() -> tuple[bytes, dict[str, bytes]]:
    return one_tensor_state(lambda p: p.tensor("0", 4, (2, 2), (2, 1))), {"0": floats(1, 2, 3, 4)}


def _patch_end_count(data: bytes, count: int) -> bytes:
    at = data.rindex(b"PK\x05\x06")
    return data[:at + 8] + struct.pack("<HH", count, count) + data[at + 12:]


def _rename_local(data: bytes, old: bytes, new: bytes) -> bytes:
    local = data.index(old)  # the first occurrence is the local header's copy of the name
    return data[:local] + new + data[local + len(old):]


ZIP_CASES: dict[str, Callable[[], bytes]] = {
    "duplicate record, second copy differs": lambda: archive(
        _plain_case()[0], _plain_case()[1], extra=[("archive/data/0", floats(9, 9, 9, 9))]),
    "duplicate record, names differ in case only": lambda: archive(
        _plain_case()[0], _plain_case()[1], extra=[("archive/DATA/0", floats(9, 9, 9, 9))]),
    "bytes before the archive": lambda: b"\0" * 64 + archive(*_plain_case()),
    "bytes after the archive": lambda: archive(*_plain_case()) + b"\0" * 64,
    "entry count below the directory": lambda: _patch_end_count(archive(*_plain_case()), 3),
    "local header names another record": lambda: _rename_local(archive(*_plain_case()), b"archive/data/0",
                                                               b"archive/data/1"),
    "first record in another folder": lambda: (lambda buffer: buffer.getvalue())(_with_first(b"other/x")),
    "no version record": lambda: _without("archive/version"),
    "version torch does not read": lambda: archive(*_plain_case(), version=b"11"),
    "byteorder with a newline": lambda: archive(*_plain_case(), byteorder=b"little\n"),
}


def _central(data: bytes, record: bytes) -> int:
    """Where the central-directory entry of `record` starts."""
    at = data.index(b"PK\x01\x02")
    while data[at + 46:at + 46 + int.from_bytes(data[at + 28:at + 30], "little")] != record:
        at = data.index(b"PK\x01\x02", at + 1)
    return at


def _patch_central(offset: int, value: bytes) -> bytes:
    """The plain case with bytes at `offset` of data/0's central entry replaced (flags 8, disk 34, attributes 38)."""
    data = bytearray(archive(*_plain_case()))
    at = _central(bytes(data), b"archive/data/0") + offset
    data[at:at + len(value)] = value
    return bytes(data)


def _renamed(old: bytes, new: bytes) -> bytes:
    """The plain case plus a record `old` holding 9s, whose name is then rewritten as `new` in both headers."""
    return archive(*_plain_case(), extra=[(old.decode(), floats(9, 9, 9, 9))]).replace(old, new)


ZIP_CASES |= {
    "encrypted record": lambda: _patch_central(8, b"\x09\x08"),
    "record on another disk": lambda: _patch_central(34, b"\x01\x00"),
    "record marked as a folder": lambda: _patch_central(38, b"\x10"),
    "name with a NUL that zipfile cuts": lambda: _renamed(b"archive/data/0ZQ", b"archive/data/0\x00Q"),
    "name that is not UTF-8": lambda: _renamed(b"archive/data/Q", b"archive/data/\x80"),
    "record outside the archive folder": lambda: archive(*_plain_case(), extra=[("other/x", b"1")]),
    "storage alignment not an integer": lambda: archive(*_plain_case(), extra=[("archive/.storage_alignment", b"x")]),
    "storage record longer than its storage": lambda: archive(_plain_case()[0], {"0": floats(1, 2, 3, 4, 5)}),
    "constants.pkl without code": lambda: archive(*_plain_case(), extra=[("archive/constants.pkl", b"\x80\x02).")]),
}


def _with_first(name: bytes) -> io.BytesIO:
    pickled, storages = _plain_case()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as written:
        written.writestr(name.decode(), b"1")
        with zipfile.ZipFile(io.BytesIO(archive(pickled, storages))) as source:
            for info in source.infolist():
                written.writestr(info.filename, source.read(info))
    return buffer


def _without(record: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive(*_plain_case()))) as source, zipfile.ZipFile(buffer, "w") as written:
        for info in source.infolist():
            if info.filename != record:
                written.writestr(info.filename, source.read(info))
    return buffer.getvalue()


def test_the_plain_case_is_read_by_both() -> None:
    """The cases below depart from this file, which both readers read alike."""
    data = archive(*_plain_case())
    assert torch.equal(torch_reads(data)["rnn.weight_hh_l0"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))


@pytest.mark.parametrize("case", sorted(ZIP_CASES))
def test_zip_ambiguities_are_refused_on_every_path(case: str, tmp_path: Path) -> None:
    data = ZIP_CASES[case]()
    seen = rnninit_paths(data, tmp_path)
    assert all(isinstance(value, RnnInitError) for value in seen.values()), (case, seen)


def test_duplicate_records_are_a_real_disagreement_and_refused_by_every_command(
        tmp_path: Path, cli: Callable[..., Any]) -> None:
    """zipfile takes the last copy, torch's reader another: torch reads 1..4 where zipfile would read 9s."""
    data = ZIP_CASES["duplicate record, second copy differs"]()
    assert torch.equal(torch_reads(data)["rnn.weight_hh_l0"].flatten(), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    with warnings.catch_warnings(), zipfile.ZipFile(io.BytesIO(data)) as naive:
        warnings.simplefilter("ignore")
        assert naive.read("archive/data/0") == floats(9, 9, 9, 9)
    path = tmp_path / "dup.pt"
    path.write_bytes(data)
    assert_every_command_refuses(cli, path, "listed twice")


def test_zip_refusal_through_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "dup.pt"
    path.write_bytes(ZIP_CASES["duplicate record, names differ in case only"]())
    done = subprocess.run([sys.executable, "-m", "rnninit_cli", "verify", str(path), "--scheme", "pytorch"],
                          capture_output=True, text=True, timeout=120)
    # verify's exit status for a file it cannot read is 2 (1 means "inconsistent")
    assert done.returncode == 3 and done.stderr.count("\n") == 1 and "listed twice" in done.stderr, done.stderr


def test_torch_save_files_still_read(tmp_path: Path) -> None:
    """The layout rules hold for what torch.save writes (zip64 end records, data descriptors)."""
    module = torch.nn.LSTM(3, 4, bidirectional=True)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    assert_agrees_or_refuses(buffer.getvalue(), tmp_path)
    seen = rnninit_paths(buffer.getvalue(), tmp_path)
    assert not any(isinstance(value, RnnInitError) for value in seen.values()), seen


# --- §1: operations on tensors that torch performs -------------------------------------------------------


def _build_on_tensor() -> bytes:
    """A tensor of storage 0, then BUILD (storage 1, 0, (4,), (1,)): torch's loader calls set_ with it."""
    writer = Pickle().op(b"}").text("rnn.weight_hh_l0")
    writer.tensor("0", 4, (4,), (1,))
    writer.op(b"(").storage("1", 4).int(0).ints((4,)).ints((1,)).op(b"t").op(b"b")
    return archive(writer.op(b"s").pickled(), {"0": floats(1, 2, 3, 4), "1": floats(9, 9, 9, 9)})


def _state_sets(attribute: str, value: Callable[[Pickle], Any] = lambda p: p.tensor("1", 4, (4,), (1,))) -> bytes:
    """_rebuild_from_type_v2(_rebuild_tensor_v2, Tensor, (storage 0 ...), {attribute: value}); by default the
    value is a tensor of storage 1."""
    writer = Pickle().op(b"}").text("rnn.weight_hh_l0")
    writer.glob("torch._tensor", "_rebuild_from_type_v2").op(b"(").glob("torch._utils", "_rebuild_tensor_v2")
    writer.glob("torch", "Tensor").op(b"(").storage("0", 4).int(0).ints((4,)).ints((1,)).op(b"\x89").hooks()
    writer.op(b"t").op(b"}").text(attribute)
    value(writer)
    writer.op(b"s").op(b"tR")
    return archive(writer.op(b"s").pickled(), {"0": floats(1, 2, 3, 4), "1": floats(9, 9, 9, 9)})


def _metadata(key: str) -> bytes:
    def metadata(writer: Pickle) -> None:
        writer.op(b"}").text(key).op(b"\x88s")

    pickled = one_tensor_state(lambda p: p.tensor("0", 4, (4,), (1,), metadata=metadata))
    return archive(pickled, {"0": floats(1, 2, 3, 4)})


def test_build_on_a_tensor_changes_what_torch_reads_and_is_refused(tmp_path: Path, cli: Callable[..., Any]) -> None:
    data = _build_on_tensor()
    assert torch.equal(torch_reads(data)["rnn.weight_hh_l0"], torch.full((4,), 9.0))  # the case is real
    assert_agrees_or_refuses(data, tmp_path, must_refuse=True)
    path = tmp_path / "build.pt"
    path.write_bytes(data)
    assert_every_command_refuses(cli, path, "BUILD on a tensor")


@pytest.mark.parametrize("attribute", ["data", "real"])
def test_tensor_state_that_sets_a_tensor_property_is_refused(attribute: str, tmp_path: Path) -> None:
    data = _state_sets(attribute)
    assert torch.equal(torch_reads(data)["rnn.weight_hh_l0"], torch.full((4,), 9.0))
    assert_agrees_or_refuses(data, tmp_path, must_refuse=True)


def test_a_tensor_held_as_an_attribute_is_refused(tmp_path: Path) -> None:
    """No name reaches a tensor held in another tensor's attributes: rewriting its storage would go unseen."""
    data = _state_sets("my_buffer")
    assert torch.equal(torch_reads(data)["rnn.weight_hh_l0"].my_buffer, torch.full((4,), 9.0))
    assert_agrees_or_refuses(data, tmp_path, must_refuse=True)


def test_plain_tensor_attributes_are_read_as_torch_reads_them(tmp_path: Path) -> None:
    data = _state_sets("my_flag", lambda p: p.int(7))
    assert torch.equal(torch_reads(data)["rnn.weight_hh_l0"], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert_agrees_or_refuses(data, tmp_path)
    assert not any(isinstance(v, RnnInitError) for v in rnninit_paths(data, tmp_path).values())


def test_the_negative_bit_changes_what_torch_reads_and_is_refused(tmp_path: Path) -> None:
    data = _metadata("neg")
    assert torch.equal(torch_reads(data)["rnn.weight_hh_l0"].resolve_neg(), -torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert_agrees_or_refuses(data, tmp_path, must_refuse=True)


def test_tensor_descriptor_list_is_torchs() -> None:
    """Every attribute setattr handles specially on a Tensor or Parameter is one the reader refuses in a state."""
    described = {name for cls in torch.nn.Parameter.__mro__ for name, value in vars(cls).items()
                 if hasattr(value, "__set__")}
    assert described <= TENSOR_DESCRIPTORS


@pytest.mark.parametrize(("size", "stride", "offset"), [((2, 3), (3, 1), 0), ((2, 3), (1, 2), 1), ((3,), (0,), 2),
                                                        ((0, 5), (5, 1), 7), ((2, 2, 2), (4, 1, 2), 0)])
def test_view_span_is_the_extent_torch_addresses(size: tuple[int, ...], stride: tuple[int, ...], offset: int) -> None:
    """view_span against the addresses torch's own view touches, elementwise."""
    base = torch.arange(64.0)
    view = base.as_strided(size, stride, offset)
    touched = {int(v) for v in view.flatten()} if view.numel() else set()
    first, stop = view_span(offset, size, stride)
    if touched:
        assert (first, stop) == (min(touched), max(touched) + 1)
    else:
        assert first == stop


# --- §2: count before building ----------------------------------------------------------------------------


def _peak_kib(script: str, timeout: float = 120) -> tuple[str, int]:
    """Run `script` in a fresh interpreter; (its last stdout line, its own peak RSS in KiB)."""
    body = script + textwrap.dedent("""
        status = open("/proc/self/status").read()
        print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    """)
    done = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    *lines, peak = done.stdout.strip().splitlines()
    return (lines[-1] if lines else ""), int(peak)


def test_a_wide_list_is_refused_before_its_paths_are_built() -> None:
    """4M small ints in one list, with RNNINIT_MAX_ENTRIES=1M: refused before 4M paths and tuples exist."""
    script = textwrap.dedent("""
        import os
        os.environ["RNNINIT_MAX_ENTRIES"] = "1000000"
        from rnninit_cli.formats.checkpoint import walk
        from rnninit_cli.errors import CheckpointError
        wide = [0] * 4_000_000
        try:
            for _ in walk({"wide": wide}, ""):
                pass
            print("read")
        except CheckpointError as error:
            print("refused" if "more than 1000000 entries" in str(error) else str(error))
    """)
    answer, peak = _peak_kib(script)
    assert answer == "refused"
    assert peak < 200 * 1024, peak  # the list itself is 32 MB; building its paths first took over 700 MB


def test_a_copying_builtin_applied_again_and_again_runs_out_of_budget() -> None:
    """A list of 50,000 items, then set(list) applied 2,000 times: 10**8 set entries from ~110 KB of pickle."""
    script = textwrap.dedent("""
        import struct
        from rnninit_cli.formats.unpickle.machine import unpickle
        from rnninit_cli.errors import CheckpointError
        items = b"".join(b"J" + struct.pack("<i", i) for i in range(50_000))
        body = b"\\x80\\x02]q\\x00(" + items + b"e"  # a list, memo 0
        body += b"(" + b"cbuiltins\\nset\\nh\\x00\\x85R" * 2000 + b"l."
        try:
            unpickle(body, lambda pid: None, "bomb.pt")
            print("read")
        except CheckpointError as error:
            print("refused" if "budget" in str(error) else str(error))
    """)
    answer, peak = _peak_kib(script)
    assert answer == "refused"
    assert peak < 600 * 1024, peak  # the default budget's ~320 MB, where the 2,000 sets would take 4 GB


# --- §3: overlap on every path; fallback re-reads ----------------------------------------------------------


def _strided_overlap_state() -> dict[str, torch.Tensor]:
    """weight_hh as a strided view (stride 2 over 32 elements of a 64-element storage) that overlaps a
    non-recurrent buffer sharing the storage: numel × itemsize says the buffer lies after it, it does not."""
    base = torch.arange(64.0)
    module = torch.nn.RNN(2, 4)
    state = {name: value.detach().clone() for name, value in module.state_dict().items()}
    state["weight_hh_l0"] = base.as_strided((4, 4), (8, 2), 0)  # reaches element 30
    state["buffer"] = base.as_strided((8,), (1,), 20)  # elements 20..27: inside the view's reach
    return state


@pytest.mark.parametrize("extra", [["-o", "{out}.safetensors"], ["-o", "-"], ["--drop-optimizer-state"],
                                   ["--legacy"]])
def test_strided_views_that_overlap_are_caught_on_every_path(extra: list[str], tmp_path: Path,
                                                             cli: Callable[..., Any]) -> None:
    source = tmp_path / "overlap.pt"
    torch.save(_strided_overlap_state(), source, _use_new_zipfile_serialization="--legacy" not in extra)
    out = tmp_path / "out"
    args = [a.format(out=out) for a in extra if a != "--legacy"]
    if "-o" not in args:
        args += ["-o", f"{out}.pt"]
    result = cli("apply", source, "--scheme", "keras", "--seed", "0", "--tensors-only", *args)
    before = torch.load(source, weights_only=True)["buffer"].clone()
    if result.exit_code == 0:  # then the shared bytes must have been reported, never changed silently
        assert "shares its storage" in result.stderr or "overlap" in result.stderr, result.stderr
    else:
        assert "overlap" in result.stderr, result.stderr
    assert torch.equal(torch.load(source, weights_only=True)["buffer"], before)


def test_the_whole_load_fallback_reads_from_the_first_byte(tmp_path: Path, cli: Callable[..., Any]) -> None:
    """A compressed rnninit.json record (torch.load ignores it) cannot be patched: apply loads the file whole,
    from its first byte, not from where indexing left the file position."""
    module = torch.nn.LSTM(3, 4)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    rebuilt = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(rebuilt, "w") as written:
        for info in source.infolist():
            written.writestr(info.filename, source.read(info))
        written.writestr("archive/rnninit.json", b'{"note": "' + b"x" * 200 + b'"}', zipfile.ZIP_DEFLATED)
    path = tmp_path / "compressed-metadata.pt"
    path.write_bytes(rebuilt.getvalue())
    assert torch_reads(rebuilt.getvalue()) is not None
    result = cli("apply", path, "--scheme", "keras", "--seed", "0", "-o", tmp_path / "out.pt")
    assert result.exit_code == 0, result.stderr
    written = torch.load(tmp_path / "out.pt", weights_only=True)
    assert set(written) == set(module.state_dict())


@pytest.mark.parametrize(("module", "name", "opcode"), [("torch", "FloatTensor", b"R"), ("torch", "Tensor", b"R"),
                                                         ("torch.nn.parameter", "Parameter", b"\x81"),
                                                         ("torch._utils", "_rebuild_sparse_tensor", b"R")])
def test_tensors_made_by_calls_rnninit_does_not_model_are_refused(module: str, name: str, opcode: bytes,
                                                                   tmp_path: Path) -> None:
    """torch.FloatTensor([1, 2]) or Parameter(t) in a pickle is a tensor to torch: a record of it would hide it."""
    writer = Pickle().op(b"}").text("rnn.weight_hh_l0").glob(module, name).op(b"(")
    if name == "Parameter":
        writer.tensor("0", 4, (4,), (1,))
    else:
        writer.op(b"]").op(b"(").int(1).int(2).op(b"e")
    writer.op(b"t").op(opcode).op(b"s")
    data = archive(writer.pickled(), {"0": floats(1, 2, 3, 4)})
    assert_agrees_or_refuses(data, tmp_path, must_refuse=True)


def _lstm_state(transposed: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = {name: value.detach().clone() for name, value in torch.nn.LSTM(3, 4).state_dict().items()}
    state["head.weight"] = torch.randn(2, 4)
    if transposed:  # same values, stored as the transpose of a (h, 4h) matrix: cannot be patched byte by byte
        state["weight_hh_l0"] = state["weight_hh_l0"].t().contiguous().t()
    return state


def _save_source(tmp_path: Path, kind: str, transposed: bool) -> Path:
    state = _lstm_state(transposed)
    folder = tmp_path / f"{kind}-{transposed}"
    folder.mkdir()
    if kind == "folder":
        torch.save(state, folder / "pytorch_model.bin")
        return folder
    path = folder / "model.pt"
    torch.save(state, path, _use_new_zipfile_serialization=kind != "legacy")
    return path


@pytest.mark.parametrize("kind", ["pt", "legacy", "folder"])
def test_fallbacks_write_what_the_patch_path_writes(kind: str, tmp_path: Path, cli: Callable[..., Any]) -> None:
    """A transposed recurrent weight (no byte-for-byte patch: the whole-load fallback), a legacy file (loaded
    whole) and a model folder's shard all give the values the patch path gives a plain file, same seed."""
    reference = _save_source(tmp_path, "pt", transposed=False)
    expected_out = tmp_path / "expected.pt"
    assert cli("apply", reference, "--scheme", "keras", "--seed", "3", "-o", expected_out).exit_code == 0
    expected = torch.load(expected_out, weights_only=True)
    source = _save_source(tmp_path, kind, transposed=True)
    out = tmp_path / ("out" if kind == "folder" else "out.pt")
    result = cli("apply", source, "--scheme", "keras", "--seed", "3", "-o", out)
    assert result.exit_code == 0, result.stderr
    written = torch.load(out / "pytorch_model.bin" if kind == "folder" else out, weights_only=True)
    assert set(written) == set(expected)
    for name, value in expected.items():
        assert torch.equal(written[name], value), name
    assert torch.equal(written["head.weight"], _lstm_state(False)["head.weight"])


@pytest.mark.parametrize("case", ["neg false", "conj false", "int key", "text value"])
def test_tensor_metadata_torch_applies_or_refuses_is_refused(case: str, tmp_path: Path) -> None:
    """torch sets the bit when the key is there, whatever its value, and refuses keys and values it cannot take."""
    key, value = {"neg false": ("neg", b"\x89"), "conj false": ("conj", b"\x89"), "int key": (1, b"\x88"),
                  "text value": ("foo", None)}[case]

    def metadata(writer: Pickle) -> None:
        writer.op(b"}")
        writer.int(key) if isinstance(key, int) else writer.text(key)
        writer.op(value) if value else writer.text("x")
        writer.op(b"s")

    pickled = one_tensor_state(lambda p: p.tensor("0", 4, (4,), (1,), metadata=metadata))
    data = archive(pickled, {"0": floats(1, 2, 3, 4)})
    assert_agrees_or_refuses(data, tmp_path, must_refuse=True)


@pytest.mark.parametrize(("size", "stride"), [((2**64, 0), (1, 1)), ((2**62, 2**62, 0), (1, 1, 1)),
                                              ((1, 2), (2**63, 1)), ((1,) * 65, (1,) * 65)])
def test_sizes_beyond_64_bits_or_64_dimensions_are_refused(size: tuple[int, ...], stride: tuple[int, ...],
                                                           tmp_path: Path, cli: Callable[..., Any]) -> None:
    writer = Pickle().op(b"}").text("rnn.weight_hh_l0").tensor("0", 4, (4,), (1,)).text("extra")
    writer.glob("torch._utils", "_rebuild_tensor_v2").op(b"(").storage("1", 4).int(0)
    for dims in (size, stride):
        writer.op(b"(")
        for dim in dims:
            writer.op(b"\x8a" + bytes([9]) + dim.to_bytes(9, "little", signed=True))  # LONG1
        writer.op(b"t")
    writer.op(b"\x89").hooks().op(b"tR").op(b"s")
    data = archive(writer.op(b"s").pickled(), {"0": floats(1, 2, 3, 4), "1": floats(5, 6, 7, 8)})
    assert_agrees_or_refuses(data, tmp_path, must_refuse=True)
    path = tmp_path / "big.pt"
    path.write_bytes(data)
    assert_every_command_refuses(cli, path)


def _hidden(where: str) -> bytes:
    """An RNN-like state whose weight_hh shares its storage with a tensor no name reaches."""
    writer = Pickle()
    if where == "attribute of the state dict":
        writer.glob("collections", "OrderedDict").op(b")R")
    else:
        writer.op(b"}")
    writer.text("rnn.weight_hh_l0").tensor("0", 4, (4,), (1,)).op(b"s")

    def hidden(writer: Pickle) -> None:
        writer.tensor("0", 4, (2,), (1,), offset=2)

    if where == "dict key":
        writer.text("meta").op(b"}")
        hidden(writer)
        writer.int(1).op(b"s").op(b"s")
    elif where == "set member":
        writer.text("tags").glob("builtins", "set").op(b"(").op(b"]")
        hidden(writer)
        writer.op(b"a").op(b"tR").op(b"s")
    else:
        writer.op(b"}").text("hidden")
        hidden(writer)
        writer.op(b"s").op(b"b")
    return archive(writer.pickled(), {"0": floats(1, 2, 3, 4)})


@pytest.mark.parametrize("where", ["dict key", "set member", "attribute of the state dict"])
def test_tensors_no_name_reaches_are_refused(where: str, tmp_path: Path) -> None:
    """torch reads them (and they share weight_hh's bytes): a rewrite would change them unseen."""
    data = _hidden(where)
    assert torch_reads(data) is not None
    assert_agrees_or_refuses(data, tmp_path, must_refuse=True)


def test_a_state_dicts_metadata_survives_a_whole_rewrite(tmp_path: Path, cli: Callable[..., Any]) -> None:
    """`_metadata` of a real state_dict() (module versions read by _load_from_state_dict) is kept by every path."""
    module = torch.nn.RNN(3, 4)
    optimizer = torch.optim.Adam(module.parameters())
    module(torch.randn(2, 1, 3))[0].sum().backward()
    optimizer.step()
    source = tmp_path / "training.pt"
    torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict()}, source)
    expected = torch.load(source, weights_only=True)["model"]._metadata
    for extra in (["--drop-optimizer-state"], []):
        out = tmp_path / f"out{len(extra)}.pt"
        result = cli("apply", source, "--scheme", "keras", "--seed", "0", "-o", out, *extra)
        assert result.exit_code == 0, result.stderr
        assert torch.load(out, weights_only=True)["model"]._metadata == expected, extra


def test_names_with_newlines_are_matched_like_any_character(tmp_path: Path, cli: Callable[..., Any]) -> None:
    """`$` matches before a final newline: "lstm.weight_ih_l0\\n" must not pass for lstm's weight_ih_l0."""
    lstm = {f"lstm.{name}": value.detach() for name, value in torch.nn.LSTM(3, 4).state_dict().items()}
    decoys = {f"{name}\n": torch.full_like(value, 7.0) for name, value in lstm.items()}
    odd = {f"nl\nmod.{name.split('.')[1]}": value.clone() for name, value in lstm.items()}
    source = tmp_path / "newlines.pt"
    torch.save({**lstm, **decoys, **odd}, source)
    result = cli("apply", source, "--scheme", "keras", "--seed", "0", "-o", tmp_path / "out.pt")
    assert result.exit_code == 0, result.stderr
    written = torch.load(tmp_path / "out.pt", weights_only=True)
    for name in lstm:
        assert not torch.equal(written[name], lstm[name]), name  # the real layer is rewritten
        assert torch.equal(written[f"{name}\n"], decoys[f"{name}\n"]), name  # the look-alike is not
    for name in odd:
        assert not torch.equal(written[name], odd[name]), name  # a module name holding a newline is a layer too


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_narrow_output_encoding_degrades_instead_of_failing(encoding: str, tmp_path: Path) -> None:
    """Under PYTHONIOENCODING=ascii the tables' →, σ and box drawing are escaped; apply succeeds, exit 0."""
    source = tmp_path / "model.pt"
    torch.save(torch.nn.LSTM(3, 4).state_dict(), source)
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    for args in (["inspect", str(source), "--wide"], ["apply", str(source), "--scheme", "keras", "--seed", "0",
                                                      "-o", str(tmp_path / "out.pt")], ["schemes"]):
        done = subprocess.run([sys.executable, "-m", "rnninit_cli", *args], capture_output=True, env=env,
                              timeout=120)
        assert done.returncode == 0, (args, done.stderr.decode(errors="replace"))
        assert b"internal error" not in done.stderr and done.stdout, args


def test_a_second_signal_while_unwinding_does_not_abort(tmp_path: Path) -> None:
    """Ctrl-C, then SIGTERM 10 ms later, while `apply -o -` draws on worker threads: the second signal must not cut
    the wait for those threads short (the process then aborted inside torch: exit -6, "terminate called...")."""
    import signal
    import time

    source = tmp_path / "big.pt"
    torch.save(torch.nn.LSTM(256, 1024, 2).state_dict(), source)
    seen = []
    for delay in (0.8, 1.2, 1.6, 2.0):
        process = subprocess.Popen([sys.executable, "-m", "rnninit_cli", "apply", str(source), "--scheme", "keras",
                                    "--seed", "0", "-o", "-"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
        seen.append((delay, process.returncode, stderr.decode(errors="replace")))
    for delay, code, stderr in seen:
        assert code in (0, 130, 143), (delay, code, stderr)
        assert stderr.strip() in ("", "error: interrupted"), (delay, stderr)


def test_a_program_that_calls_main_gets_its_signal_handlers_back() -> None:
    script = textwrap.dedent("""
        import signal, sys
        mine = lambda signum, frame: print("mine", signum)
        signal.signal(signal.SIGINT, mine)
        signal.signal(signal.SIGTERM, mine)
        from rnninit_cli import cli
        sys.argv = ["rnninit", "schemes", "--json"]
        try:
            cli.main()
        except SystemExit:
            pass
        print(signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine, file=sys.stderr)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr.strip().splitlines()[-1] == "True", done.stderr


def test_torch_values_as_keys_are_named_as_torch_writes_them(tmp_path: Path) -> None:
    """A dtype, device or torch.Size as a dict key (alone or in a tuple) names its entry as str() of torch's own."""
    keys = [torch.float32, torch.device("cuda", 1), torch.Size([2]), (torch.device("cpu"), 1), torch.strided,
            torch.per_tensor_affine, "plain"]
    source = tmp_path / "keys.pt"
    torch.save({"m": {key: torch.full((2,), float(index)) for index, key in enumerate(keys)}}, source)
    expected = {f"m/{key}" for key in keys}
    assert set(read_checkpoint(source).shape_records()) == expected
    assert set(load_checkpoint(source).tensors) == expected
    indexed = index_file(source)
    assert set(indexed.locations) == expected
