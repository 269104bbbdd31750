"""Diagnostics: recognition of every built-in scheme and PyTorch's default, verify, warnings, diff, sparkline.

Expectations come from torch itself (fresh modules, torch.linalg), from the textbook formulas written out here,
or from independent arithmetic on the tensors, never from rnninit_cli.diagnostics.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator

import pytest
import torch

import rnninit_cli
from rnninit_cli.diagnostics import (
    UNDETERMINED,
    UNKNOWN,
    check_normal,
    check_truncated_normal,
    check_uniform,
    diagnose,
    diff,
    recognize_layer,
    sparkline,
    verify,
)
from rnninit_cli.init.schemes import Scheme
from rnninit_cli.layouts.discovery import find_layers

Tensors = dict[str, torch.Tensor]
SCHEMES = ["torch", "pytorch", "keras", "keras-gate", "flax", "orthogonal", "irnn", "irnn(scale=0.5)",
           "chrono(tmax=100)"]
GATE_COUNT = {"rnn": 1, "gru": 3, "lstm": 4}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Small matrices: intra-op threads only add contention on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(factory: Callable[[], torch.nn.Module], scheme: str, seed: int, **init: object) -> Tensors:
    """The state of `factory()` built under torch.manual_seed(seed), then initialized by `scheme` unless 'torch'."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = factory()
    if scheme != "torch":
        rnninit_cli.init_(module, scheme, seed=seed, **init)  # type: ignore[arg-type]
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def random_module(kind: str, seed: int) -> Callable[[], torch.nn.Module]:
    """A module of `kind` with sizes drawn from `seed` (hidden, input ≥ 16: big enough to decide)."""
    pick = random.Random(seed)
    hidden, inputs = pick.choice([16, 17, 24, 32]), pick.choice([16, 19, 32, 48])
    layers, bidirectional, bias = pick.choice([1, 2]), pick.random() < 0.5, pick.random() < 0.8
    proj = pick.choice([0, 8, 16])
    if kind == "lstm":
        return lambda: torch.nn.LSTM(inputs, hidden, num_layers=layers, bidirectional=bidirectional, bias=bias,
                                     proj_size=proj if proj < hidden else 0)
    if kind == "gru":
        return lambda: torch.nn.GRU(inputs, hidden, num_layers=layers, bidirectional=bidirectional, bias=bias)
    if kind == "rnn":
        return lambda: torch.nn.RNN(inputs, hidden, num_layers=layers, bidirectional=bidirectional, bias=bias)
    cell = {"lstmcell": torch.nn.LSTMCell, "grucell": torch.nn.GRUCell, "rnncell": torch.nn.RNNCell}[kind]
    return lambda: cell(inputs, hidden, bias=bias)


def expected_names(scheme: str, cell: str) -> set[str]:
    """The schemes a layer drawn by `scheme` must match: keras and keras-gate coincide for one gate (G = 1: the
    Glorot fans fan_in + h and fan_in + G·h are equal, and per-gate orthogonal is per-matrix orthogonal)."""
    name = "pytorch" if scheme == "torch" else scheme.split("(")[0]
    if cell == "rnn" and name in ("keras", "keras-gate"):
        return {"keras", "keras-gate"}
    return {name}


CASES = [(scheme, kind, seed) for scheme in SCHEMES
         for kind in ("lstm", "gru", "rnn", "lstmcell", "grucell", "rnncell")
         for seed in (range(3) if kind in ("lstm", "gru", "rnn") else range(2))
         if not (scheme.startswith("chrono") and kind in ("rnn", "rnncell"))]


