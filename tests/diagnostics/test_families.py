"""Family labels that do not overclaim (issue 11, section 4).

A block is called normal or uniform only for a known initializer's fixed parameters and only when it also passes
a goodness-of-fit test at ALPHA; trained and heavy-tailed blocks are `unknown`, a layer that matches no built-in
scheme says so without calling it trained. Expectations come from torch (training, torch.nn.init, samplers) and
from the textbook formulas written out here, never from rnninit_cli.diagnostics.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

import rnninit_cli
from rnninit_cli.diagnostics import ALPHA, Family, classify_block, recognize_layer
from rnninit_cli.diagnostics.checks import (
    anderson_darling_normal_critical,
    check_normal_fit,
    check_uniform_fit,
    uniform_ks_critical,
)
from rnninit_cli.layouts.discovery import Block, find_layers

Tensors = dict[str, torch.Tensor]


def families(tensors: Tensors) -> list[tuple[Block, Family]]:
    """Every gate block's family (what `diagnose` shows, without the spectra it also computes)."""
    return [(block, classify_block(layer, block, tensors)) for layer in find_layers(tensors)
            for block in layer.all_blocks()]


def schemes(tensors: Tensors) -> list[str]:
    return [recognize_layer(layer, tensors).primary for layer in find_layers(tensors)]


def digits_trained(cell: type[torch.nn.Module], hidden: int = 64, steps: int = 300) -> Tensors:
    """PyTorch default init, then `steps` Adam steps classifying sklearn's 8×8 digits read row by row."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16  # (1797, 8, 8): 8 steps of 8 pixels
    labels = torch.tensor(digits.target)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is several times faster on a shared machine
    try:
        return _train(cell, hidden, steps, images, labels)
    finally:
        torch.set_num_threads(threads)


def _train(cell: type[torch.nn.Module], hidden: int, steps: int, images: torch.Tensor, labels: torch.Tensor
           ) -> Tensors:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        rnn, head = cell(8, hidden, batch_first=True), torch.nn.Linear(hidden, 10)
        before = {k: v.detach().clone() for k, v in rnn.state_dict().items()}
        optimizer = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-2)
        batches = torch.Generator().manual_seed(0)
        for _ in range(steps):
            index = torch.randint(0, len(images), (64,), generator=batches)
            output, _ = rnn(images[index])
            loss = torch.nn.functional.cross_entropy(head(output[:, -1]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            output, _ = rnn(images)
            accuracy = (head(output[:, -1]).argmax(1) == labels).float().mean().item()
    after = {k: v.detach().clone() for k, v in rnn.state_dict().items()}
    assert accuracy > 0.9, f"training must learn the task (accuracy {accuracy})"
    assert max((after[k] - before[k]).abs().max().item() for k in after) > 0.1, "training must move the weights"
    return after


def assert_no_family_claimed(tensors: Tensors) -> None:
    for block, family in families(tensors):
        where = (block.name, block.gate, family)
        assert family.label == "unknown", where
        assert not any("normal" in c or "uniform" in c for c in family.candidates), where


@pytest.mark.parametrize("cell", [torch.nn.LSTM, torch.nn.GRU])
def test_trained_blocks_are_not_claimed_normal_or_uniform(cell: type[torch.nn.Module]) -> None:
    tensors = digits_trained(cell)
    assert_no_family_claimed(tensors)
    assert schemes(tensors) == ["no built-in scheme"]


def heavy_tailed(kind: str, shape: tuple[int, ...], std: float, generator: torch.Generator) -> torch.Tensor:
    """Student t (5 d.o.f., variance 5/3) or Laplace (scale b, variance 2b²) draws rescaled to standard deviation
    `std`: the scale of a known initializer, so that only the shape tells them apart."""
    if kind == "t5":
        normal = torch.randn(shape, generator=generator, dtype=torch.float64)
        chi2 = (torch.randn((5, *shape), generator=generator, dtype=torch.float64) ** 2).sum(0)
        return normal / torch.sqrt(chi2 / 5) / math.sqrt(5 / 3) * std
    uniform = torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5
    return -torch.sign(uniform) * torch.log1p(-2 * uniform.abs()) / math.sqrt(2) * std


@pytest.mark.parametrize("kind", ["t5", "laplace"])
@pytest.mark.parametrize("hidden", [64, 128])
@pytest.mark.parametrize("seed", range(2))
def test_heavy_tailed_blocks_are_not_claimed_normal_or_uniform(kind: str, hidden: int, seed: int) -> None:
    """Every block of an LSTM(hidden, hidden) redrawn heavy-tailed at σ = 1/√h: PyTorch's uniform bound and Glorot
    normal's σ per gate for the square gate blocks (4096 and 16384 values; biases of 64 and 128)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {name: heavy_tailed(kind, tuple(value.shape), 1 / math.sqrt(hidden), generator).float()
               for name, value in torch.nn.LSTM(hidden, hidden).state_dict().items()}
    assert_no_family_claimed(tensors)


