"""Hardening: what rnninit does with hostile, damaged, special or vanishing files and with writes that
fail or are interrupted. Every test here shows one clause of the contract:

1. hostile pickles are refused by every command that reads a checkpoint (apply, inspect, verify, diff;
   from a file or standard input), and their code never runs;
2. damaged files (property-based fuzzing plus targeted cases) either work (exit 0, an output that
   torch / safetensors themselves load) or fail with one `error: ...` line: exit 1 (2 for verify and
   diff, whose 1 is an answer); no traceback, no hang, no output or temporary file left behind, no
   allocation sized by the file's claims instead of its bytes;
3. SIGKILL / SIGINT / SIGTERM while writing never leave a partial file at OUTPUT's name;
4. a full disk (RLIMIT_FSIZE) or an unwritable folder gives a clean error and leaves OUTPUT as it was;
5. two runs writing the same OUTPUT leave one of the two complete results, never a mix;
6. the same seed gives the same bytes in every process, whatever PYTHONHASHSEED;
7. inputs are only read: nothing is ever written next to them.

Read-only folders: as root, permissions do not stop writes, so those tests mount the folder read-only
in a private mount namespace (`unshare -m`); without unshare they are skipped. As another user, chmod.

Fast by default (about two minutes, mostly subprocesses that import torch). The fuzz test draws a fixed
(derandomized) sequence of damaged files per base file: 40 in the suite, 100 (the suite's count before
issue 20) or RNNINIT_FUZZ_EXAMPLES in its `slow` copy. The long version, with fresh random examples:

    RNNINIT_FUZZ_EXAMPLES=5000 RNNINIT_FUZZ_RANDOM=1 .venv/bin/python -m pytest tests/test_hardening.py -k fuzz -m slow

Subprocess helpers (peak RSS, hostile-file generation, instrumented runs) are in tests/hardening_helpers.py.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from builders import flat_tensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as safetensors_load
from safetensors.torch import save, save_file
from typer.testing import CliRunner, Result

from rnninit_cli.cli import app

HERE = Path(__file__).resolve().parent
HELPER = str(HERE / "hardening_helpers.py")
PYTHON = sys.executable
MODULE = [PYTHON, "-m", "rnninit_cli"]
SCRIPT = str(Path(PYTHON).parent / "rnninit")
SCHEME = ("--scheme", "keras")
RUNNER = CliRunner()
MIB = 1 << 20

FUZZ_EXAMPLES = int(os.environ.get("RNNINIT_FUZZ_EXAMPLES", "100"))  # the slow copy's


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=not os.environ.get("RNNINIT_FUZZ_RANDOM"),
                    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------------------------
# shared helpers


def cli(*args: object, stdin: bytes | None = None) -> Result:
    """Run the Typer app in this process; an exception that escapes it fails the test."""
    return RUNNER.invoke(app, [str(a) for a in args], input=stdin, catch_exceptions=False)


def run(command: list[str], *, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command, capture_output=True, timeout=timeout, check=False, **kwargs)


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders of rnninit's atomic writes in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".rnninit-tmp", ".rnninit-old")))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


REFUSED = 3  # the exit status of an input that cannot be used (README, Exit status)
ERRORS = (2, 3, 4)  # usage (nothing left to do), input, output: a damaged file may end in any of them


def assert_one_line_error(code: int, stderr: str, expected_code: int | tuple[int, ...] = REFUSED) -> str:
    """The exit status is `expected_code` (or one of them) and standard error is one `error: ...` line; return it."""
    assert "Traceback" not in stderr, stderr
    assert "internal error" not in stderr, stderr
    assert code in ((expected_code,) if isinstance(expected_code, int) else expected_code), \
        f"exit status {code}, stderr: {stderr!r}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def assert_failed_cleanly(result: Result, folder: Path, output: Path | None = None, code: int = REFUSED) -> str:
    line = assert_one_line_error(result.exit_code, result.stderr, code)
    assert not result.stdout, result.stdout
    if output is not None:
        assert not output.exists(), f"{output} was left behind by a failed run"
    assert not leftovers(folder)
    return line


def read_back(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a written file, read by torch / safetensors themselves (never rnninit)."""
    if data.startswith(b"PK\x03\x04"):
        root = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            records = [n for n in archive.namelist() if n.endswith("/rnninit.json")]
            metadata = json.loads(archive.read(records[0])) if records else {}
        return dict(flat_tensors(root)), metadata
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_size])
    return safetensors_load(data), header.get("__metadata__", {})


def assert_same_tensors(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    for name, tensor in left.items():
        other = right[name]
        assert tensor.dtype == other.dtype and tensor.shape == other.shape, name
        assert torch.equal(tensor.contiguous().view(torch.uint8), other.contiguous().view(torch.uint8)), name


def modules_state(**modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{key}": value.detach().clone()
            for prefix, module in modules.items() for key, value in module.state_dict().items()}


def small_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Embedding, 2-layer LSTM, bidirectional GRU, linear head: a few hundred floats."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return modules_state(emb=torch.nn.Embedding(6, 3), lstm=torch.nn.LSTM(3, 4, num_layers=2),
                             gru=torch.nn.GRU(4, 2, bidirectional=True), head=torch.nn.Linear(4, 2))


