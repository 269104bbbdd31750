"""Hostile files against the restricted reader (issue 10, part 4): protocol 4/5 pickles whose globals would
run code, TorchScript-shaped archives whose data.pkl names os.system / builtins.eval / __builtin__.getattr,
`__reduce__` chains through the reader's own allowed names, and pickles that build a huge list or nest
deeply. Each is refused with one `error:` line and a non-zero exit, from a file and from standard input, in
one process under RLIMIT_AS 3 GiB whose peak RSS stays small; no marker file is ever created, and the
module the files name is importable there (an unsafe loader would import and run it)."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from test_safety_reads import assert_clean_refusal, assert_one_error_line, bounded_batch, bounded_run
from torch import nn

from rnninit_cli.errors import CheckpointError, UnsafeCheckpointError
from rnninit_cli.formats.unpickle.machine import RestrictedUnpickler, storage_from_id, unpickle
from rnninit_cli.formats.unpickle.records import StorageRef

SCHEME = ["--scheme", "keras"]
MODULE_NAME = "rnninit_reader_hostile"
MODULE_SOURCE = """
from pathlib import Path
Path({marker!r}, "module-import").touch()

def run(*args):
    Path({marker!r}, "module-call").touch()
"""


class Reduce:
    """Pickles as `function(*args)`: what an unsafe unpickler would call."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.function, self.args)


def lstm_state() -> dict[str, torch.Tensor]:
    return {"lstm.weight_ih_l0": torch.zeros(8, 3), "lstm.weight_hh_l0": torch.zeros(8, 2)}


def save_bytes(value: Any, protocol: int = 2, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer, pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def replace_data_pkl(archive_bytes: bytes, data_pkl: bytes) -> bytes:
    """The archive with its data.pkl replaced (every other record kept, stored as it was)."""
    source = zipfile.ZipFile(io.BytesIO(archive_bytes))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            content = data_pkl if info.filename.endswith("/data.pkl") else source.read(info.filename)
            target.writestr(info, content, compress_type=info.compress_type)
    return out.getvalue()


def global_op(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def text(value: str) -> bytes:
    encoded = value.encode()
    return b"X" + len(encoded).to_bytes(4, "little") + encoded


def scripted_archive() -> bytes:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0]

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Net()), buffer)
    return buffer.getvalue()


def hostile_files(markers: Path) -> dict[str, tuple[bytes, str]]:
    """name → (file content, the text its refusal must contain)."""
    import importlib

    module = importlib.import_module(MODULE_NAME)
    touch = f"touch '{markers / 'system'}'"
    payloads = {"system": (Reduce(os.system, touch), "system"),
                "exec": (Reduce(exec, f"open({str(markers / 'exec')!r}, 'w').close()"), "builtins.exec"),
                "popen": (Reduce(subprocess.Popen, ["touch", str(markers / "popen")]), "subprocess.Popen"),
                "eval": (Reduce(eval, f"__import__('os').system({touch!r})"), "builtins.eval")}
    files: dict[str, tuple[bytes, str]] = {}
    for protocol in (4, 5):
        for name, (payload, shown) in payloads.items():
            checkpoint = {"payload": payload, **lstm_state()}
            files[f"p{protocol}-{name}-zip"] = (save_bytes(checkpoint, protocol), shown)
            files[f"p{protocol}-{name}-legacy"] = (save_bytes(checkpoint, protocol, legacy=True), shown)
            files[f"p{protocol}-{name}-raw"] = (pickle.dumps({"payload": payload}, protocol=protocol), shown)
        # a module the reader does not know, named in the legacy header: refused there (no header names one)
        files[f"p{protocol}-module-raw"] = (pickle.dumps(Reduce(module.run, "x"), protocol=protocol), MODULE_NAME)
    # TorchScript-shaped: a real torch.jit.save archive whose data.pkl builds __torch__ objects around a call
    archive = scripted_archive()
    command = text(f"touch '{markers / 'script'}'")
    calls = {"os-system": global_op("os", "system") + b"(" + command + b"tR",
             "builtins-eval": global_op("builtins", "eval") + b"(" + text("print(1)") + b"tR",
             "builtin-getattr": global_op("__builtin__", "getattr") + b"(" + global_op("__torch__", "Net")
             + text("forward") + b"tR"}
    for name, call in calls.items():
        data_pkl = (b"\x80\x02" + global_op("__torch__", "Net") + b")\x81}(" + text("training") + b"\x88"
                    + text("hook") + call + b"ub.")
        shown = {"os-system": "os.system", "builtins-eval": "builtins.eval", "builtin-getattr": "__builtin__.getattr"}
        files[f"torchscript-{name}"] = (replace_data_pkl(archive, data_pkl), shown[name])
    return files


