"""Safety of reading (issue 9, items 6-10, 12, 14): headers the official safetensors library refuses,
zip bombs, unbounded standard input, pickles whose memo makes 2**64 paths or that nest 200,000 deep,
key collisions, and model-folder shard paths that escape the folder.

The bombs are built here, small, and run in a subprocess capped in time and address space
(`bounded_run`): each must end with exit 1 and one `error:` line, quickly and with a small peak RSS.
The safetensors validator is checked differentially: on many mutated headers, rnninit (file and
standard input paths) accepts exactly what `safetensors.torch.load` accepts.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file

from rnninit_cli.errors import CheckpointError
from rnninit_cli.formats.checkpoint import load_checkpoint
from rnninit_cli.formats.safety import SAFETENSORS_BITS, read_stdin
from rnninit_cli.formats.tensorfile import index_file

HERE = Path(__file__).resolve().parent
HELPER = str(HERE / "hardening_helpers.py")
PYTHON = sys.executable
MODULE = [PYTHON, "-m", "rnninit_cli"]
GIB = 1 << 30
MIB = 1 << 20

DIFFERENTIAL_EXAMPLES = int(os.environ.get("RNNINIT_DIFFERENTIAL_EXAMPLES", "150"))


# ---------------------------------------------------------------------------------------------
# running a bomb: a subprocess with an address-space cap and a timeout, its peak RSS measured
# ---------------------------------------------------------------------------------------------


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (3 * GIB, 3 * GIB))


def bounded_run(args: list[str], *, stdin: bytes | Path | None = None, cwd: Path | None = None,
                timeout: float = 60, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `rnninit ARGS` through hardening_helpers.py peak-rss under RLIMIT_AS 3 GiB; its JSON report
    (returncode, stdout, stderr, maxrss_kib)."""
    handle = open(stdin, "rb") if isinstance(stdin, Path) else None  # noqa: SIM115 (closed below)
    try:
        result = subprocess.run([PYTHON, HELPER, "peak-rss", "--", *MODULE, *[str(a) for a in args]],
                                input=None if handle or stdin is None else stdin, stdin=handle,
                                capture_output=True, timeout=timeout, check=False, cwd=cwd,
                                preexec_fn=_cap_memory, env={**os.environ, **(env or {})})
    finally:
        if handle:
            handle.close()
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def bounded_batch(runs: list[tuple[list[Any], Path | None]], folder: Path, *, timeout: float = 120,
                  env: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Run several `rnninit ARGS` (standard input: a file or nothing) in ONE process under RLIMIT_AS 3 GiB
    (hardening_helpers.py many, inside peak-rss: torch is imported once); each run's result, and the peak
    RSS in KiB of the whole batch."""
    spec = folder / "spec.json"
    spec.write_text(json.dumps([{"argv": [str(a) for a in args], "stdin": str(stdin) if stdin else None}
                                for args, stdin in runs]))
    result = subprocess.run([PYTHON, HELPER, "peak-rss", "--", PYTHON, HELPER, "many", str(spec)],
                            capture_output=True, timeout=timeout, check=False, preexec_fn=_cap_memory,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["returncode"] == 0, report["stderr"][-3000:]
    return json.loads(report["stdout"]), report["maxrss_kib"]


def assert_one_error_line(result: dict[str, Any], *fragments: str) -> str:
    stderr = result["stderr"]
    assert "Traceback" not in stderr and "internal error" not in stderr, (result["argv"], stderr)
    assert result["exit_code"] == 3, (result["argv"], result["exit_code"], stderr)  # an input that cannot be used
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (result["argv"], stderr)
    for fragment in fragments:
        assert fragment in lines[0], (result["argv"], lines[0])
    return lines[0]


def assert_clean_refusal(report: dict[str, Any], *fragments: str, max_rss_mib: int = 900) -> str:
    stderr = report["stderr"]
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert report["returncode"] == 3, (report["returncode"], stderr)  # an input that cannot be used
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert report["maxrss_kib"] < max_rss_mib * 1024, f"peak RSS {report['maxrss_kib']} KiB: {lines[0]}"
    return lines[0]


def pt_bytes(state: Any, *, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


LSTM_STATE = {"lstm.weight_ih_l0": torch.zeros(16, 2), "lstm.weight_hh_l0": torch.zeros(16, 4)}


# ---------------------------------------------------------------------------------------------
# item 12: one safetensors validator, exactly as strict as the official library
# ---------------------------------------------------------------------------------------------


def _number(draw: Any, value: int) -> str:
    """`value` written as JSON, or a near miss the library refuses or accepts differently."""
    form = draw(st.sampled_from(["int"] * 80 + ["float", "string", "bool", "null", "negative", "minus-zero",
                                               "exponent", "huge", "big63", "list"]))
    return {"int": str(value), "float": f"{value}.0", "string": f'"{value}"', "bool": "true", "null": "null",
            "negative": str(-value - 1), "minus-zero": "-0", "exponent": f"{value}e0",
            "huge": str(2**64 + value), "big63": str(2**63 + value), "list": f"[{value}]"}[form]


@st.composite
def mutated_safetensors(draw: Any) -> bytes:
    """A safetensors file: a valid one, then a few mutations of its header text, offsets and data length."""
    codes = [*SAFETENSORS_BITS, "F128", "f32"]
    count = draw(st.integers(0, 3))
    tensors = []
    offset = 0
    for index in range(count):
        dtype = draw(st.sampled_from(["F32"] * 6 + ["F16", "U8", "BOOL", "C64", "F8_E8M0", "F4"] + codes))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        bits = SAFETENSORS_BITS.get(dtype, 32)
        elements = 1
        for dim in shape:
            elements *= dim
        size = elements * bits // 8
        tensors.append([f"t{index}", dtype, shape, offset, offset + size])
        offset += size
    data_size = offset
    if tensors and draw(st.integers(0, 3)) == 0:  # offsets that overlap, leave gaps or are swapped
        victim = draw(st.sampled_from(tensors))
        change = draw(st.sampled_from(["begin+1", "end+1", "begin-1", "end-1", "swap", "zero"]))
        if change == "swap":
            victim[3], victim[4] = victim[4], victim[3]
        elif change == "zero":
            victim[3] = victim[4] = 0
        else:
            which = 3 if change.startswith("begin") else 4
            victim[which] = max(0, victim[which] + (1 if change.endswith("+1") else -1))
    if tensors and draw(st.integers(0, 7)) == 0:  # a huge shape on an empty tensor
        victim = draw(st.sampled_from(tensors))
        victim[2] = [draw(st.sampled_from([2**62, 2**63 - 1, 2**63, 2**64 - 1])), 0]
        victim[4] = victim[3]
    entries = []
    for name, dtype, shape, begin, end in tensors:
        dims = ",".join(_number(draw, dim) for dim in shape)
        fields = {"dtype": json.dumps(dtype), "shape": f"[{dims}]",
                  "data_offsets": f"[{_number(draw, begin)},{_number(draw, end)}]"}
        form = draw(st.sampled_from(["object"] * 40 + ["sequence", "dtype-map", "missing", "extra", "duplicate",
                                                      "null", "three-offsets", "deep-extra", "nan-extra",
                                                      "surrogate-extra"]))
        if form == "sequence":
            entries.append(f'"{name}":[{fields["dtype"]},{fields["shape"]},{fields["data_offsets"]}]')
            continue
        if form == "null":
            entries.append(f'"{name}":null')
            continue
        if form == "dtype-map":
            fields["dtype"] = draw(st.sampled_from([f'{{{json.dumps(dtype)}:null}}', f'{{{json.dumps(dtype)}:1}}',
                                                    "{}", f'[{json.dumps(dtype)}]']))
        if form == "missing":
            fields.pop(draw(st.sampled_from(sorted(fields))))
        if form == "three-offsets":
            fields["data_offsets"] = f"[{begin},{end},{end}]"
        parts = [f'"{key}":{value}' for key, value in fields.items()]
        if form == "extra":
            parts.append(draw(st.sampled_from(['"x":1.5', '"x":[1,{"y":null}]', '"x":1e999', '"x":"\\ud83d\\ude00"',
                                               f'"x":1{"0" * 400}', '"x":-12345678901234567890123'])))
        if form == "duplicate":
            parts.append(draw(st.sampled_from(parts)))
        if form == "deep-extra":
            depth = draw(st.integers(123, 127))
            parts.append('"x":' + "[" * depth + "]" * depth)
        if form == "nan-extra":
            parts.append('"x":NaN')
        if form == "surrogate-extra":
            parts.append(draw(st.sampled_from(['"x":"\\ud800"', '"\\udc00":1'])))
        entries.append(f'"{name}":{{{",".join(draw(st.permutations(parts)))}}}')
    metadata = draw(st.sampled_from([None] * 12 + ['{"a":"b"}', "null", '{"a":1}', '{"a":"b","a":"c"}', "[]",
                                     '"x"', '{"a":"\\ud800"}']))
    if metadata is not None:
        entries.insert(draw(st.integers(0, len(entries))), f'"__metadata__":{metadata}')
        if draw(st.integers(0, 5)) == 0:
            entries.append(f'"__metadata__":{metadata}')
    if len(entries) > 1 and draw(st.integers(0, 5)) == 0:  # a repeated tensor name: the library keeps the last
        entries.append(draw(st.sampled_from(entries)))
    text = "{" + ",".join(entries) + "}"
    wrapper = draw(st.sampled_from(["plain"] * 30 + ["leading-space", "trailing-spaces", "trailing-nul", "array",
                                                    "bom", "tab-newline"]))
    text = {"plain": text, "leading-space": " " + text, "trailing-spaces": text + "   ", "trailing-nul": text + "\0",
            "array": "[" + text + "]", "bom": "\ufeff" + text, "tab-newline": "\t\n" + text + "\r\n"}[wrapper]
    raw = text.encode("utf-8", "surrogatepass")
    data_change = draw(st.sampled_from([0] * 20 + [-1, 1, 8]))
    data = bytes(range(256)) * (data_size // 256 + 1)
    return struct.pack("<Q", len(raw)) + raw + data[:max(0, data_size + data_change)]


def library_reads(content: bytes) -> dict[str, tuple[torch.dtype, tuple[int, ...]]] | None:
    """What the official library loads from `content`, or None where it refuses it."""
    try:
        loaded = safetensors_load(content)
    except Exception:
        return None
    return {name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in loaded.items()}


def rnninit_reads(content: bytes, folder: Path) -> dict[str, dict[str, tuple[torch.dtype, tuple[int, ...]]] | None]:
    """What rnninit reads from `content` on each of its paths (None: a CheckpointError)."""
    seen: dict[str, Any] = {}
    path = folder / "case.safetensors"
    path.write_bytes(content)
    try:
        with index_file(path) as indexed:
            seen["file"] = {name: (t.dtype, tuple(t.shape)) for name, t in indexed.shapes().items()}
    except CheckpointError:
        seen["file"] = None
    for label, source in (("whole", lambda: content), ("stdin", lambda: read_stdin(io.BytesIO(content)))):
        try:
            loaded = load_checkpoint("-", data=source())
            seen[label] = {name: (t.dtype, tuple(t.shape)) for name, t in loaded.tensors.items()}
        except CheckpointError:
            seen[label] = None
    return seen


@settings(max_examples=DIFFERENTIAL_EXAMPLES, deadline=None, derandomize=not os.environ.get("RNNINIT_FUZZ_RANDOM"),
          database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(content=mutated_safetensors())
def test_safetensors_acceptance_matches_the_official_library(content: bytes, tmp_path: Path) -> None:
    """Every path (indexed file, whole load, standard input) accepts exactly the files that
    `safetensors.torch.load` accepts, and reads the same tensors from them.
    RNNINIT_DIFFERENTIAL_EXAMPLES=5000 RNNINIT_FUZZ_RANDOM=1 for a long run."""
    expected = library_reads(content)
    for label, seen in rnninit_reads(content, tmp_path).items():
        assert (seen is None) == (expected is None), (label, content[:400], expected, seen)
        if expected is not None:
            assert seen == expected, (label, content[:400])


REFUSED_HEADERS = [
    '{"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}',
    '{"w":{"dtype":"F32","shape":[2],"data_offsets":["0",8]}}',
    '{"w":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}',
    '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8e0]}}',
    '{"w":{"dtype":"F32","shape":[-0,2],"data_offsets":[0,0]}}',
    '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"dtype":"F32"}}',
    '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"note":NaN}}',
    '{"__metadata__":null,"__metadata__":{}, "w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
]


def test_headers_the_library_refuses_are_refused_everywhere(tmp_path: Path) -> None:
    """Float shapes, string offsets, bools, 8e0, -0, repeated fields, NaN: today's indexed path took
    several of these (rc=0, and an output the library cannot read)."""
    runs: list[tuple[list[Any], Path | None]] = []
    for number, header in enumerate(REFUSED_HEADERS):
        content = struct.pack("<Q", len(header)) + header.encode() + bytes(8)
        assert library_reads(content) is None
        assert all(seen is None for seen in rnninit_reads(content, tmp_path).values()), header
        path = tmp_path / f"bad-{number}.safetensors"
        path.write_bytes(content)
        runs.append((["apply", path, "--scheme", "keras", "-o", tmp_path / "out.safetensors"], None))
    results, _ = bounded_batch(runs, tmp_path)
    for result in results:
        assert_one_error_line(result, "damaged safetensors header")
    assert not (tmp_path / "out.safetensors").exists()


def test_header_the_library_accepts_in_unusual_forms_is_read(tmp_path: Path) -> None:
    """Leading whitespace, the sequence form of an entry, an enum in map form and a repeated name (the
    last one counts) are all valid for the library, so for rnninit too, and the output stays readable."""
    header = (' {"lstm.weight_ih_l0":["F32",[16,2],[0,128]],'
              '"lstm.weight_hh_l0":{"dtype":{"F32":null},"shape":[1],"data_offsets":[128,132]},'
              '"lstm.weight_hh_l0":{"dtype":"F32","shape":[16,4],"data_offsets":[128,384],"comment":[1.5]}}')
    content = struct.pack("<Q", len(header)) + header.encode() + bytes(384)
    assert library_reads(content) == {"lstm.weight_ih_l0": (torch.float32, (16, 2)),
                                      "lstm.weight_hh_l0": (torch.float32, (16, 4))}
    path = tmp_path / "unusual.safetensors"
    path.write_bytes(content)
    output = tmp_path / "out.safetensors"
    from typer.testing import CliRunner

    from rnninit_cli.cli import app

    result = CliRunner().invoke(app, ["apply", str(path), "--scheme", "keras", "--seed", "1", "-o", str(output)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert library_reads(output.read_bytes()) == library_reads(content)


# ---------------------------------------------------------------------------------------------
# item 8: zip bombs
# ---------------------------------------------------------------------------------------------


def deflated_zeros(size: int) -> tuple[bytes, int]:
    """A raw deflate stream of `size` zero bytes (a multiple of 1 MiB), built from one compressed block
    repeated (a full flush makes every block the same), and its CRC-32: cheap, whatever `size`."""
    import zlib

    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(bytes(MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert again == block
    crc = 0
    zeros = bytes(MIB)
    for _ in range(size // MIB):
        crc = zlib.crc32(zeros, crc)
    return block * (size // MIB) + compressor.flush(), crc


def zip_with(records: list[tuple[str, bytes]], replaced: dict[str, tuple[bytes, int, int, int]]) -> bytes:
    """A zip archive of `records` (stored, as torch.save writes them), except the `replaced` ones:
    name → (deflated payload, CRC-32, declared size, method)."""
    import zlib

    out = bytearray()
    central = bytearray()
    for name, payload in records:
        encoded = name.encode()
        data, crc, size, method = replaced.get(name, (payload, zlib.crc32(payload), len(payload), 0))
        offset = len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size,
                           len(encoded), 0) + encoded + data
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data),
                               size, len(encoded), 0, 0, 0, 0, 0, offset) + encoded
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(records), len(records), len(central), len(out), 0)
    return bytes(out + central + end)


def torch_records(state: Any, metadata: bool = False) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(pt_bytes(state))) as archive:
        records = [(info.filename, archive.read(info)) for info in archive.infolist()]
    if metadata:
        records.append(("archive/rnninit.json", json.dumps({"rnninit.seed": "1"}).encode()))
    return records


@pytest.fixture(scope="module")
def zip_bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("zip-bombs")
    zeros, crc = deflated_zeros(2 * GIB)
    records = torch_records(LSTM_STATE, metadata=True)
    ints = b"\x80\x02]q\x00(" + b"K\x01" * (50 * MIB) + b"e."  # a list of 52 million ints
    import zlib

    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated_ints = compressor.compress(ints) + compressor.flush()
    cases = {
        "byteorder": zip_with(records, {"archive/byteorder": (zeros, crc, 2 * GIB, 8)}),
        "rnninit-json": zip_with(records, {"archive/rnninit.json": (zeros, crc, 2 * GIB, 8)}),
        # the central directory says 6 bytes; the stream holds 2 GiB: readers must stop at 6
        "byteorder-lying": zip_with(records, {"archive/byteorder": (zeros, crc, 6, 8)}),
        "rnninit-json-lying": zip_with(records, {"archive/rnninit.json": (zeros, crc, 20, 8)}),
        "data-pkl-ints": zip_with(records, {"archive/data.pkl": (deflated_ints, zlib.crc32(ints), len(ints), 8)}),
        "tensor-record": zip_with(records, {"archive/data/0": (zeros, crc, 2 * GIB, 8)}),
    }
    for name, content in cases.items():
        assert len(content) < 4 * MIB, (name, len(content))
        (folder / f"{name}.pt").write_bytes(content)
    return {name: folder / f"{name}.pt" for name in cases}


ZIP_BOMBS = ["byteorder", "rnninit-json", "byteorder-lying", "rnninit-json-lying", "data-pkl-ints", "tensor-record"]


def test_zip_bombs_are_refused_without_decompressing(zip_bombs: dict[str, Path], tmp_path: Path) -> None:
    """2 GiB of zeros deflated into a record torch.save stores small or uncompressed (byteorder,
    rnninit.json, a tensor record), a record whose declared size lies, and a deflated data.pkl of
    52 million ints: refused from the file (indexed path) and from standard input (whole load), with
    a small peak RSS. Before: 3.3 GB peaks, and the rnninit.json case exited 0."""
    runs: list[tuple[list[Any], Path | None]] = []
    for case in ZIP_BOMBS:
        runs += [(["inspect", zip_bombs[case]], None),
                 (["apply", "-", "--scheme", "keras", "-o", tmp_path / "o.pt"], zip_bombs[case])]
    results, peak = bounded_batch(runs, tmp_path)
    for result in results:
        assert_one_error_line(result)
    assert peak < 900 * 1024, f"peak RSS {peak} KiB"
    assert not (tmp_path / "o.pt").exists()


# ---------------------------------------------------------------------------------------------
# item 9: standard input
# ---------------------------------------------------------------------------------------------


def test_endless_standard_input_is_refused_at_once() -> None:
    """`rnninit inspect - < /dev/zero` read 3.1 GB, then died with MemoryError; now its first bytes
    tell it is no checkpoint."""
    report = bounded_run(["inspect", "-"], stdin=Path("/dev/zero"), timeout=60)
    assert_clean_refusal(report, "not a checkpoint", max_rss_mib=600)


def test_standard_input_is_read_no_further_than_a_checkpoint_reaches() -> None:
    """A .safetensors is read exactly (a short read or trailing bytes are refused); a stream that starts
    like a zip or a pickle is read up to RNNINIT_STDIN_LIMIT; other prefixes are refused at once."""
    valid = io.BytesIO()
    valid.write(_safetensors(LSTM_STATE))
    content = valid.getvalue()
    assert read_stdin(io.BytesIO(content)) == content
    for damaged, fragment in ((content + b"\0", "trailing bytes"), (content[:-1], "truncated"),
                              (content[:20], "truncated"), (b"\x00" * 64, "not a checkpoint"),
                              (b"y\n" * 64, "not a checkpoint"), (b"", "empty"),
                              (struct.pack("<Q", 10**9) + b"{" + bytes(64), "more than")):
        with pytest.raises(CheckpointError, match=fragment):
            read_stdin(io.BytesIO(damaged))
    os.environ["RNNINIT_STDIN_LIMIT"] = "1M"
    try:
        with pytest.raises(CheckpointError, match="RNNINIT_STDIN_LIMIT"):
            read_stdin(_Endless(b"PK\x03\x04"))
        with pytest.raises(CheckpointError, match="RNNINIT_STDIN_LIMIT"):
            read_stdin(_Endless(b"\x80\x02"))
        torch_file = pt_bytes(LSTM_STATE)
        assert read_stdin(io.BytesIO(torch_file)) == torch_file
    finally:
        del os.environ["RNNINIT_STDIN_LIMIT"]


class _Endless(io.RawIOBase):
    """A prefix, then zeros for ever."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix

    def read(self, size: int = -1) -> bytes:
        head, self.prefix = self.prefix[:size], self.prefix[size:]
        return head + bytes(max(0, size - len(head)))


def _safetensors(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(state)


# ---------------------------------------------------------------------------------------------
# items 7, 10, 14: the object graph of a pickle
# ---------------------------------------------------------------------------------------------


def memo_bomb(levels: int = 64) -> dict[str, Any]:
    """A checkpoint whose pickle references each list twice: 2**levels paths to one LSTM, a few kB."""
    node: Any = dict(LSTM_STATE)
    for _ in range(levels):
        node = [node, node]
    return {"model": node}


def deep_pickle(depth: int) -> bytes:
    """The pickle of a list nested `depth` deep, written opcode by opcode (pickle.dumps would recurse)."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def legacy_torch_file(main_pickle: bytes) -> bytes:
    """A legacy (non-zip) torch.save file whose object is `main_pickle` and that has no storages."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps(sys_info, protocol=2) + main_pickle + pickle.dumps([], protocol=2))


@pytest.fixture(scope="module")
def graph_bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("graph-bombs")
    deep = deep_pickle(200_000)
    records = torch_records(LSTM_STATE)
    cases = {
        "memo-zip": pt_bytes(memo_bomb()),
        "memo-legacy": pt_bytes(memo_bomb(), legacy=True),
        "deep-legacy": legacy_torch_file(deep),
        "deep-zip": zip_with([(n, deep if n.endswith("data.pkl") else p) for n, p in records], {}),
    }
    for name, content in cases.items():
        assert len(content) < MIB, (name, len(content))
        (folder / f"{name}.pt").write_bytes(content)
    return {name: folder / f"{name}.pt" for name in cases}


def test_graph_bombs_end_at_once(graph_bombs: dict[str, Path], tmp_path: Path) -> None:
    """A few kB whose memo makes 2**64 paths: inspect hung (with tensors at the leaves: 3.4 GB, then
    std::bad_alloc). Each container is walked once now: the LSTM is found once, at once. A pickle nested
    200,000 deep gave `internal error: RecursionError` (legacy file, standard input): now an error line."""
    runs: list[tuple[list[Any], Path | None]] = []
    for case in ("memo-zip", "memo-legacy", "deep-legacy", "deep-zip"):
        runs += [(["inspect", graph_bombs[case], "--json"], None), (["inspect", "-", "--json"], graph_bombs[case])]
    results, peak = bounded_batch(runs, tmp_path, timeout=90)
    for result in results[:4]:
        assert result["exit_code"] == 0, result["stderr"]
        layers = json.loads(result["stdout"])["layers"]
        assert [layer["prefix"] for layer in layers] == ["model/" + "0/" * 64 + "lstm."], result["stdout"][:300]
    for result in results[4:]:
        assert_one_error_line(result, "nested deeper than")
    assert peak < 900 * 1024, f"peak RSS {peak} KiB"


def test_too_many_entries_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "many.pt"
    torch.save({**LSTM_STATE, "steps": list(range(2000))}, path)
    monkeypatch.setenv("RNNINIT_MAX_ENTRIES", "1000")
    for reader in (lambda: load_checkpoint(path), lambda: index_file(path).close()):
        with pytest.raises(CheckpointError, match=r"more than 1000 entries.*RNNINIT_MAX_ENTRIES"):
            reader()
    monkeypatch.setenv("RNNINIT_MAX_ENTRIES", "3000")
    assert set(load_checkpoint(path).tensors) == set(LSTM_STATE)


def test_key_collisions_are_refused_naming_both(tmp_path: Path) -> None:
    """A top-level key "model/x" beside {"model": {"x": ...}}: both were named model/x and one was
    dropped (inspect counted 4 of 5, a conversion wrote 4)."""
    state = {"model/lstm.weight_ih_l0": torch.ones(16, 2),
             "model": {"lstm.weight_ih_l0": torch.zeros(16, 2), "lstm.weight_hh_l0": torch.zeros(16, 4)}}
    path = tmp_path / "collide.pt"
    torch.save(state, path)
    for reader in (lambda: load_checkpoint(path), lambda: index_file(path).close(),
                   lambda: load_checkpoint("-", data=path.read_bytes())):
        with pytest.raises(CheckpointError, match=r"both named 'model/lstm\.weight_ih_l0'") as caught:
            reader()
        message = str(caught.value)
        assert "top-level key 'model/lstm.weight_ih_l0'" in message and "'lstm.weight_ih_l0' of 'model'" in message


def test_tied_and_shared_entries_keep_working(tmp_path: Path) -> None:
    """What the walk by identity must keep: a tensor under two names (tied weights) gets both names; a
    list shared by two keys is walked once; nesting up to the bound is fine."""
    tied = torch.zeros(16, 2)
    shared = [1, 2, 3]
    nested: Any = dict(LSTM_STATE)
    for _ in range(100):
        nested = {"n": nested}
    state = {"lstm.weight_ih_l0": tied, "alias": tied, "lstm.weight_hh_l0": torch.zeros(16, 4),
             "a": shared, "b": shared, "deep": nested}
    path = tmp_path / "tied.pt"
    torch.save(state, path)
    for checkpoint in (load_checkpoint(path), index_file(path)):
        names = set(checkpoint.shapes())
        assert {"lstm.weight_ih_l0", "alias", "lstm.weight_hh_l0"} <= names
        assert "/".join(["deep", *["n"] * 100, "lstm.weight_ih_l0"]) in names


# ---------------------------------------------------------------------------------------------
# item 6: shard paths of a model folder
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shard", ["../outside.safetensors", "ABSOLUTE", "sub/../../outside.safetensors",
                                   "link.safetensors", "linked-folder/outside.safetensors"])
