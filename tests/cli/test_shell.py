"""Shell citizenship (issue 21, section 4): completion as shells ask for it, help as people read it, one table of
exit statuses for every command, several files like grep, `verify -q`.

Everything runs the real `rnninit` console script in a subprocess (a shell's completion, a pipe) or on a pseudo-terminal
(help at a terminal's width); the internal-error case runs the Typer app in-process to plant the bug.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from terminals import run_on_terminal, terminal_environment
from typer.testing import CliRunner

from rnninit_cli import cli, cli_help

SCRIPT = Path(sys.executable).parent / "rnninit"
COMMANDS = ("apply", "inspect", "verify", "diff", "new", "schemes")
README = Path(__file__).resolve().parents[2] / "README.md"


def rnninit(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """The console script in its own process, its output read through pipes."""
    environment = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "FORCE_COLOR")}
    done = subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, cwd=cwd, timeout=240,
                          env=environment | (env or {}), input=stdin, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def save_model(path: Path, seed: int = 0) -> Path:
    """A small checkpoint like the examples': an encoder LSTM (bidirectional) and a decoder GRU."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torch.nn.ModuleDict({"encoder": torch.nn.LSTM(6, 8, bidirectional=True),
                                     "decoder": torch.nn.GRU(16, 8)})
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A folder holding model.pt (PyTorch's own draw), keras.pt (drawn by rnninit's keras) and junk.pt (no
    checkpoint)."""
    save_model(tmp_path / "model.pt")
    done = rnninit("apply", "model.pt", "--scheme", "keras", "--seed", "0", "-o", "keras.pt", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all\n")
    return tmp_path


# --- completion --------------------------------------------------------------------------------------------------

def complete(shell: str, words: str) -> tuple[list[str], str]:
    """The candidates rnninit answers when `shell` asks it to complete the last of `words` (ending in a space:
    a new, empty word), the way Typer's scripts for that shell ask; and what the process imported."""
    env = {"_RNNINIT_COMPLETE": f"complete_{shell}", "PYTHONPROFILEIMPORTTIME": "1"}
    if shell == "bash":
        split = words.split(" ")
        env |= {"COMP_WORDS": words, "COMP_CWORD": str(len(split) - 1)}
    else:
        env |= {"_TYPER_COMPLETE_ARGS": words, "_TYPER_COMPLETE_FISH_ACTION": "get-args"}
    done = rnninit(env=env)
    assert done.returncode == 0, done.stderr
    if shell == "zsh":  # _arguments '*: :(("keras":"description" ...))'
        return re.findall(r'^(?:_arguments \'\*: :\(\()?"((?:[^"]|"")*)"', done.stdout, re.MULTILINE), done.stderr
    return [line.split("\t")[0] for line in done.stdout.splitlines() if line], done.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_of_schemes_rules_gates_layouts_and_cells(shell: str) -> None:
    schemes, imported = complete(shell, "rnninit verify model.pt --scheme k")
    assert schemes == ["keras", "keras-gate"]
    assert not re.search(r"\|\s+torch(\.|$)", imported, re.MULTILINE)  # completion never imports torch
    assert complete(shell, "rnninit apply model.pt -s chr")[0] == ["chrono"]
    targets, _ = complete(shell, "rnninit apply model.pt -s keras --rule bias_ih.")
    assert {"bias_ih.f=", "bias_ih.i=", "bias_ih.z="} <= set(targets) and all(t.startswith("bias_ih.") for t in targets)
    assert "weight_hr=" in complete(shell, "rnninit verify a.pt -s keras -r weight_h")[0]
    if shell != "bash":  # bash splits words at '=' (COMP_WORDBREAKS) before rnninit sees them
        initializers, _ = complete(shell, "rnninit apply model.pt -s keras -r weight_hh.f=orth")
        assert initializers == ["weight_hh.f=orthogonal"]
        assert "bias=keep" in complete(shell, "rnninit apply model.pt -s keras -r bias=")[0]
    layouts, _ = complete(shell, "rnninit inspect model.pt --layout ")
    assert {"torchaudio-rnnt", "speechbrain-ligru", "cell=lstm"} <= set(layouts)
    assert complete(shell, "rnninit new lst")[0] == ["lstm", "lstmcell"]
    assert complete(shell, "rnninit ver")[0] == ["verify"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_show_completion_prints_the_script_for_the_shell_named(shell: str) -> None:
    done = rnninit("--show-completion", shell)
    assert done.returncode == 0, done.stderr
    assert "_RNNINIT_COMPLETE=complete_" + shell in done.stdout and done.stderr == ""
    wrong = rnninit("--show-completion", "tcsh")
    assert wrong.returncode == 2 and "bash, zsh, fish" in wrong.stderr and wrong.stdout == ""


def test_real_bash_completes_through_the_script_rnninit_prints(tmp_path: Path) -> None:
    """bash sources `rnninit --show-completion bash` and calls the completion function it defines, as it does on
    TAB: COMPREPLY holds the candidates."""
    script = """
        source <(rnninit --show-completion bash)
        ask() { COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMPREPLY=(); _rnninit_completion rnninit;
                echo "${COMPREPLY[*]}"; }
        ask rnninit verify model.pt --scheme kera
        ask rnninit apply model.pt --layout torch
        ask rnninit in
        complete -p rnninit
    """
    env = {**os.environ, "PATH": f"{SCRIPT.parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["keras keras-gate", "torchaudio-rnnt", "inspect",
                                        "complete -o default -F _rnninit_completion rnninit"], done.stdout


def test_install_completion_writes_to_the_shells_start_up_files(tmp_path: Path) -> None:
    done = rnninit("--install-completion", "bash", env={"HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    installed = tmp_path / ".bash_completions" / "rnninit.sh"
    assert "_RNNINIT_COMPLETE=complete_bash" in installed.read_text()
    assert str(installed) in (tmp_path / ".bashrc").read_text() and str(installed) in done.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_install_completion_that_cannot_write_is_one_error_line(shell: str, tmp_path: Path) -> None:
    """A HOME that is a file (or a read-only one): one `error:` line, exit 4 (an output), no traceback."""
    home = tmp_path / "home"
    home.write_text("not a folder")
    done = rnninit("--install-completion", shell, env={"HOME": str(home)})
    assert done.returncode == 4, done.stderr
    assert done.stderr.startswith("error: cannot install") and len(done.stderr.splitlines()) == 1, done.stderr


# --- help --------------------------------------------------------------------------------------------------------

def help_pages(columns: int) -> dict[str, str]:
    """`rnninit --help` and each command's, as a terminal `columns` wide shows them."""
    pages = {}
    for command in ("", *COMMANDS):
        argv = [str(SCRIPT), *([command] if command else []), "--help"]
        pages[command] = run_on_terminal(argv, columns=columns, env=terminal_environment()).replace("\r\n", "\n")
    return pages


def check_help(page: str, columns: int, name: str) -> None:
    for bad in ("{input}", "<str>", "<list[str]>", "<int range>", "<int>", "<pt|safetensors>", "<path>"):
        assert bad not in page, (name, bad, page)
    assert all(len(line) <= columns for line in page.splitlines()), (name, page)
    assert "..." not in page.split("Commands:")[1].split("Exit status")[0] if not name else True


@pytest.mark.parametrize("columns", [80, 60])
def test_help_at_a_terminals_width(columns: int) -> None:
    pages = help_pages(columns)
    for name, page in pages.items():
        check_help(page, columns, name)
    main = pages[""]
    summaries = main.split("Commands:\n")[1].split("\n\n")[0]
    for command in COMMANDS:  # each summary whole: the docstring's first paragraph, never cut with "..."
        summary = " ".join(getattr(cli, command).__doc__.split("\n\n")[0].split())
        listed = " ".join(re.search(rf"^  {command} +(.*?)(?=^  \w|\Z)", summaries, re.MULTILINE | re.DOTALL)
                          .group(1).split())
        assert listed == summary, (command, listed, summary)
    for status, _meaning in cli_help.EXIT_STATUSES:
        assert not status or re.search(rf"^  {status} ", main, re.MULTILINE), (status, main)
    assert re.search(r"^Usage: rnninit verify \[OPTIONS\] INPUT\.\.\.$", pages["verify"], re.MULTILINE)
    assert re.search(r"^  -r, --rule RULE ", pages["apply"], re.MULTILINE)
    assert re.search(r"^  --seed SEED ", pages["apply"], re.MULTILINE)
    assert re.search(r"^  --only REGEX ", pages["inspect"], re.MULTILINE)
    panels = ("What to write:", "Which blocks:", "Output:", "Display:")
    assert [panel for panel in re.findall(r"^[A-Z][\w ]+:$", pages["apply"], re.MULTILINE) if panel in panels] == \
        list(panels)
    assert "What to build:" in pages["new"]
    for command in COMMANDS:
        examples = pages[command].split("Examples:\n")[1].split("\n\n")
        assert 2 <= len([e for e in examples if "rnninit " + command in e]) <= 4, pages[command]


def test_help_through_a_pipe_has_the_same_placeholders() -> None:
    for command in ("", *COMMANDS):
        done = rnninit(*([command] if command else []), "--help")
        assert done.returncode == 0 and done.stderr == ""
        check_help(done.stdout, 80, command)


def test_every_example_in_help_works(tmp_path: Path) -> None:
    """Each command's examples, run as written, in order, by bash in a folder that holds model.pt."""
    save_model(tmp_path / "model.pt")
    env = {**os.environ, "PATH": f"{SCRIPT.parent}{os.pathsep}{os.environ['PATH']}"}
    for command in ("apply", "inspect", "verify", "diff", "new", "schemes"):
        for _what, line in cli_help.EXAMPLES[command]:
            assert line.split()[:2] == ["rnninit", command]
            done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, cwd=tmp_path, env=env,
                                  timeout=240, check=False)
            assert done.returncode in (0, 1) and "error" not in done.stderr, (line, done.returncode, done.stderr)
            assert done.stdout or line.endswith("-q") or "/dev/null" in line, line
    assert (tmp_path / "keras.pt").is_file() and (tmp_path / "gru.safetensors").is_file()


# --- exit statuses -----------------------------------------------------------------------------------------------

def test_one_table_of_exit_statuses_for_every_command(files: Path, tmp_path: Path) -> None:
    cases = [
        # a missing file, a file that is no checkpoint: 3, whatever the command
        *((3, (command, name, *scheme)) for name in ("missing.pt", "junk.pt") for command, scheme in
          (("inspect", ()), ("apply", ("-s", "keras", "-o", "out.pt")), ("verify", ("-s", "keras")))),
        (3, ("diff", "model.pt", "missing.pt")),
        (3, ("diff", "junk.pt", "model.pt")),
        # usage errors: 2
        (2, ("apply", "model.pt", "-s", "no-such-scheme", "-o", "out.pt")),
        (2, ("verify", "model.pt", "-s", "no-such-scheme")),
        (2, ("verify", "model.pt", "-s", "keras", "-r", "bias_ih.x=ones")),
        (2, ("apply", "model.pt", "-s", "keras", "--only", "nothing-matches", "-o", "out.pt")),
        (2, ("verify", "model.pt", "-s", "keras", "--only", "nothing-matches")),
        (2, ("diff", "model.pt", "keras.pt", "--only", "nothing-matches")),
        (2, ("apply", "model.pt", "-s", "keras", "-o", "-", "--json")),
        (2, ("inspect", "model.pt", "--no-such-flag")),
        # an output that cannot be written: 4
        (4, ("apply", "model.pt", "-s", "keras", "-o", "keras.pt")),
        (4, ("apply", "model.pt", "-s", "keras", "-o", "no-such-folder/out.pt")),
        (4, ("new", "lstm", "--input-size", "2", "--hidden-size", "3", "-s", "keras", "-o", "keras.pt")),
        # answers
        (1, ("verify", "model.pt", "-s", "keras")),
        (0, ("verify", "keras.pt", "-s", "keras")),
        (1, ("diff", "model.pt", "keras.pt")),
        (0, ("diff", "model.pt", "model.pt")),
    ]
    for status, args in cases:
        done = rnninit(*args, cwd=files)
        assert done.returncode == status, (args, done.returncode, done.stderr)
        if status >= 2:
            assert done.stderr.startswith("error: ") or done.stderr.startswith("Usage:"), (args, done.stderr)
    assert not (files / "out.pt").exists()


def test_an_internal_error_exits_5(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rnninit_cli import reading, rewrite

    def broken(*_args: object, **_kwargs: object) -> None:
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(rewrite, "inspect_checkpoint", broken)
    monkeypatch.setattr(reading, "open_inspection", broken)  # diff reads as it compares
    for args in (["inspect", files / "model.pt"], ["verify", files / "model.pt", "-s", "keras"],
                 ["diff", files / "model.pt", files / "keras.pt"]):
        result = CliRunner().invoke(cli.app, [str(a) for a in args])
        assert result.exit_code == 5, (args, result.output)
        assert "internal error: ZeroDivisionError: planted" in result.stderr


def test_readme_and_help_give_the_same_table() -> None:
    section = README.read_text().split("\n### Exit status\n")[1].split("\n#")[0]
    rows = re.findall(r"^\| *([0-9][0-9, /]*) *\| *(.+?) *\|$", section, re.MULTILINE)
    assert [status.strip() for status, _ in rows] == [s for s, _ in cli_help.EXIT_STATUSES if s]
    for (_, readme_meaning), (_, meaning) in zip(rows, cli_help.EXIT_STATUSES, strict=False):
        assert readme_meaning.replace("`", "") == meaning, (readme_meaning, meaning)


# --- several files -----------------------------------------------------------------------------------------------

def test_inspect_and_verify_several_files_like_grep(files: Path) -> None:
    inspected = rnninit("inspect", "model.pt", "missing.pt", "keras.pt", cwd=files)
    assert inspected.returncode == 3, inspected.stderr
    headers = [line for line in inspected.stdout.splitlines() if re.match(r"^\S+\.pt: pt, ", line)]
    assert [h.split(":")[0] for h in headers] == ["model.pt", "keras.pt"]
    assert inspected.stderr.splitlines() == ["error: missing.pt: no such file"]

    verified = rnninit("verify", "keras.pt", "model.pt", "keras.pt", "-s", "keras", cwd=files)
    assert verified.returncode == 1, verified.stderr
    verdicts = [line for line in verified.stdout.splitlines() if "checked against keras" in line]
    assert [v.split(":")[0] for v in verdicts] == ["keras.pt", "model.pt", "keras.pt"]
    assert verdicts[0].endswith(": consistent") and "NOT consistent" in verdicts[1]

    worst = rnninit("verify", "junk.pt", "model.pt", "keras.pt", "-s", "keras", cwd=files)
    assert worst.returncode == 3 and worst.stderr.startswith("error: junk.pt: ")
    assert len([line for line in worst.stdout.splitlines() if "checked against keras" in line]) == 2
    assert rnninit("verify", "keras.pt", "keras.pt", "-s", "keras", cwd=files).returncode == 0


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_json_lines_one_document_per_file_errors_included(files: Path, command: str) -> None:
    scheme = ["-s", "keras"] if command == "verify" else []
    model = (files / "model.pt").read_bytes()
    done = rnninit(command, "keras.pt", "missing.pt", "-", "junk.pt", *scheme, "--json", cwd=files, stdin=model)
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    documents = [json.loads(line) for line in lines]
    assert [d["input"] for d in documents] == ["keras.pt", "missing.pt", "-", "junk.pt"]
    assert documents[1] == {"input": "missing.pt", "error": "missing.pt: no such file", "exit_status": 3}
    assert set(documents[3]) == {"input", "error", "exit_status"} and documents[3]["exit_status"] == 3
    assert "error" not in documents[0] and "error" not in documents[2]
    assert len(done.stderr.splitlines()) == 2  # the two errors, one line each, as without --json
    single = rnninit(command, "keras.pt", *scheme, "--json", cwd=files)
    assert single.returncode == 0 and single.stdout.count("\n") == 1
    assert json.loads(single.stdout)["input"] == "keras.pt"


def test_standard_input_at_most_once_and_plot_for_one_file(files: Path) -> None:
    twice = rnninit("inspect", "-", "-", cwd=files, stdin=(files / "model.pt").read_bytes())
    assert twice.returncode == 2 and twice.stderr.startswith("error: ") and twice.stdout == ""
    plot = rnninit("inspect", "model.pt", "keras.pt", "--plot", "gates.png", cwd=files)
    assert plot.returncode == 2 and "--plot" in plot.stderr and not (files / "gates.png").exists()


def test_verify_quiet_answers_by_exit_status_alone(files: Path) -> None:
    for args, status in ((["keras.pt"], 0), (["model.pt"], 1), (["keras.pt", "model.pt"], 1),
                         (["keras.pt", "keras.pt"], 0)):
        done = rnninit("verify", *args, "--scheme", "keras", "--quiet", cwd=files)
        assert (done.returncode, done.stdout, done.stderr) == (status, "", ""), (args, done)
        short = rnninit("verify", *args, "-s", "keras", "-q", cwd=files)
        assert (short.returncode, short.stdout, short.stderr) == (status, "", "")
    broken = rnninit("verify", "keras.pt", "missing.pt", "-s", "keras", "-q", cwd=files)
    assert broken.returncode == 3 and broken.stdout == "" and broken.stderr.startswith("error: missing.pt")
    both = rnninit("verify", "keras.pt", "-s", "keras", "-q", "--json", cwd=files)
    assert both.returncode == 2 and both.stdout == ""


def test_usage_errors_are_told_once_not_per_file(files: Path) -> None:
    done = rnninit("verify", "model.pt", "keras.pt", "missing.pt", "-s", "no-such-scheme", cwd=files)
    assert done.returncode == 2 and done.stderr.count("error:") == 1 and done.stdout == ""


def test_examples_are_shell_words() -> None:
    for command, examples in cli_help.EXAMPLES.items():
        assert 2 <= len(examples) <= 4, command
        for _what, line in examples:
            assert shlex.split(line)[:2] == ["rnninit", command]


def test_several_files_at_an_80_column_terminal(files: Path) -> None:
    shown = run_on_terminal([str(SCRIPT), "inspect", "model.pt", "missing.pt", "keras.pt"], columns=80,
                            env=terminal_environment(), cwd=files)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown).replace("\r\n", "\n")
    assert all(len(line) <= 80 for line in plain.splitlines()), plain
    assert re.search(r"^model\.pt: pt, .*\n(.*\n)+\nkeras\.pt: pt, ", plain, re.MULTILINE), plain
    assert "error: missing.pt: no such file" in plain
    verified = run_on_terminal([str(SCRIPT), "verify", "keras.pt", "keras.pt", "-s", "keras"], columns=80,
                               env=terminal_environment(), cwd=files)
    lines = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", verified).replace("\r\n", "\n").strip().splitlines()
    assert lines == ["keras.pt: 44 block(s) checked against keras: consistent"] * 2, lines