def big_state(rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A `rows` x 128 float32 embedding (rows * 512 bytes) in front of a small LSTM."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = modules_state(lstm=torch.nn.LSTM(128, 64))
    return {"emb.weight": torch.randn(rows, 128, generator=generator), **state}


def pt_bytes(state: Any, *, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def write_inputs(folder: Path, state: dict[str, torch.Tensor], stem: str = "model") -> dict[str, Path]:
    """`state` as a torch.save zip file, a legacy torch.save file and a .safetensors file."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"pt": folder / f"{stem}.pt", "legacy": folder / f"{stem}-legacy.pt",
             "safetensors": folder / f"{stem}.safetensors"}
    torch.save(state, paths["pt"])
    torch.save(state, paths["legacy"], _use_new_zipfile_serialization=False)
    save_file(state, str(paths["safetensors"]), metadata={"author": "me"})
    return paths


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.002)


class Hang(BaseException):
    """Raised by the alarm of `no_hang`; a BaseException, so that rnninit's handlers let it through."""


@contextmanager
def no_hang(seconds: float) -> Iterator[None]:
    """Fail (instead of blocking the test run) when the body is still running after `seconds`."""
    def alarm(_signum: int, _frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def many(entries: list[dict[str, Any]], folder: Path, *, env: dict[str, str] | None = None,
         preexec_fn: Callable[[], None] | None = None, prefix: list[str] | None = None,
         timeout: float = 120) -> list[dict[str, Any]]:
    """Run several rnninit commands in one fresh Python process (hardening_helpers.py many)."""
    spec = folder / f"spec-{time.monotonic_ns()}.json"
    spec.write_text(json.dumps(entries))
    result = run([*(prefix or []), PYTHON, HELPER, "many", str(spec)], env=env, preexec_fn=preexec_fn,
                 timeout=timeout, cwd=folder)
    spec.unlink()
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def read_only_runner() -> list[str] | None:
    """A command prefix that runs a shell in which "$RO" is mounted read-only (root only), or None."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        return None
    probe = run(["unshare", "-m", "sh", "-c", 'mount --bind -o ro /tmp /tmp && ! touch /tmp/.rnninit-ro-probe'],
                timeout=30)
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "sh", "-c",
            'mount --bind -o ro "$RO" "$RO" || exit 97; touch "$RO/.probe" 2>/dev/null && exit 98; exec "$@"', "sh"]


# ---------------------------------------------------------------------------------------------
# 1. hostile pickles

PAYLOADS = ("system", "exec", "popen", "module", "antigravity")
LAYOUTS = ("zip", "legacy", "raw")
HOSTILE_MODULE = '''\
import os
import pathlib

if os.environ.get("HARDENING_GENERATING") != "1":
    pathlib.Path({marker!r}).touch()  # importing this module is itself the attack


def run(path):
    pathlib.Path(path).touch()
'''


@dataclass
class Hostile:
    files: Path
    markers: Path
    modules: Path
    module: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    """Hostile .pt files, generated in another process. Each payload would create a marker file:
    os.system / exec / Popen directly, the module by being imported and by its function being called,
    antigravity through the web browser it opens ($BROWSER, a script here that creates a marker).

    The module is also importable in the processes that read the files, so that an unsafe loader
    would really run it; `import antigravity` is checked in sys.modules as well."""
    root = tmp_path_factory.mktemp("hostile")
    files, markers, modules = root / "files", root / "markers", root / "modules"
    for folder in (files, markers, modules):
        folder.mkdir()
    name = f"rnninit_hostile_{os.getpid()}"
    (modules / f"{name}.py").write_text(HOSTILE_MODULE.format(marker=str(markers / "module-import")))
    browser = root / "browser.sh"
    browser.write_text(f"#!/bin/sh\ntouch '{markers / 'antigravity'}'\n")
    browser.chmod(0o755)
    made = run([PYTHON, HELPER, "hostile", str(files), str(markers), str(modules), name])
    assert made.returncode == 0, made.stderr.decode()
    assert len(list(files.iterdir())) == len(PAYLOADS) * len(LAYOUTS)
    assert not list(markers.iterdir()), "generating the files ran their payload"
    env = {**os.environ, "PYTHONPATH": str(modules), "BROWSER": str(browser)}
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(modules))
        patch.setenv("BROWSER", str(browser))
        yield Hostile(files, markers, modules, name, env)
    sys.modules.pop(name, None)


Run = tuple[list[object], bytes | None, Path | None, int]  # arguments, standard input, output, exit status


def reading_runs(bad: Path, out: Path, *, suffix: str = ".pt") -> list[Run]:
    """Every command that reads a checkpoint, on `bad` (a file or standard input), with the exit status a
    refusal must have: 3 (an input that cannot be used), whatever the command."""
    data = bad.read_bytes()
    in_place = out / f"in-place{suffix}"
    shutil.copyfile(bad, in_place)
    good = out / "good.pt"
    torch.save(small_state(), good)
    other = ".safetensors" if suffix == ".pt" else ".pt"
    seed = ("--seed", "1")
    return [
        (["apply", bad, *SCHEME, *seed, "-o", out / f"out{suffix}"], None, out / f"out{suffix}", REFUSED),
        (["apply", bad, *SCHEME, *seed, "--tensors-only", "-o", out / f"out{other}"], None, out / f"out{other}",
         REFUSED),
        (["apply", bad, *SCHEME, "--dry-run"], None, None, REFUSED),
        (["apply", in_place, *SCHEME, *seed, "--in-place"], None, None, REFUSED),
        (["apply", "-", *SCHEME, *seed, "-o", out / "stdin.pt"], data, out / "stdin.pt", REFUSED),
        (["apply", "-", *SCHEME, *seed, "-o", "-"], data, None, REFUSED),
        (["inspect", bad], None, None, REFUSED),
        (["inspect", bad, "--json"], None, None, REFUSED),
        (["inspect", "-", "--json"], data, None, REFUSED),
        (["verify", bad, *SCHEME], None, None, REFUSED),
        (["verify", "-", *SCHEME, "--json"], data, None, REFUSED),
        (["diff", bad, good], None, None, REFUSED),
        (["diff", good, "-"], data, None, REFUSED),
    ]


def assert_refused(result: Result, folder: Path, output: Path | None, code: int | tuple[int, ...]) -> str:
    line = assert_one_line_error(result.exit_code, result.stderr, expected_code=code)
    if result.stdout:  # inspect and verify --json: the error's document, alone on its line (JSON Lines)
        document = json.loads(result.stdout)
        assert set(document) == {"input", "error", "exit_status"}, result.stdout
        assert document["exit_status"] == result.exit_code and result.stdout.count("\n") == 1, result.stdout
    if output is not None:
        assert not output.exists(), f"{output} was left behind by a failed run"
    assert not leftovers(folder)
    return line


def assert_refusal(line: str) -> None:
    assert "needs code to load" in line and "will not run it" in line, line


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_hostile_pickle_is_refused_by_every_command(hostile: Hostile, payload: str, layout: str,
                                                    tmp_path: Path) -> None:
    evil = hostile.files / f"{payload}-{layout}.pt"
    before = evil.read_bytes()
    for marker in hostile.markers.iterdir():  # left by an earlier failure: this test reports its own
        marker.unlink()
    sys.modules.pop(hostile.module, None)
    antigravity_before = "antigravity" in sys.modules
    inert = payload == "module" and layout != "raw"  # not a known-dangerous name: read as an inert record
    for args, stdin, output, code in reading_runs(evil, tmp_path):
        result = cli(*args, stdin=stdin)
        if inert and "error:" not in result.stderr:  # it ran (verify and diff report their findings)
            continue
        line = assert_refused(result, tmp_path, output, 4 if inert else code)  # inert: cannot be written elsewhere
        if inert:  # written whole (standard input, another format, a legacy file): the record is named
            assert f"{hostile.module}.run" in line, line
        else:
            assert_refusal(line)
    assert not list(hostile.markers.iterdir()), "the payload ran"
    assert hostile.module not in sys.modules
    if not antigravity_before:
        assert "antigravity" not in sys.modules
    assert evil.read_bytes() == before
    assert inert or (tmp_path / "in-place.pt").read_bytes() == before


def test_hostile_pickle_is_refused_by_the_real_programs(hostile: Hostile, tmp_path: Path) -> None:
    """The console script and `python -m rnninit_cli`, in processes where the module is importable."""
    for marker in hostile.markers.iterdir():
        marker.unlink()
    zipped = hostile.files / "popen-zip.pt"
    legacy = hostile.files / "popen-legacy.pt"
    out = tmp_path / "out.pt"
    file_run = run([SCRIPT, "apply", str(zipped), *SCHEME, "-o", str(out)], env=hostile.env, cwd=tmp_path)
    assert_refusal(assert_one_line_error(file_run.returncode, file_run.stderr.decode()))
    # a function of a module that is not on the dangerous list is read as an inert record, never called
    inert = run([SCRIPT, "apply", str(hostile.files / "module-zip.pt"), *SCHEME, "-o", str(tmp_path / "inert.pt")],
                env=hostile.env, cwd=tmp_path)
    assert inert.returncode == 0, inert.stderr.decode()
    (tmp_path / "inert.pt").unlink()
    stdin_run = run([*MODULE, "inspect", "-"], input=legacy.read_bytes(), env=hostile.env, cwd=tmp_path)
    assert_refusal(assert_one_line_error(stdin_run.returncode, stdin_run.stderr.decode()))
    assert not out.exists() and not leftovers(tmp_path)
    time.sleep(0.5)  # a Popen payload would create its marker asynchronously
    assert not list(hostile.markers.iterdir()), "the payload ran"


# ---------------------------------------------------------------------------------------------
# 2. damaged files: fuzzing


@functools.cache
def fuzz_bases() -> dict[str, bytes]:
    """The undamaged files the fuzz starts from (a function, not a fixture: hypothesis would print it)."""
    state = small_state()
    nested = {"state_dict": state, "epoch": 3, "history": [0.5, 0.25]}
    bases = {"pt": pt_bytes(state), "training-pt": pt_bytes(nested), "legacy": pt_bytes(state, legacy=True),
             "safetensors": save(state, metadata={"author": "me"})}
    with tempfile.TemporaryDirectory() as scratch:  # outputs of rnninit itself: they hold its metadata record
        for name, suffix in (("training-pt", ".pt"), ("safetensors", ".safetensors")):
            source, output = Path(scratch, f"in{suffix}"), Path(scratch, f"out{suffix}")
            source.write_bytes(bases[name])
            result = cli("apply", source, *SCHEME, "--seed", "3", "-o", output)
            assert result.exit_code == 0, result.stderr
            bases[f"rnninit-{name}"] = output.read_bytes()
    return bases


Change = tuple[str, int, Any]  # ("flip", position, bit) | ("write", position, bytes) | ("cut", position, None)


@st.composite
def changes(draw: st.DrawFn, size: int) -> list[Change]:
    """Damage for a file of `size` bytes: bits flipped, ranges overwritten and/or the file cut short,
    mostly near its two ends (headers, pickles, zip directories) and anywhere else. Drawn as a short
    list, so that a failing example prints readably."""
    position = st.one_of(st.integers(0, min(size, 512) - 1), st.integers(max(0, size - 512), size - 1),
                         st.integers(0, size - 1))
    operation = st.one_of(st.tuples(st.just("flip"), position, st.integers(0, 7)),
                          st.tuples(st.just("write"), position, st.binary(min_size=1, max_size=24)))
    found = draw(st.lists(operation, max_size=4))
    cut = draw(st.one_of(st.none(), position))
    if cut is not None:
        found.append(("cut", cut, None))
    return found or [("flip", draw(position), 4)]


def apply_changes(original: bytes, found: list[Change]) -> bytes:
    data = bytearray(original)
    for kind, where, what in found:
        if kind == "flip":
            data[where] ^= 1 << what
        elif kind == "write":
            data[where:where + len(what)] = what
        else:
            del data[where:]
    if bytes(data) == original:  # e.g. a write of the bytes already there
        data[-1] ^= 0x01
    return bytes(data)


def check_outcome(result: Result, folder: Path, output: Path | None, answers: int) -> None:
    """apply / inspect (answers = 1: only 0): exit 0 with a valid output (or JSON); verify / diff (answers = 2):
    0 or 1 is their answer; any of them: an error status (2, 3, 4) with one error line and nothing left behind."""
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    if result.exit_code >= 2:
        assert_refused(result, folder, output, ERRORS)
        return
    if answers == 2:
        assert result.exit_code in (0, 1), (result.exit_code, result.stderr)
    elif output is None:
        assert result.exit_code == 0, (result.exit_code, result.stderr)
        json.loads(result.stdout)
    else:
        assert result.exit_code == 0, (result.exit_code, result.stderr)
        tensors, metadata = read_back(output.read_bytes())
        assert tensors and metadata.get("rnninit.seed") == "7", metadata
    assert not leftovers(folder)


def run_on_damaged(folder: Path, data: bytes, suffix: str, original: bytes) -> None:
    source = folder / f"input{suffix}"
    source.write_bytes(data)
    undamaged = folder / f"original{suffix}"
    undamaged.write_bytes(original)
    other = ".safetensors" if suffix == ".pt" else ".pt"
    seed = ("--seed", "7")
    runs: list[Run] = [
        (["inspect", source, "--json"], None, None, 1),
        (["apply", source, *SCHEME, *seed, "-o", folder / f"same{suffix}"], None, folder / f"same{suffix}", 1),
        (["apply", source, *SCHEME, *seed, *(["--tensors-only"] if other == ".safetensors" else []),
          "-o", folder / f"other{other}"], None, folder / f"other{other}", 1),
        (["apply", "-", *SCHEME, *seed, "-o", folder / "stdin.pt"], data, folder / "stdin.pt", 1),
        (["verify", source, *SCHEME, "--json"], None, None, 2),
        (["diff", undamaged, "-", "--json"], data, None, 2),
    ]
    for args, stdin, output, answers in runs:
        with no_hang(60):
            result = cli(*args, stdin=stdin)
        check_outcome(result, folder, output, answers)
    assert source.read_bytes() == data, "the input was changed"


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


FUZZ_BASES = ["pt", "training-pt", "legacy", "safetensors", "rnninit-training-pt", "rnninit-safetensors"]


@pytest.mark.parametrize("base", FUZZ_BASES)
@fuzz_settings(40)
@given(data=st.data())
def test_fuzz_damaged_checkpoints(base: str, data: st.DataObject) -> None:
    fuzz_one(base, data)


@pytest.mark.slow
@pytest.mark.parametrize("base", FUZZ_BASES)
@fuzz_settings(FUZZ_EXAMPLES)
@given(data=st.data())
def test_fuzz_damaged_checkpoints_long(base: str, data: st.DataObject) -> None:
    fuzz_one(base, data)


def fuzz_one(base: str, data: st.DataObject) -> None:
    """One damaged file, made from the base file by the drawn changes, through every read and write path."""
    start = peak_rss_kib()
    original = fuzz_bases()[base]
    broken = apply_changes(original, data.draw(changes(len(original)), label="changes"))
    with tempfile.TemporaryDirectory(prefix="rnninit-fuzz-") as scratch:
        run_on_damaged(Path(scratch), broken, ".safetensors" if base.endswith("safetensors") else ".pt", original)
    # files of a few KiB: reading one must not raise this process's peak memory noticeably
    assert peak_rss_kib() - start < 256 * 1024


def test_fuzz_bases_are_accepted(tmp_path: Path) -> None:
    """The control for the fuzz: every undamaged base file works on every path."""
    for name, data in fuzz_bases().items():
        folder = tmp_path / name
        folder.mkdir()
        suffix = ".safetensors" if name.endswith("safetensors") else ".pt"
        run_on_damaged(folder, data, suffix, data)
        outputs = sorted(p.name for p in folder.iterdir() if p.name not in (f"input{suffix}", f"original{suffix}"))
        assert outputs == sorted([f"same{suffix}", "stdin.pt", "other.pt" if suffix != ".pt" else "other.safetensors"])


# ---------------------------------------------------------------------------------------------
# 2. damaged files: targeted cases


def safetensors_file(header: dict[str, Any] | bytes, data: bytes = b"", *, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def rebuild_zip(data: bytes, *, drop: str | None = None, replace: dict[str, bytes] | None = None) -> bytes:
    """The zip archive `data` written again by zipfile (stored), without `drop`, with `replace`d records."""
    target = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        assert {drop, *(replace or {})} - {None} <= set(source.namelist())
        for info in source.infolist():
            if info.filename != drop:
                payload = (replace or {}).get(info.filename, source.read(info.filename))
                out.writestr(zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0)), payload)
    return target.getvalue()


LSTM_WEIGHTS = {"lstm.weight_ih_l0": (16, 2), "lstm.weight_hh_l0": (16, 4)}  # an LSTM with hidden size 4


def lstm_header(**changes: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """A valid float32 safetensors header for LSTM_WEIGHTS and its data section, with `changes`
    merged into the named entries."""
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in LSTM_WEIGHTS.items():
        size = 4 * shape[0] * shape[1]
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    for name, change in changes.items():
        header[name.replace("__", ".")] |= change
    return header, bytes(offset)


def huge_storage_pt() -> bytes:
    """A torch.save zip whose pickle says its storage holds 2**31 - 1 floats (8 GiB); the record has 70000."""
    backing = torch.zeros(70_000)
    data = pt_bytes({"emb.weight": backing[:10], "lstm.weight_ih_l0": torch.zeros(16, 2),
                     "lstm.weight_hh_l0": torch.zeros(16, 4)})
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        pickled = archive.read("archive/data.pkl")
    claim = b"J" + struct.pack("<i", 70_000)
    assert pickled.count(claim) == 1
    return rebuild_zip(data, replace={"archive/data.pkl": pickled.replace(claim, b"J" + struct.pack("<i", 2**31 - 1))})


def directory_sizes_disagree() -> bytes:
    """A torch.save zip whose central directory gives a record a compressed size unlike its size: Python's
    zipfile reads it, torch.load (miniz) does not; rnninit must not patch and pass on such a file."""
    data = bytearray(valid_lstm_pt())
    entry = data.rindex(b"archive/data/0") - 46  # the last copy of the name is in the central directory
    assert data[entry:entry + 4] == b"PK\x01\x02"
    data[entry + 20] ^= 0x10  # compressed size
    return bytes(data)


def local_header_damaged() -> bytes:
    """A torch.save zip whose local header of .storage_alignment says its name has 0 bytes: the record's
    data then seems to start elsewhere, for torch.load too, which fails on it."""
    data = bytearray(valid_lstm_pt())
    header = data.index(b"archive/.storage_alignment") - 30  # the first copy of the name: its local header
    assert data[header:header + 4] == b"PK\x03\x04"
    data[header + 26:header + 28] = bytes(2)
    return bytes(data)


def small_record_damaged() -> bytes:
    """A torch.save zip whose .storage_alignment record reads "6Z" instead of "64" (its CRC-32 unchanged):
    torch.load fails on int("6Z"); the tensors are intact."""
    data = bytearray(valid_lstm_pt())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo("archive/.storage_alignment")
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    assert data[start:start + 2] == b"64"
    data[start + 1:start + 2] = b"Z"
    return bytes(data)


def valid_lstm_pt() -> bytes:
    return pt_bytes({name: torch.zeros(shape) for name, shape in LSTM_WEIGHTS.items()})


def damaged_cases() -> dict[str, bytes]:
    header, data = lstm_header()
    encoded = json.dumps(header).encode()
    return {
        "st-offsets-past-the-end": safetensors_file(lstm_header(lstm__weight_hh_l0={"data_offsets": [128, 4096]})[0],
                                                    data),
        "st-offsets-wrong-size": safetensors_file(lstm_header(lstm__weight_hh_l0={"data_offsets": [128, 320]})[0],
                                                  data + bytes(64)),
        "st-offsets-overlap": safetensors_file(lstm_header(lstm__weight_hh_l0={"data_offsets": [64, 320]})[0],
                                               data),
        "st-offsets-negative": safetensors_file(lstm_header(lstm__weight_ih_l0={"data_offsets": [-128, 0]})[0],
                                                data),
        "st-offsets-not-numbers": safetensors_file(lstm_header(lstm__weight_ih_l0={"data_offsets": ["a", 1]})[0],
                                                   data),
        "st-shape-negative": safetensors_file(lstm_header(lstm__weight_ih_l0={"shape": [-16, -2]})[0], data),
        "st-header-length-terabytes": safetensors_file(encoded, data, length=2**40),
        "st-header-length-max": safetensors_file(encoded, data, length=2**64 - 1),
        "st-tensor-terabyte": safetensors_file(
            lstm_header(lstm__weight_ih_l0={"shape": [2**37, 2], "data_offsets": [0, 2**40]})[0], data),
        "st-tensor-shape-overflow": safetensors_file(
            lstm_header(lstm__weight_ih_l0={"shape": [2**62, 2**62, 4]})[0], data),
        "st-unknown-dtype": safetensors_file(lstm_header(lstm__weight_ih_l0={"dtype": "F128"})[0], data),
        "st-dtype-not-a-string": safetensors_file(lstm_header(lstm__weight_ih_l0={"dtype": ["F32"]})[0], data),
        "st-invalid-utf8": safetensors_file(encoded.replace(b"weight_ih", b"weight\xff\xfeih"), data),
        "st-invalid-json": safetensors_file(encoded[:-7] + b",,}", data),
        "st-header-not-an-object": safetensors_file(b"[1, 2, 3]", data),
        "st-metadata-not-strings": safetensors_file({"__metadata__": {"a": 1}, **header}, data),
        "st-truncated-data": safetensors_file(header, data[:-5]),
        "st-trailing-bytes": safetensors_file(header, data + b"\x00"),
        "st-gap-between-tensors": safetensors_file(
            lstm_header(lstm__weight_hh_l0={"data_offsets": [192, 448]})[0], data + bytes(64)),
        "pt-serialization-id-not-utf8": rebuild_zip(valid_lstm_pt(), replace={
            "archive/.data/serialization_id": b"\xff\xfe" * 10}),
        "pt-missing-record": rebuild_zip(valid_lstm_pt(), drop="archive/data/0"),
        "pt-storage-claims-8-gib": huge_storage_pt(),
        "pt-no-central-directory": valid_lstm_pt()[:-22],
        "pt-directory-sizes-disagree": directory_sizes_disagree(),
        "pt-local-header-name-damaged": local_header_damaged(),
        "pt-small-record-damaged": small_record_damaged(),
        "pt-zip-magic-only": b"PK\x03\x04",
        "pickle-magic-only": b"\x80",
        "empty": b"",
        "text": b"hello, this is not a checkpoint\n" * 8,
    }


def test_targeted_cases_have_valid_controls(tmp_path: Path) -> None:
    """The undamaged versions the targeted cases are made from are accepted (so each case fails for
    its damage, not for the way it was built)."""
    header, data = lstm_header()
    backing = torch.zeros(70_000)
    controls = {"control.safetensors": safetensors_file(header, data),
                "control.pt": valid_lstm_pt(), "rebuilt.pt": rebuild_zip(valid_lstm_pt()),
                "big-storage.pt": rebuild_zip(pt_bytes({"emb.weight": backing[:10], **{
                    name: torch.zeros(shape) for name, shape in LSTM_WEIGHTS.items()}}))}
    for name, content in controls.items():
        path = tmp_path / name
        path.write_bytes(content)
        for args, stdin in ((["inspect", path], None), (["apply", "-", *SCHEME, "--dry-run"], content),
                            (["apply", path, *SCHEME, "--seed", "1", "-o", tmp_path / f"out-{name}"], None)):
            result = cli(*args, stdin=stdin)
            assert result.exit_code == 0, (name, args, result.stderr)


@pytest.mark.parametrize("case", list(damaged_cases()))
def test_damaged_file_fails_cleanly(case: str, tmp_path: Path) -> None:
    content = damaged_cases()[case]
    suffix = ".pt" if case.startswith(("pt-", "pickle")) else ".safetensors"
    source = tmp_path / f"input{suffix}"
    source.write_bytes(content)
    for args, stdin, output, code in reading_runs(source, tmp_path, suffix=suffix):
        with no_hang(60):
            result = cli(*args, stdin=stdin)
        assert_refused(result, tmp_path, output, code)
    assert source.read_bytes() == content
    assert (tmp_path / f"in-place{suffix}").read_bytes() == content


def test_overlapping_tensor_is_refused_cleanly(tmp_path: Path) -> None:
    """A valid checkpoint whose recurrent weight was saved expand()ed (stride 0): its elements share
    memory, so distinct values cannot be written; rnninit says so (and still works when it is kept)."""
    state = {"lstm.weight_ih_l0": torch.linspace(0, 1, 3).expand(16, 3), "lstm.weight_hh_l0": torch.zeros(16, 4)}
    paths = {"pt": tmp_path / "expanded.pt", "legacy": tmp_path / "expanded-legacy.pt"}
    torch.save(state, paths["pt"])
    torch.save(state, paths["legacy"], _use_new_zipfile_serialization=False)
    for path in paths.values():
        for args, stdin in ((["apply", path, *SCHEME, "-o", tmp_path / "out.pt"], None),
                            (["apply", path, *SCHEME, "-o", tmp_path / "out.safetensors"], None),
                            (["apply", "-", *SCHEME, "-o", tmp_path / "out.pt"], path.read_bytes()),
                            (["apply", path, *SCHEME, "--dry-run"], None)):
            line = assert_failed_cleanly(cli(*args, stdin=stdin), tmp_path, tmp_path / "out.pt")
            assert "share memory" in line, line
        assert cli("inspect", path).exit_code == 0
        kept = cli("apply", path, *SCHEME, "-r", "weight_ih=keep", "--seed", "1", "-o", tmp_path / "kept.pt")
        assert kept.exit_code == 0, kept.stderr
        tensors, _ = read_back((tmp_path / "kept.pt").read_bytes())
        assert torch.equal(tensors["lstm.weight_ih_l0"], state["lstm.weight_ih_l0"])
        (tmp_path / "kept.pt").unlink()


def test_safetensors_header_that_starts_like_a_pickle_is_read(tmp_path: Path) -> None:
    """A valid .safetensors file whose header length has 0x80 as its low byte begins with the pickle
    PROTO opcode; it is still a safetensors file, on every path."""
    state = small_state()
    content = next(data for pad in range(256)
                   if (data := save(state, metadata={"pad": "x" * pad}))[:1] == b"\x80")
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    for args, stdin in ((["inspect", path], None), (["inspect", "-"], content),
                        (["apply", path, *SCHEME, "--seed", "1", "-o", tmp_path / "a.safetensors"], None),
                        (["apply", "-", *SCHEME, "--seed", "1", "-o", tmp_path / "b.safetensors"], content)):
        result = cli(*args, stdin=stdin)
        assert result.exit_code == 0, (args, result.stderr)
    patched, whole = (read_back((tmp_path / name).read_bytes()) for name in ("a.safetensors", "b.safetensors"))
    assert_same_tensors(patched[0], whole[0])
    assert patched[1] == whole[1] and patched[1]["pad"].startswith("x")


def check_every_path(data: bytes, folder: Path) -> None:
    """inspect and apply (file and standard input, .pt and .safetensors out) work or fail cleanly."""
    source = folder / "input.pt"
    source.write_bytes(data)
    seed = ("--seed", "7")
    for args, stdin, output in (
            (["inspect", source, "--json"], None, None),
            (["apply", source, *SCHEME, *seed, "-o", folder / "a.pt"], None, folder / "a.pt"),
            (["apply", source, *SCHEME, *seed, "--tensors-only", "-o", folder / "b.safetensors"], None,
             folder / "b.safetensors"),
            (["apply", "-", *SCHEME, *seed, "-o", folder / "c.pt"], data, folder / "c.pt"),
            (["apply", "-", *SCHEME, *seed, "--tensors-only", "-o", folder / "d.safetensors"], data,
             folder / "d.safetensors")):
        check_outcome(cli(*args, stdin=stdin), folder, output, 1)


@pytest.mark.parametrize("record", [b"[1, 2]", b'{"author": 1, "rnninit.seed": "3"}', b"null", b"\xff{"])
def test_damaged_rnninit_record_is_handled(record: bytes, tmp_path: Path) -> None:
    """A .pt whose rnninit.json record (written by an earlier run) is not a str → str JSON map: the
    record is worthless, the checkpoint is not."""
    base = fuzz_bases()["rnninit-training-pt"]
    with zipfile.ZipFile(io.BytesIO(base)) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/rnninit.json"))
    check_every_path(rebuild_zip(base, replace={name: record}), tmp_path)


def test_zip_that_only_torch_can_read_is_handled(tmp_path: Path) -> None:
    """A central directory entry that asks for zip version 6.4: Python's zipfile refuses the archive
    (NotImplementedError), torch's reader does not."""
    data = bytearray(fuzz_bases()["pt"])
    entry = data.rindex(b"archive/data.pkl") - 46
    assert data[entry:entry + 4] == b"PK\x01\x02"
    data[entry + 6:entry + 8] = struct.pack("<H", 64)  # version needed to extract
    check_every_path(bytes(data), tmp_path)


def test_empty_recurrent_weight_is_handled(tmp_path: Path) -> None:
    """A valid checkpoint whose LSTM input weight has 0 columns (fuzzing turned a shape into this):
    every command answers, none crashes."""
    source = tmp_path / "input.pt"
    torch.save({"lstm.weight_ih_l0": torch.zeros(16, 0), "lstm.weight_hh_l0": torch.zeros(16, 4)}, source)
    check_every_path(source.read_bytes(), tmp_path)
    for args in (["verify", source, *SCHEME], ["verify", source, "--scheme", "chrono(tmax=10)", "--json"],
                 ["diff", source, tmp_path / "a.pt"]):
        check_outcome(cli(*args), tmp_path, None, 2)


def test_folder_and_missing_file_fail_cleanly(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a model")
    for args in (["inspect", folder], ["apply", folder, *SCHEME, "-o", tmp_path / "out.pt"],
                 ["apply", folder, *SCHEME, "--in-place"], ["inspect", tmp_path / "missing.pt"],
                 ["apply", tmp_path / "missing.pt", *SCHEME, "-o", tmp_path / "out.pt"]):
        assert_failed_cleanly(cli(*args), tmp_path, tmp_path / "out.pt")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_fifo_is_refused_promptly(tmp_path: Path) -> None:
    """Opening a FIFO blocks until a writer comes: rnninit must refuse it without opening it. In a
    subprocess, so that a hang ends as a timeout instead of blocking the test run."""
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    entries = [{"argv": argv} for argv in (
        ["inspect", str(fifo)], ["apply", str(fifo), *SCHEME, "-o", str(tmp_path / "out.pt")],
        ["apply", str(fifo), *SCHEME, "--in-place"], ["apply", str(fifo), *SCHEME, "--dry-run"])]
    try:
        results = many(entries, tmp_path, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("rnninit blocked on a FIFO")
    for result in results:  # reading it: 3; replacing it (--in-place): 4
        line = assert_one_line_error(result["exit_code"], result["stderr"], (REFUSED, 4))
        assert "FIFO" in line, line
    assert not (tmp_path / "out.pt").exists() and not leftovers(tmp_path)
    assert fifo.is_fifo()


def test_claims_of_huge_sizes_allocate_nothing(tmp_path: Path) -> None:
    """Headers that claim a 1 TiB or a 2 GiB tensor, a 1 TiB header or an 8 GiB storage are rejected before
    anything of that size is allocated: the peak RSS of the process stays that of a run on a valid
    small file (torch's import dominates it) plus a margin far below the claims."""
    cases = damaged_cases()
    header, data = lstm_header()
    files = {"valid.safetensors": safetensors_file(header, data), "valid.pt": valid_lstm_pt(),
             "terabyte.safetensors": cases["st-tensor-terabyte"],
             "2-gib.safetensors": safetensors_file(  # small enough that an allocation would succeed
                 lstm_header(lstm__weight_ih_l0={"shape": [2**28, 2], "data_offsets": [0, 2**31]})[0], data),
             "length.safetensors": cases["st-header-length-terabytes"],
             "storage.pt": cases["pt-storage-claims-8-gib"]}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)

    def measure(name: str, stdin: bool) -> tuple[str, int, dict[str, Any]]:
        args = ["apply", "-", *SCHEME, "-o", str(tmp_path / f"out-{name}.pt")] if stdin else ["inspect", name]
        result = run([PYTHON, HELPER, "peak-rss", "--", *MODULE, *args], cwd=tmp_path,
                     input=(tmp_path / name).read_bytes() if stdin else None)
        assert result.returncode == 0, result.stderr.decode()
        report = json.loads(result.stdout)
        return f"{name}{' (stdin)' if stdin else ''}", report["maxrss_kib"], report

    jobs = [(name, stdin) for name in files for stdin in (False, True) if not (stdin and name.startswith("length"))]
    with ThreadPoolExecutor(max_workers=2) as pool:
        measured = list(pool.map(lambda job: measure(*job), jobs))
    baseline = max(kib for label, kib, _ in measured if label.startswith("valid"))
    for label, kib, report in measured:
        if label.startswith("valid"):
            assert report["returncode"] == 0, report["stderr"]
            continue
        assert_one_line_error(report["returncode"], report["stderr"])
        assert kib < baseline + 256 * 1024, f"{label}: peak RSS {kib} KiB, valid files {baseline} KiB"
        assert kib < 1024 * 1024, f"{label}: peak RSS {kib} KiB"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("out-") and "valid" not in p.name]
    assert not leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------
# 3. interrupted writes

BIG_ROWS = 300_000  # 300000 x 128 float32: a 154 MB embedding, so that writing the output takes a while


@dataclass
class BigInputs:
    paths: dict[str, Path]  # "pt", "safetensors"
    hashes: dict[str, str]
    expected: dict[str, str]  # kind → the target's hash after an uninterrupted run (filled on first use)


@pytest.fixture(scope="module")
def big_inputs(tmp_path_factory: pytest.TempPathFactory) -> BigInputs:
    folder = tmp_path_factory.mktemp("big")
    state = big_state(BIG_ROWS)
    paths = {"pt": folder / "big.pt", "safetensors": folder / "big.safetensors"}
    torch.save(state, paths["pt"])
    save_file(state, str(paths["safetensors"]))
    return BigInputs(paths, {fmt: sha256(path) for fmt, path in paths.items()}, {})


@dataclass
class Scenario:
    """One way of writing: `command` writes `target` (OUTPUT, or INPUT itself with --in-place)."""

    folder: Path
    source: Path  # what the run reads (a copy for --in-place)
    target: Path
    command: list[str]  # rnninit's arguments
    original: Path  # pristine input, never touched
    original_hash: str
    expected_hash: str  # the target's hash after an uninterrupted run

    def reset(self) -> None:
        for name in leftovers(self.folder):
            (self.folder / name).unlink()
        if self.target == self.source:
            if sha256(self.source) != self.original_hash:
                shutil.copyfile(self.original, self.source)
        else:
            self.target.unlink(missing_ok=True)

    def check(self) -> str:
        """After an interrupted run: the target is absent / the original, or complete; the input intact.
        Leftover temporary files are allowed (after SIGKILL), but only under their own names."""
        allowed = {self.target.name, self.source.name} | set(leftovers(self.folder))
        assert {p.name for p in self.folder.iterdir()} <= allowed
        if self.target != self.source:
            assert sha256(self.source) == self.original_hash, "the input was changed"
        if not self.target.exists():
            assert self.target != self.source, "the input is gone"
            return "no output"
        digest = sha256(self.target)
        if self.target == self.source and digest == self.original_hash:
            return "input as it was"
        assert digest == self.expected_hash, "OUTPUT holds neither the old nor the complete new file"
        return "complete output"


SEED = "5"


def make_scenario(kind: str, big: BigInputs, folder: Path) -> Scenario:
    folder.mkdir()
    fmt = "pt" if kind in ("pt", "in-place") else "safetensors"
    original = big.paths[fmt]
    if kind == "in-place":
        source = folder / original.name
        shutil.copyfile(original, source)
        command = ["apply", str(source), *SCHEME, "--seed", SEED, "--in-place", "-q"]
        target = source
    else:
        source = original
        target = folder / f"out.{fmt}"
        command = ["apply", str(source), *SCHEME, "--seed", SEED, "-o", str(target), "-q"]
    if kind not in big.expected:  # an uninterrupted run, in this process
        result = cli(*command)
        assert result.exit_code == 0, result.stderr
        big.expected[kind] = sha256(target)
        tensors, metadata = read_back(target.read_bytes())
        assert metadata["rnninit.seed"] == SEED and tensors["emb.weight"].shape == (BIG_ROWS, 128)
        assert big.expected[kind] != big.hashes[fmt]
    scenario = Scenario(folder, source, target, command, original, big.hashes[fmt], big.expected[kind])
    scenario.reset()
    return scenario


@pytest.mark.parametrize("kind", ["pt", "safetensors", "in-place"])
def test_sigkill_while_writing_leaves_no_partial_output(kind: str, big_inputs: BigInputs,
                                                        tmp_path: Path) -> None:
    scenario = make_scenario(kind, big_inputs, tmp_path / kind)
    rng = random.Random(f"sigkill-{kind}")

    # at known moments: the input's bytes copied but not yet patched; the file complete but not renamed
    for moment in ("copy", "fsync"):
        ready = tmp_path / f"ready-{moment}"
        process = subprocess.Popen([PYTHON, HELPER, "rnninit", *scenario.command], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE,
                                   env={**os.environ, "HARDENING_PAUSE": str(ready), "HARDENING_PAUSE_AT": moment})
        try:
            wait_until(lambda ready=ready, process=process: ready.exists() or process.poll() is not None, 120,
                       "the write")
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
        finally:
            process.kill()
            process.wait(60)
        assert scenario.check() in ("no output", "input as it was"), moment
        assert leftovers(scenario.folder), "the temporary file should still be there after SIGKILL"
        scenario.reset()

    # at random moments after the temporary file appears: while copying, patching, syncing, renaming
    # (all that takes about 0.1 s here)
    for _ in range(2):
        process = subprocess.Popen([*MODULE, *scenario.command], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda process=process: bool(leftovers(scenario.folder)) or process.poll() is not None,
                       120, "the temporary file")
            time.sleep(rng.uniform(0.0, 0.15))
        finally:
            process.kill()
            process.wait(60)
        scenario.check()
        scenario.reset()


@pytest.mark.parametrize(("kind", "signum", "moment"), [
    ("pt", signal.SIGINT, "fsync"), ("safetensors", signal.SIGINT, "fsync"), ("in-place", signal.SIGINT, "fsync"),
    ("pt", signal.SIGINT, "copy"), ("safetensors", signal.SIGTERM, "fsync")])
def test_interrupt_while_writing_cleans_up(kind: str, signum: int, moment: str, big_inputs: BigInputs,
                                           tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) or SIGTERM while the output is being written (the input copied but not yet
    patched, or the file complete but not yet renamed): exit 130 / 143, one error line, the temporary
    file removed, no output (for --in-place: the input as it was)."""
    scenario = make_scenario(kind, big_inputs, tmp_path / kind)
    ready = tmp_path / "ready"
    process = subprocess.Popen([PYTHON, HELPER, "rnninit", *scenario.command], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE,
                               env={**os.environ, "HARDENING_PAUSE": str(ready), "HARDENING_PAUSE_AT": moment})
    try:
        wait_until(lambda: ready.exists() or process.poll() is not None, 120, "the write")
        assert process.poll() is None, "the run ended before it was interrupted"
        assert leftovers(scenario.folder)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait(60)
    if signum == signal.SIGINT:
        assert_one_line_error(process.returncode, stderr.decode(), expected_code=130)
    else:
        assert process.returncode == 128 + signum, stderr.decode()
        assert "Traceback" not in stderr.decode()
    assert scenario.check() in ("no output", "input as it was")
    assert not leftovers(scenario.folder)


# ---------------------------------------------------------------------------------------------
# 4. write errors: a full disk (RLIMIT_FSIZE), a missing or read-only folder

FSIZE_LIMIT = 1 * MIB


def limit_file_size() -> None:
    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


def test_write_error_leaves_outputs_untouched(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path / "in", big_state(8_000))  # 4 MB each, the limit is 1 MB
    out = tmp_path / "out"
    out.mkdir()
    existing = {}
    for name, source in (("a.pt", inputs["pt"]), ("b.safetensors", inputs["safetensors"]),
                         ("c.safetensors", inputs["safetensors"]), ("d.pt", inputs["pt"]),
                         ("h.safetensors", inputs["safetensors"])):
        shutil.copyfile(source, out / name)
        existing[name] = sha256(out / name)
    in_place = out / "in-place.pt"
    shutil.copyfile(inputs["pt"], in_place)
    existing[in_place.name] = sha256(in_place)
    seed = ["--seed", "3"]
    new = ["new", "lstm", "--input-size", "256", "--hidden-size", "256", *SCHEME, *seed]
    entries = [
        {"argv": ["apply", str(inputs["pt"]), *SCHEME, *seed, "--force", "-o", str(out / "a.pt")]},
        {"argv": ["apply", str(inputs["safetensors"]), *SCHEME, *seed, "--force", "-o", str(out / "b.safetensors")]},
        {"argv": ["apply", str(inputs["pt"]), *SCHEME, *seed, "--force", "-o", str(out / "c.safetensors")]},
        {"argv": ["apply", str(inputs["safetensors"]), *SCHEME, *seed, "--force", "-o", str(out / "d.pt")]},
        {"argv": ["apply", str(inputs["legacy"]), *SCHEME, *seed, "-o", str(out / "e.pt")]},
        {"argv": ["apply", "-", *SCHEME, *seed, "-o", str(out / "f.pt")], "stdin": str(inputs["pt"])},
        {"argv": ["apply", str(in_place), *SCHEME, *seed, "--in-place"]},
        {"argv": [*new, "-o", str(out / "g.pt")]},
        {"argv": [*new, "--force", "-o", str(out / "h.safetensors")]},
    ]
    for result in many(entries, tmp_path, preexec_fn=limit_file_size):
        line = assert_one_line_error(result["exit_code"], result["stderr"], 4)
        assert "cannot write" in line and os.strerror(errno.EFBIG) in line, (result["argv"], line)
    # and the real program, for its exit status
    real = run([SCRIPT, "apply", str(inputs["safetensors"]), *SCHEME, *seed, "--force", "-o", str(out / "d.pt")],
               preexec_fn=limit_file_size, cwd=tmp_path)
    assert os.strerror(errno.EFBIG) in assert_one_line_error(real.returncode, real.stderr.decode(), 4)

    assert {p.name for p in out.iterdir()} == set(existing), "a partial output or a temporary file was left"
    for name, digest in existing.items():
        assert sha256(out / name) == digest, f"{name} was changed"
    # the control: without the limit the same commands work
    for entry in entries[:4]:
        result = cli(*entry["argv"])
        assert result.exit_code == 0, result.stderr


def test_missing_output_folder_is_a_clean_error(tmp_path: Path) -> None:
    source = tmp_path / "model.pt"
    torch.save(small_state(), source)
    missing = tmp_path / "missing"
    for args in (["apply", source, *SCHEME, "-o", missing / "out.pt"],
                 ["apply", "-", *SCHEME, "-o", missing / "out.safetensors"],
                 ["new", "gru", "--input-size", "3", "--hidden-size", "2", *SCHEME, "-o", missing / "new.pt"]):
        line = assert_failed_cleanly(cli(*args, stdin=source.read_bytes()), tmp_path, code=4)
        assert str(missing) in line
    assert not missing.exists()


def test_read_only_output_folder_is_a_clean_error(tmp_path: Path) -> None:
    """As root, permissions do not stop writes, so the folder is mounted read-only in a private mount
    namespace (unshare -m) instead; without that (or as another user, chmod) the test is skipped."""
    source = tmp_path / "model.pt"
    torch.save(small_state(), source)
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "old.pt").write_bytes(b"previous")
    entries = [{"argv": ["apply", str(source), *SCHEME, "-o", str(folder / "out.pt")]},
               {"argv": ["apply", str(source), *SCHEME, "--force", "-o", str(folder / "old.pt")]},
               {"argv": ["new", "lstm", "--input-size", "3", "--hidden-size", "2", *SCHEME,
                         "-o", str(folder / "new.safetensors")]}]
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            results = many(entries, tmp_path)
        finally:
            folder.chmod(0o755)
    else:
        prefix = read_only_runner()
        if prefix is None:
            pytest.skip("running as root without unshare/mount: a read-only folder cannot be made")
        results = many(entries, tmp_path, prefix=prefix, env={**os.environ, "RO": str(folder)})
    for result in results:
        line = assert_one_line_error(result["exit_code"], result["stderr"], 4)
        assert "cannot write" in line, line
    assert sorted(p.name for p in folder.iterdir()) == ["old.pt"]
    assert (folder / "old.pt").read_bytes() == b"previous"


# ---------------------------------------------------------------------------------------------
# 5. two writers, one OUTPUT


def test_concurrent_writers_leave_one_complete_output(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path / "in", big_state(20_000))  # 10 MB
    rounds = [("pt", True), ("safetensors", True), ("pt", False)]
    expected: dict[str, dict[str, str]] = {}
    for fmt in ("pt", "safetensors"):
        expected[fmt] = {}
        for seed in ("1", "2"):
            target = tmp_path / f"expected-{seed}.{fmt}"
            result = cli("apply", inputs[fmt], *SCHEME, "--seed", seed, "-o", target, "-q")
            assert result.exit_code == 0, result.stderr
            expected[fmt][sha256(target)] = seed
        assert len(expected[fmt]) == 2
    for number, (fmt, barrier) in enumerate(rounds):
        folder = tmp_path / f"round-{number}"
        folder.mkdir()
        output = folder / f"out.{fmt}"
        output.write_bytes(b"an older file")
        gate = folder / "gate"
        gate.mkdir()
        env = {**os.environ, "HARDENING_BARRIER": str(gate)} if barrier else None
        launcher = [PYTHON, HELPER, "rnninit"] if barrier else [SCRIPT]
        processes = [subprocess.Popen([*launcher, "apply", str(inputs[fmt]), *SCHEME, "--seed", seed, "--force",
                                       "-q", "-o", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      env=env) for seed in ("1", "2")]
        try:
            if barrier:  # both reach atomic_write, then both go at once
                wait_until(lambda gate=gate, processes=processes: len(list(gate.iterdir())) == 2
                           or any(p.poll() is not None for p in processes), 120, "both writers")
                (gate / "go").touch()
            for process in processes:
                _, stderr = process.communicate(timeout=120)
                assert process.returncode == 0, stderr.decode()
        finally:
            for process in processes:
                process.kill()
                process.wait(60)
        assert sha256(output) in expected[fmt], f"round {number}: OUTPUT is a mix of the two runs"
        assert sorted(p.name for p in folder.iterdir()) == ["gate", output.name]


# ---------------------------------------------------------------------------------------------
# 6. determinism


def determinism_entries(inputs: dict[str, Path], out: Path) -> list[dict[str, Any]]:
    seed = ["--seed", "11"]
    new = ["new", "lstm", "--input-size", "3", "--hidden-size", "4", "--num-layers", "2", "--bidirectional",
           *SCHEME, *seed]
    return [
        {"argv": ["apply", str(inputs["pt"]), *SCHEME, *seed, "-o", str(out / "pt.pt")]},
        {"argv": ["apply", str(inputs["pt"]), *SCHEME, *seed, "-o", str(out / "pt.safetensors")]},
        {"argv": ["apply", str(inputs["safetensors"]), *SCHEME, *seed, "-o", str(out / "st.safetensors")]},
        {"argv": ["apply", str(inputs["safetensors"]), *SCHEME, *seed, "-o", str(out / "st.pt")]},
        {"argv": ["apply", str(inputs["legacy"]), *SCHEME, *seed, "-o", str(out / "legacy.pt")]},
        {"argv": ["apply", "-", *SCHEME, *seed, "-o", str(out / "stdin.pt")], "stdin": str(inputs["pt"])},
        {"argv": ["apply", str(inputs["pt"]), "--scheme", "chrono(tmax=50)", "-r", "weight_hh=orthogonal(per=gate)",
                  *seed, "-o", str(out / "rules.pt")]},
        {"argv": [*new, "-o", str(out / "new.pt")]},
        {"argv": [*new, "-o", str(out / "new.safetensors")]},
    ]


def test_same_seed_same_bytes_in_every_process(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path / "in", small_state())
    runs = {}
    for label in ("in-process-1", "in-process-2"):
        folder = tmp_path / label
        folder.mkdir()
        for entry in determinism_entries(inputs, folder):
            stdin = Path(entry["stdin"]).read_bytes() if entry.get("stdin") else None
            result = cli(*entry["argv"], "-q", stdin=stdin)
            assert result.exit_code == 0, result.stderr
        runs[label] = folder
    for hash_seed in ("0", "4242"):
        folder = tmp_path / f"hashseed-{hash_seed}"
        folder.mkdir()
        results = many(determinism_entries(inputs, folder), tmp_path,
                       env={**os.environ, "PYTHONHASHSEED": hash_seed})
        assert [r["exit_code"] for r in results] == [0] * len(results), [r["stderr"] for r in results]
        runs[f"PYTHONHASHSEED={hash_seed}"] = folder
    reference = runs["in-process-1"]
    names = sorted(p.name for p in reference.iterdir())
    assert len(names) == len(determinism_entries(inputs, reference))
    for label, folder in runs.items():
        assert sorted(p.name for p in folder.iterdir()) == names, label
        for name in names:
            assert (folder / name).read_bytes() == (reference / name).read_bytes(), f"{label}: {name} differs"

    # the same values whichever format is written
    def values(name: str) -> dict[str, torch.Tensor]:
        return read_back((reference / name).read_bytes())[0]

    for pair in (("pt.pt", "pt.safetensors"), ("st.safetensors", "st.pt"), ("pt.pt", "st.pt"),
                 ("pt.pt", "legacy.pt"), ("pt.pt", "stdin.pt"), ("new.pt", "new.safetensors")):
        assert_same_tensors(values(pair[0]), values(pair[1]))
    # and the seed did matter
    changed = values("pt.pt")["lstm.weight_hh_l0"]
    assert not torch.equal(changed, small_state()["lstm.weight_hh_l0"])


# ---------------------------------------------------------------------------------------------
# 7. inputs are only read


def snapshot(folder: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every entry under `folder` (and `folder` itself): size, mode, mtime and ctime in ns."""
    entries = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        info = path.lstat()
        entries[str(path.relative_to(folder))] = (info.st_size, info.st_mode, info.st_mtime_ns, info.st_ctime_ns)
    return entries


def read_only_entries(inputs: Path, out: Path) -> list[dict[str, Any]]:
    seed = ["--seed", "2"]
    return [
        {"argv": ["apply", str(inputs / "model.pt"), *SCHEME, *seed, "-o", str(out / "a.pt")]},
        {"argv": ["apply", str(inputs / "model.safetensors"), *SCHEME, *seed, "-o", str(out / "b.safetensors")]},
        {"argv": ["apply", str(inputs / "model.pt"), *SCHEME, *seed, "-o", str(out / "c.safetensors")]},
        {"argv": ["apply", str(inputs / "model-legacy.pt"), *SCHEME, *seed, "-o", str(out / "d.pt")]},
        {"argv": ["apply", str(inputs / "hf"), *SCHEME, *seed, "-o", str(out / "hf")]},
        {"argv": ["apply", str(inputs / "model.pt"), *SCHEME, "--dry-run"]},
        {"argv": ["inspect", str(inputs / "model.pt")]},
        {"argv": ["inspect", str(inputs / "model-legacy.pt"), "--json"]},
        {"argv": ["inspect", str(inputs / "hf")]},
    ]


def make_read_only_inputs(folder: Path) -> Path:
    inputs = folder / "inputs"
    write_inputs(inputs, small_state())
    (inputs / "hf").mkdir()
    save_file(small_state(1), str(inputs / "hf" / "model.safetensors"))
    (inputs / "hf" / "config.json").write_text("{}")
    for path in [*inputs.rglob("*"), inputs]:  # old times: any write would move them to now
        os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    return inputs


def test_nothing_is_written_next_to_the_input(tmp_path: Path) -> None:
    inputs = make_read_only_inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(inputs)
    entries = read_only_entries(inputs, out)
    for entry in entries:
        result = cli(*entry["argv"])
        assert result.exit_code == 0, (entry["argv"], result.stderr)
        assert snapshot(inputs) == before, f"{entry['argv']} wrote next to its input"
    # a refused run writes nothing either
    assert cli("apply", inputs / "model.pt", *SCHEME, "-o", out / "a.pt").exit_code == 4
    assert snapshot(inputs) == before
    assert sorted(p.name for p in out.iterdir()) == ["a.pt", "b.safetensors", "c.safetensors", "d.pt", "hf"]


def test_inputs_on_read_only_media_work(tmp_path: Path) -> None:
    """The input folder mounted read-only (root: a private mount namespace; otherwise chmod)."""
    inputs = make_read_only_inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    entries = read_only_entries(inputs, out)
    if os.geteuid() != 0:
        for path in [*inputs.rglob("*"), inputs]:
            path.chmod(path.stat().st_mode & ~0o222)
        try:
            results = many(entries, tmp_path)
        finally:
            for path in [*inputs.rglob("*"), inputs]:
                path.chmod(path.stat().st_mode | 0o200)
    else:
        prefix = read_only_runner()
        if prefix is None:
            pytest.skip("running as root without unshare/mount: read-only media cannot be made")
        results = many(entries, tmp_path, prefix=prefix, env={**os.environ, "RO": str(inputs)})
    for result in results:
        assert result["exit_code"] == 0, (result["argv"], result["stderr"])
    for name in ("a.pt", "b.safetensors", "c.safetensors", "d.pt", "hf/model.safetensors"):
        tensors, metadata = read_back((out / name).read_bytes())
        assert tensors and metadata["rnninit.seed"] == "2", name
    assert (out / "hf" / "config.json").read_text() == "{}"
