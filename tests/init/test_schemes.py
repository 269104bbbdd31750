"""Built-in schemes hold their defining property on real modules; rules parse, override, fail."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

import rnninit_cli
from rnninit_cli.errors import RnnInitError, RuleError, SchemeError, UsageError
from rnninit_cli.init.schemes import SCHEMES, Rule, Scheme, get_scheme, parse_rule, register_scheme

GATES = {"rnn": (None,), "gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o")}
ROUNDING = 1 + 1e-6  # float32 rounding of a float64 bound
TRUNCATED_NORMAL_STD = 0.87962566103423978

MODULES: dict[str, Callable[[], nn.Module]] = {
    "rnn": lambda: nn.RNN(5, 8),
    "rnn-2layer-bi-nobias": lambda: nn.RNN(5, 8, num_layers=2, bidirectional=True, bias=False),
    "rnncell": lambda: nn.RNNCell(5, 8),
    "gru": lambda: nn.GRU(5, 8),
    "gru-2layer-bi": lambda: nn.GRU(5, 8, num_layers=2, bidirectional=True),
    "gru-nobias": lambda: nn.GRU(5, 8, bias=False),
    "grucell": lambda: nn.GRUCell(5, 8),
    "lstm": lambda: nn.LSTM(5, 8),
    "lstm-2layer-bi-proj": lambda: nn.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3),
    "lstm-3layer-nobias": lambda: nn.LSTM(5, 8, num_layers=3, bias=False),
    "lstmcell": lambda: nn.LSTMCell(5, 8),
}
GATED = [name for name in MODULES if not name.startswith("rnn")]
WITH_BIAS = [name for name in MODULES if "nobias" not in name]
LSTMS_WITH_BIAS = [name for name in WITH_BIAS if name.startswith("lstm")]
GRUS_WITH_BIAS = [name for name in WITH_BIAS if name.startswith("gru")]


def cell_of(module: nn.Module) -> str:
    if isinstance(module, (nn.LSTM, nn.LSTMCell)):
        return "lstm"
    if isinstance(module, (nn.GRU, nn.GRUCell)):
        return "gru"
    return "rnn"


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODULES[name]()


def params(module: nn.Module, kind: str) -> list[tuple[str, torch.Tensor]]:
    """Every parameter of `kind` (`weight_ih`, ..., `weight_hr`), all layers and directions."""
    return [(name, p.detach()) for name, p in module.named_parameters() if name.startswith(kind)]


def gate_blocks(module: nn.Module, kind: str) -> Iterator[tuple[str, str | None, torch.Tensor]]:
    """(parameter name, gate, rows of that gate) following PyTorch's documented gate order."""
    hidden = module.hidden_size
    for name, tensor in params(module, kind):
        for index, gate in enumerate(GATES[cell_of(module)]):
            yield name, gate, tensor[index * hidden : (index + 1) * hidden]


def block(module: nn.Module, name: str, gate: str) -> torch.Tensor:
    index = GATES[cell_of(module)].index(gate)
    hidden = module.hidden_size
    return dict(module.named_parameters())[name].detach()[index * hidden : (index + 1) * hidden]


def orthonormality_error(matrix: torch.Tensor, gain: float = 1.0) -> float:
    """max |MᵀM − g²I| (tall) or |MMᵀ − g²I| (wide): 0 when the smaller side is orthonormal."""
    matrix = matrix.double()
    product = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    return (product - gain**2 * torch.eye(product.shape[0], dtype=torch.float64)).abs().max().item()


def assert_all_biases_zero(module: nn.Module, except_gates: tuple[str, ...] = ()) -> None:
    for kind in ("bias_ih", "bias_hh"):
        for name, gate, values in gate_blocks(module, kind):
            if kind == "bias_ih" and gate in except_gates:
                continue
            assert torch.equal(values, torch.zeros_like(values)), f"{name} {gate} is not 0"


def assert_forget_bias_one(module: nn.Module) -> None:
    """Effective LSTM forget bias bias_ih.f + bias_hh.f is exactly 1, held in bias_ih alone."""
    biases_ih = dict(params(module, "bias_ih"))
    assert biases_ih, "the module has no bias"
    for name in biases_ih:
        forget_ih = block(module, name, "f")
        forget_hh = block(module, name.replace("bias_ih", "bias_hh"), "f")
        assert torch.equal(forget_ih, torch.ones_like(forget_ih))
        assert torch.equal(forget_hh, torch.zeros_like(forget_hh))
        assert torch.equal(forget_ih + forget_hh, torch.ones_like(forget_ih))


