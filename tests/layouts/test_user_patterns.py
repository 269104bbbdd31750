"""User-supplied regular expressions run by RE2 (issue #19 §2): `--only`, `--layout` and `--layout-file` patterns.

(a) a pattern that makes a backtracking matcher take hours, `(x+x+)+y` against 40-character names, finishes in a
    subprocess under a timeout and an address-space cap, from a layout file and from `--only`;
(b) constructs RE2 cannot run in linear time are refused with one `error:` line naming the pattern and its source;
(c) the patterns rnninit ships and documents (built-in layouts, examples/layouts.toml, README.md) match exactly
    the names, with the same groups, that Python's `re` matched, and so do random patterns (but for the documented
    groups inside a repetition whose body can match the empty string);
(d) the broken variant: the same run with the matcher switched back to Python's `re` (in the child process only)
    does not finish. `RNNINIT_TEST_PYTHON_RE=1 pytest tests/layouts/test_user_patterns.py -k hostile` runs (a) so, to
    see it fail.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from builders import build_state
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from typer.testing import CliRunner, Result

from rnninit_cli.cli import app
from rnninit_cli.errors import LayoutDeclarationError, UsageError
from rnninit_cli.init.planning import plan
from rnninit_cli.layouts.declared import (
    BUILTIN_LAYOUTS,
    LAYOUT_FILE_DECLARATIONS,
    LAYOUT_FILE_PATTERN_CHARS,
    load_layout_file,
    parse_layout,
)
from rnninit_cli.layouts.discovery import _pattern_for
from rnninit_cli.layouts.patterns import MAX_PATTERN_CHARS, compile_user_pattern, sre_parse

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
GIB = 1 << 30
HOSTILE = "(x+x+)+y"
LONG = "x" * 40
TIMEOUT = 20.0
BROKEN_TIMEOUT = 6.0
PYTHON_RE = bool(os.environ.get("RNNINIT_TEST_PYTHON_RE"))
RUNNER = CliRunner()

_MAIN = "from rnninit_cli.cli import main; sys.argv[0] = 'rnninit'; main()"
_PYTHON_RE = ("from rnninit_cli.layouts import patterns; "
              "patterns.UserPattern.search = lambda self, name: re.search(self.pattern, name); "
              "patterns.UserPattern.fullmatch = lambda self, name: re.fullmatch(self.pattern, name); ")


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (3 * GIB, 3 * GIB))


def rnninit(*args: object, python_re: bool = False, timeout: float = TIMEOUT) -> tuple[float, int, str, str]:
    """Run `rnninit ARGS` in a child under RLIMIT_AS 3 GiB and `timeout`: seconds, status, stdout, stderr.
    `python_re`: the child matches with Python's `re` instead (the broken variant)."""
    code = "import re, sys; " + (_PYTHON_RE if python_re else "") + _MAIN
    start = time.monotonic()
    result = subprocess.run([PYTHON, "-c", code, *[str(arg) for arg in args]], capture_output=True, text=True,
                            timeout=timeout, check=False, cwd=REPO, preexec_fn=_cap_memory)
    return time.monotonic() - start, result.returncode, result.stdout, result.stderr