CHAINS = {
    # REDUCE on what an allowed constructor returned: an OrderedDict is no callable
    "ordered-dict-called": global_op("collections", "OrderedDict") + b")R(" + text("x") + b"tR",
    # a tensor rebuilder handed a foreign global instead of a storage
    "rebuild-foreign": global_op("torch._utils", "_rebuild_tensor_v2") + b"(" + global_op(MODULE_NAME, "run")
    + b"K\x00(K\x01t(K\x01t\x89" + global_op("collections", "OrderedDict") + b")RtR",
    # restore_type_tag passes its value through: a dangerous global must not come out of it
    "type-tag-getattr": global_op("torch.jit._pickle", "restore_type_tag") + b"(" + global_op("builtins", "getattr")
    + text("x") + b"tR",
    # _codecs.encode's bytes applied as a function
    "codecs-called": global_op("_codecs", "encode") + b"(" + text("touch") + text("latin1") + b"tR)R",
    # copyreg._reconstructor of a dangerous class
    "reconstructor-posix": global_op("copyreg", "_reconstructor") + b"(" + global_op("posix", "system")
    + global_op("builtins", "object") + b"NtR",
    # BUILD that would set attributes on a set (or, in an unsafe reader, on one of its own records)
    "build-on-set": global_op("builtins", "set") + b"(]tR}" + text("__class__") + b"Nsb",
    # torch.device with arguments torch would interpret
    "device-args": global_op("torch", "device") + b"(" + global_op(MODULE_NAME, "run") + b"tR",
}


def chain_archive(body: bytes) -> bytes:
    """A valid LSTM archive whose data.pkl puts `body` (one object) before the tensors."""
    valid = save_bytes(lstm_state())
    data_pkl = zipfile.ZipFile(io.BytesIO(valid)).read("archive/data.pkl")
    assert data_pkl.startswith(b"\x80\x02}q\x00(")  # {( ... the tensors
    return replace_data_pkl(valid, b"\x80\x02}q\x00(" + text("payload") + body + data_pkl[6:])


BOMBS = {
    # 6 million empty dicts in a list (6 MB of pickle, 400 MB of objects): refused by the object budget (at
    # 5 million; RNNINIT_MAX_ENTRIES' default 5,000,000 entries make 20,000,000 units, 4 per empty dict)
    "huge-list": b"\x80\x02](" + b"}" * 6_000_000 + b"e.",
    # 12 million memo entries of one list (12 MB of pickle, 800 MB of memo if unbounded): the budget again
    "memo": b"\x80\x04]" + b"\x94" * 12_000_000 + b".",
    # 100,000 nested lists: refused at the nesting limit
    "deep-lists": b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".",
    # a million nested one-tuples
    "deep-tuples": b"\x80\x02N" + b"\x85" * 1_000_000 + b".",
}