def initialized(name: str, scheme: str, seed: int = 1) -> nn.Module:
    module = build(name)
    rnninit_cli.init_(module, scheme, seed=seed)
    return module


def test_every_built_in_scheme_is_registered_and_documented() -> None:
    assert {"pytorch", "keras", "keras-gate", "flax", "orthogonal", "irnn", "chrono"} <= set(
        SCHEMES
    )
    for scheme in SCHEMES.values():
        assert scheme.description
        assert scheme.reference


# --- pytorch -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODULES)
def test_pytorch_every_value_within_one_over_sqrt_hidden(name: str) -> None:
    before = {k: v.detach().clone() for k, v in build(name).named_parameters()}
    module = initialized(name, "pytorch")
    bound = 1 / math.sqrt(module.hidden_size)
    for key, value in module.named_parameters():
        assert value.abs().max().item() <= bound * ROUNDING, key
        assert not torch.equal(value.detach(), before[key]), f"{key} was not rewritten"


def test_pytorch_reaches_its_bound_including_weight_hr() -> None:
    module = nn.LSTM(64, 64, proj_size=16)
    rnninit_cli.init_(module, "pytorch", seed=0)
    bound = 1 / 8
    for key, value in module.named_parameters():
        assert bound * 0.95 < value.abs().max().item() <= bound * ROUNDING, key


# --- keras -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODULES)
def test_keras_glorot_over_the_whole_input_matrix(name: str) -> None:
    module = initialized(name, "keras")
    gates = len(GATES[cell_of(module)])
    for key, weight in params(module, "weight_ih"):
        whole_bound = math.sqrt(6 / (weight.shape[1] + gates * module.hidden_size))
        gate_bound = math.sqrt(6 / (weight.shape[1] + module.hidden_size))
        assert gate_bound >= whole_bound
        assert weight.abs().max().item() <= whole_bound * ROUNDING, key
        if weight.numel() >= 100:
            assert weight.abs().max().item() > 0.8 * whole_bound, key


def test_keras_input_bound_is_the_whole_matrix_bound_over_many_seeds() -> None:
    """Keras LSTM(8) on d = 5: max |kernel| over 200 seeds 0.40269 (per-gate bound 0.679)."""
    whole_bound = math.sqrt(6 / (5 + 4 * 8))
    largest = 0.0
    for seed in range(40):
        module = nn.LSTM(5, 8)
        rnninit_cli.init_(module, "keras", seed=seed)
        largest = max(largest, module.weight_ih_l0.detach().abs().max().item())
    assert whole_bound * 0.99 < largest <= whole_bound * ROUNDING


@pytest.mark.parametrize("name", MODULES)
def test_keras_whole_recurrent_matrix_orthogonal_but_not_its_gate_blocks(name: str) -> None:
    module = initialized(name, "keras")
    for key, weight in params(module, "weight_hh"):
        assert weight.shape[0] >= weight.shape[1]
        assert orthonormality_error(weight) < 1e-5, key
    if cell_of(module) != "rnn":
        for key, gate, values in gate_blocks(module, "weight_hh"):
            assert orthonormality_error(values) > 0.1, (
                f"{key} {gate} block is orthogonal on its own"
            )


@pytest.mark.parametrize("name", LSTMS_WITH_BIAS)
def test_keras_lstm_effective_forget_bias_is_exactly_one(name: str) -> None:
    module = initialized(name, "keras")
    assert_forget_bias_one(module)
    assert_all_biases_zero(module, except_gates=("f",))


@pytest.mark.parametrize("name", [n for n in WITH_BIAS if not n.startswith("lstm")])
def test_keras_other_biases_zero(name: str) -> None:
    assert_all_biases_zero(initialized(name, "keras"))


@pytest.mark.parametrize("scheme", ["keras", "keras-gate"])
def test_keras_weight_hr_glorot_over_the_whole_matrix(scheme: str) -> None:
    module = nn.LSTM(5, 40, num_layers=2, proj_size=30)
    rnninit_cli.init_(module, scheme, seed=2)
    bound = math.sqrt(6 / (30 + 40))
    for key, weight in params(module, "weight_hr"):
        assert 0.95 * bound < weight.abs().max().item() <= bound * ROUNDING, key


