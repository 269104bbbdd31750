"""Issue 21, section 2: tables a person can read on an 80-column terminal (and at 60, 100 and 120).

Every command runs in a real pseudo-terminal (one process per width runs them all, through `main()`), on
checkpoints with long real-looking names (a bidirectional 3-layer LSTM with projections under
`model.encoder.lstm.`) and numbers with many digits (one matrix scaled by 12345.6789). On the terminal:
no line is wider than the terminal, every parameter name appears whole on a line, no number is split (the
numbers shown are those of the same command on a pipe) and nothing is cut short. On a pipe nothing wraps:
`schemes` keeps each description on one line.
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
from terminals import COMMANDS_DRIVER, address_space_limit, run_on_terminal, terminal_environment

WIDTHS = (60, 80, 100, 120)
LSTM = "model.encoder.lstm."
GRU = "encoder.rnn."
# what differs between a.pt and b.pt: several parameters that share a long common prefix
CHANGED = ("weight_ih_l0", "weight_ih_l0_reverse", "weight_hh_l1", "weight_hh_l1_reverse")
STYLING = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)")
# a figure as the tables write it: 0.1443, +12.346, 1.5e+06, 240/240, 96:144
NUMBER = re.compile(r"[+-]?\d+\.\d+(?:e[+-]\d+)?|\d+[/:]\d+")
MARK = re.compile(r"<<exit (\d+)>>")
# a frame of the progress bar on standard error (transient: the terminal shows it only while the work runs)
PROGRESS_FRAME = re.compile(r"(initializing|inspecting|verifying|comparing) [━╸╺ ]+ [\d.]+/[\d.]+ [kMG]?B ETA [-:\d]+")

DRIVER = COMMANDS_DRIVER

COMMANDS = {
    "inspect": (["inspect", "m.pt"], 0),
    "inspect --wide": (["inspect", "m.pt", "--wide"], 0),
    "verify failing": (["verify", "m.pt", "--scheme", "keras"], 1),
    "verify passing": (["verify", "k.pt", "--scheme", "keras"], 0),
    "diff": (["diff", "a.pt", "b.pt"], 1),
    "apply": (["apply", "m.pt", "--scheme", "keras", "--seed", "0", "-o", "out.pt", "--force"], 0),
    "apply --dry-run": (["apply", "m.pt", "--scheme", "chrono(tmax=400)", "--rule",
                         "weight_hh=orthogonal(gain=1.0, per=gate)", "--seed", "0", "--dry-run"], 0),
    "new": (["new", "lstm", "--input-size", "40", "--hidden-size", "48", "--proj-size", "24", "--num-layers", "3",
             "--bidirectional", "--prefix", LSTM, "--scheme", "keras", "--seed", "1", "-o", "new.pt", "--force"], 0),
    "schemes": (["schemes"], 0),
}


def _names(prefix: str, kinds: tuple[str, ...], layers: int) -> list[str]:
    return [f"{prefix}{kind}_l{layer}{suffix}" for layer in range(layers) for suffix in ("", "_reverse")
            for kind in kinds]


LSTM_NAMES = _names(LSTM, ("weight_ih", "weight_hh", "weight_hr", "bias_ih", "bias_hh"), 3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """m.pt: the LSTM at PyTorch's defaults, one matrix scaled up; k.pt: it at keras; a.pt/b.pt: a GRU and a copy
    with CHANGED drawn again."""
    made = tmp_path_factory.mktemp("columns")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(21)
        lstm = torch.nn.LSTM(40, 48, num_layers=3, bidirectional=True, proj_size=24)
        gru = torch.nn.GRU(12, 20, num_layers=2, bidirectional=True)
        state = {LSTM + name: tensor.detach().clone() for name, tensor in lstm.state_dict().items()}
        state[LSTM + "weight_hh_l1"] *= 12345.6789
        torch.save(state, made / "m.pt")
        a = {GRU + name: tensor.detach().clone() for name, tensor in gru.state_dict().items()}
        b = {name: tensor + 0.0123456 * torch.randn_like(tensor) if name.removeprefix(GRU) in CHANGED else tensor
             for name, tensor in a.items()}
    torch.save(a, made / "a.pt")
    torch.save(b, made / "b.pt")
    done = subprocess.run([sys.executable, "-m", "rnninit_cli", "apply", "m.pt", "--scheme", "keras", "--seed", "3",
                           "-o", "k.pt", "--quiet"], cwd=made, env=terminal_environment(), capture_output=True,
                          timeout=240, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return made


def _pieces(output: str) -> dict[str, str]:
    """Each command's output (both streams), checked against its expected exit status."""
    statuses = [int(code) for code in MARK.findall(output)]
    assert not MARK.split(output)[-1].strip(), "output after the last command's exit"

    assert statuses == [status for _, status in COMMANDS.values()], output[-3000:]
    return dict(zip(COMMANDS, MARK.split(output)[::2], strict=False))


