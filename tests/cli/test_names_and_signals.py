"""Issue 19, section 4: names that are not valid UTF-8, and signals during start-up.

1. A tensor name may hold a lone surrogate: torch.save pickles any str and `torch.load(weights_only=True)` reads
   it back. Every command takes such names: seeds come from the name's bytes with `surrogatepass` (a valid name
   keeps its UTF-8 bytes, so its seeds are unchanged), human output shows the surrogate escaped (`\\udcff`),
   --json is ASCII with JSON's own escape (Python's json reads back the exact name), a .pt output keeps the name
   exactly, and a .safetensors output (a UTF-8 header) is refused with one error line naming the key.
2. SIGINT and SIGTERM from the first line of rnninit_cli on end with exit 130 / 143 and one `error: interrupted`
   line: during the imports of start-up, during an import that a command makes (a half-imported module, or an
   error that the interrupted import turned into), and at random moments of a real run. Before that line
   (the interpreter's own start-up) Python's default handler still prints a traceback: the random-moment test
   tolerates only that window, recognised by rnninit's SIGTERM handler not being installed yet.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from builders import read_metadata, temp_leftovers
from typer.testing import Result

import rnninit_cli
from rnninit_cli.init import drawing

PREFIX = "enc\udcff.rnn."  # a byte 0xff read with surrogateescape
ODD = "emb\ud800\x1b[31m"  # a lone high surrogate and an escape sequence, in a tensor that is not recurrent
SCRIPT = Path(sys.executable).parent / "rnninit"
SCHEME = ("--scheme", "keras", "--seed", "1")


def surrogate_state() -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lstm = torch.nn.LSTM(3, 4)
    state = {PREFIX + name: tensor.detach().clone() for name, tensor in lstm.state_dict().items()}
    return state | {ODD: torch.arange(2.0)}


@pytest.fixture
def surrogate_pt(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    torch.save(surrogate_state(), path)
    return path


def assert_shown_escaped(text: str) -> None:
    """Human output: the surrogates and the escape sequence shown as escapes, the text valid UTF-8."""
    text.encode("utf-8")  # strict: a lone surrogate here would raise
    assert "\x1b" not in text, text
    assert "enc\\udcff.rnn." in text, text


def assert_one_error(result: Result | subprocess.CompletedProcess, *, code: int = 1) -> str:
    stderr = result.stderr if isinstance(result, Result) else result.stderr.decode()
    status = result.exit_code if isinstance(result, Result) else result.returncode
    assert status == code, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    stderr.encode("utf-8")
    return lines[0]


def json_names(document: Any) -> set[str]:
    """Every value of a "name" key anywhere in a JSON document."""
    if isinstance(document, dict):
        found = {document["name"]} if isinstance(document.get("name"), str) else set()
        return found.union(*(json_names(value) for value in document.values()))
    if isinstance(document, list):
        return set().union(*(json_names(value) for value in document))
    return set()


def load_json(text: str) -> Any:
    """--json output: ASCII (so valid UTF-8), one document."""
    assert text.isascii(), text
    return json.loads(text)


# ---------------------------------------------------------------------------------------------
# 1. names that are not valid UTF-8: seeds


@pytest.mark.parametrize("name", ["lstm.weight_ih_l0", "écho.gru.weight_hh_l0", "模型.rnn.bias_ih_l0", "a\tb"])
@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1])
@pytest.mark.parametrize("stream", ["matrix", "f", "block"])
def test_seeds_of_valid_names_are_unchanged(name: str, seed: int, stream: str) -> None:
    """The formula of every earlier release, computed here: same seed, same name → same values as before."""
    digest = hashlib.sha256(f"rnninit\0{seed}\0{name}\0{stream}".encode()).digest()
    assert drawing._generator(seed, name, stream).initial_seed() == int.from_bytes(digest[:8], "little") & (2**63 - 1)


def test_seed_of_one_name_is_pinned() -> None:
    """The value that the release before this change computed (its outputs are byte for byte those of today)."""
    assert drawing._generator(1, "lstm.weight_hh_l0", "matrix").initial_seed() == 1428758769633754425


def test_seeds_of_surrogate_names_are_defined_and_distinct() -> None:
    seeds = {name: drawing._generator(7, name, "matrix").initial_seed() for name in ("a\udcff", "a\ud800", "a", "aÿ")}
    assert len(set(seeds.values())) == 4, seeds
    digest = hashlib.sha256("rnninit\x007\x00a\udcff\x00matrix".encode("utf-8", "surrogatepass")).digest()
    assert seeds["a\udcff"] == int.from_bytes(digest[:8], "little") & (2**63 - 1)


# ---------------------------------------------------------------------------------------------
# 1. names that are not valid UTF-8: every command, in-process


def test_apply_to_pt_keeps_the_names_exactly(cli: Callable[..., Result], surrogate_pt: Path, tmp_path: Path) -> None:
    outputs = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for output in outputs:
        result = cli("apply", surrogate_pt, *SCHEME, "-o", output)
        assert result.exit_code == 0, result.stderr
        assert_shown_escaped(result.stdout)
    first, second = (torch.load(output, weights_only=True) for output in outputs)
    assert list(first) == list(surrogate_state())
    assert torch.equal(first[PREFIX + "bias_ih_l0"][4:8], torch.ones(4))  # keras: forget gate bias 1
    assert not torch.equal(first[PREFIX + "weight_hh_l0"], surrogate_state()[PREFIX + "weight_hh_l0"])
    assert all(torch.equal(first[name], second[name]) for name in first), "same seed, other values"


@pytest.mark.parametrize("options", [["-q"], ["--dry-run"], ["--dry-run", "--json"], ["--json"], ["-o", "-"]],
                         ids=["quiet", "dry-run", "dry-run-json", "json", "stdout"])
def test_apply_variants(options: list[str], cli: Callable[..., Result], surrogate_pt: Path, tmp_path: Path) -> None:
    output = [] if "--dry-run" in options or "-o" in options else ["-o", tmp_path / "out.pt"]
    result = cli("apply", surrogate_pt, *SCHEME, *options, *output)
    assert result.exit_code == 0, result.stderr
    result.stderr.encode("utf-8")
    if "--json" in options:
        assert json_names(load_json(result.stdout)) == {PREFIX + name for name in
                                                        ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")}
    elif "-q" in options:
        assert result.stdout == "" and result.stderr == ""
    elif "-o" in options:
        assert list(torch.load(io.BytesIO(result.stdout_bytes), weights_only=True)) == list(surrogate_state())
        assert_shown_escaped(result.stderr)
    else:
        assert_shown_escaped(result.stdout)


def test_safetensors_output_is_refused_by_name(cli: Callable[..., Result], surrogate_pt: Path,
                                               tmp_path: Path) -> None:
    output = tmp_path / "out.safetensors"
    line = assert_one_error(cli("apply", surrogate_pt, *SCHEME, "-o", output), code=4)
    assert "the tensor name 'emb\\ud800\\x1b[31m' is not valid UTF-8" in line and "write .pt" in line, line
    assert not output.exists() and temp_leftovers(tmp_path) == []
    line = assert_one_error(cli("new", "lstm", "--input-size", "2", "--hidden-size", "3", *SCHEME,
                                "--prefix", "\udcff", "-o", output), code=4)
    assert "the tensor name '\\udcff." in line and "write .pt" in line, line
    assert not output.exists() and temp_leftovers(tmp_path) == []


def test_only_with_a_surrogate_is_recorded(cli: Callable[..., Result], surrogate_pt: Path, tmp_path: Path) -> None:
    """--only's pattern (a command-line byte 0xff) goes into the .pt's record exactly; a safetensors header
    cannot hold it, so that output is refused naming the entry."""
    output = tmp_path / "out.pt"
    assert cli("apply", surrogate_pt, *SCHEME, "--only", "enc\udcff", "-o", output).exit_code == 0
    assert read_metadata(output)["rnninit.only"] == "enc\udcff"
    shown = cli("inspect", output)
    assert shown.exit_code == 0, shown.stderr
    assert "only 'enc\\udcff'" in shown.stdout, shown.stdout
    assert load_json(cli("inspect", output, "--json").stdout)["metadata"]["rnninit.only"] == "enc\udcff"
    clean = tmp_path / "clean.pt"
    torch.save(torch.nn.LSTM(2, 3).state_dict(), clean)
    line = assert_one_error(cli("apply", clean, *SCHEME, "--only", "bias|\udcff", "-o", tmp_path / "out.safetensors"),
                            code=4)
    assert "the metadata entry 'rnninit.only' is not valid UTF-8" in line, line


@pytest.mark.parametrize("options", [[], ["--wide"], ["--json"], ["--plot"]])
def test_inspect_variants(options: list[str], cli: Callable[..., Result], surrogate_pt: Path, tmp_path: Path) -> None:
    plot = tmp_path / "plot.png"
    result = cli("inspect", surrogate_pt, *options, *([plot] if options == ["--plot"] else []))
    assert result.exit_code == 0, result.stderr
    result.stderr.encode("utf-8")
    if options == ["--json"]:
        document = load_json(result.stdout)
        assert document["layers"][0]["prefix"] == PREFIX
        assert PREFIX + "weight_hh_l0" in json_names(document)
    else:
        assert_shown_escaped(result.stdout)
    if options == ["--plot"]:
        assert plot.read_bytes().startswith(b"\x89PNG")


def test_verify_and_diff(cli: Callable[..., Result], surrogate_pt: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.pt"
    assert cli("apply", surrogate_pt, *SCHEME, "-q", "-o", output).exit_code == 0
    verified = cli("verify", output, "--scheme", "keras")
    assert verified.exit_code == 0, verified.stderr
    verified.stdout.encode("utf-8")
    assert load_json(cli("verify", output, "--scheme", "keras", "--json").stdout)["ok"] is True
    failed = cli("verify", surrogate_pt, "--scheme", "keras")
    assert failed.exit_code == 1, failed.stderr
    assert_shown_escaped(failed.stdout)
    changed = cli("diff", surrogate_pt, output)
    assert changed.exit_code == 1, changed.stderr
    assert_shown_escaped(changed.stdout)
    document = load_json(cli("diff", surrogate_pt, output, "--json").stdout)
    assert PREFIX + "weight_ih_l0" in json_names(document)


def test_new_with_a_surrogate_prefix(cli: Callable[..., Result], tmp_path: Path) -> None:
    output = tmp_path / "new.pt"
    result = cli("new", "gru", "--input-size", "2", "--hidden-size", "3", *SCHEME, "--prefix", "\udcff",
                 "-o", output)
    assert result.exit_code == 0, result.stderr
    assert "\\udcff." in result.stdout and "\udcff" not in result.stdout
    assert sorted(torch.load(output, weights_only=True)) == sorted(
        f"\udcff.{name}" for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"))
    document = load_json(cli("new", "gru", "--input-size", "2", "--hidden-size", "3", *SCHEME, "--prefix", "\udcff",
                             "-o", tmp_path / "again.pt", "--json").stdout)
    assert "\udcff.weight_hh_l0" in json_names(document)


def test_error_messages_show_the_escape(cli: Callable[..., Result], surrogate_pt: Path, tmp_path: Path) -> None:
    line = assert_one_error(cli("inspect", tmp_path / "\udcff\x1b[2J.pt"), code=3)
    assert "\\udcff\\x1b[2J.pt: no such file" in line, line
    line = assert_one_error(cli("apply", surrogate_pt, "--scheme", "k\udcff", "-o", tmp_path / "y.pt"), code=2)
    assert "'k\\udcff'" in line, line


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcp_folder_with_surrogate_names(cli: Callable[..., Result], tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    source, output, converted = tmp_path / "ckpt", tmp_path / "out", tmp_path / "converted.pt"
    dcp.save({"model": surrogate_state()}, checkpoint_id=source, no_dist=True)
    shown = cli("inspect", source)
    assert shown.exit_code == 0, shown.stderr
    assert_shown_escaped(shown.stdout)
    assert cli("apply", source, *SCHEME, "-q", "-o", output).exit_code == 0
    dcp_to_torch_save(output, converted)
    written = torch.load(converted, weights_only=True)["model"]
    assert list(written) == list(surrogate_state())
    assert torch.equal(written[PREFIX + "bias_ih_l0"][4:8], torch.ones(4))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_with_a_surrogate_name(cli: Callable[..., Result], tmp_path: Path) -> None:
    """torch.jit refuses such a name itself, so it is patched into data.pkl: the LSTM submodule `abc` becomes
    `\\udcff` (pickle's BINUNICODE, surrogatepass). Read, rewritten as a patched copy, the name kept."""

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.abc = torch.nn.LSTM(3, 4)

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.abc(inputs)[0]

    scripted, source, output = tmp_path / "scripted.pt", tmp_path / "odd.pt", tmp_path / "out.pt"
    torch.jit.script(Wrapper()).save(str(scripted))
    with zipfile.ZipFile(scripted) as archive, zipfile.ZipFile(source, "w", zipfile.ZIP_STORED) as patched:
        for record in archive.namelist():
            data = archive.read(record)
            if record.endswith("/data.pkl"):
                assert data.count(b"abc") == data.count(b"X\x03\x00\x00\x00abc") == 1  # BINUNICODE: the attribute
                data = data.replace(b"abc", "\udcff".encode("utf-8", "surrogatepass"))
            patched.writestr(zipfile.ZipInfo(record, date_time=(1980, 1, 1, 0, 0, 0)), data)
    shown = cli("inspect", source)
    assert shown.exit_code == 0, shown.stderr
    assert "\\udcff.: LSTM layer 0" in shown.stdout and "\udcff" not in shown.stdout, shown.stdout
    assert cli("apply", source, *SCHEME, "-q", "-o", output).exit_code == 0
    assert "\udcff.weight_hh_l0" in json_names(load_json(cli("inspect", output, "--json").stdout))
    assert cli("verify", output, "--scheme", "keras").exit_code == 0


def test_safetensors_header_with_an_escaped_surrogate_is_refused(cli: Callable[..., Result], tmp_path: Path) -> None:
    """A header is valid UTF-8, but its JSON may spell a lone surrogate as an escape: refused as the official
    library refuses it, in one line."""
    path = tmp_path / "odd.safetensors"
    header = json.dumps({PREFIX + "bias_ih_l0": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(64))
    line = assert_one_error(cli("inspect", path), code=3)
    assert "lone surrogate" in line, line


# ---------------------------------------------------------------------------------------------
# 1. names that are not valid UTF-8: the real program


def run_script(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """The `rnninit` console script, its output strictly UTF-8 (a lone surrogate could not be written)."""
    env = os.environ | {"PYTHONIOENCODING": "utf-8:strict"}
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, env=env, cwd=cwd, timeout=240,
                          check=False)


def test_real_processes_with_surrogate_names(surrogate_pt: Path, tmp_path: Path) -> None:
    """Command-line bytes that are not UTF-8 (read with surrogateescape) and names that are not either."""
    applied = run_script("apply", surrogate_pt.name, *SCHEME, "-o", "out.pt", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr.decode()
    assert_shown_escaped(applied.stdout.decode("utf-8"))
    assert list(torch.load(tmp_path / "out.pt", weights_only=True)) == list(surrogate_state())
    refused = run_script("apply", surrogate_pt.name, *SCHEME, "-o", "out.safetensors", cwd=tmp_path)
    assert "write .pt" in assert_one_error(refused, code=4)
    inspected = run_script("inspect", "out.pt", "--json", cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr.decode()
    assert PREFIX + "weight_ih_l0" in json_names(load_json(inspected.stdout.decode("ascii")))
    diffed = run_script("diff", surrogate_pt.name, "out.pt", cwd=tmp_path)
    assert diffed.returncode == 1, diffed.stderr.decode()
    assert_shown_escaped(diffed.stdout.decode("utf-8"))
    made = run_script("new", "lstm", "--input-size", "2", "--hidden-size", "2", *SCHEME, "--prefix", "\udcff",
                      "-o", "\udcff.pt", cwd=tmp_path)
    assert made.returncode == 0, made.stderr.decode()
    assert "wrote \\udcff.pt" in made.stdout.decode("utf-8")
    assert os.fsencode("\udcff.pt") == b"\xff.pt" and (tmp_path / "\udcff.pt").exists()
    assert all(name.startswith("\udcff.") for name in torch.load(tmp_path / "\udcff.pt", weights_only=True))


# ---------------------------------------------------------------------------------------------
# 2. signals: at known moments


PAUSING_ENTRY = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path

    where, ready = os.environ["PAUSE_AT"], Path(os.environ["PAUSE_READY"])

    def pause(seconds):
        # until the test has sent its signal (a fixed sleep raced a busy machine), at most `seconds`
        ready.touch()
        deadline = time.monotonic() + seconds
        while not (ready.parent / "signalled").exists() and time.monotonic() < deadline:
            time.sleep(0.005)

    if where == "call":  # in a command, outside any import: a library that turns the interruption into an error
        import rnninit_cli.rewrite as rewrite

        def inspect_checkpoint(*args, **kwargs):
            try:
                pause(60)
            except KeyboardInterrupt:
                raise ImportError("cannot import a lazy dependency") from None

        rewrite.inspect_checkpoint = inspect_checkpoint
    else:  # at an import: PAUSE_AT names the module, or `inside:MODULE` (any import while MODULE is half made)
        def now(name):
            module = sys.modules.get(where.removeprefix("inside:"))
            return name == where or getattr(getattr(module, "__spec__", None), "_initializing", False)

        class Pause:
            def find_spec(self, name, path=None, target=None):
                if now(name):
                    sys.meta_path.remove(self)
                    pause(float(os.environ["PAUSE_SECONDS"]))
                    (ready.parent / "resumed").touch()
                return None

        sys.meta_path.insert(0, Pause())
    import rnninit_cli.cli

    if "RETRY_S" in os.environ:  # how late a signal deferred during an import comes back
        rnninit_cli.cli._RETRY_S = float(os.environ["RETRY_S"])
    sys.exit(rnninit_cli.cli.main())
""")


@pytest.fixture
def pausing_entry(tmp_path: Path) -> Path:
    """A console script named `rnninit` that pauses (PAUSE_AT) so that a signal lands there."""
    script = tmp_path / "bin" / "rnninit"
    script.parent.mkdir()
    script.write_text(PAUSING_ENTRY)
    return script


def signal_at(script: Path, args: list[str], where: str, signum: int | tuple[int, ...], tmp_path: Path,
              seconds: float = 60, retry_s: float | None = None,
              preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """Run the pausing `rnninit` with ARGS, send `signum` (or each of several, in order) at the pause WHERE."""
    ready = tmp_path / "ready"
    env = os.environ | {"PAUSE_AT": where, "PAUSE_READY": str(ready), "PAUSE_SECONDS": str(seconds)}
    if retry_s is not None:
        env["RETRY_S"] = str(retry_s)
    process = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env, cwd=tmp_path, preexec_fn=preexec_fn)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert ready.exists(), process.communicate()[1].decode()
        for each in (signum,) if isinstance(signum, int) else signum:
            process.send_signal(each)
            time.sleep(0.01)
        (tmp_path / "signalled").touch()
        stdout, stderr = process.communicate(timeout=90)
    finally:
        process.kill()
        process.wait(60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_interrupted(result: subprocess.CompletedProcess, signum: int) -> None:
    stderr = result.stderr.decode()
    assert result.returncode == 128 + signum, stderr
    assert stderr == "error: interrupted\n", stderr


FIRST_LINES_PROBE = textwrap.dedent("""
    import _signal, sys

    imported_first = []

    class Record:  # every import that runs the import machinery while rnninit_cli has no handlers yet
        def find_spec(self, name, path=None, target=None):
            package = sys.modules.get("rnninit_cli")
            if package is not None and _signal.getsignal(_signal.SIGTERM) == _signal.SIG_DFL:
                imported_first.append(name)
            return None

    sys.meta_path.insert(0, Record())
    import rnninit_cli

    assert _signal.getsignal(_signal.SIGTERM) is rnninit_cli._stop_at_once
    print(imported_first)
""")


def test_rnninit_cli_takes_the_signals_before_any_import_runs(tmp_path: Path) -> None:
    """Between rnninit_cli's first line and its handlers only modules the interpreter already holds are named:
    an import that ran there (`import signal` once did) was a window in which a signal printed a traceback
    through rnninit_cli's frames, or SIGTERM killed the process silently."""
    script = tmp_path / "rnninit"  # the console script's name: only the command takes the signals over
    script.write_text(FIRST_LINES_PROBE)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_typer_is_imported(signum: int, pausing_entry: Path, tmp_path: Path) -> None:
    """Start-up: the CLI module is importing typer; nothing of the command has run."""
    assert_interrupted(signal_at(pausing_entry, ["schemes"], "typer", signum, tmp_path), signum)
    assert not (tmp_path / "resumed").exists()


@pytest.mark.parametrize("retry_s", [None, 30.0], ids=["prompt-retry", "late-retry"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_checkpoint_is_half_imported(signum: int, retry_s: float | None, pausing_entry: Path,
                                                  surrogate_pt: Path, tmp_path: Path) -> None:
    """The reported case: a signal while rnninit_cli.formats.atomic (the atomic writes) is half imported. The
    import is let finish (an import cut short leaves half-made modules behind), then the command stops, before its
    output is renamed into place however late the deferred signal comes back: a retry that came after the rename
    (it needs the interpreter's lock, which a busy main thread holds) once let the command succeed."""
    result = signal_at(pausing_entry, ["apply", surrogate_pt.name, *SCHEME, "-o", "out.pt"],
                       "inside:rnninit_cli.formats.atomic", signum, tmp_path, retry_s=retry_s)
    assert_interrupted(result, signum)
    assert (tmp_path / "resumed").exists(), "the import was cut short"
    assert not (tmp_path / "out.pt").exists() and temp_leftovers(tmp_path) == []


@pytest.mark.parametrize(("args", "where"), [
    (["schemes", "--json"], "inside:rnninit_cli.init.schemes"),
    (["inspect", "{source}", "--json"], "inside:rnninit_cli.rewrite"),
    (["apply", "{source}", *SCHEME, "-o", "-"], "inside:rnninit_cli.rewrite"),
], ids=["schemes", "inspect", "apply-to-stdout"])
def test_a_deferred_signal_stops_a_command_that_renames_nothing(args: list[str], where: str, pausing_entry: Path,
                                                                surrogate_pt: Path, tmp_path: Path) -> None:
    """A signal during an import whose retry comes only after the command is over (nothing is renamed into place,
    so no rename refuses it): the command still ends as interrupted, and a checkpoint bound for standard output is
    not written there. It used to exit 0 with the whole answer."""
    args = [surrogate_pt.name if arg == "{source}" else arg for arg in args]
    result = signal_at(pausing_entry, args, where, signal.SIGINT, tmp_path, retry_s=30.0)
    assert_interrupted(result, signal.SIGINT)
    if "-o" in args:
        assert result.stdout == b""


def test_the_first_signal_decides_the_exit_status(pausing_entry: Path, surrogate_pt: Path, tmp_path: Path) -> None:
    """SIGINT, then SIGTERM, both while an import is under way: 130, as when the command is not importing."""
    result = signal_at(pausing_entry, ["apply", surrogate_pt.name, *SCHEME, "-o", "out.pt"],
                       "inside:rnninit_cli.formats.atomic", (signal.SIGINT, signal.SIGTERM), tmp_path)
    assert_interrupted(result, signal.SIGINT)
    assert not (tmp_path / "out.pt").exists() and temp_leftovers(tmp_path) == []


def test_a_signal_ignored_at_start_stays_ignored(pausing_entry: Path, surrogate_pt: Path, tmp_path: Path) -> None:
    """A job a script starts in the background (`rnninit ... &`) ignores SIGINT, as Python leaves it: the SIGINT is
    ignored and the command completes; SIGTERM still stops it."""
    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    result = signal_at(pausing_entry, ["apply", surrogate_pt.name, *SCHEME, "-q", "-o", "out.pt"],
                       "inside:rnninit_cli.formats.atomic", signal.SIGINT, tmp_path, preexec_fn=ignore_sigint)
    assert result.returncode == 0 and result.stderr == b"", result.stderr.decode()
    assert (tmp_path / "out.pt").exists()
    (tmp_path / "out.pt").unlink()
    for marker in ("ready", "signalled", "resumed"):
        (tmp_path / marker).unlink(missing_ok=True)
    result = signal_at(pausing_entry, ["apply", surrogate_pt.name, *SCHEME, "-q", "-o", "out.pt"],
                       "inside:rnninit_cli.formats.atomic", signal.SIGTERM, tmp_path, preexec_fn=ignore_sigint)
    assert_interrupted(result, signal.SIGTERM)
    assert not (tmp_path / "out.pt").exists()


HOST_PROGRAM = textwrap.dedent("""
    import os, signal, sys, time
    import rnninit_cli.cli as cli

    received = []
    mine = lambda signum, frame: received.append(signum)
    signal.signal(signal.SIGINT, mine)  # SIGTERM keeps SIG_DFL: it must come back too

    class CtrlCDuringAnImport:  # the program's own Ctrl-C, while main() imports the scheme registry
        def find_spec(self, name, path=None, target=None):
            if name == "rnninit_cli.init.schemes":
                sys.meta_path.remove(self)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)  # the retries come back while the import is still under way
            return None

    sys.meta_path.insert(0, CtrlCDuringAnImport())
    cli._RETRY_S = 0.05
    statuses = []
    for _ in range(2):
        sys.argv = ["rnninit", "schemes", "--json"]
        try:
            cli.main()
        except SystemExit as done:
            statuses.append(done.code)
        time.sleep(0.3)  # a retry still on its way would arrive now
    print(statuses, received, signal.getsignal(signal.SIGINT) is mine,
          signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
""")


def test_a_program_that_calls_main_twice_survives_a_deferred_signal() -> None:
    """The first main() ends as interrupted; no retry of its signal reaches the program afterwards (its handler
    got one once; a second main() was killed by it), and the program's handlers, Python's SIG_DFL included, are
    back."""
    done = subprocess.run([sys.executable, "-c", HOST_PROGRAM], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "[130, 0] [] True True", (done.stdout[-300:], done.stderr)


@pytest.mark.parametrize(("arguments", "module"), [
    (["-m", "rnninit_cli", "schemes"], "rnninit_cli"),
    (["-Im", "rnninit_cli.cli"], "rnninit_cli.cli"),
    (["-X", "importtime", "-m", "rnninit_cli"], "rnninit_cli"),
    (["-m", "tools", "--save-to", "./rnninit_cli"], "tools"),
    (["-c", "import rnninit_cli", "-m", "x"], None),
    (["script.py", "rnninit_cli"], None),
])
def test_which_module_python_dash_m_runs(arguments: list[str], module: str | None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Only `python -m rnninit_cli` (or its __main__/cli) is the command; a program whose arguments merely end in
    rnninit_cli, or `-c` code, is not."""
    monkeypatch.setattr(sys, "orig_argv", ["python", *arguments])
    assert rnninit_cli._module_run_by_dash_m() == module


def test_an_error_that_the_signal_caused_ends_as_interrupted(pausing_entry: Path, surrogate_pt: Path,
                                                             tmp_path: Path) -> None:
    """Code that turns the KeyboardInterrupt into another error (here an ImportError): still `interrupted`."""
    assert_interrupted(signal_at(pausing_entry, ["inspect", surrogate_pt.name], "call", signal.SIGINT, tmp_path),
                       signal.SIGINT)


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_a_program_that_imports_rnninit_keeps_its_signals(sigint: str) -> None:
    """Whatever the program started with: Python's own SIGINT handler, or SIGINT ignored (a job that a
    non-interactive shell started in the background with `&` inherits SIG_IGN)."""
    probe = ("import signal\n"
             "before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)\n"
             f"assert before[0] is {'signal.SIG_IGN' if sigint == 'ignored' else 'signal.default_int_handler'}\n"
             "import rnninit_cli, rnninit_cli.cli\n"
             "after = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)\n"
             "assert after == before, (before, after)\n")
    disposition = signal.SIG_IGN if sigint == "ignored" else signal.SIG_DFL  # this process's may be either

    def start_with_it() -> None:
        signal.signal(signal.SIGINT, disposition)

    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120, check=False,
                            preexec_fn=start_with_it)
    assert result.returncode == 0, result.stderr.decode()


# ---------------------------------------------------------------------------------------------
# 2. signals: at random moments of a real run


def sigterm_caught(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM: rnninit_cli's first lines installed it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True  # gone already
    mask = int(status.split("SigCgt:")[1].split()[0], 16)
    return bool(mask >> (signal.SIGTERM - 1) & 1)


def frames_in_rnninit(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip().startswith("File ") and "rnninit_cli" in line]


@pytest.fixture(scope="module")
def small_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("signals") / "model.pt"
    torch.save(torch.nn.LSTM(8, 16, num_layers=2).state_dict(), path)
    return path


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads SigCgt from /proc")
@pytest.mark.parametrize("command", [[str(SCRIPT)], [sys.executable, "-m", "rnninit_cli"]],
                         ids=["console-script", "python-m"])
def test_signals_at_random_moments_of_start_up(command: list[str], small_pt: Path) -> None:
    """30 runs of `inspect`, each sent SIGINT or SIGTERM 0–0.5 s after it was spawned: it finished (0, nothing on
    standard error) or it was interrupted (130 / 143, one `error: interrupted` line). A signal sent before
    rnninit_cli's first line installed its handlers lands in the interpreter's own start-up: only there may Python
    print a traceback (or die of the signal), and no frame of rnninit_cli may be in it."""
    rng = random.Random(19)
    outcomes: list[tuple[float, bool, int]] = []
    for run in range(30):
        signum = (signal.SIGINT, signal.SIGTERM)[run % 2]
        delay = rng.uniform(0.0, 0.5)
        start = time.monotonic()
        process = subprocess.Popen([*command, "inspect", str(small_pt)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        try:
            time.sleep(max(0.0, start + delay - time.monotonic()))
            ours = sigterm_caught(process.pid)
            process.send_signal(signum)
            _, raw = process.communicate(timeout=60)
        finally:
            process.kill()
            process.wait(60)
        stderr = raw.decode(errors="replace")
        code = process.returncode
        outcomes.append((delay, ours, code))
        assert "internal error" not in stderr, stderr
        assert not frames_in_rnninit(stderr), f"a traceback after rnninit_cli's first line:\n{stderr}"
        if ours:
            assert (code, stderr) in ((0, ""), (128 + signum, "error: interrupted\n")), (delay, code, stderr)
    after = [code for _, ours, code in outcomes if ours]
    assert len(after) >= 15 and any(code in (130, 143) for code in after), outcomes