# --- keras-gate --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODULES)
def test_keras_gate_glorot_and_orthogonal_per_gate(name: str) -> None:
    module = initialized(name, "keras-gate")
    hidden = module.hidden_size
    gates = len(GATES[cell_of(module)])
    for key, gate, values in gate_blocks(module, "weight_ih"):
        gate_bound = math.sqrt(6 / (values.shape[1] + hidden))
        assert values.abs().max().item() <= gate_bound * ROUNDING, f"{key} {gate}"
    if (
        gates > 1
    ):  # per-gate bounds are larger; with this many draws some value exceeds the whole one
        for key, weight in params(module, "weight_ih"):
            whole_bound = math.sqrt(6 / (weight.shape[1] + gates * hidden))
            assert weight.abs().max().item() > whole_bound, key
    for key, gate, values in gate_blocks(module, "weight_hh"):
        assert orthonormality_error(values) < 1e-5, f"{key} {gate}"
    if cell_of(module) == "lstm" and module.bias:
        assert_forget_bias_one(module)
        assert_all_biases_zero(module, except_gates=("f",))
    else:
        assert_all_biases_zero(module)


# --- flax --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODULES)
def test_flax_lecun_input_orthogonal_recurrent_per_gate(name: str) -> None:
    module = initialized(name, "flax")
    for key, gate, values in gate_blocks(module, "weight_ih"):
        sigma = math.sqrt(1 / values.shape[1]) / TRUNCATED_NORMAL_STD
        assert values.abs().max().item() <= 2 * sigma * ROUNDING, f"{key} {gate}"
    for key, gate, values in gate_blocks(module, "weight_hh"):
        assert orthonormality_error(values) < 1e-5, f"{key} {gate}"
    for key, weight in params(module, "weight_hr"):
        sigma = math.sqrt(1 / weight.shape[1]) / TRUNCATED_NORMAL_STD
        assert weight.abs().max().item() <= 2 * sigma * ROUNDING, key
    assert_all_biases_zero(module)


def test_flax_input_variance_is_one_over_fan_in() -> None:
    module = nn.LSTM(200, 50)
    rnninit_cli.init_(module, "flax", seed=5)
    sigma = math.sqrt(1 / 200) / TRUNCATED_NORMAL_STD
    for _, gate, values in gate_blocks(module, "weight_ih"):
        values = values.double()
        assert values.var().item() == pytest.approx(1 / 200, rel=0.05), gate
        assert values.abs().max().item() > 0.95 * 2 * sigma, gate


# --- orthogonal --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODULES)
def test_orthogonal_every_gate_block(name: str) -> None:
    module = initialized(name, "orthogonal")
    for kind in ("weight_ih", "weight_hh"):
        for key, gate, values in gate_blocks(module, kind):
            assert orthonormality_error(values) < 1e-5, f"{key} {gate}"
    for key, weight in params(module, "weight_hr"):
        assert orthonormality_error(weight) < 1e-5, key
    assert_all_biases_zero(module)


# --- irnn --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "scale"), [("irnn", 1.0), ("irnn(scale=0.5)", 0.5), ("irnn(0.5)", 0.5)]
)
@pytest.mark.parametrize("name", MODULES)
def test_irnn_recurrent_blocks_are_scaled_identity(name: str, scheme: str, scale: float) -> None:
    module = initialized(name, scheme)
    for key, gate, values in gate_blocks(module, "weight_hh"):
        assert torch.equal(values, scale * torch.eye(*values.shape)), f"{key} {gate}"
    for key, weight in params(module, "weight_hr"):
        assert torch.equal(weight, scale * torch.eye(*weight.shape)), key
    for key, weight in params(module, "weight_ih"):
        assert weight.abs().max().item() < 0.01, key  # 10 σ
        assert weight.abs().max().item() > 0.0005, key
    assert_all_biases_zero(module)


def test_irnn_input_std_is_one_thousandth() -> None:
    module = nn.RNN(200, 100)
    rnninit_cli.init_(module, "irnn", seed=3)
    weight = module.weight_ih_l0.detach().double()
    assert weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert weight.mean().item() == pytest.approx(0.0, abs=0.00005)