def cli(*args: object) -> Result:
    return RUNNER.invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def one_error_line(status: int, stderr: str) -> str:
    assert status == 2, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# (a) hostile patterns finish; (d) they would not with Python's re


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A checkpoint of 40-character names beside one hand-written LSTM cell, one with an nn.LSTM under a
    40-character prefix, and layout files whose patterns backtrack exponentially on those names."""
    folder = tmp_path_factory.mktemp("hostile")
    cell = {"enc.0.i2h.weight": torch.zeros(8, 3), "enc.0.h2h.weight": torch.zeros(8, 2)}
    save_file({**{LONG[:k]: torch.zeros(2) for k in (38, 39, 40)}, **cell}, str(folder / "names.safetensors"))
    lstm = torch.nn.LSTM(3, 2).state_dict()
    save_file({f"{LONG}.{name}": value for name, value in lstm.items()}, str(folder / "prefix.safetensors"))
    (folder / "only.toml").write_text(f"[layout.hostile]\nweight_ih = '{HOSTILE}'\nweight_hh = '{HOSTILE}'\n")
    (folder / "alternative.toml").write_text(
        "[layout.hostile]\nweight_ih = '(.*)\\.i2h\\.weight|(?:x+x+)+y'\nweight_hh = '(.*)\\.h2h\\.weight'\n")
    return {path.stem: path for path in folder.iterdir()}


HOSTILE_RUNS = {
    "layout-file": (("inspect", "names.safetensors", "--layout-file", "only.toml"), 2,
                    "the layout matches no recurrent cell"),
    "layout-file-alternative": (("inspect", "names.safetensors", "--layout-file", "alternative.toml"), 0,
                                "enc.0.: LSTM cell (layout"),
    "only": (("inspect", "prefix.safetensors", "--only", HOSTILE), 2, "matches none of"),
    "only-alternative": (("inspect", "prefix.safetensors", "--only", f"{HOSTILE}|_hh_"), 0, "weight_hh_l0"),
}


def hostile_args(hostile: dict[str, Path], run: str) -> list[str]:
    args, _, _ = HOSTILE_RUNS[run]
    return [str(hostile[Path(arg).stem]) if arg.endswith((".safetensors", ".toml")) else arg for arg in args]


@pytest.mark.parametrize("run", HOSTILE_RUNS)
def test_hostile_pattern_finishes(hostile: dict[str, Path], run: str) -> None:
    _, expected_status, expected_text = HOSTILE_RUNS[run]
    seconds, status, stdout, stderr = rnninit(*hostile_args(hostile, run), python_re=PYTHON_RE)
    assert status == expected_status, stderr
    assert expected_text in stdout + stderr
    assert "Traceback" not in stderr
    assert seconds < TIMEOUT / 2, f"{seconds:.1f} s"


@pytest.mark.parametrize("run", ["layout-file", "only"])
def test_hostile_pattern_would_hang_with_python_re(hostile: dict[str, Path], run: str) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        rnninit(*hostile_args(hostile, run), python_re=True, timeout=BROKEN_TIMEOUT)


def test_hostile_names_are_matched_in_linear_time() -> None:
    pattern = compile_user_pattern(HOSTILE, "--only")
    start = time.monotonic()
    assert pattern.search("x" * 100_000) is None
    assert pattern.fullmatch("x" * 100_000 + "y") is not None
    assert time.monotonic() - start < 1


# ---------------------------------------------------------------------------------------------
# (b) what RE2 cannot run is refused, by name


UNSUPPORTED = {
    r"(a)\1": "uses a backreference",
    r"(?P<x>a)(?P=x)": "uses a backreference",
    r"(?=a)a": "uses a lookahead (?=...)",
    r"^(?!.*_reverse)": "uses a lookahead (?!...)",
    r"(?<=a)b": "uses a lookbehind (?<=...)",
    r"(?<!a)b": "uses a lookbehind (?<!...)",
    r"(a)?(?(1)b|c)": "uses a conditional group",
    r"(?>a+)b": "uses an atomic group",
    r"a*+b": "uses a possessive quantifier",
}


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file(torch.nn.LSTM(3, 2).state_dict(), str(path))
    return path


@pytest.mark.parametrize("pattern", UNSUPPORTED)
def test_unsupported_construct_from_a_layout_file_is_refused(small: Path, tmp_path: Path, pattern: str) -> None:
    layouts = tmp_path / "layouts.toml"
    layouts.write_text(f"[layout.mine]\nweight_ih = '(.*)i2h'\nweight_hh = '{pattern}'\n")
    result = cli("inspect", small, "--layout-file", layouts)
    line = one_error_line(result.exit_code, result.stderr)
    assert f"{layouts}: mine: weight_hh={pattern} {UNSUPPORTED[pattern]}" in line
    assert "rewrite it" in line or "instead" in line


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=a)a"])
@pytest.mark.parametrize("command", ["inspect", "verify", "apply"])
def test_unsupported_construct_on_the_command_line_is_refused(small: Path, tmp_path: Path, pattern: str,
                                                              command: str) -> None:
    extra = {"inspect": [], "verify": ["--scheme", "keras"],
             "apply": ["--scheme", "keras", "-o", tmp_path / "out.safetensors"]}[command]
    result = cli(command, small, *extra, "--only", pattern)
    assert f"error: --only={pattern} {UNSUPPORTED[pattern]}" in one_error_line(result.exit_code, result.stderr)
    result = cli(command, small, *extra, "--layout", f"weight_ih={pattern} weight_hh=(.*)h2h")
    assert f"error: --layout 1: weight_ih={pattern} {UNSUPPORTED[pattern]}" in one_error_line(result.exit_code,
                                                                                               result.stderr)
    assert not (tmp_path / "out.safetensors").exists()


def test_unsupported_construct_is_refused_in_a_child_process_too(small: Path) -> None:
    _, status, stdout, stderr = rnninit("inspect", small, "--only", r"(a)\1")
    assert one_error_line(status, stderr) == (r"error: --only=(a)\1 uses a backreference (\N or (?P=name)), which "
                                              "RE2 cannot run (rnninit matches patterns in linear time): rewrite it "
                                              "without the backreference")
    assert not stdout


def test_library_raises_typed_errors() -> None:
    state = torch.nn.LSTM(3, 2).state_dict()
    with pytest.raises(UsageError, match=r"^only=\(\?=a\) uses a lookahead"):  # the API's argument, not the flag
        plan(state, "keras", only="(?=a)")
    with pytest.raises(LayoutDeclarationError, match=r"x: weight_ih=\(a\)\\1 uses a backreference"):
        parse_layout(r"weight_ih=(a)\1 weight_hh=b", "x")


@pytest.mark.parametrize(("pattern", "expected"), [
    ("a" * (MAX_PATTERN_CHARS + 1), f"{MAX_PATTERN_CHARS + 1} characters long"),
    ("(?:.{1000})" * 5, "KiB of RE2 memory"),
    ("a{1001}", "more than 1000 times"),
    ("(?:a{40}){40}", "nested counts multiply"),
    ("(" * 300 + ")" * 300, "nests groups"),
    ("(", "is not a valid regular expression: missing )"),
    ("a{99999999999}", "is not a valid regular expression"),
])
def test_costly_or_invalid_patterns_are_refused_quickly(pattern: str, expected: str) -> None:
    start = time.monotonic()
    with pytest.raises(UsageError, match=re.escape(expected)) as caught:
        compile_user_pattern(pattern, "--only")
    assert time.monotonic() - start < 1
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 500


def test_layout_files_are_bounded(tmp_path: Path) -> None:
    many = tmp_path / "many.toml"
    many.write_text("".join(f"[layout.l{k}]\nweight_ih = '(.*)i2h{k}'\nweight_hh = '(.*)h2h{k}'\n"
                            for k in range(LAYOUT_FILE_DECLARATIONS + 1)))
    with pytest.raises(LayoutDeclarationError, match=f"declares {LAYOUT_FILE_DECLARATIONS + 1} layouts"):
        load_layout_file(many)
    long = tmp_path / "long.toml"
    pattern = "a" * (LAYOUT_FILE_PATTERN_CHARS // 4)
    long.write_text(f"[layout.l]\nweight_ih = '{pattern}0'\nweight_hh = '{pattern}1'\n"
                    f"[layout.m]\nweight_ih = '{pattern}2'\nweight_hh = '{pattern}3'\n")
    with pytest.raises(LayoutDeclarationError, match=f"{LAYOUT_FILE_PATTERN_CHARS + 4} characters in all"):
        load_layout_file(long)


def test_costliest_layout_file_compiles_quickly(tmp_path: Path) -> None:
    """64 layouts of 5 distinct patterns, each just within RE2's memory bound: a bounded, small cost."""
    kinds = ("weight_ih", "weight_hh", "weight_hr", "bias_ih", "bias_hh")
    costly = tmp_path / "costly.toml"
    costly.write_text("".join(f"[layout.l{k}]\n" + "".join(f"{kind} = '(.*)[^{'abcde'[j]}]{{999}}[^b]{{{700 + k}}}'\n"
                                                          for j, kind in enumerate(kinds))
                              for k in range(LAYOUT_FILE_DECLARATIONS)))
    start = time.monotonic()
    assert len(load_layout_file(costly)) == LAYOUT_FILE_DECLARATIONS
    assert time.monotonic() - start < 15


