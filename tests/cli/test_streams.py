"""Issue 11, section 1: the answer goes to standard output, made for shell pipelines.

Real subprocesses (`python -m rnninit_cli`) on a pipe, a file redirect, and a pseudo-terminal of 80 columns:
- the tables of inspect, verify, diff and schemes and the report of apply go to standard output; with `-o -`
  the report goes to standard error; warnings stay on standard error; --json prints only JSON;
- off a terminal nothing is coloured or folded: a block's row is one line, whatever COLUMNS says;
- on 80 columns inspect fits without cutting a number or a label, and --help cuts no option.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.cells import cell_len
from safetensors.torch import load, save_file
from terminals import address_space_limit, run_on_terminal, terminal_environment

MODULE = [sys.executable, "-m", "rnninit_cli"]
# long enough that a table of it is wider than the 160 columns pipes used to get
PREFIX = "encoder.acoustic_model.bidirectional_recurrent_stack.layers.0.rnn."
TABLE_RULE = re.compile(r"[┃│]")
STYLING = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)")


_environment = terminal_environment
_limits = address_space_limit(8)


def rnninit(*args: object, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run([*MODULE, *map(str, args)], capture_output=True, env=env or _environment(), timeout=240,
                          check=False, preexec_fn=_limits, **kwargs)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A bidirectional LSTM under a long prefix at PyTorch's defaults (no warnings), and a copy with one
    block changed."""
    folder = tmp_path_factory.mktemp("streams")
    torch.manual_seed(0)
    state = {PREFIX + name: tensor.detach().clone()
             for name, tensor in torch.nn.LSTM(16, 32, bidirectional=True).state_dict().items()}
    model = folder / "model.safetensors"
    save_file(state, model)
    changed = dict(state)
    changed[PREFIX + "bias_ih_l0"] = state[PREFIX + "bias_ih_l0"] + 1
    other = folder / "other.safetensors"
    save_file(changed, other)
    return {"model": model, "other": other, "names": sorted(state)}


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if "│" in line]


@pytest.mark.parametrize("asked", [{"FORCE_COLOR": "1"}, {"TTY_COMPATIBLE": "1"},
                                   {"FORCE_COLOR": "1", "COLUMNS": "40"}])
def test_a_pipe_asked_for_colour_is_coloured_but_never_folded(asked: dict[str, str], checkpoints: dict) -> None:
    """FORCE_COLOR (common in CI) or TTY_COMPATIBLE may colour what goes to a pipe; it still takes each table's
    natural width, so without its colours it is what a plain pipe gets, line for line (grep keeps working)."""
    plain = rnninit("inspect", checkpoints["model"], "--wide")
    coloured = rnninit("inspect", checkpoints["model"], "--wide", env=_environment(**asked))
    assert plain.returncode == coloured.returncode == 0, coloured.stderr.decode()
    assert STYLING.sub("", coloured.stdout.decode()) == plain.stdout.decode()


def test_inspect_on_a_pipe_answers_on_stdout_one_line_per_block(checkpoints: dict) -> None:
    # COLUMNS set, as in many CI shells: a pipe is still not folded
    result = rnninit("inspect", checkpoints["model"], env=_environment(COLUMNS="60"))
    assert result.returncode == 0, result.stderr.decode()
    out, err = result.stdout.decode(), result.stderr.decode()
    assert out, "nothing on standard output: `rnninit inspect | wc -c` says 0"
    assert not TABLE_RULE.search(err), err
    assert "\x1b" not in out + err
    rows = _table_rows(out)
    # 2 directions x (4 parameters + effective bias) x 4 gates, each row on one line: no continuation rows
    assert len(rows) == 2 * 5 * 4, out
    for name in checkpoints["names"]:
        short = name.removeprefix(PREFIX)
        found = [line for line in out.splitlines() if re.search(rf"\b{short}\b", line)]  # `| grep weight_hh_l0`
        assert len(found) == 1, (short, found)
        cells = [cell.strip() for cell in found[0].split("│")]
        assert cells[0] == short and cells[1] == "i" and re.fullmatch(r"[+-]\d\.\d{3}", cells[2]), cells
        assert "uniform" in cells[-2] and cells[-1], cells  # the family and the histogram on the same line


def test_json_is_all_that_stdout_carries(checkpoints: dict) -> None:
    result = rnninit("inspect", checkpoints["model"], "--json")
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["layers"]
    assert result.stderr == b""