# --- chrono ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tmax", [10, 1000.0])
@pytest.mark.parametrize("name", LSTMS_WITH_BIAS)
def test_chrono_lstm(name: str, tmax: float) -> None:
    module = initialized(name, f"chrono(tmax={tmax})")
    top = math.log(tmax - 1) * ROUNDING
    for key, _ in params(module, "bias_ih"):
        forget = block(module, key, "f")
        assert forget.min().item() >= 0.0
        assert forget.max().item() <= top
        assert forget.std().item() > 0, "one draw per unit"
        assert torch.equal(block(module, key, "i"), -forget)
        for gate in ("g", "o"):
            assert torch.equal(block(module, key, gate), torch.zeros(module.hidden_size))
        effective = forget + block(module, key.replace("bias_ih", "bias_hh"), "f")
        assert effective.min().item() >= 0.0
        assert effective.max().item() <= top
    for key, bias in params(module, "bias_hh"):
        assert torch.equal(bias, torch.zeros_like(bias)), key
    for key, weight in params(module, "weight_hh"):  # the rest is keras
        assert orthonormality_error(weight) < 1e-5, key


@pytest.mark.parametrize("name", GRUS_WITH_BIAS)
def test_chrono_gru(name: str) -> None:
    module = initialized(name, "chrono(50)")
    for key, _ in params(module, "bias_ih"):
        update = block(module, key, "z")
        assert update.min().item() >= 0.0
        assert update.max().item() <= math.log(49) * ROUNDING
        assert update.std().item() > 0
        for gate in ("r", "n"):
            assert torch.equal(block(module, key, gate), torch.zeros(module.hidden_size))
    for key, bias in params(module, "bias_hh"):
        assert torch.equal(bias, torch.zeros_like(bias)), key


def test_chrono_positional_and_keyword_tmax_agree() -> None:
    first, second = build("lstm"), build("lstm")
    rnninit_cli.init_(first, "chrono(100)", seed=4)
    rnninit_cli.init_(second, "chrono(tmax=100)", seed=4)
    for (key, a), (_, b) in zip(first.named_parameters(), second.named_parameters(), strict=True):
        assert torch.equal(a, b), key


def test_chrono_on_a_plain_rnn_names_the_layer() -> None:
    model = nn.ModuleDict({"encoder": nn.LSTM(3, 4), "decoder": nn.RNN(4, 4)})
    with pytest.raises(SchemeError) as caught:
        rnninit_cli.init_(model, "chrono(tmax=100)", seed=0)
    assert "decoder." in str(caught.value)
    assert "RNN" in str(caught.value).upper()


def test_chrono_on_a_mixed_model_works_when_only_selects_gated_layers() -> None:
    model = nn.ModuleDict({"encoder": nn.LSTM(3, 4), "decoder": nn.RNN(4, 4)})
    rnninit_cli.init_(model, "chrono(tmax=100)", seed=0, only=r"^encoder\.")
    assert torch.equal(
        block(model["encoder"], "bias_ih_l0", "i"), -block(model["encoder"], "bias_ih_l0", "f")
    )


def test_chrono_on_an_lstm_without_bias() -> None:
    with pytest.raises(SchemeError, match="bias"):
        rnninit_cli.init_(nn.LSTM(3, 4, bias=False), "chrono(tmax=100)", seed=0)


def test_chrono_without_tmax() -> None:
    with pytest.raises(SchemeError, match="tmax"):
        rnninit_cli.init_(nn.LSTM(3, 4), "chrono", seed=0)


@pytest.mark.parametrize("spec", ["chrono(tmax=abc)", "chrono(tmax=true)"])
def test_chrono_tmax_must_be_a_number(spec: str) -> None:
    with pytest.raises(SchemeError, match="tmax"):
        rnninit_cli.init_(nn.LSTM(3, 4), spec, seed=0)


# --- scheme names and arguments ----------------------------------------------------------------


def test_unknown_scheme_without_a_close_name_lists_known_schemes() -> None:
    with pytest.raises(SchemeError) as caught:
        rnninit_cli.init_(nn.LSTM(3, 4), "zzqx", seed=0)
    message = str(caught.value)
    assert "zzqx" in message
    for known in ("pytorch", "keras", "flax", "orthogonal", "irnn", "chrono"):
        assert known in message


@pytest.mark.parametrize(
    "spec", ["irnn(foo=1)", "irnn(1, 2)", "irnn(scale=big)", "keras(1)", "irnn(("]
)
def test_bad_scheme_arguments(spec: str) -> None:
    with pytest.raises(SchemeError):
        get_scheme(spec)