# ---------------------------------------------------------------------------------------------
# (c) the same matches as Python's re


def corpus() -> list[str]:
    """Tensor names of the layouts rnninit knows, ships and documents, and some odd ones."""
    names = list(build_state())
    modules = {"": torch.nn.LSTM(3, 2, num_layers=2, bidirectional=True, proj_size=1), "encoder.rnn.":
               torch.nn.GRU(3, 2), "decoder.cell.": torch.nn.LSTMCell(3, 2), "lstm.": torch.nn.LSTM(3, 2)}
    names += [prefix + name for prefix, module in modules.items() for name in module.state_dict()]
    for k in range(3):
        names += [f"predictor.lstm_layers.{k}.{part}" for part in ("x2g.weight", "x2g.bias", "p2g.weight",
                                                                   "c_norm.weight", "g_norm.bias")]
        names += [f"lstm_layers.{k}.x2g.weight", f"lstm_layers.{k}.p2g.weight", f"lstm_layers.{k}.x2g.bias"]
        names += [f"enc.rnn.{k}.w.weight", f"enc.rnn.{k}.u.weight", f"rnn.{k}.norm.weight", f"rnn.{k}.w.weight"]
    names += ["encoder.gru.kernel", "encoder.gru.recurrent_kernel", "encoder.gru.bias", "gru.kernel.T",
              "dec.0.x2g.weight", "dec.0.p2g.weight", "enc.0.i2h.weight", "enc.0.h2h.weight", "cells.1.Wi.weight",
              "cells.1.Ui.weight", "a.i2h.weight.bias", "", ".", "x", LONG, "weight_hh_l0_reverse", "Decoder.GRU.x",
              "decoder", "layer.10.weight_hh_l10", "a b\tc", "ü.weight_ih_l0", "0.1.2"]
    for k in range(2):  # the per-head built-ins' names (tests/modern_models.py builds them with the libraries)
        names += [f"blocks.{k}.xlstm.{g}gate.weight" for g in "ifzo"]
        names += [f"blocks.{k}.xlstm.slstm_cell._recurrent_kernel_", f"blocks.{k}.xlstm.slstm_cell._bias_"]
        names += [f"blocks.{k}.xlstm.mlstm_cell.{g}gate.{p}" for g in "if" for p in ("weight", "bias")]
        names += [f"model.layers.{k}.temporal_block.rg_lru.{n}" for n in (
            "recurrent_param", "input_gate_weight", "input_gate_bias", "recurrent_gate_weight", "recurrent_gate_bias")]
        names += [f"backbone.blocks.{k}.mlstm_layer.{g}gate_preact.weight" for g in "ifo"]
        names += [f"backbone.blocks.{k}.mlstm_layer.{g}gate_preact.bias" for g in "if"]
    return list(dict.fromkeys(names))


