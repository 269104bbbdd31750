"""Block initializers against textbook definitions (bounds, moments, QᵀQ = I), not the code."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rnninit_cli.errors import RuleError
from rnninit_cli.init.initializers import INITIALIZERS, TRUNCATED_NORMAL_STD, get_initializer

# 60 000 draws: a sample std is within ~0.5 % of the true one, the max of a uniform within 0.01 %.
ROWS, COLS = 200, 300
FAN_IN, FAN_OUT = COLS, ROWS  # a (out_features, in_features) weight
REQUIRED_ARGS: dict[str, dict[str, Any]] = {
    "constant": {"value": 0.5},
    "chrono": {"tmax": 10.0},
    "pytorch": {"hidden_size": 8},
    "small_init": {"input_size": 8},
    "powerlaw_forget": {"block_index": 1, "num_blocks": 3},
}
ROUNDING = 1 + 1e-6  # float32 rounding of a float64 bound: values may sit one ulp outside it
RANDOM_INITIALIZERS = [
    "uniform",
    "normal",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "lecun_normal",
    "orthogonal",
    "pytorch",
    "chrono",
]


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fill(
    name: str,
    shape: tuple[int, ...] = (ROWS, COLS),
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    **args: Any,
) -> torch.Tensor:
    """A fresh tensor filled by initializer `name`, drawing from a generator seeded `seed`."""
    tensor = torch.full(shape, float("nan"), dtype=dtype)
    result = INITIALIZERS[name].function(
        tensor, **{**REQUIRED_ARGS.get(name, {}), **args}, generator=generator(seed)
    )
    assert result is tensor, "initializers fill in place and return their tensor"
    return tensor


def shape_for(name: str) -> tuple[int, ...]:
    return (9,) if INITIALIZERS[name].ndim == 1 else (9, 6)


def assert_uniform(values: torch.Tensor, low: float, high: float) -> None:
    """Values lie in [low, high], come close to both ends and have the std of U(low, high)."""
    values = values.double()
    width = high - low
    slack = (ROUNDING - 1) * max(abs(low), abs(high))
    assert values.min().item() >= low - slack
    assert values.max().item() <= high + slack
    assert values.min().item() < low + 0.01 * width
    assert values.max().item() > high - 0.01 * width
    assert values.std().item() == pytest.approx(width / math.sqrt(12), rel=0.05)
    assert values.mean().item() == pytest.approx((low + high) / 2, abs=0.02 * width)


def assert_normal(values: torch.Tensor, mean: float, std: float) -> None:
    values = values.double()
    assert values.std().item() == pytest.approx(std, rel=0.05)
    assert values.mean().item() == pytest.approx(mean, abs=0.05 * std)


def test_registry_holds_the_documented_initializers() -> None:
    assert set(INITIALIZERS) >= {
        "zeros",
        "ones",
        "constant",
        "uniform",
        "normal",
        "xavier_uniform",
        "xavier_normal",
        "kaiming_uniform",
        "kaiming_normal",
        "lecun_normal",
        "orthogonal",
        "identity",
        "pytorch",
        "chrono",
    }
    for spec in INITIALIZERS.values():
        assert spec.doc, f"{spec.name} has no one-line description"


def test_unknown_initializer_lists_known_ones() -> None:
    with pytest.raises(RuleError, match="glorot") as caught:
        get_initializer("glorot")
    assert "xavier_uniform" in str(caught.value)
    assert "orthogonal" in str(caught.value)


@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_xavier_uniform_bound(gain: float) -> None:
    bound = gain * math.sqrt(6 / (FAN_IN + FAN_OUT))
    values = fill("xavier_uniform", gain=gain)
    assert values.abs().max().item() <= bound * ROUNDING
    assert values.abs().max().item() > 0.99 * bound
    assert values.double().std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert_uniform(values, -bound, bound)


def test_xavier_uniform_uses_the_fans_of_the_tensor_it_is_given() -> None:
    tall = fill("xavier_uniform", shape=(1200, 20))
    bound = math.sqrt(6 / (1200 + 20))
    assert tall.abs().max().item() <= bound * ROUNDING
    assert tall.abs().max().item() > 0.99 * bound


@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_xavier_normal_std(gain: float) -> None:
    assert_normal(fill("xavier_normal", gain=gain), 0.0, gain * math.sqrt(2 / (FAN_IN + FAN_OUT)))


KAIMING_CASES = [
    ({}, torch.nn.init.calculate_gain("leaky_relu", 0.0), FAN_IN),
    ({"nonlinearity": "relu"}, math.sqrt(2), FAN_IN),
    ({"nonlinearity": "tanh", "mode": "fan_out"}, 5 / 3, FAN_OUT),
    ({"a": 0.2, "mode": "fan_out"}, torch.nn.init.calculate_gain("leaky_relu", 0.2), FAN_OUT),
    ({"nonlinearity": "linear"}, 1.0, FAN_IN),
    ({"nonlinearity": "selu"}, torch.nn.init.calculate_gain("selu"), FAN_IN),
]


@pytest.mark.parametrize(("args", "gain", "fan"), KAIMING_CASES)
def test_kaiming_uniform_bound(args: dict[str, Any], gain: float, fan: int) -> None:
    bound = gain * math.sqrt(3 / fan)
    values = fill("kaiming_uniform", **args)
    assert values.abs().max().item() <= bound * ROUNDING
    assert_uniform(values, -bound, bound)


@pytest.mark.parametrize(("args", "gain", "fan"), KAIMING_CASES)
def test_kaiming_normal_std(args: dict[str, Any], gain: float, fan: int) -> None:
    assert_normal(fill("kaiming_normal", **args), 0.0, gain / math.sqrt(fan))


@pytest.mark.parametrize("args", [{"mode": "fan_avg"}, {"nonlinearity": "softsign"}])
def test_kaiming_rejects_unknown_mode_or_nonlinearity(args: dict[str, Any]) -> None:
    with pytest.raises(RuleError):
        fill("kaiming_uniform", **args)


def test_truncated_normal_std_constant_is_the_std_of_a_unit_normal_cut_at_two() -> None:
    density_at_2 = math.exp(-2) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))  # P(|Z| <= 2)
    assert math.sqrt(1 - 2 * 2 * density_at_2 / mass) == pytest.approx(
        TRUNCATED_NORMAL_STD, rel=1e-12
    )
    assert pytest.approx(0.87962566103423978, rel=1e-15) == TRUNCATED_NORMAL_STD


def test_lecun_normal_truncated_at_two_sigma_with_variance_one_over_fan_in() -> None:
    values = fill("lecun_normal").double()
    sigma = math.sqrt(1 / FAN_IN) / 0.87962566103423978
    assert values.abs().max().item() <= 2 * sigma * ROUNDING
    assert values.abs().max().item() > 0.98 * 2 * sigma  # the tails reach the cut
    assert values.var().item() == pytest.approx(1 / FAN_IN, rel=0.05)
    assert values.mean().item() == pytest.approx(0.0, abs=0.05 * math.sqrt(1 / FAN_IN))
    # A normal truncated at ±2σ has ~68.3 % / 95.4 % = 71.6 % of its mass within ±σ.
    within_sigma = (values.abs() <= sigma).double().mean().item()
    assert within_sigma == pytest.approx(
        math.erf(1 / math.sqrt(2)) / math.erf(2 / math.sqrt(2)), abs=0.01
    )


def gram(matrix: torch.Tensor) -> torch.Tensor:
    """MᵀM if M is tall, MMᵀ if it is wide: the identity when the smaller side is orthonormal."""
    matrix = matrix.double()
    return matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T


@pytest.mark.parametrize("shape", [(12, 4), (4, 12), (7, 7), (300, 200)])
@pytest.mark.parametrize("gain", [1.0, 1.5])
def test_orthogonal(shape: tuple[int, int], gain: float) -> None:
    values = fill("orthogonal", shape=shape, gain=gain)
    small = min(shape)
    assert torch.allclose(gram(values), gain**2 * torch.eye(small, dtype=torch.float64), atol=1e-5)


def test_orthogonal_float64_is_exact_to_rounding() -> None:
    values = fill("orthogonal", shape=(20, 8), dtype=torch.float64)
    assert torch.allclose(gram(values), torch.eye(8, dtype=torch.float64), atol=1e-12)


def test_orthogonal_is_not_a_fixed_matrix() -> None:
    assert not torch.equal(
        fill("orthogonal", shape=(6, 6), seed=1), fill("orthogonal", shape=(6, 6), seed=2)
    )
    assert not torch.allclose(fill("orthogonal", shape=(6, 6)).abs(), torch.eye(6))


@pytest.mark.parametrize("shape", [(5, 5), (3, 5), (5, 3)])
@pytest.mark.parametrize("scale", [1.0, 0.5, 2.0])
def test_identity_like_torch_eye(shape: tuple[int, int], scale: float) -> None:
    assert torch.equal(fill("identity", shape=shape, scale=scale), scale * torch.eye(*shape))


@pytest.mark.parametrize("hidden_size", [4, 16, 100])
def test_pytorch_bound_is_one_over_sqrt_hidden(hidden_size: int) -> None:
    bound = 1 / math.sqrt(hidden_size)
    values = fill("pytorch", hidden_size=hidden_size)
    assert values.abs().max().item() <= bound * ROUNDING
    assert_uniform(values, -bound, bound)
    bias = fill("pytorch", shape=(5000,), hidden_size=hidden_size)
    assert bias.abs().max().item() <= bound * ROUNDING


@pytest.mark.parametrize("tmax", [3.0, 50, 1000.0])
def test_chrono_is_log_of_uniform_between_one_and_tmax_minus_one(tmax: float) -> None:
    values = fill("chrono", shape=(10_000,), tmax=tmax).double()
    assert values.min().item() >= 0.0
    assert values.max().item() <= math.log(tmax - 1) + 1e-6
    # exp(b) ~ U[1, tmax − 1]
    assert_uniform(values.exp(), 1.0, tmax - 1)


def test_chrono_negate_gives_exactly_minus_the_same_draws() -> None:
    plain = fill("chrono", shape=(64,), tmax=100, seed=3)
    negated = fill("chrono", shape=(64,), tmax=100, seed=3, negate=True)
    assert torch.equal(negated, -plain)
    assert (negated <= 0).all()


@pytest.mark.parametrize("tmax", [2, 1.5, 0])
def test_chrono_needs_tmax_above_two(tmax: float) -> None:
    with pytest.raises(RuleError, match="tmax"):
        fill("chrono", shape=(4,), tmax=tmax)


def test_constants() -> None:
    assert torch.equal(fill("zeros", shape=(3, 4)), torch.zeros(3, 4))
    assert torch.equal(fill("ones", shape=(3, 4)), torch.ones(3, 4))
    assert torch.equal(fill("constant", shape=(7,), value=-0.25), torch.full((7,), -0.25))
    assert torch.equal(fill("constant", shape=(2, 2), value=3), torch.full((2, 2), 3.0))


def test_uniform_range() -> None:
    assert_uniform(fill("uniform"), 0.0, 1.0)
    assert_uniform(fill("uniform", a=-0.3, b=0.1), -0.3, 0.1)


def test_normal_moments() -> None:
    assert_normal(fill("normal"), 0.0, 1.0)
    assert_normal(fill("normal", mean=2.0, std=0.001), 2.0, 0.001)


@pytest.mark.parametrize("name", RANDOM_INITIALIZERS)
def test_draws_only_from_the_given_generator(name: str) -> None:
    torch.manual_seed(1)
    first = fill(name, shape=shape_for(name), seed=11)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    second = fill(name, shape=shape_for(name), seed=11)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG was consumed"
    assert torch.equal(first, second)
    assert not torch.equal(first, fill(name, shape=shape_for(name), seed=12))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_keeps_the_dtype(name: str, dtype: torch.dtype) -> None:
    values = fill(name, shape=shape_for(name), dtype=dtype)
    assert values.dtype == dtype
    assert torch.isfinite(values).all()
    reference = fill(name, shape=shape_for(name), dtype=torch.float32)
    if dtype != torch.float64:  # the same draws, rounded to the narrower type
        assert torch.allclose(values.float(), reference, rtol=1e-2, atol=1e-3)


def test_float64_orthogonal_and_identity_keep_precision() -> None:
    eye = fill("identity", shape=(4, 4), dtype=torch.float64, scale=1 / 3)
    assert torch.equal(eye, torch.eye(4, dtype=torch.float64) / 3)
    assert eye[0, 0].item() == 1 / 3