def test_verify_and_diff_redirected_to_a_file(checkpoints: dict, tmp_path: Path) -> None:
    changes = tmp_path / "changes.txt"
    with changes.open("wb") as file:  # rnninit diff a b > changes.txt
        done = subprocess.run([*MODULE, "diff", str(checkpoints["model"]), str(checkpoints["other"])], stdout=file,
                              stderr=subprocess.PIPE, env=_environment(), timeout=240, check=False,
                              preexec_fn=_limits)
    assert done.returncode == 1 and done.stderr == b"", done.stderr.decode()
    text = changes.read_text()
    assert "block(s) differ" in text and "\x1b" not in text
    assert len([row for row in _table_rows(text) if "bias_ih_l0 " in row]) == 4, text  # one line per gate

    verdict = tmp_path / "verdict.txt"
    with verdict.open("wb") as file:
        done = subprocess.run([*MODULE, "verify", str(checkpoints["other"]), "--scheme", "pytorch"], stdout=file,
                              stderr=subprocess.PIPE, env=_environment(), timeout=240, check=False,
                              preexec_fn=_limits)
    assert done.returncode == 1 and done.stderr == b"", done.stderr.decode()
    text = verdict.read_text()
    assert "NOT consistent" in text and "bias_ih_l0" in text
    # `why` explains on the row's own line
    assert all(len([cell for cell in row.split("│") if cell.strip()]) >= 5 for row in _table_rows(text)), text


def test_schemes_piped_to_grep(checkpoints: dict) -> None:
    result = rnninit("schemes")
    assert result.returncode == 0 and result.stderr == b"", result.stderr.decode()
    out = result.stdout.decode()
    chrono = [line for line in out.splitlines() if "chrono" in line]  # rnninit schemes | grep chrono
    assert any(line.startswith("│ chrono(tmax)") for line in chrono), out
    assert "{" not in out, "an unfilled placeholder such as identity({scale})"
    assert "weight_hh=identity(scale)" in out


def test_apply_report_on_stdout_unless_stdout_carries_the_checkpoint(checkpoints: dict, tmp_path: Path) -> None:
    written = rnninit("apply", checkpoints["model"], "-s", "keras", "--seed", "1", "-o", tmp_path / "k.safetensors")
    assert written.returncode == 0, written.stderr.decode()
    assert "seed 1" in written.stdout.decode() and TABLE_RULE.search(written.stdout.decode())
    assert not TABLE_RULE.search(written.stderr.decode())

    streamed = rnninit("apply", checkpoints["model"], "-s", "keras", "--seed", "1", "-o", "-",
                       "--format", "safetensors")
    assert streamed.returncode == 0, streamed.stderr.decode()
    assert set(load(streamed.stdout)) == set(checkpoints["names"])  # the checkpoint, and nothing else
    assert "seed 1" in streamed.stderr.decode() and TABLE_RULE.search(streamed.stderr.decode())


def on_terminal(argv: list[str], columns: int = 80, cwd: Path | None = None) -> str:
    """Run `python ARGV` with a pseudo-terminal of `columns` columns as its standard input, output and error."""
    return run_on_terminal(argv, columns=columns, cwd=cwd, env=_environment(TERM="xterm-256color"),
                           preexec_fn=_limits).replace("\r\n", "\n")


def test_inspect_on_an_80_column_terminal_fits_and_cuts_nothing(checkpoints: dict) -> None:
    # a relative path: a path longer than the terminal is the one line the terminal itself wraps
    output = on_terminal(["-m", "rnninit_cli", "inspect", checkpoints["model"].name], cwd=checkpoints["model"].parent)
    assert "\x1b[" in output, "Rich did not see a terminal: nothing is tested"
    text = STYLING.sub("", output)
    too_long = [line for line in text.splitlines() if cell_len(line) > 80]
    assert not too_long, too_long
    assert "…" not in text, text  # no number, label or header cut short
    for column in ("gate", "mean", "std", "min", "max", "family", "values"):
        assert re.search(rf"\b{column}\b", text), column
    # a gate's row: after the parameter's cell, or first on its line where the layout stacks per parameter
    gates = [line for line in text.splitlines() if re.search(r"(^|│)\s*[ifgo]\s*│", line)]
    assert len(gates) == 2 * 5 * 4, text
    assert all(len(re.findall(r"[+-]\d\.\d{3}", line)) == 3 for line in gates), gates  # mean, min, max whole


def test_help_on_an_80_column_terminal_cuts_no_option() -> None:
    text = STYLING.sub("", on_terminal(["-m", "rnninit_cli", "apply", "--help"]))
    assert "--drop-optimizer-state" in text and "weight_hh=orthogonal(per=gate)" in text, text
    assert "…" not in text
    assert all(cell_len(line) <= 80 for line in text.splitlines()), text


def test_schemes_on_an_80_column_terminal_cuts_nothing() -> None:
    text = STYLING.sub("", on_terminal(["-m", "rnninit_cli", "schemes"]))
    assert "…" not in text, text
    assert all(cell_len(line) <= 80 for line in text.splitlines()), text
    table = [line.rstrip() for line in text.splitlines() if line and line[0] in "┏┃┡│├└"]
    assert all(line[-1] in "┓┃┩│┤┘" for line in table), "the table's right edge was cropped"
    assert re.search(r"^(│ )?chrono\(tmax\)(\s|$)", text, re.M), text  # the name first on its line