def documented() -> list[str]:
    """Every pattern rnninit ships or documents: built-in layouts, examples/layouts.toml, README.md's `--only`,
    `only=` and `--layout` values, the `--layout` lines rnninit suggests for names it does not recognise."""
    patterns = [p.pattern for layout in BUILTIN_LAYOUTS.values() for p in layout.patterns.values()]
    patterns += [p.pattern for layout in load_layout_file(REPO / "examples" / "layouts.toml")
                 for p in layout.patterns.values()]
    readme = (REPO / "README.md").read_text()
    patterns += [value.strip("'") for value in re.findall(r"--only\s+('[^']*'|[^\s'\"\[\]()]+)", readme)
                 if value.strip("'") not in UNSUPPORTED]  # README's example of what is refused
    patterns += re.findall(r"only=r\"([^\"]*)\"", readme)
    for line in re.findall(r"--layout\s+'([^']*)'", readme):
        if "REGEX" not in line:
            patterns += [p.pattern for layout in parse_layout(line, "README") for p in layout.patterns.values()]
    patterns += [_pattern_for(name) for name in corpus()]
    patterns += [r"(.*)\.x2g\.weight", r"(.*)\.p2g\.weight", r"(.*)\.i2h\.weight", r"(.*)\.h2h\.weight",
                 r"(.*lstm_cell)\.recurrent_kernel", r"(.*)\.W(?P<gate>\w)\.weight", r"(.*)\.x_(?P<gate>\w+)",
                 r"_l\d+$", r"weight_hh", r"encoder\.", r"^decoder", r"(?i)GRU", r"l0\Z", r"\.\d{,2}\.", r"(?x) gru"]
    return list(dict.fromkeys(patterns))