@pytest.fixture(scope="module")
def hostile_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("reader-hostile")
    markers, modules, files = root / "markers", root / "modules", root / "files"
    for folder in (markers, modules, files):
        folder.mkdir()
    (modules / f"{MODULE_NAME}.py").write_text(MODULE_SOURCE.format(marker=str(markers)))
    sys.path.insert(0, str(modules))
    try:
        made = hostile_files(markers)
    finally:
        sys.path.remove(str(modules))
        sys.modules.pop(MODULE_NAME, None)
    for marker in markers.iterdir():  # importing it to pickle its function touched one
        marker.unlink()
    paths = {}
    for name, (content, shown) in made.items():
        (files / f"{name}.pt").write_bytes(content)
        paths[name] = (files / f"{name}.pt", shown)
    for name, body in CHAINS.items():
        (files / f"chain-{name}.pt").write_bytes(chain_archive(body))
    for name, data_pkl in BOMBS.items():
        (files / f"bomb-{name}.pt").write_bytes(replace_data_pkl(save_bytes(lstm_state()), data_pkl))
        (files / f"bomb-{name}-raw.pt").write_bytes(data_pkl)
    return {"root": root, "markers": markers, "files": files, "paths": paths,
            "env": {"PYTHONPATH": os.pathsep.join([str(modules), os.environ.get("PYTHONPATH", "")])}}


def runs_for(path: Path, out: Path) -> list[tuple[list[Any], Path | None]]:
    return [(["inspect", path], None), (["apply", path, *SCHEME, "-o", out / "out.pt"], None),
            (["verify", path, *SCHEME], None), (["apply", "-", *SCHEME, "-o", out / "stdin.pt"], path)]


def check_batch(paths: list[Path], hostile_env: dict[str, Any], tmp_path: Path, max_rss_mib: int = 900) -> list[str]:
    runs = [run for path in paths for run in runs_for(path, tmp_path)]
    results, peak = bounded_batch(runs, tmp_path, env=hostile_env["env"], timeout=600)
    lines = []
    for result in results:  # every command: exit status 3, an input that cannot be used
        lines.append(assert_one_error_line(result))
    assert peak < max_rss_mib * 1024, f"peak RSS {peak} KiB"
    assert not list(hostile_env["markers"].iterdir()), "a payload ran"
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "stdin.pt").exists()
    return lines


def test_hostile_globals_are_refused_with_their_name(hostile_env: dict[str, Any], tmp_path: Path) -> None:
    """Protocol 4/5 files (zip, legacy, raw pickle) and TorchScript-shaped archives naming os.system,
    builtins.exec/eval, subprocess.Popen, __builtin__.getattr: refused as hostile, naming the callable."""
    entries = sorted(hostile_env["paths"].items())
    lines = check_batch([path for _, (path, _) in entries], hostile_env, tmp_path)
    for index, (name, (_, shown)) in enumerate(entries):
        for line in lines[4 * index:4 * index + 4]:
            assert "needs code to load" in line and "will not run it" in line, (name, line)
            assert shown in line, (name, shown, line)


def test_reduce_chains_through_allowed_names_are_refused(hostile_env: dict[str, Any], tmp_path: Path) -> None:
    paths = [hostile_env["files"] / f"chain-{name}.pt" for name in CHAINS]
    lines = check_batch(paths, hostile_env, tmp_path)
    for line in lines:
        assert "needs code to load" in line or "not a readable torch.save file" in line, line


BOMB_RUNS = [("huge-list", "", False), ("memo", "", False), ("deep-lists", "", True), ("deep-tuples", "-raw", False)]
SLOW_BOMB_RUNS = [(name, suffix, stdin) for name in BOMBS for suffix in ("", "-raw") for stdin in (False, True)
                  if (name, suffix, stdin) not in BOMB_RUNS]


@pytest.mark.parametrize(("name", "suffix", "stdin"), [
    *BOMB_RUNS, *(pytest.param(*run, marks=pytest.mark.slow) for run in SLOW_BOMB_RUNS)])