@pytest.fixture(scope="module")
def piped(folder: Path) -> dict[str, str]:
    """Every command's output on a pipe: the unfolded reference."""
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps([argv for argv, _ in COMMANDS.values()])],
                          cwd=folder, env=terminal_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=240, check=False, preexec_fn=address_space_limit(8))
    assert done.returncode == 0, done.stdout.decode()[-3000:]
    return _pieces(done.stdout.decode())


@pytest.fixture(scope="module", params=WIDTHS)
def terminal(request: pytest.FixtureRequest, folder: Path) -> tuple[int, dict[str, str]]:
    """Every command's output on a pseudo-terminal of `width` columns, as lines a terminal would show."""
    width = request.param
    output = run_on_terminal(["-c", DRIVER, json.dumps([argv for argv, _ in COMMANDS.values()])], columns=width,
                             cwd=folder, env=terminal_environment(TERM="xterm-256color"),
                             preexec_fn=address_space_limit(8))
    assert "\x1b[" in output, "Rich did not see a terminal: nothing is tested"
    return width, _pieces(PROGRESS_FRAME.sub("", STYLING.sub("", output)))


def _lines(text: str) -> list[str]:
    # a carriage return (a progress bar drawn again) starts again at the line's first column
    return [part for line in text.replace("\r\n", "\n").split("\n") for part in line.split("\r")]


def _whole_on_a_line(name: str, lines: list[str]) -> bool:
    pattern = re.compile(rf"(?<![\w.]){re.escape(name)}(?!\w)")
    return any(pattern.search(line) for line in lines)


def _expected_names(command: str) -> list[str]:
    if command in ("inspect", "inspect --wide", "apply", "apply --dry-run", "new"):
        return [name.removeprefix(LSTM) for name in LSTM_NAMES]  # under the layer's heading, which names the prefix
    if command == "verify failing":
        return LSTM_NAMES
    if command == "diff":
        return [GRU + name for name in CHANGED]
    return []


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_line_fits_the_terminal(terminal: tuple[int, dict[str, str]], command: str) -> None:
    width, outputs = terminal
    lines = _lines(outputs[command])
    # a warning is one message line (soft-wrapped by the terminal itself, like an error), not a table's
    too_wide = [line for line in lines if cell_len(line) > width and not line.startswith("warning: ")]
    assert not too_wide, "\n".join(lines)
    assert "…" not in outputs[command], outputs[command]  # nothing cut short


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_parameter_name_stays_whole(terminal: tuple[int, dict[str, str]], command: str) -> None:
    _, outputs = terminal
    lines = _lines(outputs[command])
    split = [name for name in _expected_names(command) if not _whole_on_a_line(name, lines)]
    assert not split, (split, outputs[command])


