"""Adversarial inputs for issue 10's layout code (views, discover, declared layouts, --strict / --only / --layout*).

Each defect found has a test that failed before its fix.
The other tests guard attacks that were handled correctly. Everything runs in-process (CliRunner) on
.safetensors files or plain dicts, so the file stays fast; no .pt reading is exercised here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn.utils import parametrizations
from typer.testing import CliRunner, Result

from rnninit_cli.cli import app
from rnninit_cli.errors import LayoutDeclarationError, RnnInitError
from rnninit_cli.init.planning import apply_plan, init_, plan
from rnninit_cli.layouts.declared import load_layout_file, parse_layout
from rnninit_cli.layouts.discovery import discover

runner = CliRunner()
CELL_LAYOUT = r"cell=lstm weight_ih=(.*)\.x2g\.weight weight_hh=(.*)\.p2g\.weight bias_ih=(.*)\.x2g\.bias"
PER_GATE_LAYOUT = r"cell=lstm weight_ih=(.*)\.W(?P<gate>\w)\.weight weight_hh=(.*)\.U(?P<gate>\w)\.weight"


class Shaped:
    """A stand-in for a tensor: discover only reads `.shape`."""

    def __init__(self, *shape: int) -> None:
        self.shape = shape


def cli(*args: object) -> Result:
    return runner.invoke(app, [str(arg) for arg in args])


def one_error_line(result: Result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "internal error" not in result.stderr, result.stderr
    return errors[0]


def orthonormal_columns_error(weight: torch.Tensor) -> float:
    matrix = weight.detach().double()
    return (matrix.T @ matrix - torch.eye(matrix.shape[1], dtype=torch.float64)).abs().max().item()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def layouts(text: str) -> list:
    return parse_layout(text, "--layout 1")


@pytest.fixture
def odd_file(tmp_path: Path) -> Path:
    """A weight-normalized 2-layer LSTM plus one group that cannot be understood (15 rows)."""
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 4, 2)
    parametrizations.weight_norm(module, "weight_hh_l0")
    state = {name: tensor.detach().clone().contiguous() for name, tensor in module.state_dict().items()}
    state["odd.weight_ih_l0"] = torch.randn(16, 3)
    state["odd.weight_hh_l0"] = torch.randn(15, 4)
    path = tmp_path / "odd.safetensors"
    save_file(state, path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Defects found (each test failed before its fix)
# ---------------------------------------------------------------------------------------------------------------


def test_per_gate_pieces_of_unequal_sizes_are_a_declaration_error(tmp_path: Path) -> None:
    state = {f"c.W{gate}.weight": torch.randn(rows, 3) for gate, rows in zip("ifgo", (2, 6, 4, 4), strict=True)}
    state |= {f"c.U{gate}.weight": torch.randn(4, 4) for gate in "ifgo"}
    path = tmp_path / "per-gate.safetensors"
    save_file(state, path)
    before = digest(path)
    result = cli("apply", path, "-s", "keras", "--seed", "0", "-o", tmp_path / "out.safetensors",
                 "--layout", PER_GATE_LAYOUT)
    assert result.exit_code in (1, 2)
    line = one_error_line(result)
    assert "c.Wi.weight" in line and "[2, 3]" in line
    assert not (tmp_path / "out.safetensors").exists()
    assert digest(path) == before


@pytest.mark.parametrize("case", ["zero-rows-rule", "weight-norm-on-bias"])
def test_weight_norm_zero_rows_do_not_become_nan(case: str) -> None:
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 4)
    if case == "zero-rows-rule":
        parametrizations.weight_norm(module, "weight_hh_l0")
        init_(module, "keras", seed=0, rules=["weight_hh.f=zeros"])
        effective = module.weight_hh_l0.detach()
        expected_f = torch.zeros(4, 4)
        got_f = effective[4:8]
    else:
        parametrizations.weight_norm(module, "bias_hh_l0")
        init_(module, "keras", seed=0)
        effective = module.bias_hh_l0.detach()
        expected_f, got_f = torch.zeros(16), effective
    assert torch.isfinite(effective).all(), effective
    torch.testing.assert_close(got_f, expected_f)


@pytest.mark.parametrize("form", ["parametrizations", "old"])
def test_declared_weight_norm_direction_is_not_written_alone(form: str) -> None:
    torch.manual_seed(0)
    cell = torch.nn.Module()
    cell.x2g = torch.nn.Linear(3, 16)
    cell.p2g = torch.nn.Linear(4, 16, bias=False)
    if form == "parametrizations":
        parametrizations.weight_norm(cell.p2g, "weight")
        direction = r"p2g\.parametrizations\.weight\.original1"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.nn.utils.weight_norm(cell.p2g, "weight")
        direction = r"p2g\.weight_v"
    state = {name: tensor.detach().clone() for name, tensor in cell.state_dict().items()}
    declared = layouts(rf"cell=lstm weight_ih=()x2g\.weight weight_hh=(){direction} bias_ih=()x2g\.bias")
    try:
        the_plan = plan(state, "keras", layouts=declared)
    except RnnInitError:
        return  # refusing is acceptable
    apply_plan(the_plan, state, seed=0)
    cell.load_state_dict(state, strict=True)
    assert orthonormal_columns_error(cell.p2g.weight) < 1e-5


def test_suspect_never_pairs_weight_norm_magnitude_as_input_weight() -> None:
    cell = torch.nn.Module()
    cell.x2g = torch.nn.Linear(3, 16)
    cell.p2g = torch.nn.Linear(4, 16, bias=False)
    parametrizations.weight_norm(cell.p2g, "weight")
    found = discover(dict(cell.state_dict()))
    for suspect in found.suspects:
        assert "original0" not in suspect.declare, suspect.declare


def test_layout_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "layouts.toml"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            load_layout_file(fifo)
            outcome.append(None)
        except BaseException as error:  # recorded for the assertion below
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=1)
    if reader.is_alive():  # unblock the reader (it waits for a writer to open the FIFO), then fail
        descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(descriptor)
        reader.join(timeout=5)
        pytest.fail("load_layout_file blocked on a FIFO")
    assert outcome and isinstance(outcome[0], LayoutDeclarationError)
    assert "regular file" in str(outcome[0]) or "not a file" in str(outcome[0])


@pytest.mark.parametrize("only", [r"weight_hh_l0_raw", r"original1"])
def test_only_matches_stored_names_of_views(only: str) -> None:
    state = {"rnn.module.weight_ih_l0": torch.randn(16, 3), "rnn.weight_hh_l0_raw": torch.randn(16, 4),
             "x.weight_ih_l0": torch.randn(16, 3), "x.parametrizations.weight_hh_l0.original0": torch.rand(16, 1),
             "x.parametrizations.weight_hh_l0.original1": torch.randn(16, 4)}
    the_plan = plan(state, "keras", only=only)
    assert len(the_plan.layers) == 1
    assert {entry.kind for entry in the_plan.entries} == {"weight_hh"}


def test_two_weight_norm_forms_of_one_parameter_are_not_silently_resolved() -> None:
    shapes = {"weight_ih_l0": Shaped(16, 3),
              "parametrizations.weight_hh_l0.original0": Shaped(16, 1),
              "parametrizations.weight_hh_l0.original1": Shaped(16, 4),
              "weight_hh_l0_g": Shaped(16, 1), "weight_hh_l0_v": Shaped(16, 4)}
    found = discover(shapes)
    assert not found.layers
    assert found.skipped


def test_init_takes_the_same_layout_twice_like_the_cli() -> None:
    state = {"lstm_layers.0.x2g.weight": torch.randn(16, 3), "lstm_layers.0.p2g.weight": torch.randn(16, 4)}
    the_plan = init_(state, "keras", seed=0, layouts=["torchaudio-rnnt", "torchaudio-rnnt"])
    assert len(the_plan.layers) == 1


def test_init_layouts_given_as_one_string() -> None:
    state = {"lstm_layers.0.x2g.weight": torch.randn(16, 3), "lstm_layers.0.p2g.weight": torch.randn(16, 4)}
    try:
        the_plan = init_(state, "keras", seed=0, layouts="torchaudio-rnnt")
    except RnnInitError as error:
        assert "'t'" not in str(error), str(error)
        return
    assert len(the_plan.layers) == 1


def test_biases_left_out_of_a_declared_torch_named_layer_are_reported() -> None:
    shapes = dict(torch.nn.LSTM(3, 4).state_dict())
    declared = layouts(r"cell=lstm gates=i,o,f,c weight_ih=(.*)weight_ih_l0 weight_hh=(.*)weight_hh_l0")
    found = discover(shapes, layouts=declared)
    reported = {name for item in found.skipped for name in item.names} | {item.name for item in found.suspects}
    assert {"bias_ih_l0", "bias_hh_l0"} <= reported


def test_diff_says_which_file_a_skipped_group_is_in(odd_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    save_file(load_file(odd_file), other)
    result = cli("diff", odd_file, other, "--json")
    document = json.loads(result.stdout)
    assert len(document["skipped"]) == 2
    assert document["skipped"][0] != document["skipped"][1]


@pytest.mark.parametrize("biases", ["none", "bias_hh-only"])
def test_chrono_on_a_declared_lstm_without_bias_ih_is_not_silent(biases: str) -> None:
    state = {"c.x2g.weight": torch.randn(16, 3), "c.p2g.weight": torch.randn(16, 4)}
    layout = r"cell=lstm weight_ih=(.*)\.x2g\.weight weight_hh=(.*)\.p2g\.weight"
    if biases == "bias_hh-only":
        state["c.p2g.bias"] = torch.randn(16)
        layout += r" bias_hh=(.*)\.p2g\.bias"
    try:
        init_(state, "chrono(tmax=10)", seed=0, layouts=[layout])
    except RnnInitError as error:
        assert "bias" in str(error)
        return
    assert biases == "bias_hh-only" and state["c.p2g.bias"][4:8].min() > 0  # chrono's b_f written somewhere


def test_keras_gru_gives_one_suspect_named_by_the_recurrent_kernel() -> None:
    shapes = {"enc.gru.kernel": Shaped(3, 12), "enc.gru.recurrent_kernel": Shaped(4, 12), "enc.gru.bias": Shaped(2, 12)}
    suspects = discover(shapes).suspects
    assert [suspect.name for suspect in suspects] == ["enc.gru.recurrent_kernel"]
    assert suspects[0].declare.startswith("cell=gru ")


def test_per_gate_tensors_holding_both_biases_get_both_rows_written() -> None:
    torch.manual_seed(0)
    state = {f"c.K{gate}": torch.randn(4, 3) for gate in "rzn"} | {f"c.R{gate}": torch.randn(4, 4) for gate in "rzn"}
    state |= {f"c.B{gate}": torch.randn(2, 4) for gate in "rzn"}
    layout = (r"cell=gru weight_ih=(.*)\.K(?P<gate>\w) weight_hh=(.*)\.R(?P<gate>\w) bias_ih=(.*)\.B(?P<gate>\w) "
              r"bias_hh=(.*)\.B(?P<gate>\w)")
    the_plan = init_(state, "keras", seed=0, layouts=[layout])
    assert the_plan.layers[0].params["bias_ih"] != the_plan.layers[0].params["bias_hh"]
    for gate in "rzn":
        assert torch.count_nonzero(state[f"c.B{gate}"]) == 0, (gate, state[f"c.B{gate}"])


# ---------------------------------------------------------------------------------------------------------------
# Attacks handled correctly (regression guards)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["inspect", "apply", "verify", "diff"])
def test_strict_fails_with_one_error_line_and_writes_nothing(command: str, odd_file: Path, tmp_path: Path) -> None:
    before = digest(odd_file)
    output = tmp_path / "out.safetensors"
    extra = {"inspect": [], "apply": ["-s", "keras", "--seed", "1", "-o", output], "verify": ["-s", "keras"],
             "diff": [odd_file]}[command]
    lenient = cli(command, odd_file, *extra)
    assert lenient.exit_code in (0, 1), lenient.stdout + lenient.stderr  # diff/verify: 1 = differs/inconsistent
    assert "odd.weight_hh_l0" in lenient.stderr and "15 rows" in lenient.stderr
    output.unlink(missing_ok=True)
    strict = cli(command, odd_file, *extra, "--strict")
    assert strict.exit_code == 3
    assert "--strict" in one_error_line(strict)
    assert not output.exists()
    strict_only = cli(command, odd_file, *extra, "--strict", "--only", "l1$")  # the odd group is not selected
    assert strict_only.exit_code in (0, 1), strict_only.stdout + strict_only.stderr
    assert digest(odd_file) == before
    if command == "apply":
        in_place = cli("apply", odd_file, "-s", "keras", "--in-place", "--strict")
        assert in_place.exit_code == 3 and "--strict" in one_error_line(in_place)
        assert digest(odd_file) == before
        assert {path.name for path in odd_file.parent.iterdir()} <= {"odd.safetensors", "out.safetensors"}


def test_apply_is_deterministic_and_verify_agrees(odd_file: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for output in (first, second):
        assert cli("apply", odd_file, "-s", "keras", "--seed", "7", "-o", output).exit_code == 0
    assert digest(first) == digest(second)
    verified = cli("verify", first, "-s", "keras", "--json")
    assert verified.exit_code == 0, verified.stdout + verified.stderr
    document = json.loads(verified.stdout)
    assert document["ok"] and document["skipped"]
    dry = cli("apply", odd_file, "-s", "keras", "--seed", "7", "--dry-run", "--json")
    assert dry.exit_code == 0 and json.loads(dry.stdout)["skipped"][0]["names"] == ["odd.weight_hh_l0",
                                                                                    "odd.weight_ih_l0"]
    inspected = json.loads(cli("inspect", odd_file, "--json").stdout)
    assert inspected["skipped"] and "suspects" in inspected
    # the effective weight written through weight_norm is whole-matrix orthonormal, computed by torch itself
    module = torch.nn.LSTM(3, 4, 2)
    parametrizations.weight_norm(module, "weight_hh_l0")
    state = {name: tensor for name, tensor in load_file(first).items() if not name.startswith("odd.")}
    module.load_state_dict(state, strict=True)
    module(torch.randn(2, 1, 3))
    assert orthonormal_columns_error(module.weight_hh_l0) < 1e-5
    assert orthonormal_columns_error(module.weight_hh_l1) < 1e-5


@pytest.mark.parametrize("text, message", [
    ("cell=lstm weight_ih= weight_hh=(.*)", "weight_ih must be a regular expression"),
    ("cell=lstm weight_ih=(( weight_hh=(.*)", "not a valid regular expression"),
    (r"cell=lstm weight_ih=(.*)\.x weight_hh=(.*)\.(y)", "different numbers of groups"),
    ("cell=lstm gates=i,i,g,o weight_ih=a weight_hh=b", "not an order of the lstm gates"),
    ("cell=custom gates=a,a weight_ih=a weight_hh=b", "listed twice"),
    ("cell=custom weight_ih=a weight_hh=b", "needs its gate names"),
    (r"cell=lstm weight_ih=a weight_hh=b weight_hr=(?P<gate>x)", "weight_hr has no gates"),
    ("cell='lstm' weight_ih=a weight_hh=b", "not a cell kind"),
    ("=", "not a key=value setting"),
    ("torchaudio-rnn", "no built-in layout named"),
    ("Torchaudio-RNN", "no built-in layout named 'Torchaudio-RNN'; did you mean 'torchaudio-rnnt'?"),
    ("célula=lstm weight_ih=a weight_hh=b", "unknown setting"),
    ("cell=lstm weight_ih=a weight_ih=b weight_hh=c", "set twice"),
])
def test_bad_inline_declarations_are_named(text: str, message: str) -> None:
    with pytest.raises(LayoutDeclarationError, match=message):
        layouts(text)


def test_odd_whitespace_in_inline_declarations_is_accepted() -> None:
    for separator in ("\t", "\n", "\u00a0", "   "):
        [declaration] = layouts(separator.join(CELL_LAYOUT.split(" ")))
        assert set(declaration.patterns) == {"weight_ih", "weight_hh", "bias_ih"}


@pytest.mark.parametrize("layout, message", [
    (r"cell=lstm weight_ih=.* weight_hh=.*", "for the same groups"),
    (r"cell=lstm weight_ih=(.*) weight_hh=(.*)", "matched both as weight_ih and as weight_hh"),
    (r"cell=gru weight_ih=(.*)\.x2g\.weight weight_hh=(.*)\.p2g\.weight", "do not split into 3 gates"),
    (r"cell=lstm weight_ih=(a+)+\.x weight_hh=(a+)+\.y", "matches no recurrent cell"),
])
def test_declarations_matching_wrongly_are_errors(layout: str, message: str) -> None:
    shapes = {"c.x2g.weight": Shaped(16, 3), "c.p2g.weight": Shaped(16, 4), "c.x2g.bias": Shaped(16)}
    with pytest.raises(LayoutDeclarationError, match=message):
        discover(shapes, layouts=layouts(layout))


def test_a_tensor_claimed_by_two_declarations_is_an_error() -> None:
    shapes = {"c.x2g.weight": Shaped(16, 3), "c.p2g.weight": Shaped(16, 4)}
    other = r"cell=lstm weight_ih=(c)\.x2g\.weight weight_hh=(c)\.p2g\.weight"
    with pytest.raises(LayoutDeclarationError, match="matched twice"):
        discover(shapes, layouts=layouts(CELL_LAYOUT) + parse_layout(other, "--layout 2"))


@pytest.mark.parametrize("shapes, message", [
    ({"c.x2g.weight": (16,), "c.p2g.weight": (16, 4)}, "a weight_ih is 2-D"),
    ({"c.x2g.weight": (16, 3, 1), "c.p2g.weight": (16, 4)}, "a weight_ih is 2-D"),
    ({"c.x2g.weight": (16, 3), "c.p2g.weight": (16, 4), "c.x2g.bias": (16, 1)}, "a bias_ih is 1-D"),
    ({"c.x2g.weight": (16, 3), "c.p2g.weight": (16, 4), "c.x2g.bias": (12,)}, "12 rows where"),
    ({"c.x2g.weight": (16, 3), "c.p2g.weight": (16, 5)}, "16 rows where"),
    ({"c.x2g.weight": (20, 3), "c.p2g.weight": (16, 4)}, "20 rows where"),
])
def test_declared_shapes_that_do_not_fit_are_named(shapes: dict, message: str) -> None:
    with pytest.raises(LayoutDeclarationError, match=message):
        discover({name: Shaped(*shape) for name, shape in shapes.items()}, layouts=layouts(CELL_LAYOUT))


@pytest.mark.parametrize("bias_shape", [(3, 12), (12, 2), (12,)])
def test_keras_gru_bias_that_is_not_two_rows_is_named(bias_shape: tuple[int, ...]) -> None:
    declared = layouts(r"cell=gru gates=z,r,h weight_ih=(.*)\.kernel weight_hh=(.*)\.rk bias_ih=(.*)\.bias "
                       r"bias_hh=(.*)\.bias transposed=weight_ih,weight_hh")
    shapes = {"g.kernel": Shaped(3, 12), "g.rk": Shaped(4, 12), "g.bias": Shaped(*bias_shape)}
    with pytest.raises(LayoutDeclarationError, match="named as both biases"):
        discover(shapes, layouts=declared)


def test_declared_pieces_of_mixed_dtypes_and_non_floating_pieces() -> None:
    state = {f"c.W{gate}.weight": torch.randn(4, 3).to(torch.float16 if gate == "i" else torch.bfloat16)
             for gate in "ifgo"} | {f"c.U{gate}.weight": torch.randn(4, 4) for gate in "ifgo"}
    init_(state, "keras", seed=0, layouts=[PER_GATE_LAYOUT])
    assert state["c.Wi.weight"].dtype == torch.float16 and state["c.Wf.weight"].dtype == torch.bfloat16
    recurrent = torch.cat([state[f"c.U{gate}.weight"] for gate in "ifgo"])
    assert orthonormal_columns_error(recurrent) < 1e-5
    state["c.Wo.weight"] = torch.zeros(4, 3, dtype=torch.int8)
    with pytest.raises(RnnInitError, match="not floating point"):
        init_(state, "keras", seed=0, layouts=[PER_GATE_LAYOUT])


def test_expanded_declared_weight_is_refused() -> None:
    state = {"c.x2g.weight": torch.randn(16, 3), "c.p2g.weight": torch.randn(1, 4).expand(16, 4)}
    with pytest.raises(RnnInitError, match="share memory"):
        init_(state, "keras", seed=0, layouts=[CELL_LAYOUT])


@pytest.mark.parametrize("content, message", [
    (None, "cannot read the layout file"),  # missing
    ("DIR", "cannot read the layout file"),
    (b"\xff\xfe\x00binary", "not a text file"),
    ('[layout.a]\nweight_ih="x"\nweight_hh="y"\n[layout.a]\nweight_ih="z"\n', "not valid TOML"),
    ('[layout.a]\ncell=3\nweight_ih="x"\nweight_hh="y"\n', "not a cell kind"),
    ('[layout.a]\nweight_ih=["x"]\nweight_hh="y"\n', "must be a regular expression"),
    ('[layout.a]\ngates=[1, 2]\nweight_ih="x"\nweight_hh="y"\n', "must be a list of names"),
    ('[layout.a]\ntransposed=true\nweight_ih="x"\nweight_hh="y"\n', "must be a list of names"),
    ('[layout.a]\n[layout.a.sub]\nweight_ih="x"\n', "unknown setting 'sub'"),
    ("layout = 3\n", "declares no layout"),
    ("", "declares no layout"),
    ('[other]\nx=1\n', "unknown top-level entry"),
])
def test_bad_layout_files_are_named(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    path = tmp_path / "layouts.toml"
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(LayoutDeclarationError, match=message):
        load_layout_file(path)


def test_unicode_layout_names_and_a_layout_file_on_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "layouts.toml"
    path.write_text("[layout.\"ünï cødé\"]\ncell = \"lstm\"\nweight_ih = '(.*)\\.x2g\\.weight'\n"
                    "weight_hh = '(.*)\\.p2g\\.weight'\nbias_ih = '(.*)\\.x2g\\.bias'\n", encoding="utf-8")
    checkpoint = tmp_path / "cell.safetensors"
    save_file({"c.x2g.weight": torch.randn(16, 3), "c.p2g.weight": torch.randn(16, 4), "c.x2g.bias": torch.randn(16)},
              checkpoint)
    output = tmp_path / "out.safetensors"
    result = cli("apply", checkpoint, "-s", "keras", "--seed", "0", "-o", output, "--layout-file", path)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "ünï cødé" in result.stdout + result.stderr
    written = load_file(output)
    assert orthonormal_columns_error(written["c.p2g.weight"]) < 1e-5
    torch.testing.assert_close(written["c.x2g.bias"][4:8], torch.ones(4))
    assert cli("verify", output, "-s", "keras", "--layout-file", path).exit_code == 0
    missing = cli("verify", output, "-s", "keras")  # without the declaration nothing is recurrent
    assert missing.exit_code == 2
    one_error_line(missing)


@pytest.mark.parametrize("dim", [0, 1, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_weight_norm_round_trip_effective_weight_is_keras(dim: int | None, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 4, 2)
    parametrizations.weight_norm(module, "weight_hh_l0", dim=dim)
    parametrizations.weight_norm(module, "weight_ih_l1", dim=dim)  # weight_ih of layer 1 only
    state = {name: tensor.detach().clone().to(dtype) for name, tensor in module.state_dict().items()}
    the_plan = plan(state, "keras")
    apply_plan(the_plan, state, seed=0)
    assert all(torch.isfinite(tensor.float()).all() for tensor in state.values())
    module.load_state_dict({name: tensor.float() for name, tensor in state.items()}, strict=True)
    module(torch.randn(2, 1, 3))
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert orthonormal_columns_error(module.weight_hh_l0) < tolerance
    bound = math.sqrt(6 / (4 + 16))
    assert module.weight_ih_l1.detach().abs().max() <= bound * (1 + tolerance)


@pytest.mark.parametrize("broken", ["zero-v", "nan-v", "inf-v", "zero-g"])
def test_weight_norm_with_degenerate_stored_values_is_rewritten_finite(broken: str) -> None:
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 4)
    parametrizations.weight_norm(module, "weight_hh_l0")
    state = {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}
    g, v = "parametrizations.weight_hh_l0.original0", "parametrizations.weight_hh_l0.original1"
    if broken == "zero-v":
        state[v].zero_()
    elif broken == "zero-g":
        state[g].zero_()
    else:
        state[v][0, 0] = float("nan" if broken == "nan-v" else "inf")
    apply_plan(plan(state, "keras"), state, seed=0)
    module.load_state_dict(state, strict=True)
    assert orthonormal_columns_error(module.weight_hh_l0) < 1e-5


@pytest.mark.parametrize("g_shape", [(4, 1), (16,), (2, 2)])
def test_weight_norm_magnitude_of_a_wrong_shape_is_skipped(g_shape: tuple[int, ...]) -> None:
    shapes = {"weight_ih_l0": Shaped(16, 3), "parametrizations.weight_hh_l0.original0": Shaped(*g_shape),
              "parametrizations.weight_hh_l0.original1": Shaped(16, 4)}
    found = discover(shapes)
    assert not found.layers
    assert "not a weight_norm magnitude" in found.skipped[0].reason


@pytest.mark.parametrize("present", ["original0", "original1"])
def test_half_a_weight_norm_pair_is_skipped(present: str) -> None:
    shapes = {"weight_ih_l0": Shaped(16, 3), "bias_ih_l0": Shaped(16), "bias_hh_l0": Shaped(16),
              f"parametrizations.weight_hh_l0.{present}": Shaped(16, 1 if present == "original0" else 4)}
    found = discover(shapes)
    assert not found.layers and "weight_hh_l0 is missing" in found.skipped[0].reason


def test_parametrized_modules_through_init_() -> None:
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 4, 2)
    parametrizations.weight_norm(module, "weight_hh_l0")
    parametrizations.spectral_norm(module, "weight_hh_l1")
    with pytest.warns(UserWarning, match="spectral_norm|parametrization"):
        the_plan = init_(module, "keras", seed=0)
    assert [layer.layer for layer in the_plan.layers] == [0]
    assert orthonormal_columns_error(module.weight_hh_l0) < 1e-5
    with pytest.raises(RnnInitError, match=r"strict=True"):  # the API's argument, not the flag
        init_(module, "keras", seed=0, strict=True)
    with pytest.raises(RnnInitError, match="not a valid regular expression"):
        init_(module, "keras", seed=0, only="((")


@pytest.mark.parametrize("names, expected", [
    ({"fc.weight_raw": (4, 4)}, 0),  # _raw beside a name that is not recurrent
    ({"weight_ih_l0": (16, 3), "weight_hh_l0_raw": (16,)}, 0),  # a 1-D _raw weight: skipped
    ({"c.weight_ih": (16, 3), "c.weight_hh_raw": (16, 4)}, 1),  # a cell's _raw
    ({"r.module.weight_ih_l0": (16, 3), "r.weight_hh_l0_raw": (16, 4), "r.module.weight_hh_l0": (16, 5)}, 1),
])
def test_odd_raw_names(names: dict, expected: int) -> None:
    found = discover({name: Shaped(*shape) for name, shape in names.items()})
    assert len(found.layers) == expected