def groups_of(match: re.Match[str] | object | None, count: int) -> tuple[str | None, ...] | None:
    return None if match is None else tuple(match.group(k) for k in range(count + 1))  # type: ignore[attr-defined]


def empty_repeats(items: Any, inside: bool = False) -> tuple[bool, set[int]]:
    """Whether a parsed pattern repeats a body that can match the empty string, and the groups inside one."""
    found, groups = False, set()
    for op, value in items:
        parts: list[tuple[Any, bool]] = []
        if op.name == "SUBPATTERN":
            groups |= {value[0]} if inside and value[0] is not None else set()
            parts = [(value[3], inside)]
        elif op.name in ("MAX_REPEAT", "MIN_REPEAT"):
            empty = value[2].getwidth()[0] == 0
            found |= empty
            parts = [(value[2], inside or empty)]
        elif op.name == "BRANCH":
            parts = [(branch, inside) for branch in value[1]]
        for part, part_inside in parts:
            more, more_groups = empty_repeats(part, part_inside)
            found, groups = found or more, groups | more_groups
    return found, groups


def assert_same_matches(pattern: str, names: list[str]) -> None:
    """Python's `re` and rnninit's matcher find a match in the same names, with the same groups.

    The documented exception: where a repeated body can match the empty string, Python ends the repetition at an
    empty pass and RE2 does not, so a search may report another of the matches starting at the same place, and a
    group inside that repetition may hold another pass's text."""
    ours, python = compile_user_pattern(pattern, "test"), re.compile(pattern)
    assert ours.groups == python.groups and dict(ours.groupindex) == dict(python.groupindex)
    loose_search, loose = empty_repeats(sre_parse.parse(pattern))
    for name in names:
        for method in ("search", "fullmatch"):
            expected = groups_of(getattr(python, method)(name), python.groups)
            found = groups_of(getattr(ours, method)(name), python.groups)
            assert (found is None) == (expected is None), (pattern, name, method)
            if expected is None or found is None or (method == "search" and loose_search):
                continue
            found = tuple(e if k in loose else f for k, (e, f) in enumerate(zip(expected, found, strict=True)))
            assert found == expected, (pattern, name, method)
        for group, index in python.groupindex.items():
            if index not in loose and (whole := python.fullmatch(name)):
                assert whole.group(group) == ours.fullmatch(name).group(group)  # type: ignore[union-attr]


def test_documented_patterns_are_found_and_compared_strictly() -> None:
    found = documented()
    assert {r"((?:.*[./])?lstm_layers\.\d+)\.x2g\.weight", r"(.*)\.kernel", "lstm.*l0$", "decoder", "gru",
            r"encoder\.", r"lstm_layers\.(\d+)\.x2g\.weight", r"_l\d+$"} <= set(found)
    assert all(empty_repeats(sre_parse.parse(pattern)) == (False, set()) for pattern in found)