@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_number_is_split(terminal: tuple[int, dict[str, str]], piped: dict[str, str], command: str) -> None:
    """A number split across lines leaves pieces that are not numbers the command prints, or loses one it prints."""
    _, outputs = terminal
    shown = set(NUMBER.findall(outputs[command]))
    assert shown == set(NUMBER.findall(piped[command])), outputs[command]
    if command not in ("verify passing", "apply --dry-run", "schemes"):
        assert len(shown) > 10, outputs[command]


def test_numbers_with_many_digits_are_shown(piped: dict[str, str]) -> None:
    """The fixture reaches what it means to test: figures of five and more digits in the tables."""
    for command in ("inspect", "inspect --wide", "apply"):
        assert any(len(number) >= 8 for number in NUMBER.findall(piped[command])), piped[command]


def test_every_rule_of_every_scheme_stays_whole(terminal: tuple[int, dict[str, str]]) -> None:
    from rnninit_cli.init.schemes import SCHEMES

    _, outputs = terminal
    lines = _lines(outputs["schemes"])
    for scheme in SCHEMES.values():
        assert _whole_on_a_line(scheme.signature, lines), scheme.signature
        for rule in scheme.rules:
            assert any(re.sub(r"\{(\w+)\}", r"\1", rule) in line for line in lines), (rule, outputs["schemes"])


def test_apply_rules_stay_whole(terminal: tuple[int, dict[str, str]]) -> None:
    _, outputs = terminal
    for rule in ("weight_ih=xavier_uniform(per=matrix)", "weight_hh=orthogonal(per=matrix)", "bias_ih.f=ones"):
        assert any(rule in line for line in _lines(outputs["apply"])), (rule, outputs["apply"])
    assert any("weight_hh=orthogonal(gain=1.0," in line for line in _lines(outputs["apply --dry-run"]))


def test_schemes_on_a_pipe_wrap_nothing(piped: dict[str, str]) -> None:
    from rnninit_cli.init.schemes import SCHEMES

    lines = piped["schemes"].splitlines()
    for scheme in SCHEMES.values():
        for text in (scheme.description, scheme.reference):
            assert any(text in line for line in lines), (text, piped["schemes"])
    notes = [line for line in lines if line.startswith("Rules:")]
    assert len(notes) == 1 and notes[0].endswith("Later rules win."), piped["schemes"]


def test_pipes_keep_one_line_per_block(piped: dict[str, str]) -> None:
    """Off a terminal the plain tables stay: the parameter on each block's first line, for grep."""
    assert re.search(r"^model\.encoder\.lstm\.weight_hh_l2_reverse\s+│ i\s+│ 0:48\s+│", piped["verify failing"], re.M)
    assert re.search(r"^encoder\.rnn\.weight_ih_l0_reverse\s+│ r\s+│", piped["diff"], re.M)
    assert re.search(r"^weight_hr_l2_reverse\s+│ -\s+│ weight_hr=xavier_uniform", piped["apply"], re.M)
    assert re.search(r"^weight_hh_l1_reverse\s+│ i\s+│ 192x24\s+│ float32", piped["inspect --wide"], re.M)


def _separators(line: str) -> list[int]:
    return [cell_len(line[:index]) for index, char in enumerate(line) if char in "│┃╇"]


@pytest.mark.parametrize("command", ["inspect", "inspect --wide", "diff", "apply"])
def test_stacked_rows_line_up_under_their_header(terminal: tuple[int, dict[str, str]], command: str) -> None:
    """Where the layout stacks per parameter, every parameter's rows keep the columns of the one header above."""
    _, outputs = terminal
    for section in outputs[command].replace("\r\n", "\n").split("\n\n"):
        rows = [line for line in section.split("\n") if re.match(r"[a-z-] *[│┃]", line)]
        headers = [line for line in section.split("\n") if line.startswith("gate")]
        if headers:  # stacked: the gate first on its line
            columns = _separators(headers[0])
            misaligned = [row for row in rows if not set(_separators(row)) <= set(columns)]
            assert rows and not misaligned, section