def test_uniform_lookalike_with_the_right_range_and_moments_is_not_uniform() -> None:
    """Weights half U(±a), half near ±a/√3 (a = 1/√h, PyTorch's bound): the range, both edges, mean and mean square
    of U(±a), not its shape. The untouched biases (PyTorch's own draws) keep their name."""
    hidden = 64
    bound = 1 / math.sqrt(hidden)
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tensors = {k: v.detach().clone() for k, v in torch.nn.LSTM(hidden, hidden).state_dict().items()}
    for name in ("weight_ih_l0", "weight_hh_l0"):
        n = tensors[name].numel()
        flat = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        sign = torch.randint(0, 2, (n // 2,), generator=generator, dtype=torch.float64) * 2 - 1
        jitter = (torch.rand(n // 2, generator=generator, dtype=torch.float64) - 0.5) * 0.01 * bound
        flat[: n // 2] = sign * bound / math.sqrt(3) + jitter
        tensors[name] = flat[torch.randperm(n, generator=generator)].reshape(tensors[name].shape).float()
    for block, family in families(tensors):
        where = (block.name, block.gate, family)
        if block.kind.startswith("weight"):
            assert family.label == "unknown" and not family.candidates, where
        else:
            assert "[PyTorch 1/√h" in family.label, where


def test_speechbrain_like_fresh_lstm_is_not_called_trained() -> None:
    """PyTorch's uniform input weights and biases beside one orthogonal recurrent matrix per layer: no built-in
    scheme draws it, nothing trained it, and its blocks keep their initializers' names."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lstm = torch.nn.LSTM(64, 64, num_layers=2)
        for name, parameter in lstm.named_parameters():
            if name.startswith("weight_hh"):
                torch.nn.init.orthogonal_(parameter)
    tensors = {k: v.detach().clone() for k, v in lstm.state_dict().items()}
    assert schemes(tensors) == ["no built-in scheme"] * 2
    for block, family in families(tensors):
        expected = "orthogonal per matrix" if block.kind == "weight_hh" else "[PyTorch 1/√h"
        assert expected in family.label, (block.name, block.gate, family)


@pytest.mark.parametrize("seed", range(4))
def test_fresh_draws_keep_their_named_families(seed: int) -> None:
    """Glorot normal per matrix (torch.nn.init.xavier_normal_) and PyTorch's default uniform, 4096-value gate
    blocks: both pass the goodness-of-fit tests and keep their names."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lstm = torch.nn.LSTM(64, 64)
        torch.nn.init.xavier_normal_(lstm.weight_ih_l0)
    for block, family in families({k: v.detach().clone() for k, v in lstm.state_dict().items()}):
        expected = "[Glorot normal per matrix]" if block.kind == "weight_ih" else "[PyTorch 1/√h"
        assert expected in family.label, (block.name, block.gate, family)
    assert all("IRNN 0.001" in f.label for b, f in families(make_irnn(seed)) if b.kind == "weight_ih")


def make_irnn(seed: int) -> Tensors:
    module = torch.nn.RNN(64, 64)
    rnninit_cli.init_(module, "irnn", seed=seed)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_critical_values_match_the_published_formulas() -> None:
    # D'Agostino & Stephens (1986) Table 4.7, case 3 (both parameters estimated): 0.752 at 5 %, 1.035 at 1 %.
    assert anderson_darling_normal_critical(0.05) == pytest.approx(0.752, abs=2e-3)
    assert anderson_darling_normal_critical(0.01) == pytest.approx(1.035, abs=2e-3)
    p_value: Callable[[float], float] = lambda a: math.exp(1.2937 - 5.709 * a + 0.0186 * a * a)  # noqa: E731
    assert p_value(anderson_darling_normal_critical(ALPHA)) == pytest.approx(ALPHA, rel=1e-9)
    # Massart's DKW bound 2·exp(−2λ²) = α at λ = √m·D.
    assert 2 * math.exp(-2 * (uniform_ks_critical(400) * 20) ** 2) == pytest.approx(ALPHA, rel=1e-9)


@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_goodness_of_fit_tests_have_their_size(alpha: float) -> None:
    """At a testable α the rejection rate of true normal / uniform samples (fitted parameters) is about α:
    Binomial(2000, α) stays below 2000α + 5·sd except with probability < 1e-6."""
    generator = torch.Generator().manual_seed(1)
    trials, n = 2000, 64
    normal = torch.randn(trials, n, generator=generator, dtype=torch.float64) * 3 + 1
    uniform = torch.rand(trials, n, generator=generator, dtype=torch.float64) * 0.7 - 0.2
    limit = trials * alpha + 5 * math.sqrt(trials * alpha * (1 - alpha))
    assert sum(not check_normal_fit(row, alpha).ok for row in normal) <= limit
    assert sum(not check_uniform_fit(row, alpha).ok for row in uniform) <= limit
    # ... and the tests have power: a normal is not uniform, a uniform is not normal, at these sizes and α
    assert sum(not check_uniform_fit(row, alpha).ok for row in normal[:200]) > 100
    big = torch.rand(20, 4096, generator=generator, dtype=torch.float64)
    assert all(not check_normal_fit(row, ALPHA).ok for row in big)
