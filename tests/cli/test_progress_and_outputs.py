"""Issue 21 §3: progress bars on a terminal's standard error (and nowhere else), Ctrl-C while one shows, and output
names that must agree with what is written there (`-o`, `--format`, folders, `--plot`, `-o -` on a terminal)."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import Result

from tests.builders import file_format, temp_leftovers
from tests.terminals import read_until_closed, run_on_terminal, terminal_environment

SCHEME = ["-s", "keras", "--seed", "3"]
# a count of bytes out of a known total, as the bar shows it ("1.2/4.5 MB"): determinate, never "0/?"
DETERMINATE = re.compile(r"\d+(\.\d+)?/\d+(\.\d+)? (bytes|kB|MB|GB)")
TOTAL = re.compile(r"(\d+(\.\d+)?)/(\d+(\.\d+)? (bytes|kB|MB|GB))")
# the CLI with the bar's delay set to 0, so that a small checkpoint shows it (the real delay is 1 s)
NO_DELAY = "import sys, rnninit_cli.cli as cli; cli.PROGRESS_DELAY_S = 0; sys.argv[0] = 'rnninit'; cli.main()"


def one_error(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def lstm_pt(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "ckpt.pt"
    path.parent.mkdir()
    torch.manual_seed(0)
    torch.save({"model": torch.nn.LSTM(24, 48, 2).state_dict(), "epoch": 7}, path)
    return path


# -- names and formats ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fmt"), [("w.safetensors", "pt"), ("w.ckpt", "safetensors"),
                                           ("W.PTH", "safetensors"), ("model.bin", "safetensors"),
                                           (".safetensors", "pt"), (".pt", "safetensors")])
def test_a_format_that_contradicts_the_name_is_refused(name: str, fmt: str, cli: Callable[..., Result],
                                                       lstm_pt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    line = one_error(cli("apply", lstm_pt, *SCHEME, "-o", out / name, "--format", fmt), 2)
    assert name in line and fmt in line
    line = one_error(cli("new", "gru", "--input-size", 3, "--hidden-size", 4, *SCHEME, "-o", out / name,
                         "--format", fmt), 2)
    assert name in line
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["w.npz", "weights.onnx", "model.h5", "ckpt.pt.gz", "v1.2"])
def test_an_unknown_extension_is_refused(name: str, cli: Callable[..., Result], lstm_pt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for fmt in ([], ["--format", "pt"]):
        line = one_error(cli("apply", lstm_pt, *SCHEME, "-o", out / name, *fmt), 2)
        assert ".pt" in line and ".safetensors" in line and Path(name).suffix in line
    one_error(cli("new", "lstm", "--input-size", 3, "--hidden-size", 4, *SCHEME, "-o", out / name), 2)
    one_error(cli("apply", lstm_pt, *SCHEME, "-o", out / name, "--dry-run"), 2)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", [".safetensors", ".SAFETENSORS"])
def test_a_hidden_name_that_is_an_extension_names_its_format(name: str, cli: Callable[..., Result], lstm_pt: Path,
                                                             tmp_path: Path) -> None:
    """`-o .safetensors` is a safetensors file (Path.suffix sees no extension there and took the input's format)."""
    assert cli("apply", lstm_pt, *SCHEME, "-q", "--tensors-only", "-o", tmp_path / name).exit_code == 0
    assert (tmp_path / name).read_bytes()[8:9] == b"{"  # safetensors: an 8-byte header length, then JSON


@pytest.mark.parametrize("name", ["out.safetensors/", "out.pt/", "outdir/"])
def test_a_file_output_named_like_a_folder_is_refused(name: str, cli: Callable[..., Result], lstm_pt: Path,
                                                      tmp_path: Path) -> None:
    """A trailing / names a folder; a file's output is a file (cp says "Not a directory"): nothing is written."""
    one_error(cli("apply", lstm_pt, *SCHEME, "-o", f"{tmp_path}/{name}"), 2)
    assert sorted(path.name for path in tmp_path.iterdir()) == [lstm_pt.parent.name]


def test_names_that_say_nothing_else_still_work(cli: Callable[..., Result], lstm_pt: Path, tmp_path: Path) -> None:
    """No extension: --format, else the input's format; INPUT's own extension (`model.weights` → `out.weights`)."""
    assert cli("apply", lstm_pt, *SCHEME, "-o", tmp_path / "plain", "-q").exit_code == 0
    assert file_format(tmp_path / "plain") == "pt"
    result = cli("apply", lstm_pt, *SCHEME, "-o", tmp_path / "tensors", "--format", "safetensors", "--tensors-only",
                 "-q")
    assert result.exit_code == 0, result.stderr
    assert file_format(tmp_path / "tensors") == "safetensors"
    renamed = tmp_path / "model.weights"
    renamed.write_bytes(lstm_pt.read_bytes())
    assert cli("apply", renamed, *SCHEME, "-o", tmp_path / "out.weights", "-q").exit_code == 0
    assert file_format(tmp_path / "out.weights") == "pt"
    assert cli("apply", renamed, *SCHEME, "--in-place", "-q").exit_code == 0
    result = cli("apply", lstm_pt, *SCHEME, "-o", tmp_path / "agree.safetensors", "--format", "safetensors",
                 "--tensors-only", "-q")
    assert result.exit_code == 0, result.stderr


def save_dcp(folder: Path) -> None:
    import torch.distributed.checkpoint as dcp

    torch.manual_seed(1)
    dcp.save({"rnn": torch.nn.GRU(5, 6).state_dict()}, checkpoint_id=folder, no_dist=True)


def save_model_folder(folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir()
    torch.manual_seed(2)
    save_file(torch.nn.LSTM(5, 6).state_dict(), folder / "model.safetensors")


@pytest.mark.parametrize("make", [save_dcp, save_model_folder], ids=["dcp", "model-folder"])
@pytest.mark.parametrize("name", ["out.safetensors", "out.pt", "OUT.CKPT"])
def test_a_folder_output_named_like_a_file_is_refused(make: Callable[[Path], None], name: str,
                                                      cli: Callable[..., Result], tmp_path: Path) -> None:
    """A folder's output is a folder of the same kind: `-o out.safetensors` once wrote a DCP folder by that name."""
    source = tmp_path / "src"
    make(source)
    out = tmp_path / "out"
    out.mkdir()
    line = one_error(cli("apply", source, *SCHEME, "-o", out / name), 2)
    assert "folder" in line and name in line
    assert list(out.iterdir()) == []
    result = cli("apply", source, *SCHEME, "-o", out / "renamed", "-q")  # what the message suggests works
    assert result.exit_code == 0, result.stderr
    assert (out / "renamed").is_dir()


# -- --plot ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "magic"), [(".svg", b"<?xml"), (".SVG", b"<?xml"), (".pdf", b"%PDF-"),
                                               (".png", b"\x89PNG")])