@pytest.mark.parametrize("pattern", documented())
def test_documented_patterns_match_as_with_python_re(pattern: str) -> None:
    assert_same_matches(pattern, corpus())


def test_declared_cells_are_the_same_with_python_re(monkeypatch: pytest.MonkeyPatch) -> None:
    from rnninit_cli.layouts import patterns
    from rnninit_cli.layouts.declared import match_declarations

    names = corpus()
    layouts = [*BUILTIN_LAYOUTS.values(), *load_layout_file(REPO / "examples" / "layouts.toml")]
    ours = [[(cell.key, cell.pieces) for cell in match_declarations(names, [layout])] for layout in layouts]
    monkeypatch.setattr(patterns.UserPattern, "search", lambda self, name: re.search(self.pattern, name))
    monkeypatch.setattr(patterns.UserPattern, "fullmatch", lambda self, name: re.fullmatch(self.pattern, name))
    assert ours == [[(cell.key, cell.pieces) for cell in match_declarations(names, [layout])] for layout in layouts]
    assert all(ours)


_ATOMS = st.sampled_from(["a", "b", "x", "_", r"\.", ".", "0", "A", " ", r"\d", r"\w", r"\s", r"\D", r"\W", r"\S",
                          "[ab]", "[^a]", "[a-c_]", r"[\d.]", r"[^\W\d]", r"[\s\S]", "[]a]", "[a-]", r"\x41",
                          r"\101", r"\t", "{", "}", "^", "$", r"\A", r"\Z", r"\b", r"\B"])
_QUANTIFIERS = st.sampled_from(["", "", "*", "+", "?", "*?", "+?", "??", "{2}", "{1,2}", "{,2}", "{1,}", "{0,1}?"])


def _pattern(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    grouped = st.tuples(st.sampled_from(["(", "(?:", "(?i:"]), children, st.just(")"), _QUANTIFIERS).map("".join)
    return st.one_of(grouped, st.lists(children, min_size=2, max_size=3).map("".join),
                     st.lists(children, min_size=2, max_size=3).map("|".join))


_LEAF = st.tuples(_ATOMS, _QUANTIFIERS).map("".join)
_PATTERNS = st.tuples(st.sampled_from(["", "", "(?i)", "(?s)", "(?m)"]),
                      st.recursive(st.one_of(_LEAF, st.tuples(st.just("("), _LEAF, st.just(")"), _QUANTIFIERS)
                                             .map("".join)), _pattern, max_leaves=8)).map("".join)
# not empty: Python before 3.14 never matches \B in an empty string, RE2 (and Python 3.14) does
_NAMES = st.lists(st.text("abxA_.0 9\t", min_size=1, max_size=10), min_size=1, max_size=8)


def _valid(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(_PATTERNS.filter(_valid), _NAMES)
def test_random_patterns_match_as_with_python_re(pattern: str, names: list[str]) -> None:
    assert_same_matches(pattern, names)


@pytest.mark.parametrize(("pattern", "name"), [("(.*)", "a\ud800b"), (r"(.*)\.(\w)", "\udcff.x"), ("\ud800", "\ud800")])
def test_names_with_lone_surrogates_match(pattern: str, name: str) -> None:
    assert_same_matches(pattern, [name])


def test_classes_are_ascii() -> None:
    """Documented: `\\d`, `\\w`, `\\s`, `\\b` match as with Python's re.ASCII (names are ASCII in practice)."""
    for pattern in (r"^\w+$", r"\W", r"\bü", r"\d", r"\s"):
        for name in ("ü", "a", "٣", "\u3000", "\v", "a b"):
            assert bool(compile_user_pattern(pattern, "--only").search(name)) == bool(re.search(pattern, name, re.A))


def test_dollar_matches_only_at_the_very_end() -> None:
    """The one other documented difference: Python's `$` also matches before a final newline."""
    assert re.search("weight$", "weight\n") and not compile_user_pattern("weight$", "--only").search("weight\n")
    assert compile_user_pattern("weight$", "--only").search("weight")