def test_shard_paths_outside_the_folder_are_refused(shard: str, tmp_path: Path) -> None:
    """An index whose weight_map names a shard outside the folder (`..`, an absolute path, a symbolic
    link that leads out): inspect read it, apply claimed to write it."""
    from typer.testing import CliRunner

    from rnninit_cli.cli import app

    outside = tmp_path / "outside.safetensors"
    save_file(LSTM_STATE, outside)
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "link.safetensors").symlink_to(outside)
    (model / "linked-folder").symlink_to(tmp_path)
    name = str(outside) if shard == "ABSOLUTE" else shard
    (model / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"lstm.weight_ih_l0": name, "lstm.weight_hh_l0": name}}))
    runner = CliRunner()
    for args in (["inspect", str(model)], ["apply", str(model), "--scheme", "keras", "-o", str(tmp_path / "out")]):
        result = runner.invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 3, result.stderr
        assert result.stderr.startswith("error: ") and repr(name) in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_single_file_folder_whose_file_links_outside_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.safetensors"
    save_file(LSTM_STATE, outside)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").symlink_to(outside)
    from rnninit_cli.formats.folders import open_folder

    with pytest.raises(CheckpointError, match="leads outside the folder"):
        open_folder(model)
    (model / "model.safetensors").unlink()
    save_file(LSTM_STATE, model / "real.safetensors")
    (model / "model.safetensors").symlink_to("real.safetensors")  # a link inside the folder is fine
    assert set(open_folder(model).shapes()) == set(LSTM_STATE)


