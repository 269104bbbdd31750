"""Issue 9, data loss: what rnninit's writes guarantee when other writers, special files, model folders,
interruptions and long names get in the way. One section per defect class:

1. the input is read through ONE open descriptor (what is copied is what was indexed); --in-place
   locks INPUT (concurrent runs take turns) and refuses to rename over a file that changed meanwhile;
2. --force never deletes a folder that holds anything but what the new model folder will hold, nor one
   that contains the input;
3. --force replaces regular files and symbolic links to them (the link itself), nothing else;
4. a model folder is swapped into place in one step (held signals), and --in-place on a folder rewrites
   only its changed shards, each atomically;
5. once the output is renamed into place the command has succeeded: a later Ctrl-C / SIGTERM exits 0,
   and a signal during the interpreter's shutdown prints no traceback;
16. temporary names have a fixed short length, so the longest legal OUTPUT name works.

Subprocess moments are set with the HARDENING_SAFETY hooks of tests/hardening_helpers.py. The
many-round concurrency test is marked slow; a fast slice runs by default.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner, Result

import rnninit_cli.formats.folders as folders
from rnninit_cli.cli import app
from rnninit_cli.errors import RnnInitError
from rnninit_cli.formats.tensorfile import TensorFile
from rnninit_cli.rewrite import RewriteOptions, rewrite

HERE = Path(__file__).resolve().parent
HELPER = str(HERE / "hardening_helpers.py")
MODULE = [sys.executable, "-m", "rnninit_cli"]
SCHEME = ("--scheme", "keras")
RUNNER = CliRunner()
FORMATS = ("pt", "safetensors")
RECURRENT = ("lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0")


# ---------------------------------------------------------------------------------------------
# helpers


def cli(*args: object) -> Result:
    return RUNNER.invoke(app, [str(a) for a in args], catch_exceptions=False)


def state(seed: int = 0, *, extra: int = 0) -> dict[str, torch.Tensor]:
    """An embedding, an LSTM and a head; `extra` adds a tensor so that every byte offset moves."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {"emb.weight": torch.randn(50, 8, generator=generator)}
    lstm = {"weight_ih_l0": (32, 8), "weight_hh_l0": (32, 8), "bias_ih_l0": (32,), "bias_hh_l0": (32,)}
    tensors |= {f"lstm.{name}": torch.randn(*shape, generator=generator) for name, shape in lstm.items()}
    tensors["head.weight"] = torch.randn(3, 8, generator=generator)
    if extra:
        tensors = {"aaa.extra": torch.randn(extra, generator=generator), **tensors}
    return tensors


def write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    if path.suffix == ".safetensors":
        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)
    return path


def load_official(path: Path) -> dict[str, torch.Tensor]:
    """The file through the official loaders only; for a .pt also every zip CRC and one rnninit record."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None, f"{path}: a zip record fails its CRC-32"
        records = [name for name in archive.namelist() if name.endswith("/rnninit.json")]
        assert len(records) <= 1, f"{path}: {len(records)} rnninit.json records"
    return torch.load(path, weights_only=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """rnninit's temporary files and folders anywhere under `folder`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".rnninit-" in p.name)


