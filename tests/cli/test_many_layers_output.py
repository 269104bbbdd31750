"""Issue 22: a checkpoint of many layers on a terminal shows the first layers' tables and one line per kind of
layer for the rest (diff and verify: the first rows and a count); a pipe gets every table, byte for byte what Rich
prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from terminals import address_space_limit, read_until_closed, run_on_terminal, terminal_environment

from rnninit_cli.report import FULL_ON_A_TERMINAL, ROWS_ON_A_TERMINAL

CELLS = FULL_ON_A_TERMINAL + 11  # LSTM cells, then one GRU cell
STYLING = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    torch.manual_seed(0)
    state = {}
    for index in range(CELLS):
        state |= {f"cell{index}.{k}": v.detach().clone() for k, v in torch.nn.LSTMCell(8, 16).state_dict().items()}
    state |= {f"gru.{k}": v.detach().clone() for k, v in torch.nn.GRUCell(8, 16).state_dict().items()}
    torch.save(state, folder / "m.pt")
    return folder


def on_terminal(folder: Path, *argv: str) -> str:
    output = run_on_terminal(["-m", "rnninit_cli", *argv], columns=80, cwd=folder,
                             env=terminal_environment(TERM="xterm-256color"), preexec_fn=address_space_limit(8))
    # a carriage return (the progress bar drawn again, then cleared) starts the line again
    return "\n".join(line.split("\r")[-1] for line in STYLING.sub("", output).replace("\r\n", "\n").split("\n"))


def piped(folder: Path, *argv: str) -> str:
    done = subprocess.run([sys.executable, "-m", "rnninit_cli", *argv], cwd=folder, capture_output=True, check=False)
    assert done.returncode in (0, 1), done.stderr.decode()
    return done.stdout.decode()


def headings(output: str) -> list[str]:
    return re.findall(r"^(\S+): (?:LSTM|GRU) cell  \(", output, re.M)


def test_inspect_on_a_terminal_shows_the_first_tables_then_a_line_per_kind(folder: Path) -> None:
    shown = on_terminal(folder, "inspect", "m.pt")
    assert headings(shown) == [f"cell{index}." for index in range(FULL_ON_A_TERMINAL)]
    assert f"{CELLS + 1 - FULL_ON_A_TERMINAL} more layer(s), one line per kind" in shown
    first, last = f"cell{FULL_ON_A_TERMINAL}.", f"cell{CELLS - 1}."
    assert re.search(rf"^{re.escape(first)} … {re.escape(last)} \({CELLS - FULL_ON_A_TERMINAL} layers\): LSTM cell "
                     r"\(input 8, hidden 16, bias\): pytorch$", shown, re.M), shown
    assert re.search(r"^gru\. \(1 layer\): GRU cell \(input 8, hidden 16, bias\): ", shown, re.M), shown
    everything = piped(folder, "inspect", "m.pt")
    assert headings(everything) == [f"cell{index}." for index in range(CELLS)] + ["gru."]
    assert "more layer(s)" not in everything


def test_apply_on_a_terminal_shows_the_first_tables_then_a_line_per_kind(folder: Path) -> None:
    shown = on_terminal(folder, "apply", "m.pt", "--scheme", "keras", "--seed", "0", "-o", "out.pt", "--force")
    assert headings(shown) == [f"cell{index}." for index in range(FULL_ON_A_TERMINAL)]
    assert re.search(rf"^cell{FULL_ON_A_TERMINAL}\. … cell{CELLS - 1}\. \({CELLS - FULL_ON_A_TERMINAL} layers\): "
                     r"LSTM cell \(input 8, hidden 16, bias\):\s+weight_ih=", shown, re.M), shown
    everything = piped(folder, "apply", "m.pt", "--scheme", "keras", "--seed", "0", "-o", "out2.pt")
    assert len(headings(everything)) == CELLS + 1
    assert (folder / "out.pt").read_bytes() == (folder / "out2.pt").read_bytes()


def test_diff_on_a_terminal_shows_the_first_rows_and_counts_the_rest(folder: Path) -> None:
    piped(folder, "apply", "m.pt", "--scheme", "orthogonal", "--seed", "0", "-o", "o.pt")
    everything = piped(folder, "diff", "m.pt", "o.pt")
    rows = re.findall(r"^(?:cell\d+|gru)\.\S+\s+│", everything, re.M)
    changed = int(re.search(r"(\d+) block\(s\) differ", everything).group(1))  # type: ignore[union-attr]
    assert changed > ROWS_ON_A_TERMINAL and len(rows) == changed  # every row
    shown = on_terminal(folder, "diff", "m.pt", "o.pt")
    assert f"... {changed - ROWS_ON_A_TERMINAL:,} more changed block(s)" in shown
    assert f"{changed} block(s) differ" in shown


@pytest.mark.parametrize("variable", ["FORCE_COLOR", "TTY_COMPATIBLE"])
def test_a_pipe_gets_every_table_even_when_colour_is_forced(folder: Path, variable: str) -> None:
    """FORCE_COLOR / TTY_COMPATIBLE make Rich colour a pipe; they do not make it a terminal that shows 20 layers."""
    env = terminal_environment(**{variable: "1"})
    done = subprocess.run([sys.executable, "-m", "rnninit_cli", "inspect", "m.pt"], cwd=folder, env=env,
                          capture_output=True, check=True)
    everything = STYLING.sub("", done.stdout.decode())
    assert headings(everything) == [f"cell{index}." for index in range(CELLS)] + ["gru."]
    assert "more layer(s)" not in everything


def test_the_report_on_standard_error_says_how_to_keep_every_table(folder: Path, tmp_path: Path) -> None:
    """apply -o - writes the checkpoint on standard output and the report on standard error: with standard error
    a terminal, the way to every table is to redirect standard error, not to pipe the output."""
    import os

    master, slave = os.openpty()
    with (tmp_path / "out.pt").open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "rnninit_cli", "apply", "m.pt", "--scheme", "keras",
                                    "--seed", "0", "-o", "-"], cwd=folder, stdout=out, stderr=slave,
                                   env=terminal_environment(TERM="xterm-256color"))
        os.close(slave)
        shown = read_until_closed(master, 120)
        assert process.wait(timeout=120) == 0
    os.close(master)
    report = STYLING.sub("", shown.decode())
    assert "one line per kind (every table: redirect standard error, or --json):" in " ".join(report.split())
    assert (tmp_path / "out.pt").read_bytes()[:2] == b"PK"  # the checkpoint, whole, on standard output