def test_a_container_shared_by_two_paths_is_not_lost_in_conversion(tmp_path: Path) -> None:
    """The walk names a shared container's tensors by its first path only; writing such a .pt as
    safetensors would drop the second path's names, so that is refused, while .pt keeps the sharing."""
    from typer.testing import CliRunner

    from rnninit_cli.cli import app

    state = torch.nn.LSTM(4, 8).state_dict()
    source = tmp_path / "shared.pt"
    torch.save({"a": state, "b": state}, source)
    runner = CliRunner()
    refused = runner.invoke(app, ["apply", str(source), "--scheme", "keras", "--seed", "0", "-o",
                                  str(tmp_path / "out.safetensors"), "--tensors-only"])
    assert refused.exit_code == 4, refused.output
    assert "same object as a" in refused.output
    assert not (tmp_path / "out.safetensors").exists()
    kept = runner.invoke(app, ["apply", str(source), "--scheme", "keras", "--seed", "0", "-o", str(tmp_path / "o.pt")])
    assert kept.exit_code == 0, kept.output
    loaded = torch.load(tmp_path / "o.pt", weights_only=True)
    for name, value in loaded["a"].items():
        assert torch.equal(value, loaded["b"][name])
    assert not torch.equal(loaded["a"]["weight_hh_l0"], state["weight_hh_l0"])