def test_scheme_arguments_positional_and_keyword() -> None:
    scheme, by_position = get_scheme("irnn(0.25)")
    _, by_keyword = get_scheme("irnn(scale=0.25)")
    assert scheme is SCHEMES["irnn"]
    assert by_position == by_keyword
    assert any(rule.initializer == "identity" and rule.args == (0.25,) for rule in by_position)
    _, default = get_scheme("irnn")
    assert any(rule.initializer == "identity" and rule.args == (1.0,) for rule in default)


def test_scheme_and_rule_errors_are_rnninit_usage_errors() -> None:
    assert issubclass(RuleError, UsageError)
    assert issubclass(SchemeError, UsageError)
    assert issubclass(UsageError, RnnInitError)


# --- rule parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bias_ih.f=constant(1)", Rule("bias_ih", "f", "constant", (1,), ())),
        (
            "weight_hh=orthogonal(per=gate)",
            Rule("weight_hh", None, "orthogonal", (), (("per", "gate"),)),
        ),
        (
            "weight_ih = xavier_uniform(2.0, per=matrix)",
            Rule("weight_ih", None, "xavier_uniform", (2.0,), (("per", "matrix"),)),
        ),
        ("weight=zeros", Rule("weight", None, "zeros", (), ())),
        (
            "bias.z=chrono(tmax=1e3, negate=true)",
            Rule("bias", "z", "chrono", (), (("tmax", 1000.0), ("negate", True))),
        ),
        ("weight_hr=uniform(-0.5, .5)", Rule("weight_hr", None, "uniform", (-0.5, 0.5), ())),
        ("weight_hh.n=keep", Rule("weight_hh", "n", "keep", (), ())),
        (
            "weight_ih=kaiming_normal(mode='fan_out')",
            Rule("weight_ih", None, "kaiming_normal", (), (("mode", "fan_out"),)),
        ),
    ],
)
def test_parse_rule(text: str, expected: Rule) -> None:
    assert parse_rule(text) == expected


def test_shorthand_targets() -> None:
    assert parse_rule("weight=zeros").kinds == ("weight_ih", "weight_hh")
    assert parse_rule("bias=zeros").kinds == ("bias_ih", "bias_hh")
    assert parse_rule("bias.f=zeros").hits("bias_hh", "f")
    assert not parse_rule("bias.f=zeros").hits("bias_hh", "i")
    assert not parse_rule("weight=zeros").hits("weight_hr", None)


def test_rule_string_round_trips() -> None:
    for text in (
        "bias_ih.f=constant(1)",
        "weight_hh=orthogonal(per=gate)",
        "weight=normal(0.0, std=0.01)",
    ):
        assert parse_rule(str(parse_rule(text))) == parse_rule(text)