@pytest.mark.parametrize(("scheme", "kind", "seed"), CASES)
def test_every_scheme_is_recognised(scheme: str, kind: str, seed: int) -> None:
    factory = random_module(kind, seed)
    if scheme.startswith("chrono") and not factory().bias:  # chrono writes biases
        factory = random_module(kind, seed + 100)
        assert factory().bias
    tensors = make(factory, scheme, seed)
    diagnosis = diagnose(tensors)
    assert diagnosis.layers
    for layer in diagnosis.layers:
        match = layer.scheme
        want = expected_names(scheme, layer.layer.cell)
        assert match.claimed, (layer.title, match.primary, match.rejected)
        assert set(match.names) == want, (layer.title, match.matches)
        assert match.primary.split("(")[0] in want
        assert not match.undetermined
    assert not diagnosis.warnings, [str(w) for w in diagnosis.warnings]


@pytest.mark.parametrize("seed", range(3))
def test_chrono_tmax_and_irnn_scale_are_read_from_the_values(seed: int) -> None:
    hidden = 24
    chrono = diagnose(make(lambda: torch.nn.LSTM(16, hidden), "chrono(tmax=100)", seed)).layers[0].scheme
    (spec,) = chrono.matches
    tmax = chrono.estimated[spec]["tmax"]
    # tmax − 1 is at least the largest of h draws of U[1, 99]: P(all < 1 + 0.5·98) = 0.5^24 ≈ 6e-8.
    assert 50 < tmax <= 100 * (1 + 1e-5)
    irnn = diagnose(make(lambda: torch.nn.GRU(16, hidden), "irnn(scale=0.5)", seed)).layers[0].scheme
    assert irnn.matches == ("irnn(scale=0.5)",)


def test_candidates_may_be_texts_with_arguments_or_unregistered_schemes() -> None:
    tensors = make(lambda: torch.nn.GRU(16, 24), "chrono(tmax=100)", 0)
    (layer,) = find_layers(tensors)
    match = recognize_layer(layer, tensors, candidates=["keras", "chrono(tmax=100)", "chrono(tmax=1000)"])
    assert match.matches == ("chrono(tmax=100)",)
    assert set(match.rejected) == {"keras", "chrono(tmax=1000)"}
    mine = Scheme("mine", "per-gate orthogonal everywhere", ("weight=orthogonal(per=gate)", "bias=zeros"), "test")
    orthogonal = make(lambda: torch.nn.GRU(16, 24), "orthogonal", 0)
    (layer,) = find_layers(orthogonal)
    assert recognize_layer(layer, orthogonal, candidates=[mine, "keras"]).matches == ("mine",)


TINY = [lambda: torch.nn.LSTM(2, 2), lambda: torch.nn.GRUCell(3, 2), lambda: torch.nn.RNN(2, 3, num_layers=2),
        lambda: torch.nn.LSTM(3, 2, bidirectional=True)]


@pytest.mark.parametrize("factory", TINY)
@pytest.mark.parametrize("scheme", ["torch", "pytorch", "keras", "keras-gate", "flax", "orthogonal", "irnn"])
def test_tiny_layers_are_undetermined_not_claimed(factory: Callable[[], torch.nn.Module], scheme: str) -> None:
    diagnosis = diagnose(make(factory, scheme, 0))
    for layer in diagnosis.layers:
        inputs = [b for b in layer.blocks if b.kind == "weight_ih"]
        if scheme == "orthogonal" and all(min(b.shape) >= 3 for b in inputs):
            # Orthogonal k×k blocks with k ≥ 3 meet k(k+1)/2 − 1 ≥ 5 exact equations no i.i.d. draw meets, which
            # rules out keras-gate and flax (their input blocks are i.i.d.): exactness decides, not statistics.
            assert layer.scheme.primary == "orthogonal", (layer.title, layer.scheme)
            continue
        assert layer.scheme.primary == UNDETERMINED, (layer.title, layer.scheme)
        assert not layer.scheme.claimed
        for block in layer.blocks:
            # Blocks of < 16 i.i.d. random values cannot be told apart (pytorch draws every block i.i.d., the
            # other schemes draw weight_ih i.i.d. and write constants or orthogonal blocks elsewhere).
            random_block = scheme in ("torch", "pytorch") or (block.kind == "weight_ih" and scheme != "orthogonal")
            if block.count < 16 and random_block:
                assert block.family.label == UNDETERMINED, (block.name, block.gate, block.family)