def test_links_in_a_model_folder_are_copied_as_links_not_followed(tmp_path: Path) -> None:
    """A file of the folder that links outside it is not read: the output holds the same link."""
    from typer.testing import CliRunner

    from rnninit_cli.cli import app

    secret = tmp_path / "secret.txt"
    secret.write_text("outside the model folder")
    model = tmp_path / "model"
    model.mkdir()
    save_file(dict(torch.nn.GRU(4, 8).state_dict()), model / "model.safetensors")
    (model / "tokenizer.json").symlink_to(secret)
    result = CliRunner().invoke(app, ["apply", str(model), "--scheme", "keras", "--seed", "0",
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    copied = tmp_path / "out" / "tokenizer.json"
    assert copied.is_symlink()
    assert os.readlink(copied) == str(secret)


def test_broadcast_views_are_refused_before_they_are_allocated(tmp_path: Path) -> None:
    """A stride-0 view saved by torch.save claims 1.6e9 elements (6.4 GB) over a few stored floats."""
    hidden = 20000
    state = {"weight_ih_l0": torch.zeros(1).expand(4 * hidden, hidden),
             "weight_hh_l0": torch.zeros(4 * hidden, 1).expand(4 * hidden, hidden),
             "bias_ih_l0": torch.zeros(4 * hidden), "bias_hh_l0": torch.zeros(4 * hidden)}
    source = tmp_path / "broadcast.pt"
    torch.save(state, source)
    runs: list[tuple[list[Any], Path | None]] = []
    for stdin in (None, source):
        given = "-" if stdin else source
        runs += [(["inspect", given], stdin), (["verify", given, "--scheme", "keras"], stdin),
                 (["apply", given, "--scheme", "keras", "-o", tmp_path / "out.pt"], stdin)]
    results, peak_kib = bounded_batch(runs, tmp_path)
    for result in results:
        assert result["exit_code"] == 3, result
        assert result["stderr"].startswith("error: ") and "broadcast view" in result["stderr"], result
    assert peak_kib < 900 * 1024
    assert not (tmp_path / "out.pt").exists()


class _StorageRef:
    def __init__(self, ref: tuple[Any, ...]) -> None:
        self.ref = ref


class _Rebuilt:
    def __init__(self, args: tuple[Any, ...]) -> None:
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (torch._utils._rebuild_tensor_v2, self.args)


class _RefPickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        return obj.ref if isinstance(obj, _StorageRef) else None


def _view(key: str, offset: int, size: tuple[int, ...], stride: tuple[int, ...], numel: int = 256) -> _Rebuilt:
    from collections import OrderedDict

    storage = _StorageRef(("storage", torch.FloatStorage, key, "cpu", numel))
    return _Rebuilt((storage, offset, size, stride, False, OrderedDict()))


@pytest.mark.parametrize(("offset", "stride"), [(250, (4, 1)), (64, (-4, 1)), (0, (4, 1000))])
def test_views_outside_their_storage_are_refused(offset: int, stride: tuple[int, int], tmp_path: Path) -> None:
    """A data.pkl (written here opcode by opcode through pickle) whose weight_ih_l0 reads past its 256-element
    storage or has a negative stride: torch.load refuses it; rnninit must too, not patch the bytes of the next
    record and report success."""
    from typer.testing import CliRunner

    from rnninit_cli.cli import app

    state = {"weight_ih_l0": _view("0", offset, (16, 4), stride), "weight_hh_l0": _view("1", 0, (16, 4), (4, 1)),
             "bias_ih_l0": _view("2", 0, (16,), (1,)), "bias_hh_l0": _view("3", 0, (16,), (1,))}
    data_pkl = io.BytesIO()
    _RefPickler(data_pkl, protocol=2).dump(state)
    template = io.BytesIO()
    torch.save({f"s{k}": torch.arange(256.0) + k for k in range(4)}, template)
    source = tmp_path / "view.pt"
    with zipfile.ZipFile(template) as original, zipfile.ZipFile(source, "w") as hostile:
        for name in original.namelist():
            hostile.writestr(name, data_pkl.getvalue() if name.endswith("data.pkl") else original.read(name))
    with pytest.raises(Exception):  # noqa: B017 (the control: torch itself refuses this file)
        torch.load(source, weights_only=True)
    runner = CliRunner()
    for args in (["inspect", str(source)], ["apply", str(source), "--scheme", "keras", "--seed", "0",
                                              "-o", str(tmp_path / "out.pt")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 3, (args, result.output)
        assert result.output.startswith("error: ") and "internal error" not in result.output, result.output
    assert not (tmp_path / "out.pt").exists()


def test_recurrent_parameters_that_partly_overlap_are_refused(tmp_path: Path) -> None:
    """weight_ih and weight_hh as views 8 elements apart in one storage: drawing both would mix their bytes.
    A tied pair (the same span) is still rewritten once, with a warning."""
    from typer.testing import CliRunner

    from rnninit_cli.cli import app

    storage = torch.randn(16 * 4 + 8)
    source = tmp_path / "overlap.pt"
    torch.save({"weight_ih_l0": storage[:64].view(16, 4), "weight_hh_l0": storage[8:72].view(16, 4),
                "bias_ih_l0": torch.zeros(16), "bias_hh_l0": torch.zeros(16)}, source)
    runner = CliRunner()
    for argument, stdin in ((str(source), None), ("-", source.read_bytes())):
        result = runner.invoke(app, ["apply", argument, "--scheme", "keras", "--seed", "0",
                                     "-o", str(tmp_path / "o.pt")], input=stdin)
        assert result.exit_code == 3, result.output
        assert "overlap in memory" in result.output and "internal error" not in result.output
    assert not (tmp_path / "o.pt").exists()
    only = runner.invoke(app, ["apply", str(source), "--scheme", "keras", "--seed", "0", "--only", "weight_ih|bias",
                               "-o", str(tmp_path / "o.pt")])
    assert only.exit_code == 0, only.output


@pytest.mark.parametrize("case", ["deep-metadata", "empty-weight-map", "fifo-shard"])
def test_odd_model_folder_indexes_are_one_error_line(case: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rnninit_cli.cli import app

    model = tmp_path / "model"
    model.mkdir()
    index = model / "model.safetensors.index.json"
    if case == "deep-metadata":
        index.write_text('{"metadata": ' + "[" * 100_000 + "]" * 100_000 + ', "weight_map": {"w": "a.safetensors"}}')
        expected = "not a valid index"
    elif case == "empty-weight-map":
        index.write_text('{"weight_map": {}}')
        expected = "weight_map is empty"
    else:
        os.mkfifo(model / "a.safetensors")
        index.write_text('{"weight_map": {"weight_ih_l0": "a.safetensors"}}')
        expected = "not a regular file"
    for args in (["inspect", str(model)], ["apply", str(model), "--scheme", "keras", "-o", str(tmp_path / "out")]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 3, result.output
        assert result.output.startswith("error: ") and expected in result.output, result.output