@pytest.mark.parametrize(
    ("text", "named", "listed"),
    [
        ("weight_ih", "weight_ih", "TARGET=INIT"),
        ("weight_ih=", "weight_ih", "TARGET=INIT"),
        ("weights=zeros", "weights", "weight_ih"),
        ("bias_ih.1x=zeros", "'1x'", "i f g o"),
        ("weight_hr.i=zeros", "weight_hr", "weight_hr=INIT"),
        ("weight_ih=xavier_uniform(", "xavier_uniform(", "name(arg=value"),
        ("weight_ih=xavier_uniform(gain=1, gain=2)", "gain", "twice"),
        ("weight_ih=normal(std=1, 0)", "0", "positional"),
    ],
)
def test_malformed_rules(text: str, named: str, listed: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(text)
    assert named in str(caught.value)
    assert listed in str(caught.value)


@pytest.mark.parametrize(
    ("rule", "named", "listed"),
    [
        ("weight_ih=glorot_uniform", "glorot_uniform", "xavier_uniform"),
        ("weight_ih=xavier_uniform(fan=3)", "fan", "gain"),
        ("bias=constant(1, 2)", "constant", "value"),
        ("bias=constant", "value", "constant"),
        ("bias=orthogonal", "orthogonal", "2-D"),
        ("weight_hh=chrono(tmax=10)", "chrono", "bias"),
        ("weight_ih=xavier_uniform(per=row)", "row", "gate or matrix"),
        ("bias=zeros(per=matrix)", "per", "no arguments"),
        ("weight_hh=keep(1)", "keep", "no arguments"),
        ("weight_ih=normal(std=wide)", "std", "number"),
        ("bias_ih.x=zeros", "hits no block", "bias_ih.f"),  # gate names are checked against the layer's gates
    ],
)
def test_rule_errors_name_the_bad_part_and_valid_options(
    rule: str, named: str, listed: str
) -> None:
    module = nn.LSTM(3, 4)
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    with pytest.raises(RuleError) as caught:
        rnninit_cli.init_(module, "keras", rules=[rule], seed=0)
    assert named in str(caught.value)
    assert listed in str(caught.value)
    for key, value in module.named_parameters():
        assert torch.equal(value, before[key]), f"{key} changed although the rule was rejected"


def test_rule_hitting_nothing_lists_the_blocks() -> None:
    with pytest.raises(RuleError) as caught:
        rnninit_cli.init_(nn.GRU(3, 4), "keras", rules=["bias_ih.f=constant(1)"], seed=0)
    message = str(caught.value)
    assert "bias_ih.f" in message
    assert "bias_ih.z" in message


@pytest.mark.parametrize("rule", ["bias_ih.f@foo=ones", "bias_ih.f@slstm=ones"])
def test_rule_for_a_family_no_layer_has_says_so(rule: str) -> None:
    """The gate exists (LSTM's f): the family is what matches nothing, and the message must say that, not suggest
    the very gate the rule names."""
    with pytest.raises(RuleError) as caught:
        rnninit_cli.init_(nn.LSTM(3, 4), "keras", rules=[rule], seed=0)
    message = str(caught.value)
    assert f"family {rule.split('@')[1].split('=')[0]}" in message
    assert "did you mean" not in message


def test_weight_hr_rule_on_a_model_without_projection_hits_nothing() -> None:
    with pytest.raises(RuleError, match="weight_hr"):
        rnninit_cli.init_(nn.LSTM(3, 4), "keras", rules=["weight_hr=zeros"], seed=0)


def test_bias_rule_on_a_model_without_bias_hits_nothing() -> None:
    with pytest.raises(RuleError, match="bias"):
        rnninit_cli.init_(nn.LSTM(3, 4, bias=False), "keras", rules=["bias=zeros"], seed=0)


# --- rules applied -----------------------------------------------------------------------------


def test_keep_leaves_the_block_untouched_bit_for_bit() -> None:
    module = build("lstm-2layer-bi-proj")
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    rnninit_cli.init_(module, "keras", rules=["weight_hh.g=keep", "bias.o=keep"], seed=0)
    for key, gate, values in gate_blocks(module, "weight_hh"):
        kept = torch.equal(values, before[key][16:24])
        assert kept == (gate == "g"), f"{key} {gate}"
    for kind in ("bias_ih", "bias_hh"):
        for key, gate, values in gate_blocks(module, kind):
            assert torch.equal(values, before[key][24:32]) == (gate == "o"), f"{key} {gate}"


def test_later_rules_override_earlier_ones_only_where_they_hit() -> None:
    module = build("lstm")
    rnninit_cli.init_(
        module, "keras", rules=["bias=constant(0.5)", "bias_ih.f=constant(2)"], seed=0
    )
    for kind in ("bias_ih", "bias_hh"):
        for key, gate, values in gate_blocks(module, kind):
            expected = 2.0 if (kind, gate) == ("bias_ih", "f") else 0.5
            assert torch.equal(values, torch.full_like(values, expected)), f"{key} {gate}"
    assert orthonormality_error(module.weight_hh_l0.detach()) < 1e-5  # untouched by the rules


def test_rule_overrides_the_scheme_for_its_gate_only() -> None:
    module = build("gru")
    rnninit_cli.init_(module, "orthogonal", rules=["weight_hh.n=identity"], seed=0)
    for key, gate, values in gate_blocks(module, "weight_hh"):
        if gate == "n":
            assert torch.equal(values, torch.eye(8)), key
        else:
            assert orthonormality_error(values) < 1e-5 and not torch.equal(values, torch.eye(8)), (
                key
            )


def test_rule_for_a_gate_a_cell_lacks_skips_that_cell() -> None:
    model = nn.ModuleDict({"lstm": nn.LSTM(3, 4), "gru": nn.GRU(3, 4)})
    rnninit_cli.init_(model, "keras", rules=["bias_ih.f=constant(3)"], seed=0)
    assert torch.equal(block(model["lstm"], "bias_ih_l0", "f"), torch.full((4,), 3.0))
    assert torch.equal(model["gru"].bias_ih_l0.detach(), torch.zeros(12))


def test_positional_first_argument() -> None:
    module = build("gru")
    rnninit_cli.init_(
        module, "keras", rules=["weight_ih=constant(0.25)", "bias_hh.n=constant(-1)"], seed=0
    )
    assert torch.equal(module.weight_ih_l0.detach(), torch.full((24, 5), 0.25))
    assert torch.equal(block(module, "bias_hh_l0", "n"), torch.full((8,), -1.0))


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_per_gate_versus_per_matrix(name: str) -> None:
    by_gate, by_matrix = build(name), build(name)
    rnninit_cli.init_(by_gate, "keras", rules=["weight_hh=orthogonal(per=gate)"], seed=0)
    rnninit_cli.init_(by_matrix, "keras-gate", rules=["weight_hh=orthogonal(per=matrix)"], seed=0)
    for _, gate, values in gate_blocks(by_gate, "weight_hh"):
        assert orthonormality_error(values) < 1e-5, gate
    for _, gate, values in gate_blocks(by_matrix, "weight_hh"):
        assert orthonormality_error(values) > 0.1, gate
    assert orthonormality_error(by_matrix.weight_hh_l0.detach()) < 1e-5


def test_xavier_gain_argument_scales_the_bound() -> None:
    module = nn.LSTM(20, 40)
    rnninit_cli.init_(module, "keras", rules=["weight_ih=xavier_uniform(2.0, per=matrix)"], seed=0)
    bound = 2.0 * math.sqrt(6 / (20 + 160))
    assert 0.99 * bound < module.weight_ih_l0.detach().abs().max().item() <= bound * ROUNDING


# --- registering schemes -----------------------------------------------------------------------


@pytest.fixture
def restore_schemes() -> Iterator[None]:
    saved = dict(SCHEMES)
    yield
    SCHEMES.clear()
    SCHEMES.update(saved)


HALF_SCHEME = Scheme(
    "test-halves",
    "Every weight 0.5, biases {bias}.",
    ("weight=constant(0.5)", "weight_hr=constant(0.5)", "bias=constant({bias})"),
    "a test",
    params=(("bias", 0.0),),
)


@pytest.mark.usefixtures("restore_schemes")
def test_register_scheme_works_through_init() -> None:
    register_scheme(HALF_SCHEME)
    module = build("lstm-2layer-bi-proj")
    rnninit_cli.init_(module, "test-halves(bias=0.125)", seed=0)
    for key, value in module.named_parameters():
        expected = 0.125 if key.startswith("bias") else 0.5
        assert torch.equal(value.detach(), torch.full_like(value, expected)), key
    other = build("gru")
    rnninit_cli.init_(other, HALF_SCHEME, seed=0)  # a Scheme object works as well
    assert torch.equal(other.bias_hh_l0.detach(), torch.zeros(24))


@pytest.mark.usefixtures("restore_schemes")
def test_register_duplicate_name_raises() -> None:
    register_scheme(HALF_SCHEME)
    with pytest.raises(SchemeError, match="test-halves"):
        register_scheme(HALF_SCHEME)
    with pytest.raises(SchemeError, match="keras"):
        register_scheme(Scheme("keras", "again", ("weight=zeros",), "none"))
    assert SCHEMES["keras"].description != "again"
    replacement = Scheme("test-halves", "replaced", ("weight=zeros",), "none")
    register_scheme(replacement, replace=True)
    assert SCHEMES["test-halves"] is replacement


@pytest.mark.usefixtures("restore_schemes")
def test_register_scheme_rejects_bad_rules() -> None:
    with pytest.raises(RuleError):
        register_scheme(Scheme("test-broken", "broken", ("weights=zeros",), "none"))
    assert "test-broken" not in SCHEMES


@pytest.mark.usefixtures("restore_schemes")
def test_registered_scheme_cells_and_bias_requirement() -> None:
    register_scheme(
        Scheme(
            "test-lstm-only",
            "lstm only",
            ("bias.f=ones",),
            "none",
            cells=frozenset({"lstm"}),
            needs_bias=True,
        )
    )
    rnninit_cli.init_(nn.LSTM(3, 4), "test-lstm-only", seed=0)
    with pytest.raises(SchemeError, match="GRU"):
        rnninit_cli.init_(nn.GRU(3, 4), "test-lstm-only", seed=0)
    with pytest.raises(SchemeError, match="bias"):
        rnninit_cli.init_(nn.LSTM(3, 4, bias=False), "test-lstm-only", seed=0)
