"""Issue 9, items 13, 15 and 17: what rnninit refuses to write, what its diagnostics survive, and what it
shows on a terminal.

- Non-floating recurrent tensors (integer, bool, complex) are refused, by name, before anything is written;
  `--only` or a `keep` rule that leaves them out is fine; inspect, verify and diff still show them.
- The diagnostics handle any finite value (1e100, float64's and float16's maximum, subnormals), NaN/Inf,
  all-equal and empty blocks in every float dtype: exit 0/1, never an internal error.
- Strings from files and paths reach the terminal with control characters made visible (checked on a pipe
  and on a pseudo-terminal); --json keeps them exact.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from terminals import COMMANDS_DRIVER, address_space_limit, run_on_terminal, terminal_environment
from typer.testing import Result

from rnninit_cli import DtypeError, apply_plan, init_, plan
from rnninit_cli.diagnostics import check_normal, check_truncated_normal, check_uniform
from rnninit_cli.diagnostics.stats import block_stats
from rnninit_cli.formats.checkpoint import Checkpoint, save_checkpoint
from rnninit_cli.terminal import shown, visible

# numpy's overflow and invalid-value warnings on extreme values are noise on a user's terminal: none may escape
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

HIDDEN, INPUT = 4, 5
KINDS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def lstm_state(dtype: torch.dtype = torch.float32, prefix: str = "rnn.", seed: int = 0) -> dict[str, torch.Tensor]:
    """An LSTM(INPUT, HIDDEN) state_dict under `prefix`, cast to `dtype` (integers: values × 50, rounded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = torch.nn.LSTM(INPUT, HIDDEN).state_dict()
    cast = {}
    for name, tensor in state.items():
        values = tensor.detach().clone()
        if dtype == torch.bool:
            values = values > 0
        elif not dtype.is_floating_point and not dtype.is_complex:
            values = (values * 50).round().clamp(0 if dtype == torch.uint8 else -100, 100).to(dtype)
        else:
            values = values.to(dtype) + (0.5j * values if dtype.is_complex else 0)
        cast[prefix + name] = values
    return cast


def write(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    else:
        torch.save(state, path)
    return path


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN/Infinity tokens (they are not JSON)."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def no_crash(result: Result, codes: set[int]) -> None:
    assert result.exit_code in codes, (result.exit_code, result.stderr[-2000:])
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "Warning" not in result.stderr, result.stderr[-2000:]  # numpy's overflow warnings are not for users


# ---------------------------------------------------------------------------------------------------------------
# Item 13: integer, bool and complex recurrent tensors are refused, not silently truncated

NON_FLOATING = [("int8", ".safetensors"), ("uint8", ".pt"), ("int64", ".safetensors"), ("bool", ".safetensors"),
                ("bool", ".pt"), ("complex64", ".pt")]


@pytest.mark.parametrize(("dtype", "suffix"), NON_FLOATING)
def test_apply_refuses_non_floating_recurrent_weights(cli, tmp_path: Path, dtype: str, suffix: str) -> None:
    source = write(lstm_state(getattr(torch, dtype)), tmp_path / f"model{suffix}")
    before = source.read_bytes()
    output = tmp_path / f"out{suffix}"
    for extra in ((), ("--dry-run",)):
        result = cli("apply", source, "--scheme", "keras", "--seed", "0", "-o", output, *extra)
        assert result.exit_code == 3, result.stderr
        assert result.stderr.startswith("error:") and "not floating point" in result.stderr
        assert all(f"rnn.{kind} ({dtype})" in result.stderr for kind in KINDS), result.stderr
        assert not output.exists()
    assert source.read_bytes() == before


def test_library_refuses_non_floating_before_writing() -> None:
    ints = lstm_state(torch.int8)
    kept = {name: tensor.clone() for name, tensor in ints.items()}
    with pytest.raises(DtypeError, match=r"rnn\.weight_hh_l0 \(int8\)"):
        plan(ints, "keras")
    with pytest.raises(DtypeError):
        init_(ints, "keras", seed=0)
    # a plan made on float tensors, applied to integer ones: refused before the first block is written
    float_plan = plan(lstm_state(torch.float32), "keras")
    with pytest.raises(DtypeError, match="not floating point"):
        apply_plan(float_plan, ints, seed=0)
    assert all(torch.equal(ints[name], kept[name]) for name in ints)
    with pytest.raises(DtypeError, match=r"complex64"):
        plan(lstm_state(torch.complex64), "keras")
    # verify and scheme recognition still plan them, to check what they hold
    assert plan(ints, "keras", for_writing=False).entries


def test_only_or_keep_that_leaves_them_out_is_allowed(cli, tmp_path: Path) -> None:
    state = lstm_state()
    state["rnn.weight_hh_l0"] = (state["rnn.weight_hh_l0"] * 50).round().to(torch.int8)
    source = write(state, tmp_path / "mixed.safetensors")
    refused = cli("apply", source, "--scheme", "keras", "-o", tmp_path / "no.safetensors")
    assert refused.exit_code == 3 and "rnn.weight_hh_l0 (int8)" in refused.stderr
    assert "weight_ih_l0" not in refused.stderr
    for index, options in enumerate((("--only", "weight_ih|bias"), ("--rule", "weight_hh=keep"))):
        output = tmp_path / f"out{index}.safetensors"
        result = cli("apply", source, "--scheme", "keras", "--seed", "0", "-o", output, *options, "-q")
        assert result.exit_code == 0, result.stderr
        written = load_file(str(output))
        assert written["rnn.weight_hh_l0"].dtype == torch.int8
        assert torch.equal(written["rnn.weight_hh_l0"], state["rnn.weight_hh_l0"])
        assert not torch.equal(written["rnn.weight_ih_l0"], state["rnn.weight_ih_l0"])


@pytest.mark.parametrize(("dtype", "suffix"), [*NON_FLOATING, ("int16", ".safetensors")])
def test_diagnostics_still_show_non_floating_blocks(cli, tmp_path: Path, dtype: str, suffix: str) -> None:
    source = write(lstm_state(getattr(torch, dtype)), tmp_path / f"model{suffix}")
    reference = write(lstm_state(), tmp_path / "float.safetensors")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        document = cli("inspect", source, "--json")
        no_crash(document, {0})
        params = strict_json(document.stdout)["layers"][0]["params"]
        assert {param["dtype"] for param in params} == {dtype}
        assert all(math.isfinite(block["mean"]) for param in params for block in param["blocks"])
        no_crash(cli("inspect", source), {0})
        no_crash(cli("verify", source, "--scheme", "keras"), {1})
        no_crash(cli("diff", reference, source), {1})
    assert not [w for w in caught if "complex" in str(w.message).lower()]  # no "discards the imaginary part"


# ---------------------------------------------------------------------------------------------------------------
# Item 15: any finite value, NaN/Inf, subnormals, all-equal and empty blocks, in every float dtype


def pattern_values(pattern: str, x: torch.Tensor, info: torch.finfo) -> torch.Tensor:
    """float64 values of `pattern`, shaped like the standard normal draws `x`."""
    flat = x.reshape(-1)
    if pattern == "nan_inf":
        flat = flat.clone()
        flat[0::3], flat[1::5], flat[2::7] = math.nan, math.inf, -math.inf
        return flat.reshape(x.shape)
    constants = {"max": info.max, "all_nan": math.nan, "all_inf": -math.inf, "equal": 0.5, "zeros": 0.0}
    if pattern in constants:
        return torch.full(x.shape, constants[pattern], dtype=torch.float64)
    return {
        "normal": x * 0.3,
        "empty": x,
        "1e100": x * 1e100,
        "plus_minus_max": x.sign() * info.max,
        "up_to_max": x.clamp(-1, 1) * info.max,
        "subnormal": x * info.smallest_normal * 0.01,
        "1e-300": x * 1e-300,
        "mixed_magnitudes": torch.where(x > 0, x * 1e-300, x * 1e300),
    }[pattern]


def pattern_state(dtype: torch.dtype, pattern: str) -> dict[str, torch.Tensor]:
    """LSTM parameters of `dtype` filled by `pattern` (values computed in float64, then cast)."""
    generator = torch.Generator().manual_seed(7)
    state = {}
    for name, tensor in lstm_state().items():
        shape = (tensor.shape[0], 0) if pattern == "empty" and name.endswith("weight_ih_l0") else tensor.shape
        x = torch.randn(shape, generator=generator, dtype=torch.float64)
        state[name] = pattern_values(pattern, x, torch.finfo(dtype)).to(dtype)
    return state


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
PATTERNS = ["normal", "1e100", "max", "plus_minus_max", "up_to_max", "subnormal", "1e-300", "mixed_magnitudes",
            "nan_inf", "all_nan", "all_inf", "equal", "zeros", "empty"]
FAST = [(torch.float64, "max"), (torch.float16, "max"), (torch.bfloat16, "up_to_max"), (torch.float64, "1e-300"),
        (torch.float64, "mixed_magnitudes"), (torch.float32, "nan_inf"), (torch.bfloat16, "empty")]
SWEEP = [pytest.param(dtype, pattern, id=f"{str(dtype)[6:]}-{pattern}",
                      marks=() if (dtype, pattern) in FAST else pytest.mark.slow)
         for dtype, pattern in itertools.product(DTYPES, PATTERNS)]


@pytest.mark.parametrize(("dtype", "pattern"), SWEEP)
def test_diagnostics_never_crash(cli, tmp_path: Path, dtype: torch.dtype, pattern: str) -> None:
    source = write(pattern_state(dtype, pattern), tmp_path / "values.safetensors")
    reference = write(lstm_state(), tmp_path / "reference.safetensors")
    document = cli("inspect", source, "--json")
    no_crash(document, {0})
    strict_json(document.stdout)
    no_crash(cli("inspect", source), {0})
    no_crash(cli("verify", source, "--scheme", "keras"), {0, 1})
    checked = cli("verify", source, "--scheme", "keras", "--json")
    no_crash(checked, {0, 1})
    strict_json(checked.stdout)
    no_crash(cli("diff", reference, source), {1})
    same = cli("diff", source, source, "--json")
    no_crash(same, {0})
    assert strict_json(same.stdout)["identical"] is True
    no_crash(cli("apply", source, "--scheme", "keras", "--dry-run"), {0})


def test_float64_weights_of_1e100_the_reported_case(cli, tmp_path: Path) -> None:
    state = {name: tensor.double() * 1e100 for name, tensor in lstm_state().items()}
    source = write(state, tmp_path / "huge.pt")
    document = cli("inspect", source, "--json", "--wide")
    no_crash(document, {0})
    layer = strict_json(document.stdout)["layers"][0]
    weight = state["rnn.weight_hh_l0"]
    first = layer["params"][1]["blocks"][0]
    assert first["std"] == pytest.approx(weight[:HIDDEN].std(unbiased=False).item(), rel=1e-12)
    whole = next(m for m in layer["matrices"] if m["name"] == "rnn.weight_hh_l0")
    assert whole["sv_max"] == pytest.approx(torch.linalg.svdvals(weight).max().item(), rel=1e-9)
    assert "e+" in cli("inspect", source).stdout  # numbers in exponent form, not 100-digit columns
    verdict = cli("verify", source, "--scheme", "keras")
    no_crash(verdict, {1})
    assert "NOT consistent" in verdict.stdout


@pytest.mark.parametrize("rule", ["weight_hh=orthogonal(per=gate, gain=1e200)",
                                  "weight_hh=orthogonal(per=matrix, gain=1e200)",
                                  "weight_hh=orthogonal(per=gate, gain=1e-200)",
                                  "weight_hh=orthogonal(per=matrix, gain=1e-200)"])
def test_blocks_drawn_with_extreme_arguments_verify(cli, tmp_path: Path, rule: str) -> None:
    state = {name: tensor.double() for name, tensor in lstm_state().items()}
    init_(state, "keras", seed=3, rules=[rule])
    source = write(state, tmp_path / "orthogonal.safetensors")
    result = cli("verify", source, "--scheme", "keras", "--rule", rule)
    assert result.exit_code == 0, result.stderr


def test_distribution_checks_take_any_finite_bounds() -> None:
    generator = torch.Generator().manual_seed(0)
    values = (torch.rand(4096, generator=generator, dtype=torch.float64) * 2 - 1) * 1e300
    assert check_uniform(values, -1e300, 1e300, 1e-16).ok
    assert check_normal(values / 1e300 * 1e-300, 0.0, 1e-300, 1e-16).ok is False  # uniform, not normal
    assert check_truncated_normal(values, 1e300).ok is False


def test_block_statistics_do_not_overflow() -> None:
    top = torch.finfo(torch.float64).max
    stats = block_stats(torch.tensor([top, top, top], dtype=torch.float64))
    assert stats["mean"] == top and stats["std"] == 0.0
    spread = block_stats(torch.tensor([-top, top], dtype=torch.float64))
    assert spread["mean"] == 0.0 and spread["std"] == top
    tiny = block_stats(torch.tensor([4e-320, -4e-320], dtype=torch.float64))
    assert tiny["std"] == pytest.approx(4e-320, rel=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# Item 17: control characters from files and paths never reach the terminal raw

OSC52 = "\x1b]52;c;SGFja2Vk\x07"  # write "Hacked" to the clipboard
OSC0 = "\x1b]0;pwned\x07"  # window title
OSC8 = "\x1b]8;;file:evil\x1b\\"  # hyperlink (ST-terminated)
CSI = "\x1b[2J"  # clear the screen
C1 = "\x9b1m"  # 8-bit CSI
BIDI = "\u202e"  # right-to-left override
PAYLOADS = (OSC52, OSC0, OSC8, CSI, C1)
PREFIX = f"enc{OSC52}{OSC8}{C1}[bold]b[/bold]{BIDI}."
FILE_NAME = f"m{OSC0}{CSI}.safetensors"


def hostile_files(folder: Path) -> dict[str, Path]:
    """Checkpoints whose tensor names, metadata and rnninit.json record, and whose file names, carry escapes."""
    folder.mkdir(parents=True, exist_ok=True)
    state = lstm_state(prefix=PREFIX)
    for kind in ("bias_ih_l0", "bias_hh_l0"):
        state[PREFIX + kind][HIDDEN:2 * HIDDEN] = 1.0  # forget bias in both vectors: a warning naming the layer
    metadata = {"rnninit.scheme": f"keras{OSC52}", "rnninit.version": f"9{CSI}", f"key{OSC0}": f"value{C1}"}
    model = write(state, folder / FILE_NAME, metadata)
    other = lstm_state(prefix=PREFIX, seed=1)
    changed = write(other, folder / f"b{OSC0}.safetensors")
    record = folder / f"record{CSI}.pt"
    save_checkpoint(Checkpoint("pt", other, other), str(record), "pt",
                    metadata={"rnninit.scheme": f"keras{OSC0}", "rnninit.seed": f"1{C1}", "rnninit.only": OSC52})
    broken = write({PREFIX + "weight_ih_l0": state[PREFIX + "weight_ih_l0"]}, folder / f"broken{C1}.safetensors")
    return {"model": model, "changed": changed, "record": record, "broken": broken,
            "output": folder / f"out{OSC52}.safetensors", "missing": folder / f"missing{OSC8}.pt"}


def commands(files: dict[str, Path]) -> dict[str, list[str]]:
    """The runs to watch, and the visible forms (whitespace removed) each must show."""
    return {
        "inspect": ["inspect", str(files["model"])],
        "inspect-record": ["inspect", str(files["record"])],
        "apply": ["apply", str(files["model"]), "--scheme", "keras", "--seed", "0", "-o", str(files["output"])],
        "verify": ["verify", str(files["model"]), "--scheme", "keras"],
        "diff": ["diff", str(files["model"]), str(files["changed"])],
        "error-missing": ["inspect", str(files["missing"])],
        "error-layout": ["inspect", str(files["broken"]), "--strict"],
        "warning-layout": ["inspect", str(files["broken"])],  # skipped, with a warning that names it
    }


def expected_visible(files: dict[str, Path]) -> dict[str, list[str]]:
    prefix, model = visible(PREFIX), visible(str(files["model"]))
    return {
        "inspect": [model, prefix, visible(f"keras{OSC52}"), visible(f"9{CSI}"), "[bold]b[/bold]",
                    f"warning: {prefix}"],
        "inspect-record": [visible(str(files["record"])), visible(f"keras{OSC0}"), visible(f"1{C1}")],
        "apply": [prefix, f"wrote {visible(str(files['output']))}"],
        "verify": [model, visible(f"enc{OSC52}")],  # table cells fold long names: the start of one
        "diff": [f"{model} vs {visible(str(files['changed']))}"],
        "error-missing": [f"error: {visible(str(files['missing']))}"],
        "error-layout": ["error: ", f"skipped {prefix}"],
        "warning-layout": [f"warning: skipped {prefix}"],
    }


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def assert_safe(text: str, must_show: list[str]) -> None:
    """No raw payload, no control character but newline (and CR from a terminal), no C1, no bidi override;
    every expected visible form present."""
    for payload in PAYLOADS:
        assert payload not in text, f"raw {payload!r} reached the output"
    bad = sorted({char for char in text if (ord(char) < 0x20 and char not in "\n\r") or 0x7F <= ord(char) <= 0x9F
                  or char == BIDI})
    assert not bad, f"control characters {bad!r} in {text[-3000:]!r}"
    flat = squeeze(text)
    for form in must_show:
        assert squeeze(form) in flat, f"{form!r} not shown in {text[-3000:]!r}"


def test_visible_makes_every_control_character_visible() -> None:
    assert visible(f"a{OSC52}b") == "a\\x1b]52;c;SGFja2Vk\\x07b"
    assert visible("\x9b\x85\x7f\x00\t\r\n\u202e\u2066\u200f\udcff") == \
        "\\x9b\\x85\\x7f\\x00\\t\\r\\n\\u202e\\u2066\\u200f\\udcff"
    assert visible("plain ascii, ünïcödé, 中文, σ–√") == "plain ascii, ünïcödé, 中文, σ–√"
    assert shown("[bold]x[/bold]\x1b") == "\\[bold]x\\[/bold]\\x1b"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return hostile_files(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("name", ["inspect", "inspect-record", "apply", "verify", "diff", "error-missing",
                                  "error-layout", "warning-layout"])
def test_human_output_makes_file_strings_visible(cli, hostile: dict[str, Path], name: str) -> None:
    hostile["output"].unlink(missing_ok=True)
    result = cli(*commands(hostile)[name])
    expected_status = {"verify": 1, "diff": 1, "error-missing": 3, "error-layout": 3}.get(name, 0)
    assert result.exit_code == expected_status, result.stderr
    # the answer on stdout, warnings and errors on stderr: both safe, together showing every string
    assert_safe(result.stdout + result.stderr, expected_visible(hostile)[name])


def test_json_keeps_the_exact_strings(cli, hostile: dict[str, Path]) -> None:
    model, changed = str(hostile["model"]), str(hostile["changed"])
    names = {PREFIX + kind for kind in KINDS}
    inspected = cli("inspect", model, "--json")
    assert inspected.exit_code == 0
    assert "\x1b" not in inspected.stdout and "\x9b" not in inspected.stdout  # escaped by json.dumps
    document = json.loads(inspected.stdout)
    assert document["input"] == model
    assert document["metadata"][f"key{OSC0}"] == f"value{C1}"
    assert document["metadata"]["rnninit.scheme"] == f"keras{OSC52}"
    assert {param["name"] for param in document["layers"][0]["params"]} == names
    assert document["layers"][0]["prefix"] == PREFIX
    hostile["output"].unlink(missing_ok=True)
    applied = cli("apply", model, "--scheme", "keras", "--seed", "0", "-o", hostile["output"], "--json")
    assert applied.exit_code == 0
    assert json.loads(applied.stdout)["output"] == str(hostile["output"])
    checked = json.loads(cli("verify", model, "--scheme", "keras", "--json").stdout)
    assert {block["name"] for block in checked["blocks"]} == names
    compared = json.loads(cli("diff", model, changed, "--json").stdout)
    assert (compared["a"], compared["b"]) == (model, changed)
    assert {block["name"] for layer in compared["layers"] for block in layer["blocks"]} == names


DRIVER = COMMANDS_DRIVER


def _environment() -> dict[str, str]:
    return terminal_environment(TERM="xterm-256color", COLUMNS="120")


_limits = address_space_limit(16)


def on_terminal(argv: list[str], cwd: Path) -> str:
    """Run `python ARGV` with a pseudo-terminal (120 columns) as its standard input, output and error."""
    return run_on_terminal(argv, columns=120, cwd=cwd, env=_environment(), preexec_fn=_limits)


_CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")  # what Rich itself writes on a terminal: colours, cursor, erase


def rich_styling_removed(text: str) -> str:
    """The terminal output without Rich's own CSI sequences, once the injected CSI is known to be absent."""
    assert CSI not in text
    return _CSI.sub("", text)


def test_python_m_rnninit_inspect_on_a_terminal(hostile: dict[str, Path], tmp_path: Path) -> None:
    output = on_terminal(["-m", "rnninit_cli", "inspect", str(hostile["model"])], tmp_path)
    assert "\x1b[" in output, "Rich did not see a terminal: nothing is tested"
    assert_safe(rich_styling_removed(output), expected_visible(hostile)["inspect"])


def check_every_run(output: str, runs: dict[str, list[str]], hostile: dict[str, Path]) -> None:
    statuses = ["<<exit 0>>", "<<exit 0>>", "<<exit 0>>", "<<exit 1>>", "<<exit 1>>", "<<exit 3>>", "<<exit 3>>",
                "<<exit 0>>"]
    assert re.findall(r"<<exit \d+>>", output) == statuses, output[-3000:]
    pieces = re.split(r"<<exit \d+>>", output)
    for name, piece in zip(runs, pieces, strict=False):
        assert_safe(piece, expected_visible(hostile)[name])


def test_every_command_on_a_terminal(hostile: dict[str, Path], tmp_path: Path) -> None:
    runs = commands(hostile)
    hostile["output"].unlink(missing_ok=True)
    terminal = on_terminal(["-c", DRIVER, json.dumps(list(runs.values()))], tmp_path)
    assert "\x1b[" in terminal, "Rich did not see a terminal: nothing is tested"
    check_every_run(rich_styling_removed(terminal), runs, hostile)


@pytest.mark.slow  # the in-process runs above see a pipe too; this one is the real program on real pipes
def test_every_command_on_a_pipe(hostile: dict[str, Path], tmp_path: Path) -> None:
    runs = commands(hostile)
    hostile["output"].unlink(missing_ok=True)
    # one pipe for both streams, so that each command's answer (stdout) and messages (stderr) stay between
    # its exit markers
    piped = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(list(runs.values()))], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, cwd=tmp_path, env=_environment(), timeout=240, check=False,
                           preexec_fn=_limits)
    assert piped.returncode == 0, piped.stdout[-2000:]
    pipe = piped.stdout.decode()
    assert "\x1b" not in pipe  # no terminal: Rich writes no styling either
    check_every_run(pipe, runs, hostile)


@pytest.mark.parametrize("kind", ["uint8", "uint64", "subnormal"])
def test_inspect_takes_integer_and_subnormal_weights(kind: str, tmp_path: Path) -> None:
    """Scheme recognition estimates chrono's tmax and irnn's scale from the values: from integer or
    subnormal values those estimates are nonsense, and must count as 'no match', not as an error."""
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from rnninit_cli.cli import app

    state = torch.nn.LSTM(4, 8).state_dict()
    if kind == "subnormal":
        converted = {name: torch.full_like(value, 5e-324, dtype=torch.float64) for name, value in state.items()}
    else:
        dtype = getattr(torch, kind)
        converted = {name: (torch.arange(value.numel()).reshape(value.shape) % 250 + 1).to(dtype)
                     for name, value in state.items()}
    source = tmp_path / f"{kind}.safetensors"
    save_file(converted, source)
    for args in (["inspect", str(source)], ["inspect", str(source), "--json"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "internal error" not in result.output