def trained_lstm() -> Tensors:
    """PyTorch default init, then 300 SGD steps of an LSTM(16, 32) learning the sum of its inputs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lstm, head = torch.nn.LSTM(16, 32), torch.nn.Linear(32, 1)
        before = {k: v.detach().clone() for k, v in lstm.state_dict().items()}
        optimizer = torch.optim.SGD([*lstm.parameters(), *head.parameters()], lr=0.5)
        for _ in range(300):
            x = torch.randn(8, 32, 16)
            target = x.sum(dim=(0, 2)).unsqueeze(1) / math.sqrt(8 * 16)
            output, _ = lstm(x)
            loss = torch.nn.functional.mse_loss(head(output[-1]), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    after = {k: v.detach().clone() for k, v in lstm.state_dict().items()}
    moved = max((after[k] - before[k]).abs().max().item() for k in after)
    assert moved > 0.05, "training must move the weights"
    return after


def test_trained_checkpoint_matches_no_scheme() -> None:
    diagnosis = diagnose(trained_lstm())
    (layer,) = diagnosis.layers
    assert layer.scheme.primary == UNKNOWN
    assert layer.scheme.matches == () and layer.scheme.undetermined == ()
    assert "pytorch" in layer.scheme.rejected


# --- verify ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["pytorch", "keras", "keras-gate", "flax", "orthogonal", "irnn(scale=2)",
                                    "chrono(tmax=50)"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_verify_accepts_the_scheme_that_drew_the_values(scheme: str, kind: str) -> None:
    factory = random_module(kind, 7)
    for seed in range(2):
        tensors = make(factory, scheme, seed)
        report = verify(tensors, scheme)
        assert report.ok, [b.as_dict() for b in report.failures]
        gates = GATE_COUNT[kind]  # every gate block of every parameter, weight_hr as one block
        assert len(report.blocks) == sum(1 if "weight_hr" in name else gates for name in tensors)
        assert not report.weak


def test_verify_checks_every_planned_block_with_rules() -> None:
    tensors = make(lambda: torch.nn.LSTM(16, 24, proj_size=8), "keras", 3,
                   rules=["bias_hh.o=constant(0.25)", "weight_hh.g=orthogonal(per=gate)"])
    report = verify(tensors, "keras", rules=["bias_hh.o=constant(0.25)", "weight_hh.g=orthogonal(per=gate)"])
    assert report.ok, [b.as_dict() for b in report.failures]
    # 4 gate blocks in each of weight_ih, weight_hh, bias_ih, bias_hh, plus weight_hr.
    assert len(report.blocks) == 4 * 4 + 1
    assert not verify(tensors, "keras").ok  # without the rules the g and o blocks are wrong


def test_verify_only_checks_the_selected_parameters() -> None:
    tensors = make(lambda: torch.nn.LSTM(16, 24, bidirectional=True), "keras", 0, only="_reverse")
    assert verify(tensors, "keras", only="_reverse").ok
    failures = verify(tensors, "keras").failures
    assert failures and all(not b.name.endswith("_reverse") for b in failures)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_keras_and_keras_gate_fail_each_other(kind: str) -> None:
    factory = random_module(kind, 11)
    keras, gate = make(factory, "keras", 1), make(factory, "keras-gate", 1)
    assert verify(keras, "keras").ok and verify(gate, "keras-gate").ok
    for tensors, other in ((keras, "keras-gate"), (gate, "keras")):
        report = verify(tensors, other)
        assert not report.ok
        kinds = {b.kind for b in report.failures}
        assert {"weight_ih", "weight_hh"} <= kinds  # Glorot fans and orthogonal scope both differ
        assert all(b.expected and b.found and b.detail for b in report.failures)
        json.dumps(report.as_dict(), allow_nan=False)


@pytest.mark.parametrize(("scheme", "kind", "gate"), [("keras", "weight_hh", 1), ("keras-gate", "weight_hh", 2),
                                                      ("pytorch", "weight_hh", 3), ("flax", "weight_ih", 0),
                                                      ("keras", "weight_ih", 3), ("irnn", "weight_hh", 1)])
def test_one_tampered_block_fails_verify_naming_it(scheme: str, kind: str, gate: int) -> None:
    hidden = 32
    tensors = make(lambda: torch.nn.LSTM(16, hidden), scheme, 5)
    assert verify(tensors, scheme).ok
    name = f"{kind}_l0"
    tensors[name][gate * hidden:(gate + 1) * hidden] *= 1.5
    report = verify(tensors, scheme)
    assert [(b.name, b.gate, b.start, b.stop) for b in report.failures] == [
        (name, "ifgo"[gate], gate * hidden, (gate + 1) * hidden)]


def test_orthogonal_blocks_are_not_taken_for_iid_draws() -> None:
    """A 64×64 orthogonal block has entries of variance 1/64, like Glorot normal (σ² = 2/(64 + 64)), and nearly
    normal; only its exact structure (QᵀQ = I, which i.i.d. draws never meet) tells them apart."""
    tensors = make(lambda: torch.nn.RNN(64, 64), "orthogonal", 0)
    report = verify(tensors, "orthogonal", rules=["weight_ih=xavier_normal"])
    assert [(b.name, b.status) for b in report.failures] == [("weight_ih_l0", "fail")]
    assert "orthogonal" in report.failures[0].detail


def test_whole_matrix_not_orthogonal_without_a_culprit_fails_every_block() -> None:
    hidden = 24
    tensors = make(lambda: torch.nn.GRU(16, hidden), "keras", 0)
    generator = torch.Generator().manual_seed(0)
    tensors["weight_hh_l0"][:hidden] += 0.01 * torch.randn(hidden, hidden, generator=generator)
    # Energy of the block barely moves (rms noise 0.01 against 1/√72 ≈ 0.12), but WᵀW − I has entries ≈ 0.01.
    failures = verify(tensors, "keras").failures
    assert {(b.name, b.gate) for b in failures} == {("weight_hh_l0", g) for g in "rzn"}


def test_chrono_input_bias_must_mirror_the_forget_bias() -> None:
    hidden = 20
    tensors = make(lambda: torch.nn.LSTM(16, hidden), "chrono(tmax=30)", 2)
    assert verify(tensors, "chrono(tmax=30)").ok
    forget = tensors["bias_ih_l0"][hidden:2 * hidden].clone()
    tensors["bias_ih_l0"][:hidden] = -forget.flip(0)  # the right values, but not b_i = −b_f unit by unit
    failures = verify(tensors, "chrono(tmax=30)").failures
    assert {(b.name, b.gate) for b in failures} == {("bias_ih_l0", "i"), ("bias_ih_l0", "f")}  # the pair
    assert all("b_i = −b_f" in b.detail for b in failures)


# --- statistics, families, warnings -----------------------------------------------------------------------------


def test_block_statistics_match_independent_arithmetic() -> None:
    hidden, inputs = 24, 16
    tensors = make(lambda: torch.nn.GRU(inputs, hidden), "keras-gate", 4)
    layer = diagnose(tensors, geometry=True).layers[0]
    assert all(b.sv_min is None and b.orthogonality_error is None for b in diagnose(tensors).layers[0].blocks)
    blocks = {(b.kind, b.gate): b for b in layer.blocks}
    for (kind, gate), block in blocks.items():
        k = "rzn".index(gate)
        values = tensors[f"{kind}_l0"][k * hidden:(k + 1) * hidden].double()
        assert block.count == values.numel()
        assert block.mean == pytest.approx(values.mean().item(), abs=1e-12)
        assert block.std == pytest.approx(values.std(unbiased=False).item(), abs=1e-12)
        assert block.max_abs == pytest.approx(values.abs().max().item())
        assert block.nan == block.inf == 0
        if values.dim() == 2:
            singular = torch.linalg.svdvals(values)
            assert block.sv_min == pytest.approx(singular.min().item(), rel=1e-6)
            assert block.sv_max == pytest.approx(singular.max().item(), rel=1e-6)
            g = values.T @ values if values.shape[0] >= values.shape[1] else values @ values.T
            assert block.orthogonality_error == pytest.approx((g - torch.eye(g.shape[0])).abs().max().item())
            if values.shape[0] == values.shape[1]:
                assert block.identity_error == pytest.approx((values - torch.eye(hidden)).abs().max().item())
    # keras-gate: each recurrent gate block orthogonal, the stacked matrix not (its columns have norm² 3).
    whole = {m.kind: m for m in layer.matrices}["weight_hh"]
    assert all(blocks[("weight_hh", g)].orthogonality_error < 1e-5 for g in "rzn")
    assert whole.orthogonality_error == pytest.approx(2.0, abs=0.5)
    assert whole.sv_max == pytest.approx(math.sqrt(3), rel=0.3)


@pytest.mark.parametrize(("scheme", "kind", "label"), [
    ("pytorch", "weight_ih", "PyTorch 1/√h"),
    ("pytorch", "bias_hh", "PyTorch 1/√h"),
    ("keras", "weight_ih", "Glorot per matrix"),
    ("keras-gate", "weight_ih", "Glorot per gate"),
    ("keras", "weight_hh", "orthogonal per matrix"),
    ("keras-gate", "weight_hh", "orthogonal per gate"),
    ("flax", "weight_ih", "LeCun truncated"),
    ("irnn", "weight_ih", "IRNN 0.001"),
    ("irnn", "weight_hh", "identity(1)"),
    ("orthogonal", "bias_ih", "zeros"),
])
def test_block_families(scheme: str, kind: str, label: str) -> None:
    layer = diagnose(make(lambda: torch.nn.LSTM(20, 24), scheme, 0)).layers[0]
    for block in layer.blocks:
        if block.kind == kind:
            assert label in block.family.label, (block.gate, block.family)
    if scheme == "keras":  # bias_ih.f = 1, chrono's b_f is a log-uniform
        assert [b.family.label for b in layer.blocks if b.kind == "bias_ih"][1] == "constant(1)"
    chrono = diagnose(make(lambda: torch.nn.LSTM(20, 24), "chrono(tmax=100)", 0)).layers[0]
    labels = {b.gate: b.family.label for b in chrono.blocks if b.kind == "bias_ih"}
    assert labels["f"].startswith("chrono(") and labels["i"].startswith("−chrono(")


def test_double_forget_bias_is_warned() -> None:
    tensors = make(lambda: torch.nn.LSTM(16, 16), "keras", 0, rules=["bias_hh.f=ones"])
    effective = tensors["bias_ih_l0"][16:32] + tensors["bias_hh_l0"][16:32]
    assert bool((effective == 2).all())
    warnings = diagnose(tensors).warnings
    assert [w.code for w in warnings] == ["double-forget-bias"]
    assert "effective forget bias is 2" in warnings[0].message
    assert not diagnose(make(lambda: torch.nn.LSTM(16, 16), "keras", 0)).warnings
    chrono_twice = make(lambda: torch.nn.LSTM(16, 16), "chrono(tmax=20)", 0, rules=["bias_hh.f=chrono(20)"])
    assert [w.code for w in diagnose(chrono_twice).warnings] == ["double-chrono"]


def test_orthogonal_per_matrix_beside_per_gate_is_warned() -> None:
    mixed = make(lambda: torch.nn.GRU(16, 24), "keras-gate", 0, rules=["weight_hh=orthogonal(per=matrix)"])
    warnings = diagnose(mixed).warnings
    assert [w.code for w in warnings] == ["mixed-scope"]
    assert "weight_hh is orthogonal per matrix" in warnings[0].message
    reverse = make(lambda: torch.nn.LSTM(16, 24), "keras", 0, rules=["weight_hh=orthogonal(per=gate)"])
    assert [w.code for w in diagnose(reverse).warnings] == ["mixed-scope"]


def test_forgotten_reverse_direction_is_warned() -> None:
    tensors = make(lambda: torch.nn.LSTM(16, 24, num_layers=2, bidirectional=True), "keras", 0,
                   only=r"_l\d+$")
    diagnosis = diagnose(tensors)
    primaries = {layer.title: layer.scheme.primary for layer in diagnosis.layers}
    assert [p for t, p in primaries.items() if "reverse" in t] == ["pytorch", "pytorch"]
    assert [w.code for w in diagnosis.warnings] == ["mixed-schemes"]
    assert "reverse" in diagnosis.warnings[0].message


def test_nan_and_inf_are_counted_and_warned() -> None:
    tensors = make(lambda: torch.nn.LSTM(16, 16), "pytorch", 0)
    tensors["weight_hh_l0"][3, 2] = float("nan")
    tensors["weight_hh_l0"][40, 0] = float("nan")
    tensors["bias_ih_l0"][60] = float("inf")
    diagnosis = diagnose(tensors)
    counts = {(b.kind, b.gate): (b.nan, b.inf) for b in diagnosis.layers[0].blocks}
    assert counts[("weight_hh", "i")] == (1, 0) and counts[("weight_hh", "g")] == (1, 0)
    assert counts[("bias_ih", "o")] == (0, 1)
    assert sum(n + i for n, i in counts.values()) == 3
    assert sorted(w.code for w in diagnosis.warnings) == ["non-finite", "non-finite"]
    assert any("weight_hh_l0: 2 NaN" in w.message for w in diagnosis.warnings)
    json.dumps(diagnosis.as_dict(), allow_nan=False)
    failures = verify(tensors, "pytorch").failures
    assert {(b.kind, b.gate) for b in failures} == {("weight_hh", "i"), ("weight_hh", "g"), ("bias_ih", "o")}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("scheme", ["torch", "keras", "keras-gate", "flax", "irnn(scale=0.3)", "chrono(tmax=100)"])
def test_recognition_and_verify_in_other_dtypes(dtype: torch.dtype, scheme: str) -> None:
    """Drawn in float32, stored in bf16/fp16 (rounded) or float64 (cast up): the same scheme, looser tolerances."""
    tensors = {k: v.to(dtype) for k, v in make(lambda: torch.nn.LSTM(16, 24, proj_size=8), scheme, 1).items()}
    want = "pytorch" if scheme == "torch" else scheme.split("(")[0]
    diagnosis = diagnose(tensors)
    assert [layer.scheme.names for layer in diagnosis.layers] == [(want,)]
    assert not diagnosis.warnings
    if scheme != "torch":
        assert verify(tensors, scheme).ok


def test_diagnosis_is_json_serializable() -> None:
    tensors = make(lambda: torch.nn.LSTM(16, 24, num_layers=2, proj_size=8), "chrono(tmax=10)", 0)
    document = json.loads(json.dumps(diagnose(tensors).as_dict(), allow_nan=False))
    assert len(document["layers"]) == 2
    assert document["layers"][0]["scheme"]["primary"].startswith("chrono(")


# --- diff -----------------------------------------------------------------------------------------------------


def test_diff_of_identical_checkpoints() -> None:
    tensors = make(lambda: torch.nn.GRU(16, 24, num_layers=2), "keras", 0)
    report = diff(tensors, {k: v.clone() for k, v in tensors.items()})
    assert report.identical and not report.changed_blocks
    assert len(report.layers) == 2 and all(len(layer.blocks) == 4 * 3 for layer in report.layers)


def test_diff_reports_exactly_the_changed_block() -> None:
    a = make(lambda: torch.nn.LSTM(16, 24), "keras", 0)
    b = {k: v.clone() for k, v in a.items()}
    b["weight_hh_l0"][48:72, 5] += torch.linspace(-0.3, 0.7, 24)
    expected = (b["weight_hh_l0"][48:72].double() - a["weight_hh_l0"][48:72].double()).abs().max().item()
    report = diff(a, b)
    assert not report.identical
    (block,) = report.changed_blocks
    assert (block.name, block.gate, block.start, block.stop) == ("weight_hh_l0", "g", 48, 72)
    assert block.max_abs_delta == pytest.approx(expected, rel=1e-12)
    assert block.changed_count == 24
    assert block.before["max"] == pytest.approx(a["weight_hh_l0"][48:72].max().item())
    assert block.after["max"] == pytest.approx(b["weight_hh_l0"][48:72].max().item())
    json.dumps(report.as_dict(), allow_nan=False)


def test_diff_reports_layers_on_one_side() -> None:
    two = make(lambda: torch.nn.GRU(16, 24, num_layers=2), "keras", 0)
    one = {k: v for k, v in two.items() if k.endswith("_l0")}
    report = diff(two, one)
    assert not report.identical
    assert [title.split(": ")[-1] for title in report.only_in_a] == ["GRU layer 1, forward"]
    assert report.only_in_b == () and not report.changed_blocks
    no_bias = {k: v for k, v in one.items() if k.startswith("weight")}
    assert diff(one, no_bias).layers[0].params_only_in_a == ("bias_ih_l0", "bias_hh_l0")


# --- sparkline and the statistical checks ---------------------------------------------------------------------


def test_sparkline_shapes() -> None:
    generator = torch.Generator().manual_seed(0)
    assert sparkline(torch.rand(100_000, generator=generator)) == "█" * 8
    bell = sparkline(torch.randn(100_000, generator=generator))
    levels = ["▁▂▃▄▅▆▇█".index(c) for c in bell]
    peak = levels.index(max(levels))
    assert 2 <= peak <= 5 and levels[0] < max(levels) and levels[-1] < max(levels)
    assert levels[:peak + 1] == sorted(levels[:peak + 1])
    assert levels[peak:] == sorted(levels[peak:], reverse=True)
    constant = sparkline(torch.full((50,), 0.3), bins=8)
    assert len(constant) == 8 and constant.strip() == "█"
    assert sparkline([]) == "" and len(sparkline([1.0, 2.0, 3.0], bins=5)) == 5
    assert sparkline([0.0, 0.0, 0.0, 1.0], bins=2) == "█▃"  # counts 3 and 1: ceil(8/3) = 3 eighths


@pytest.mark.parametrize("n", [16, 100, 4096])
def test_statistical_checks_accept_their_own_draws_and_reject_neighbours(n: int) -> None:
    for seed in range(40):
        generator = torch.Generator().manual_seed(seed)
        uniform = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * 0.3
        normal = torch.randn(n, generator=generator, dtype=torch.float64) * 0.2
        assert check_uniform(uniform, -0.3, 0.3).ok
        assert check_normal(normal, 0.0, 0.2).ok
        truncated = torch.randn(4 * n, generator=generator, dtype=torch.float64)
        truncated = truncated[truncated.abs() <= 2][:n] * 0.1
        assert check_truncated_normal(truncated, 0.1).ok
        if n >= 4096:  # big samples separate bounds 10 % apart, σ 20 % apart, a uniform from a normal of its std
            assert not check_uniform(uniform, -0.33, 0.33).ok and not check_uniform(uniform, -0.27, 0.27).ok
            assert not check_normal(normal, 0.0, 0.24).ok and not check_normal(normal, 0.0, 0.16).ok
            assert not check_normal(uniform, 0.0, 0.3 / math.sqrt(3)).ok
            assert not check_uniform(normal, -normal.abs().max().item(), normal.abs().max().item()).ok