def test_plot_writes_the_format_its_name_says(suffix: str, magic: bytes, cli: Callable[..., Result], lstm_pt: Path,
                                              tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    first, second = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    for path in (first, second):
        result = cli("inspect", lstm_pt, "--plot", path)
        assert result.exit_code == 0, result.stderr
    assert first.read_bytes().startswith(magic)
    if suffix.lower() == ".svg":
        assert b"<svg" in first.read_bytes()
    assert first.read_bytes() == second.read_bytes()  # no date, no random ids: the same file every time


@pytest.mark.parametrize("name", ["p.jpg", "p.txt", "p", "plot.png.bak"])
def test_plot_with_an_unknown_extension_is_refused(name: str, cli: Callable[..., Result], lstm_pt: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "plots"
    out.mkdir()
    line = one_error(cli("inspect", lstm_pt, "--plot", out / name), 2)
    assert ".png" in line and ".svg" in line and ".pdf" in line
    assert list(out.iterdir()) == []
    assert one_error(cli("inspect", lstm_pt, "--plot", out / name, "--json"), 2)
    # found before the checkpoint is read: a usage error, not the missing file's
    assert ".svg" in one_error(cli("inspect", tmp_path / "missing.pt", "--plot", out / name), 2)
    assert list(out.iterdir()) == []


def test_plot_replaces_a_file_only_with_force(cli: Callable[..., Result], lstm_pt: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plot = tmp_path / "gates.png"
    plot.write_bytes(b"precious")
    line = one_error(cli("inspect", lstm_pt, "--plot", plot), 4)
    assert "--force" in line
    assert plot.read_bytes() == b"precious"
    result = cli("inspect", lstm_pt, "--plot", plot, "--force")
    assert result.exit_code == 0, result.stderr
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert temp_leftovers(tmp_path) == []


def test_plot_never_replaces_the_checkpoint(cli: Callable[..., Result], lstm_pt: Path, tmp_path: Path) -> None:
    disguised = tmp_path / "ckpt.png"
    disguised.write_bytes(lstm_pt.read_bytes())
    one_error(cli("inspect", disguised, "--plot", disguised, "--force"), 4)
    assert disguised.read_bytes() == lstm_pt.read_bytes()
    folder = tmp_path / "plot.svg"
    folder.mkdir()
    one_error(cli("inspect", lstm_pt, "--plot", folder, "--force"), 4)
    assert folder.is_dir()


# -- -o - on a terminal --------------------------------------------------------------------------------------------


def run_with_stdout_on_terminal(argv: list[str], cwd: Path) -> tuple[int, bytes, str]:
    """Run the CLI with standard output on a pseudo-terminal and standard error on a pipe: (status, what reached
    the terminal, standard error)."""
    master, slave = os.openpty()
    process = subprocess.Popen([sys.executable, "-m", "rnninit_cli.cli", *argv], stdout=slave, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, cwd=cwd, env=terminal_environment())
    os.close(slave)
    shown = read_until_closed(master, 120)
    os.close(master)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, shown, stderr.decode()


@pytest.mark.parametrize("command", [["apply", "ckpt.pt", *SCHEME],
                                     ["new", "lstm", "--input-size", "3", "--hidden-size", "4", *SCHEME]],
                         ids=["apply", "new"])
def test_binary_to_a_terminal_is_refused(command: list[str], lstm_pt: Path) -> None:
    status, shown, stderr = run_with_stdout_on_terminal([*command, "-o", "-"], lstm_pt.parent)
    assert status == 2, stderr
    assert shown == b""
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and "terminal" in stderr
    # a pipe still gets the checkpoint
    piped = subprocess.run([sys.executable, "-m", "rnninit_cli.cli", *command, "-o", "-", "-q"], capture_output=True,
                           cwd=lstm_pt.parent, check=False, timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout[:2] == b"PK"


def test_dry_run_to_standard_output_on_a_terminal_is_fine(lstm_pt: Path) -> None:
    status, _, stderr = run_with_stdout_on_terminal(["apply", "ckpt.pt", *SCHEME, "-o", "-", "--dry-run"],
                                                    lstm_pt.parent)
    assert status == 0, stderr


# -- progress ----------------------------------------------------------------------------------------------------


COMMANDS = {
    "apply": (["apply", "in/ckpt.pt", *SCHEME, "-o", "out.pt"], "initializing"),
    "new": (["new", "lstm", "--input-size", "24", "--hidden-size", "48", *SCHEME, "-o", "new.pt"], "initializing"),
    "inspect": (["inspect", "in/ckpt.pt"], "inspecting"),
    "inspect-json": (["inspect", "in/ckpt.pt", "--json"], "inspecting"),
    "verify": (["verify", "in/ckpt.pt", "-s", "pytorch"], "verifying"),
    "diff": (["diff", "in/ckpt.pt", "in/ckpt.pt"], "comparing"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_determinate_bar_on_a_terminal(command: str, lstm_pt: Path, tmp_path: Path) -> None:
    """On a terminal the bar counts bytes of a known total, with the time left, and is gone once the answer shows;
    the files written are the same bytes as written off a terminal."""
    argv, description = list(COMMANDS[command][0]), COMMANDS[command][1]
    shown = run_on_terminal(["-c", NO_DELAY, *argv], columns=80, env=terminal_environment(), cwd=tmp_path)
    bars = [line for line in re.split(r"[\r\n]|\x1b\[2K", shown) if description in line]
    assert bars, shown
    plain = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line) for line in bars]
    assert all(DETERMINATE.search(line) and "ETA" in line for line in plain), plain
    assert "?" not in "".join(plain)  # never a count without a total
    totals = {match.group(3) for line in plain if (match := TOTAL.search(line))}
    assert len(totals) == 1 and not totals.pop().startswith("0 "), plain  # one total, known from the first frame
    assert "error:" not in shown, shown
    if command in ("apply", "new"):
        written = tmp_path / argv[argv.index("-o") + 1]
        again = tmp_path / f"again-{written.name}"
        argv[argv.index("-o") + 1] = str(again)
        done = subprocess.run([sys.executable, "-c", NO_DELAY, *argv], capture_output=True, cwd=tmp_path, check=False,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        assert written.read_bytes() == again.read_bytes()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_bar_off_a_terminal(command: str, lstm_pt: Path, tmp_path: Path) -> None:
    """Standard error on a pipe gets no bar, whatever standard output is, even with FORCE_COLOR."""
    argv, description = COMMANDS[command]
    for colours in ({}, {"FORCE_COLOR": "1", "TTY_COMPATIBLE": "1"}):
        done = subprocess.run([sys.executable, "-c", NO_DELAY, *argv, *(["--force"] if "-o" in argv else [])],
                              capture_output=True, cwd=tmp_path, check=False, timeout=300,
                              env=terminal_environment(**colours))
        assert done.returncode in (0, 1), done.stderr
        assert description not in done.stderr.decode() and "ETA" not in done.stderr.decode()
        assert "\x1b" not in done.stderr.decode()


def test_quiet_shows_no_bar(lstm_pt: Path, tmp_path: Path) -> None:
    shown = run_on_terminal(["-c", NO_DELAY, "apply", "in/ckpt.pt", *SCHEME, "-o", "out.pt", "-q"], columns=80,
                            env=terminal_environment(), cwd=tmp_path)
    assert "initializing" not in shown and "ETA" not in shown
    assert (tmp_path / "out.pt").exists()


def test_a_short_run_shows_no_bar(lstm_pt: Path, tmp_path: Path) -> None:
    """With the real delay a run that ends within it draws nothing: not even the cursor is touched."""
    shown = run_on_terminal(["-m", "rnninit_cli.cli", "inspect", "in/ckpt.pt"], columns=80,
                            env=terminal_environment(), cwd=tmp_path)
    assert "weight_hh_l1" in shown
    assert "inspecting" not in shown and "ETA" not in shown and "\x1b[?25l" not in shown


@pytest.mark.parametrize("columns", [40, 57, 132])
def test_the_bar_fits_the_terminal(columns: int, lstm_pt: Path, tmp_path: Path) -> None:
    shown = run_on_terminal(["-c", NO_DELAY, "inspect", "in/ckpt.pt"], columns=columns, env=terminal_environment(),
                            cwd=tmp_path)
    bars = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line) for line in re.split(r"[\r\n]|\x1b\[2K", shown)
            if "inspecting" in line]
    assert bars, shown
    assert all(len(line) <= columns for line in bars), bars


# -- Ctrl-C while the bar shows -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 100 MB of LSTM: a few seconds of work for every command."""
    path = tmp_path_factory.mktemp("large") / "large.pt"
    torch.manual_seed(0)
    torch.save({"model": torch.nn.LSTM(1024, 1024, 3).state_dict(), "step": 1}, path)
    return path


def interrupt_when_the_bar_shows(argv: list[str], cwd: Path, marker: str) -> tuple[int, str]:
    """Run the `rnninit` command (a console script of that name: the package takes the signals over as the real one
    does), its bar shown at once, on an 80-column pseudo-terminal; send SIGINT once `marker` (the bar) shows, and
    return (status, everything it showed)."""
    script = cwd / "bin" / "rnninit"
    script.parent.mkdir(exist_ok=True)
    script.write_text(NO_DELAY.replace("; sys.argv[0] = 'rnninit'", ""))
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 80, 0, 0))
    process = subprocess.Popen([sys.executable, str(script), *argv], stdin=slave, stdout=slave,
                               stderr=slave, cwd=cwd, env=terminal_environment(), start_new_session=True)
    os.close(slave)
    shown, signalled = b"", False
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
            if not signalled and marker.encode() in shown:
                process.send_signal(signal.SIGINT)
                signalled = True
        assert signalled, shown.decode(errors="replace")
        return process.wait(timeout=60), shown.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)