def test_huge_and_deep_pickles_are_refused_with_bounded_memory(name: str, suffix: str, stdin: bool,
                                                               hostile_env: dict[str, Any], tmp_path: Path) -> None:
    """Each in its own process under RLIMIT_AS 3 GiB: a small peak RSS (torch's import is about 250 MiB of it)."""
    path = hostile_env["files"] / f"bomb-{name}{suffix}.pt"
    args = ["apply", "-", *SCHEME, "-o", str(tmp_path / "out.pt")] if stdin else ["inspect", str(path)]
    report = bounded_run(args, stdin=path if stdin else None, cwd=tmp_path, timeout=300)
    line = assert_clean_refusal(report, max_rss_mib=800)
    assert "entries" in line or "nested deeper" in line or "magic number" in line, line
    assert not (tmp_path / "out.pt").exists()


def test_foreign_calls_stay_records(hostile_env: dict[str, Any], tmp_path: Path) -> None:
    """A global of a module not on the dangerous list, applied (REDUCE): an inert record; that record applied
    again: refused (torch's loader refuses calling an object too). Never an import or a call (the module is
    importable here)."""
    body = (global_op(MODULE_NAME, "run") + b"(" + text("touch") + b"tR(" + text("again") + b"tR}"
            + text("__setstate__") + global_op(MODULE_NAME, "run") + b"sb")
    path = tmp_path / "foreign.pt"
    path.write_bytes(chain_archive(body))
    done = subprocess.run([sys.executable, "-m", "rnninit_cli", "inspect", str(path)], capture_output=True,
                          timeout=120, check=False, env={**os.environ, **hostile_env["env"]})
    assert done.returncode == 3 and done.stderr.decode().startswith("error: "), done.stderr.decode()
    assert "applies a Foreign" in done.stderr.decode()
    assert not list(hostile_env["markers"].iterdir()), "the module was imported or called"
    once = tmp_path / "once.pt"  # applied once, the global is an inert record the file may hold
    once.write_bytes(chain_archive(global_op(MODULE_NAME, "run") + b"(" + text("touch") + b"tR"))
    done = subprocess.run([sys.executable, "-m", "rnninit_cli", "inspect", str(once)], capture_output=True,
                          timeout=120, check=False, env={**os.environ, **hostile_env["env"]})
    assert f"holds objects of classes: {MODULE_NAME}.run" in (done.stdout + done.stderr).decode(), done.stderr
    assert not list(hostile_env["markers"].iterdir()), "the module was imported or called"


def test_budget_and_dangerous_names_in_process() -> None:
    """The unpickler itself: the budget stops a list of dicts early, and a dangerous name is refused before
    anything after it is read."""
    storages: dict[str, StorageRef] = {}
    unpickler = RestrictedUnpickler(BOMBS["huge-list"][:2_000_000] + b"e.", lambda pid: storage_from_id(pid, storages),
                                    budget=1000)
    with pytest.raises(Exception, match="1000"):
        unpickler.load()
    for module, name in (("os", "system"), ("posix", "system"), ("nt", "system"), ("subprocess", "run"),
                         ("builtins", "eval"), ("__builtin__", "getattr"), ("importlib", "import_module"),
                         ("runpy", "run_path"), ("socket", "socket"), ("ctypes", "CDLL"), ("sys", "exit"),
                         ("shutil", "rmtree"), ("pickle", "loads"), ("marshal", "loads"), ("types", "FunctionType"),
                         ("code", "interact"), ("pty", "spawn"), ("webbrowser", "open"), ("signal", "signal"),
                         ("multiprocessing.util", "spawnv_passfds"), ("importlib._bootstrap", "_load")):
        with pytest.raises(UnsafeCheckpointError, match=rf"{module}\.{name}"):
            unpickle(b"\x80\x02" + global_op(module, name) + b".", lambda pid: pid, "f")
    with pytest.raises(CheckpointError, match="applies"):
        unpickle(b"\x80\x02" + CHAINS["ordered-dict-called"] + b".", lambda pid: pid, "f")
