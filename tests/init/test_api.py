"""Python API: init_ determinism, plans as values, `only`, training still works, lazy import."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from torch import nn

import rnninit_cli
from rnninit_cli.errors import NothingToDoError, UsageError
from rnninit_cli.init.planning import Plan, PlanEntry, apply_plan, init_, plan

SCHEMES = [
    "pytorch",
    "keras",
    "keras-gate",
    "flax",
    "orthogonal",
    "irnn",
    "irnn(scale=0.5)",
    "chrono(tmax=50)",
]
GATED_ONLY = {"chrono(tmax=50)"}  # needs a gate bias: no plain RNN, no bias=False

MODULES: dict[str, Callable[[], nn.Module]] = {
    "rnn-2layer-bi": lambda: nn.RNN(5, 8, num_layers=2, bidirectional=True),
    "rnn-nobias": lambda: nn.RNN(5, 8, bias=False, nonlinearity="relu"),
    "rnncell": lambda: nn.RNNCell(5, 8),
    "gru-2layer-bi": lambda: nn.GRU(5, 8, num_layers=2, bidirectional=True),
    "gru-nobias": lambda: nn.GRU(5, 8, bias=False),
    "grucell": lambda: nn.GRUCell(5, 8),
    "lstm-2layer-bi-proj": lambda: nn.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3),
    "lstm-nobias": lambda: nn.LSTM(5, 8, bias=False),
    "lstmcell": lambda: nn.LSTMCell(5, 8),
}


def applicable(module_name: str, scheme: str) -> bool:
    return scheme not in GATED_ONLY or not (
        module_name.startswith("rnn") or "nobias" in module_name
    )


def mixed_model(seed: int, with_plain_rnn: bool = True) -> nn.ModuleDict:
    """LSTM (2 layers, bidirectional, projection), GRU, both gated cells and a plain RNN."""
    torch.manual_seed(seed)
    parts: dict[str, nn.Module] = {
        "encoder": nn.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3),
        "decoder": nn.GRU(6, 8),
        "cells": nn.ModuleList([nn.LSTMCell(4, 6), nn.GRUCell(4, 6)]),
        "head": nn.Linear(8, 2),
    }
    if with_plain_rnn:
        parts["aux"] = nn.RNN(3, 4, num_layers=2)
    return nn.ModuleDict(parts)


def model_for(scheme: str, seed: int) -> nn.ModuleDict:
    return mixed_model(seed, with_plain_rnn=scheme not in GATED_ONLY)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.named_parameters()}


def assert_same_values(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), f"{name} differs"


def assert_same_recurrent_values(first: nn.Module, second: nn.Module) -> None:
    """Bit-identical recurrent parameters (the non-recurrent head keeps its own default values)."""
    first_values, second_values = snapshot(first), snapshot(second)
    assert_same_values(
        {k: v for k, v in first_values.items() if recurrent(k)},
        {k: v for k, v in second_values.items() if recurrent(k)},
    )


def recurrent(name: str) -> bool:
    return not name.startswith("head.")


# --- training still works ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module_name", "scheme"),
    [(module, scheme) for module in MODULES for scheme in SCHEMES if applicable(module, scheme)],
)
def test_forward_and_backward_after_init(module_name: str, scheme: str) -> None:
    torch.manual_seed(0)
    module = MODULES[module_name]()
    init_(module, scheme, seed=3)
    is_cell = isinstance(module, nn.RNNCellBase)
    inputs = torch.randn(3, 5) if is_cell else torch.randn(4, 3, 5)
    output = module(inputs)
    first = output[0] if isinstance(output, tuple) else output
    assert torch.isfinite(first).all()
    loss = first.square().sum() + first.sum()
    loss.backward()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"


def test_only_recurrent_parameters_are_written() -> None:
    model = mixed_model(0)
    before = snapshot(model)
    init_(model, "keras", seed=0)
    after = snapshot(model)
    for name in before:
        assert torch.equal(before[name], after[name]) == (not recurrent(name)), name


# --- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_gives_bit_identical_values_on_fresh_modules(scheme: str) -> None:
    first, second = model_for(scheme, 1), model_for(scheme, 2)  # different default values
    init_(first, scheme, seed=42)
    init_(second, scheme, seed=42)
    assert_same_recurrent_values(first, second)


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if not s.startswith("irnn")])
def test_different_seed_gives_different_values(scheme: str) -> None:
    first, second = model_for(scheme, 1), model_for(scheme, 1)
    init_(first, scheme, seed=1)
    init_(second, scheme, seed=2)
    for name, value in first.named_parameters():
        if recurrent(name) and name.rsplit(".", 1)[-1].startswith("weight"):
            assert not torch.equal(value, second.get_parameter(name)), name


def test_irnn_different_seed_changes_the_input_weights_only() -> None:
    first, second = mixed_model(1), mixed_model(1)
    init_(first, "irnn", seed=1)
    init_(second, "irnn", seed=2)
    for name, value in first.named_parameters():
        if recurrent(name):
            changes = "weight_ih" in name
            assert torch.equal(value, second.get_parameter(name)) != changes, name


@pytest.mark.parametrize("scheme", ["keras", "keras-gate", "flax", "orthogonal", "chrono(tmax=50)"])
def test_parameters_and_gates_of_the_same_shape_get_independent_draws(scheme: str) -> None:
    lstm = nn.LSTM(6, 6, num_layers=2, bidirectional=True)
    init_(lstm, scheme, seed=0)
    weights = {
        name: p.detach() for name, p in lstm.named_parameters() if name.startswith("weight_hh")
    }
    assert len(weights) == 4
    names = sorted(weights)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not torch.equal(weights[first], weights[second]), (first, second)
    blocks = weights["weight_hh_l0"].reshape(4, 6, 6)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(blocks[i], blocks[j]), (i, j)


def test_global_rng_state_is_irrelevant_and_untouched() -> None:
    first, second = mixed_model(1), mixed_model(1)
    torch.manual_seed(123)
    init_(first, "flax", seed=9)
    torch.manual_seed(456)
    torch.rand(17)
    state = torch.get_rng_state()
    init_(second, "flax", seed=9)
    assert torch.equal(torch.get_rng_state(), state), "init_ consumed the global RNG"
    assert_same_recurrent_values(first, second)


@pytest.mark.parametrize("scheme", ["keras", "keras-gate", "chrono(tmax=50)"])
def test_selecting_a_subset_does_not_change_its_values(scheme: str) -> None:
    everything, subset = model_for(scheme, 1), model_for(scheme, 2)
    untouched = snapshot(subset)
    init_(everything, scheme, seed=5)
    init_(subset, scheme, seed=5, only="l1")
    selected = [name for name in untouched if "_l1" in name]
    assert len(selected) >= 8
    all_values, subset_values = snapshot(everything), snapshot(subset)
    for name in untouched:
        expected = all_values[name] if name in selected else untouched[name]
        assert torch.equal(subset_values[name], expected), name


def test_dict_order_is_irrelevant() -> None:
    forward_dict = dict(mixed_model(1).state_dict())
    backward_dict = dict(reversed(list(mixed_model(2).state_dict().items())))
    init_(forward_dict, "keras", seed=8)
    init_(backward_dict, "keras", seed=8)
    for name, value in forward_dict.items():
        if recurrent(name):
            assert torch.equal(value, backward_dict[name]), name


def test_module_and_its_state_dict_give_the_same_values() -> None:
    as_module, as_dict = mixed_model(1), mixed_model(2)
    init_(as_module, "keras-gate", seed=3)
    init_(
        as_dict.state_dict(), "keras-gate", seed=3
    )  # state_dict tensors share the parameters' storage
    assert_same_recurrent_values(as_module, as_dict)


def test_plain_dict_of_tensors_with_metadata() -> None:
    tensors = {f"model.{k}": v.clone() for k, v in nn.LSTM(3, 4).state_dict().items()}
    tensors_with_meta = {
        **{k: v.clone() for k, v in tensors.items()},
        "epoch": 7,
        "config": {"h": 4},
    }
    init_(tensors, "keras", seed=0)
    init_(tensors_with_meta, "keras", seed=0)
    assert tensors_with_meta["epoch"] == 7
    for name, value in tensors.items():
        assert torch.equal(value, tensors_with_meta[name]), name


def test_seed_none_draws_a_seed_that_reproduces() -> None:
    first = mixed_model(1)
    result = init_(first, "keras", seed=None)
    assert isinstance(result.seed, int) and not isinstance(result.seed, bool)
    assert result.seed >= 0
    second = mixed_model(2)
    init_(second, "keras", seed=result.seed)
    assert_same_recurrent_values(first, second)
    third = mixed_model(3)
    apply_plan(result, dict(third.named_parameters()))  # the plan carries its seed
    assert_same_recurrent_values(first, third)


def test_returned_plan_records_the_seed() -> None:
    assert init_(nn.GRU(3, 4), "keras", seed=77).seed == 77


def test_apply_plan_equals_init() -> None:
    first, second = mixed_model(1), mixed_model(2)
    init_(first, "orthogonal", seed=6)
    tensors = dict(second.named_parameters())
    the_plan = plan(tensors, "orthogonal")
    assert the_plan.seed is None
    assert apply_plan(the_plan, tensors, seed=6).seed == 6
    assert_same_recurrent_values(first, second)


def test_apply_plan_reports_each_written_entry() -> None:
    tensors = dict(nn.LSTM(3, 4).named_parameters())
    the_plan = plan(tensors, "keras", rules=["bias_hh.o=keep"])
    seen: list[PlanEntry] = []
    apply_plan(the_plan, tensors, seed=0, on_entry=seen.append)
    assert seen == list(the_plan.writes)
    assert len(seen) == len(the_plan.entries) - 1


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3"])
def test_bad_seed(seed: object) -> None:
    with pytest.raises(UsageError, match="seed"):
        init_(nn.GRU(3, 4), "keras", seed=seed)  # type: ignore[arg-type]


def test_init_rejects_other_targets() -> None:
    with pytest.raises(UsageError):
        init_([torch.zeros(4, 4)], "keras", seed=0)


def test_nothing_recurrent() -> None:
    with pytest.raises(NothingToDoError):
        init_(nn.Linear(3, 4), "keras", seed=0)


# --- plans -------------------------------------------------------------------------------------


def test_plan_lists_each_block_with_its_initializer() -> None:
    lstm = nn.LSTM(5, 8, proj_size=3)
    the_plan = plan(lstm.state_dict(), "keras", rules=["bias_hh.o=constant(0.5)"])
    expected_blocks = {
        (name, start, start + 8)
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
        for start in (0, 8, 16, 24)
    }
    expected_blocks.add(("weight_hr_l0", 0, 3))
    assert {(e.name, e.start, e.stop) for e in the_plan.entries} == expected_blocks
    assert len(the_plan.entries) == len(expected_blocks)
    text = str(the_plan)
    for entry in the_plan.entries:
        line = next(
            line
            for line in text.splitlines()
            if f"{entry.name}[{entry.start}:{entry.stop}]" in line
        )
        assert entry.initializer in line
    assert "constant" in text
    assert "0.5" in text


def test_plan_entries_fields() -> None:
    the_plan = plan(nn.LSTM(5, 8).state_dict(), "keras", rules=["bias_hh.o=constant(0.5)"])
    by_block = {(e.name, e.gate): e for e in the_plan.entries}
    assert by_block["weight_ih_l0", "g"] == PlanEntry(
        name="weight_ih_l0",
        kind="weight_ih",
        gate="g",
        start=16,
        stop=24,
        initializer="xavier_uniform",
        args=(("gain", 1.0),),
        per="matrix",
        rule="weight_ih=xavier_uniform(per=matrix)",
        source="scheme",
    )
    forget = by_block["bias_ih_l0", "f"]
    assert (
        forget.kind,
        forget.start,
        forget.stop,
        forget.initializer,
        forget.args,
        forget.per,
        forget.source,
    ) == ("bias_ih", 8, 16, "ones", (), "gate", "scheme")
    user = by_block["bias_hh_l0", "o"]
    assert (user.initializer, user.args, user.rule, user.source) == (
        "constant",
        (("value", 0.5),),
        "bias_hh.o=constant(0.5)",
        "rule",
    )
    assert the_plan.scheme == "keras"
    assert the_plan.rules == ("bias_hh.o=constant(0.5)",)
    assert the_plan.only is None


def test_plan_fills_the_hidden_size_for_pytorch() -> None:
    the_plan = plan(nn.GRU(3, 16).state_dict(), "pytorch")
    assert {e.args for e in the_plan.entries} == {(("hidden_size", 16),)}


def test_plan_is_a_plain_value() -> None:
    first = plan(mixed_model(1).state_dict(), "chrono(tmax=50)", only="encoder|decoder")
    second = plan(mixed_model(2).state_dict(), "chrono(tmax=50)", only="encoder|decoder")
    assert first == second
    assert first.entries == second.entries
    assert hash(first.entries) == hash(second.entries)
    assert isinstance(first, Plan)
    different = plan(mixed_model(1).state_dict(), "chrono(tmax=60)", only="encoder|decoder")
    assert different.entries != first.entries


def test_plan_does_not_modify_tensors() -> None:
    model = mixed_model(1)
    before = snapshot(model)
    plan(model.state_dict(), "keras", rules=["weight=zeros"])
    plan(dict(model.named_parameters()), "irnn")
    assert_same_values(before, snapshot(model))


def test_only_filters_by_full_parameter_name() -> None:
    tensors = mixed_model(1).state_dict()
    encoder_weights = plan(tensors, "keras", only=r"^encoder\.weight")
    names = {e.name for e in encoder_weights.entries}
    assert names == {k for k in tensors if k.startswith("encoder.weight")}
    assert any(name.endswith("weight_hr_l1_reverse") for name in names)
    assert {lay.prefix for lay in encoder_weights.layers} == {"encoder."}
    assert encoder_weights.only == r"^encoder\.weight"
    recurrent_only = plan(tensors, "keras", only="weight_hh")
    assert {e.kind for e in recurrent_only.entries} == {"weight_hh"}
    assert {e.name for e in recurrent_only.entries} == {k for k in tensors if "weight_hh" in k}


def test_only_leaves_the_rest_untouched() -> None:
    model = mixed_model(1)
    before = snapshot(model)
    init_(model, "keras", seed=0, only=r"^cells\.1\.")
    for name, value in snapshot(model).items():
        assert torch.equal(value, before[name]) == (not name.startswith("cells.1.")), name


def test_bad_only_regex() -> None:
    with pytest.raises(UsageError, match="regular expression"):
        plan(nn.LSTM(3, 4).state_dict(), "keras", only="weight_(ih")


def test_only_matching_nothing_lists_the_parameters() -> None:
    with pytest.raises(NothingToDoError, match="weight_ih_l0"):
        plan(nn.LSTM(3, 4).state_dict(), "keras", only="decoder")


def test_rules_are_checked_before_any_tensor_is_written() -> None:
    model = mixed_model(1)
    before = snapshot(model)
    with pytest.raises(UsageError):
        init_(model, "keras", rules=["weight_ih=zeros", "bias_ih.f=chrono(tmax=abc)"], seed=0)
    assert_same_values(before, snapshot(model))


@pytest.mark.parametrize(
    ("scheme", "rules"),
    [
        ("chrono(tmax=2)", []),  # tmax ≤ 2 is only found when the chrono block is drawn
        ("keras", ["bias_hh.o=chrono(tmax=1.5)"]),
        ("keras", ["weight_hh.n=kaiming_uniform(mode=fan_avg)"]),
    ],
)
def test_an_initializer_failing_mid_plan_leaves_every_tensor_untouched(
    scheme: str, rules: list[str]
) -> None:
    model = mixed_model(1, with_plain_rnn=False)
    before = snapshot(model)
    with pytest.raises(UsageError):
        init_(model, scheme, rules=rules, seed=0)
    assert_same_values(before, snapshot(model))


# --- package surface ---------------------------------------------------------------------------


def test_lazy_exports() -> None:
    assert rnninit_cli.init_ is init_
    assert rnninit_cli.plan is plan
    assert rnninit_cli.RuleError.__name__ == "RuleError"
    with pytest.raises(AttributeError):
        _ = rnninit_cli.no_such_name


def test_importing_the_package_and_schemes_does_not_import_torch() -> None:
    code = (
        "import rnninit_cli, rnninit_cli.init.schemes, sys; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