@pytest.mark.slow
@pytest.mark.parametrize("command", [["apply", "large.pt", "-s", "keras", "-o", "out.pt"],
                                     ["inspect", "large.pt", "--wide"], ["verify", "large.pt", "-s", "keras"],
                                     ["diff", "large.pt", "large.pt"]],
                         ids=["apply", "inspect", "verify", "diff"])
def test_ctrl_c_while_the_bar_shows(command: list[str], large_pt: Path) -> None:
    status, shown = interrupt_when_the_bar_shows(command, large_pt.parent, "ETA")
    assert status == 130, shown
    tail = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown).split("ETA")[-1]
    assert "error: interrupted" in tail and "Traceback" not in shown
    assert "parameter" not in tail  # no answer printed after the interruption
    assert not (large_pt.parent / "out.pt").exists() and temp_leftovers(large_pt.parent) == []


def test_the_reports_grow_from_zero_to_the_total(lstm_pt: Path, tmp_path: Path) -> None:
    """What the bar is drawn from: (bytes done, bytes in all), never shrinking, from 0 to the parameters' size."""
    from rnninit_cli.diagnostics import diagnose, diff, verify
    from rnninit_cli.rewrite import inspect_checkpoint, rewrite

    found = inspect_checkpoint(str(lstm_pt))
    size = sum(values.nbytes for values in found.tensors.values())
    runs = {"inspect": (lambda report: diagnose(found.tensors, layers=found.layers, on_progress=report), size),
            # a layer's whole parameters are read (scheme recognition), also those --only leaves out of the table
            "inspect --only": (lambda report: diagnose(found.tensors, layers=found.layers, only="weight_hh",
                                                       on_progress=report), size),
            "verify": (lambda report: verify(found.tensors, "pytorch", layers=found.layers, on_progress=report), size),
            "diff": (lambda report: diff(found.tensors, found.tensors, layers_a=found.layers, layers_b=found.layers,
                                         on_progress=report), 2 * size),
            "apply": (lambda report: rewrite(str(lstm_pt), str(tmp_path / "out.pt"), "keras", on_progress=report),
                      size)}
    for name, (run, total) in runs.items():
        reports: list[tuple[int, int]] = []
        run(lambda done, whole, reports=reports: reports.append((done, whole)))
        assert reports[0] == (0, total) and reports[-1] == (total, total), (name, reports)
        assert all(whole == total for _, whole in reports), name
        assert [done for done, _ in reports] == sorted({done for done, _ in reports}), (name, reports)
        assert len(reports) > 4, name  # block by block, not one jump