def one_line_error(code: int, stderr: str, expected: int = 4) -> str:
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert code == expected, (code, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` and its bytes (None for folders): to show nothing changed."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def once(function: Callable[..., Any], before: Callable[..., Any]) -> Callable[..., Any]:
    """`function`, with `before(*args)` run before its first call only."""
    done: list[bool] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not done:
            done.append(True)
            before(*args)
        return function(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------------------------------------
# 1. another writer replaces the input


@pytest.mark.parametrize("fmt", FORMATS)
def test_output_is_a_copy_of_what_was_indexed(fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another file is renamed over INPUT after it was indexed, before it is copied: the output is still
    a valid copy of the file that was indexed (before: stale offsets applied to the new file)."""
    source = write(tmp_path / f"model.{fmt}", state(0))
    other = write(tmp_path / f"other.{fmt}", state(1, extra=37))
    monkeypatch.setattr(TensorFile, "copy_into", once(TensorFile.copy_into, lambda *_: os.replace(other, source)))
    output = tmp_path / f"out.{fmt}"
    result = cli("apply", source, *SCHEME, "--seed", "1", "-q", "-o", output)
    assert result.exit_code == 0, result.stderr
    written = load_official(output)
    original = state(0)
    assert sorted(written) == sorted(original)
    for name in ("emb.weight", "head.weight"):
        assert torch.equal(written[name], original[name]), name


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("moment", ["after-indexing", "before-rename"])
def test_in_place_refuses_an_input_that_changed(fmt: str, moment: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """--in-place, and another writer renames its file over INPUT after indexing or right before the
    rename: rnninit refuses, and the other writer's file stays, complete."""
    source = write(tmp_path / f"model.{fmt}", state(0))
    other = write(tmp_path / f"other.{fmt}", state(1, extra=37))
    theirs = sha256(other)

    def replace_input(*_: object) -> None:
        os.replace(other, source)

    if moment == "after-indexing":
        monkeypatch.setattr(TensorFile, "copy_into", once(TensorFile.copy_into, replace_input))
    else:  # atomic_write sets the finished temporary file's mode right before it renames it
        monkeypatch.setattr(os, "chmod", once(os.chmod, replace_input))
    result = cli("apply", source, *SCHEME, "--seed", "1", "-q", "--in-place")
    line = one_line_error(result.exit_code, result.stderr)
    assert "changed while rnninit was rewriting it" in line and "nothing was written" in line
    assert sha256(source) == theirs
    assert sorted(load_official(source)) == sorted(state(1, extra=37))
    assert leftovers(tmp_path) == []


def _blocked_on_flock(pid: int) -> bool:
    """/proc/locks lists a process waiting for a flock as `N: -> FLOCK ... PID ...`."""
    return any(line.split()[1:3] == ["->", "FLOCK"] and str(pid) in line.split()
               for line in Path("/proc/locks").read_text().splitlines())


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs /proc/locks to see a waiting flock")
def test_in_place_run_waits_for_the_lock_then_rewrites_the_new_file(tmp_path: Path) -> None:
    """A run that finds INPUT locked (another in-place run) waits; when that run has renamed its file
    over INPUT and let go, this one rewrites the new file (not the one it opened first)."""
    source = write(tmp_path / "model.safetensors", state(0))
    other = write(tmp_path / "other.safetensors", state(1, extra=37))
    with open(source, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        process = subprocess.Popen([*MODULE, "apply", str(source), *SCHEME, "--seed", "2", "-q", "--in-place"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: _blocked_on_flock(process.pid) or process.poll() is not None, 120,
                       "the run to wait for the lock")
            assert process.poll() is None, process.communicate()[1].decode()
            os.replace(other, source)  # "the other run" finishes: its file is at INPUT
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr.decode()
    written = load_official(source)
    assert sorted(written) == sorted(state(1, extra=37))
    assert torch.equal(written["aaa.extra"], state(1, extra=37)["aaa.extra"])
    assert leftovers(tmp_path) == []


def concurrent_rounds(tmp_path: Path, fmt: str, rounds: int) -> None:
    """4 `apply --in-place` runs on one file at once, `rounds` times: every run succeeds (they take
    turns) and the file always loads with the official loaders."""
    original = write(tmp_path / f"original.{fmt}", state(0, extra=3000))  # ~20 kB more to copy
    source = tmp_path / f"model.{fmt}"
    for number in range(rounds):
        shutil.copyfile(original, source)
        processes = [subprocess.Popen([*MODULE, "apply", str(source), *SCHEME, "--seed", str(seed), "-q",
                                       "--in-place"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                     for seed in range(4)]
        try:
            for process in processes:
                _, stderr = process.communicate(timeout=300)
                assert process.returncode == 0, (number, stderr.decode())
        finally:
            for process in processes:
                process.kill()
                process.wait(60)
        written = load_official(source)
        assert sorted(written) == sorted(state(0, extra=3000)), number
        assert torch.equal(written["emb.weight"], state(0)["emb.weight"]), number
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([original.name, source.name]), number


@pytest.mark.parametrize("fmt", FORMATS)
def test_concurrent_in_place_writers(fmt: str, tmp_path: Path) -> None:
    """The fast slice: 4 in-place rewrites of one file from 4 threads of this process (each opens the
    file itself, so their flocks conflict as between processes), released together, a few rounds."""
    original = write(tmp_path / f"original.{fmt}", state(0, extra=3000))
    source = tmp_path / f"model.{fmt}"
    for number in range(4):
        shutil.copyfile(original, source)
        start = threading.Barrier(4)

        def run(seed: int, start: threading.Barrier = start) -> str:
            start.wait()
            try:
                rewrite(str(source), None, "keras", RewriteOptions(seed=seed, in_place=True, report_before=False))
            except RnnInitError as error:
                return str(error)
            return "ok"

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(run, range(4))) == ["ok"] * 4, number
        written = load_official(source)
        assert sorted(written) == sorted(state(0, extra=3000)), number
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([original.name, source.name]), number


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_concurrent_in_place_writers_many_rounds(fmt: str, tmp_path: Path) -> None:
    concurrent_rounds(tmp_path, fmt, rounds=int(os.environ.get("RNNINIT_CONCURRENT_ROUNDS", "10")))


# ---------------------------------------------------------------------------------------------
# 2. --force and folders


def model_folder(path: Path, seed: int = 0) -> Path:
    path.mkdir()
    write(path / "model.safetensors", state(seed))
    (path / "config.json").write_text(json.dumps({"model_type": "tiny"}))
    return path


def test_force_never_deletes_a_folder_holding_anything_else(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    model = model_folder(parent / "model")
    (parent / "precious.txt").write_text("mine")
    model_folder(parent / "other_model", seed=5)
    notes = model_folder(tmp_path / "notes", seed=6)
    (notes / "notes.txt").write_text("mine too")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "model.safetensors").symlink_to(parent / "precious.txt")
    before = tree(tmp_path)
    refusals = {
        parent: "contains the input",  # a folder that holds the input
        tmp_path: "contains the input",  # ... at any depth
        notes: "notes.txt",  # a model folder plus a file of the user's
        linked: "model.safetensors",  # a symbolic link where the new folder has a file
        model: "--in-place",  # the input itself
        model / "sub": "inside the input",
    }
    for output, why in refusals.items():
        result = cli("apply", model, *SCHEME, "--seed", "1", "-q", "--force", "-o", output)
        assert why in one_line_error(result.exit_code, result.stderr), output
    assert tree(tmp_path) == before

    earlier = tmp_path / "earlier"  # an earlier output is what --force may replace
    assert cli("apply", model, "--scheme", "pytorch", "--seed", "1", "-q", "-o", earlier).exit_code == 0
    result = cli("apply", model, *SCHEME, "--seed", "1", "-q", "--force", "-o", earlier)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in earlier.iterdir()) == ["config.json", "model.safetensors"]
    assert load_official(earlier / "model.safetensors")["lstm.bias_hh_l0"].abs().sum() == 0  # keras biases
    assert leftovers(tmp_path) == []


def test_folder_that_gains_a_file_before_the_swap_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OUTPUT is checked again right before the swap: a file that appeared in it meanwhile is not deleted."""
    model = model_folder(tmp_path / "model")
    earlier = tmp_path / "earlier"
    assert cli("apply", model, "--scheme", "pytorch", "--seed", "1", "-q", "-o", earlier).exit_code == 0
    before = tree(earlier)

    def user_saves_a_file(*_: object) -> None:
        (earlier / "notes.txt").write_text("written while rnninit ran")

    monkeypatch.setattr(shutil, "copymode", once(shutil.copymode, user_saves_a_file))  # while building
    result = cli("apply", model, *SCHEME, "--seed", "1", "-q", "--force", "-o", earlier)
    assert "notes.txt" in one_line_error(result.exit_code, result.stderr)
    assert tree(earlier) == {**before, "notes.txt": b"written while rnninit ran"}
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# 3. --force and special files


def special_outputs(folder: Path) -> dict[str, Path]:
    outputs = {}
    fifo = folder / "fifo.pt"
    os.mkfifo(fifo)
    outputs["fifo"] = fifo
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(folder / "socket.pt"))
    listening.close()
    outputs["socket"] = folder / "socket.pt"
    for name, target in (("null", "/dev/null"), ("dangling", str(folder / "gone.pt")), ("folder", str(folder))):
        (folder / f"link-{name}.pt").symlink_to(target)
        outputs[f"link to {name}"] = folder / f"link-{name}.pt"
    try:
        os.mknod(folder / "device.pt", 0o666 | 0o020000, os.makedev(1, 3))  # a character device, like /dev/null
        outputs["device"] = folder / "device.pt"
    except (PermissionError, OSError):
        pass  # no CAP_MKNOD here: the link to /dev/null covers devices
    return outputs


def identity(path: Path) -> tuple[int, int, int, str | None]:
    status = os.lstat(path)
    return status.st_ino, status.st_mode, status.st_rdev, os.readlink(path) if path.is_symlink() else None


def test_force_replaces_only_regular_files(tmp_path: Path) -> None:
    source = write(tmp_path / "model.pt", state(0))
    targets = tmp_path / "targets"
    targets.mkdir()
    outputs = special_outputs(targets)
    before = {name: identity(path) for name, path in outputs.items()}
    new = ["new", "lstm", "--input-size", "3", "--hidden-size", "2", *SCHEME, "-q", "--force"]
    for name, output in outputs.items():
        for command in (["apply", source, *SCHEME, "-q", "--force", "-o", output], [*new, "-o", output]):
            result = cli(*command)
            line = one_line_error(result.exit_code, result.stderr)
            assert "replaces only regular files" in line or "is a folder" in line, (name, line)
    assert {name: identity(path) for name, path in outputs.items()} == before
    assert leftovers(tmp_path) == []


def test_force_replaces_a_symbolic_link_itself(tmp_path: Path) -> None:
    """Like `sed -i`: the link becomes a regular file holding the output; its old target is untouched."""
    source = write(tmp_path / "model.pt", state(0))
    target = write(tmp_path / "target.pt", state(3))
    kept = sha256(target)
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    result = cli("apply", source, *SCHEME, "--seed", "1", "-q", "--force", "-o", link)
    assert result.exit_code == 0, result.stderr
    assert not link.is_symlink() and link.is_file()
    assert torch.equal(load_official(link)["emb.weight"], state(0)["emb.weight"])
    assert sha256(target) == kept


def test_output_that_became_special_before_the_rename_is_kept(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """OUTPUT is checked again right before the rename: a FIFO that replaced it meanwhile stays."""
    source = write(tmp_path / "model.pt", state(0))
    output = tmp_path / "out.pt"
    output.write_bytes(b"old")

    def becomes_a_fifo(*_: object) -> None:
        output.unlink()
        os.mkfifo(output)

    monkeypatch.setattr(os, "chmod", once(os.chmod, becomes_a_fifo))
    result = cli("apply", source, *SCHEME, "--seed", "1", "-q", "--force", "-o", output)
    assert "replaces only regular files" in one_line_error(result.exit_code, result.stderr)
    assert output.is_fifo()
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# 4. model folders: in place, and swapped into place


@pytest.mark.parametrize("how", ["cd-dot", "path"])
def test_in_place_on_a_model_folder(how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = model_folder(tmp_path / "model")
    write(model / "extra.safetensors", {"x": torch.ones(3)})  # not a shard: left alone
    before = tree(model)
    inode = model.stat().st_ino
    if how == "cd-dot":
        monkeypatch.chdir(model)
    result = cli("apply", "." if how == "cd-dot" else model, *SCHEME, "--seed", "1", "-q", "--in-place")
    assert result.exit_code == 0, result.stderr
    after = tree(model)
    assert sorted(after) == sorted(before)
    assert after["config.json"] == before["config.json"] and after["extra.safetensors"] == before["extra.safetensors"]
    assert after["model.safetensors"] != before["model.safetensors"]
    written = load_official(model / "model.safetensors")
    assert written["lstm.bias_hh_l0"].abs().sum() == 0 and torch.equal(written["emb.weight"], state(0)["emb.weight"])
    assert model.stat().st_ino == inode
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_folder_swap_is_not_split_by_ctrl_c(exchange: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGINT that arrives in the middle of the swap (between the two renames where renameat2 is
    missing) is held until the swap is done: the new folder is in place, the command succeeded."""
    model = model_folder(tmp_path / "model")
    earlier = tmp_path / "earlier"
    assert cli("apply", model, "--scheme", "pytorch", "--seed", "1", "-q", "-o", earlier).exit_code == 0
    real_rename = os.rename

    def ctrl_c_midway(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        real_rename(source, target, *args, **kwargs)
        if Path(target).name.endswith(".rnninit-old"):  # the old folder is aside, the new one not yet in place
            os.kill(os.getpid(), signal.SIGINT)

    if exchange:
        real_exchange = folders._renameat2

        def ctrl_c_then_exchange(source: Path, target: Path, flags: int) -> bool:
            os.kill(os.getpid(), signal.SIGINT)
            return real_exchange(source, target, flags)

        monkeypatch.setattr(folders, "_renameat2", ctrl_c_then_exchange)
    else:
        monkeypatch.setattr(folders, "_renameat2", lambda *_: False)
        monkeypatch.setattr(os, "rename", ctrl_c_midway)
    result = cli("apply", model, *SCHEME, "--seed", "1", "-q", "--force", "-o", earlier)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in earlier.iterdir()) == ["config.json", "model.safetensors"]
    assert load_official(earlier / "model.safetensors")["lstm.bias_hh_l0"].abs().sum() == 0
    assert leftovers(tmp_path) == []


def run_paused(command: list[str], moment: str, ready: Path, signum: int) -> tuple[int, str]:
    """Run rnninit with the HARDENING_SAFETY pause at `moment`, send `signum` there; (status, stderr)."""
    env = {**os.environ, "HARDENING_SAFETY": moment, "HARDENING_SAFETY_READY": str(ready)}
    process = subprocess.Popen([sys.executable, HELPER, "rnninit", *command], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=env)
    try:
        wait_until(lambda: ready.exists() or process.poll() is not None, 120, moment)
        assert process.poll() is None, process.communicate()[1].decode()
        process.send_signal(signum)
        ready.with_name(ready.name + ".signalled").touch()
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
        process.wait(60)
    return process.returncode, stderr.decode()


def test_ctrl_c_during_the_folder_swap_completes_it(tmp_path: Path) -> None:
    model = model_folder(tmp_path / "model")
    earlier = tmp_path / "earlier"
    assert cli("apply", model, "--scheme", "pytorch", "--seed", "1", "-q", "-o", earlier).exit_code == 0
    code, stderr = run_paused(["apply", str(model), *SCHEME, "--seed", "1", "-q", "--force", "-o", str(earlier)],
                              "held", tmp_path / "ready", signal.SIGINT)
    assert code == 0 and stderr == "", stderr
    assert load_official(earlier / "model.safetensors")["lstm.bias_hh_l0"].abs().sum() == 0
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# 5. the exit status after the rename


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_after_the_rename_exits_0(signum: int, tmp_path: Path) -> None:
    source = write(tmp_path / "model.safetensors", state(0))
    output = tmp_path / "out.safetensors"
    code, stderr = run_paused(["apply", str(source), *SCHEME, "--seed", "1", "-o", str(output)], "committed",
                              tmp_path / "ready", signum)
    assert code == 0, stderr
    assert "error" not in stderr and "Traceback" not in stderr, stderr
    assert load_official(output)["lstm.bias_hh_l0"].abs().sum() == 0
    assert leftovers(tmp_path) == []


def test_ctrl_c_during_shutdown_prints_no_traceback(tmp_path: Path) -> None:
    """A Ctrl-C while the interpreter shuts down (torch's atexit handlers run then) changes neither the
    output nor the exit status of a command that has finished."""
    source = write(tmp_path / "model.pt", state(0))
    code, stderr = run_paused(["inspect", str(source)], "atexit", tmp_path / "ready", signal.SIGINT)
    assert code == 0, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr and "error" not in stderr, stderr


# ---------------------------------------------------------------------------------------------
# 16. the longest legal names


def test_longest_output_names_work(tmp_path: Path) -> None:
    source = write(tmp_path / "model.pt", state(0))
    model = model_folder(tmp_path / "model")
    outputs = {
        "pt": tmp_path / ("p" * 252 + ".pt"),
        "safetensors": tmp_path / ("s" * 243 + ".safetensors"),
        "folder": tmp_path / ("f" * 255),
        "new": tmp_path / ("n" * 252 + ".pt"),
    }
    assert all(len(path.name.encode()) == 255 for path in outputs.values())
    commands = {
        "pt": ["apply", source, *SCHEME, "-q", "-o", outputs["pt"]],
        "safetensors": ["apply", source, *SCHEME, "-q", "-o", outputs["safetensors"]],
        "folder": ["apply", model, *SCHEME, "-q", "-o", outputs["folder"]],
        "new": ["new", "gru", "--input-size", "3", "--hidden-size", "2", *SCHEME, "-q", "-o", outputs["new"]],
    }
    for kind, command in commands.items():
        for again in ([], ["--force"]):  # a new OUTPUT, then replacing it
            result = cli(*command, *again)
            assert result.exit_code == 0, (kind, result.stderr)
    load_official(outputs["pt"])
    load_official(outputs["safetensors"])
    load_official(outputs["folder"] / "model.safetensors")
    assert leftovers(tmp_path) == []


def test_full_or_closed_standard_output_is_one_error_line(tmp_path: Path) -> None:
    """`-o -` or `--json` into /dev/full, or with standard output closed by the shell (`>&-`)."""
    new = "rn new lstm --input-size 8 --hidden-size 16 --scheme keras --seed 0 -o - --quiet"
    script = (f"cd {str(tmp_path)!r}; rn() {{ {sys.executable} -m rnninit_cli \"$@\"; }}; "
              f"{new} > /dev/full; echo $? >&2; {new} >&-; echo $? >&2; "
              "rn schemes --json >&-; echo $? >&2")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, check=False)
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: No space left on device", "4",  # an output that cannot be written (Exit status)
                     "error: standard output is closed; redirect it to a file or a pipe", "4",
                     "error: standard output is closed; redirect it to a file or a pipe", "4"], result.stderr


@pytest.mark.parametrize("kind", ["file", "new folder", "replaced folder"])
def test_a_stop_asked_for_earlier_keeps_every_output_out_of_place(kind: str, tmp_path: Path) -> None:
    """A signal the CLI could not act on at once (it came during an import) is recorded; however late it is
    delivered again, no rename happens after it: the write ends with KeyboardInterrupt, nothing lands and no
    temporary file or folder is left. A program's other thread writing meanwhile is not the command: its write
    lands. Without a recorded stop the main thread's write lands too."""
    from rnninit_cli.interruption import Stop, reset_stop

    output = tmp_path / ("out.pt" if kind == "file" else "out")
    if kind == "replaced folder":
        output.mkdir()
        (output / "model.safetensors").write_bytes(b"old")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    Stop.signum = signal.SIGTERM
    try:
        with pytest.raises(KeyboardInterrupt):
            write_output(kind, output, tmp_path)
        assert Stop.unwinding  # a second signal now leaves the cleanup alone
        assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
        assert leftovers(tmp_path) == []
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(write_output, kind, output, tmp_path, b"thread").exception() is None
        assert landed(kind, output) == b"thread"
    finally:
        reset_stop()
    write_output(kind, output, tmp_path)
    assert landed(kind, output) == b"new"


def write_output(kind: str, output: Path, tmp_path: Path, content: bytes = b"new") -> None:
    """Write CONTENT atomically at OUTPUT: a file, or a folder holding model.safetensors."""
    from rnninit_cli.formats.atomic import atomic_write

    if kind == "file":
        atomic_write(output, lambda sink: sink.write(content))
    else:
        folders.build_folder(output, tmp_path / "input",
                             lambda staging: (staging / "model.safetensors").write_bytes(content))


def landed(kind: str, output: Path) -> bytes:
    return (output if kind == "file" else output / "model.safetensors").read_bytes()


@pytest.mark.parametrize("kind", ["file", "new folder"])
def test_a_signal_during_a_failed_writes_cleanup_does_not_cut_it_short(kind: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk fails the write; a Ctrl-C arrives while its temporary file or folder is being removed. The
    signal waits for the removal (KeyboardInterrupt afterwards), so nothing is left behind."""
    output = tmp_path / ("out.pt" if kind == "file" else "out")
    real_unlink, real_rmtree = Path.unlink, shutil.rmtree

    def ctrl_c_then_unlink(self: Path, *args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        real_unlink(self, *args, **kwargs)

    def ctrl_c_then_rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        real_rmtree(path, *args, **kwargs)

    def full_disk(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "unlink", ctrl_c_then_unlink)
    monkeypatch.setattr(shutil, "rmtree", ctrl_c_then_rmtree)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            if kind == "file":
                from rnninit_cli.formats.atomic import atomic_write

                atomic_write(output, full_disk)
            else:
                folders.build_folder(output, tmp_path / "input", full_disk)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert leftovers(tmp_path) == [] and not output.exists()


def test_held_signals_put_every_handler_back_even_if_one_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGINT that arrives right after its handler was put back raises KeyboardInterrupt between the two
    restores: SIGTERM's handler is put back all the same (it was left as the internal holder, so one SIGTERM was
    swallowed for the rest of the process)."""
    from rnninit_cli.formats.atomic import signals_held

    real_signal = signal.signal
    fired: list[bool] = []

    def signal_then_ctrl_c(signum: int, handler: Any) -> Any:
        previous = real_signal(signum, handler)
        if signum == signal.SIGINT and getattr(handler, "__name__", "") != "hold" and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # its handler, just put back, runs at the next bytecode
        return previous

    def mine(signum: int, frame: Any) -> None:
        pass

    before = real_signal(signal.SIGINT, signal.default_int_handler), real_signal(signal.SIGTERM, mine)
    try:
        monkeypatch.setattr(signal, "signal", signal_then_ctrl_c)
        with pytest.raises(KeyboardInterrupt), signals_held():
            pass
        monkeypatch.undo()
        assert fired
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        monkeypatch.undo()
        real_signal(signal.SIGINT, before[0])
        real_signal(signal.SIGTERM, before[1])
