"""Block initializers, in the style of `torch.nn.init`.

Each is a small pure function that fills `tensor` in place and returns it. It draws only from the
explicit `generator`, computes in float32 (float64 for float64 tensors) and casts to the tensor's
dtype. Each runs at one torch thread (`onethread.at_one_thread`), so its values do not depend on the
thread count. Fans are those of the tensor it is given: the planner passes one gate block (`per=gate`) or
the whole concatenated parameter (`per=matrix`). 2-D tensors are (out_features, in_features).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import RuleError, resolve_name, unknown_name
from .onethread import at_one_thread

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class InitializerSpec:
    """A registered initializer: its function and what the planner must know about it."""

    name: str
    function: Callable[..., torch.Tensor]
    scoped: bool  # takes per=gate|matrix (fan-based and orthogonal initializers)
    ndim: int | None  # 2 for matrix-only, 1 for bias-only, None for any
    stream: str | None  # draws shared by every block of a parameter (chrono: b_i = -b_f)
    context: tuple[str, ...]  # arguments the planner fills from the layer (hidden_size)

    @property
    def doc(self) -> str:
        return (self.function.__doc__ or "").strip().splitlines()[0]

    @property
    def annotations(self) -> dict[str, str]:
        """Declared type of each argument, as written in the signature ('float', 'bool', 'str')."""
        return {k: str(v) for k, v in self.function.__annotations__.items()}

    @property
    def parameters(self) -> dict[str, Any]:
        """User-settable arguments and their defaults (inspect.Parameter.empty when required)."""
        result = dict(_positional_parameters(self.function))
        if self.scoped:
            result["per"] = "gate"
        return result


@functools.cache
def _positional_parameters(function: Callable[..., Any]) -> tuple[tuple[str, Any], ...]:
    """(name, default) of a block initializer's arguments after the tensor, read from its signature once (a
    diagnosis of 10,000 layers binds rules hundreds of thousands of times)."""
    params = list(inspect.signature(function).parameters.values())[1:]
    return tuple((p.name, p.default) for p in params if p.kind is not p.KEYWORD_ONLY)


INITIALIZERS: dict[str, InitializerSpec] = {}


def _register(
    *, scoped: bool = False, ndim: int | None = None, stream: str | None = None,
    context: tuple[str, ...] = (),
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:

    def decorate(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        name = function.__name__
        # At one torch thread: QR and the elementwise kernels give the same bits at any thread count.
        on_one_thread = at_one_thread(function)
        INITIALIZERS[name] = InitializerSpec(name, on_one_thread, scoped, ndim, stream, context)
        return on_one_thread

    return decorate


def get_initializer(name: str) -> InitializerSpec:
    """The registered initializer `name` (any case, where that is unambiguous); a `RuleError` suggesting the closest
    otherwise."""
    known = resolve_name(name, INITIALIZERS)
    if known is None:
        raise RuleError(unknown_name("initializer", name, ["keep", *INITIALIZERS]))
    return INITIALIZERS[known]


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    import torch

    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _empty(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    import torch

    return torch.empty(tensor.shape, dtype=dtype or _compute_dtype(tensor))


def _write(tensor: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    import torch

    with torch.no_grad():
        tensor.copy_(values)
    return tensor


def _fans(tensor: torch.Tensor) -> tuple[int, int]:
    if tensor.dim() != 2:
        raise RuleError(f"a fan-based initializer needs a 2-D tensor, got shape {list(tensor.shape)}")
    fan_out, fan_in = tensor.shape
    return fan_in, fan_out


def _gain(nonlinearity: str, a: float) -> float:
    gains = {"linear": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0),
             "leaky_relu": math.sqrt(2.0 / (1 + a * a)), "selu": 0.75}
    if nonlinearity not in gains:
        raise RuleError(f"unknown nonlinearity {nonlinearity!r}; known: {', '.join(gains)}")
    return gains[nonlinearity]


def _fan(tensor: torch.Tensor, mode: str) -> int:
    fan_in, fan_out = _fans(tensor)
    if mode not in ("fan_in", "fan_out"):
        raise RuleError(f"mode must be fan_in or fan_out, got {mode!r}")
    return fan_in if mode == "fan_in" else fan_out


def _uniform(tensor: torch.Tensor, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return _write(tensor, _empty(tensor).uniform_(low, high, generator=generator))


def _normal(tensor: torch.Tensor, mean: float, std: float, generator: torch.Generator) -> torch.Tensor:
    return _write(tensor, _empty(tensor).normal_(mean, std, generator=generator))


@_register()
def zeros(tensor: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """0."""
    import torch

    return _write(tensor, torch.zeros(tensor.shape))


@_register()
def ones(tensor: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """1."""
    import torch

    return _write(tensor, torch.ones(tensor.shape))


@_register()
def constant(tensor: torch.Tensor, value: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """value."""
    import torch

    return _write(tensor, torch.full(tensor.shape, float(value), dtype=_compute_dtype(tensor)))


@_register()
def uniform(tensor: torch.Tensor, a: float = 0.0, b: float = 1.0, *, generator: torch.Generator) -> torch.Tensor:
    """U(a, b)."""
    return _uniform(tensor, a, b, generator)


@_register()
def normal(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, *, generator: torch.Generator) -> torch.Tensor:
    """N(mean, std²)."""
    return _normal(tensor, mean, std, generator)


@_register(scoped=True, ndim=2)
def xavier_uniform(tensor: torch.Tensor, gain: float = 1.0, *, generator: torch.Generator) -> torch.Tensor:
    """U(−a, a), a = gain·√(6 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    fan_in, fan_out = _fans(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _uniform(tensor, -bound, bound, generator)


@_register(scoped=True, ndim=2)
def xavier_normal(tensor: torch.Tensor, gain: float = 1.0, *, generator: torch.Generator) -> torch.Tensor:
    """N(0, σ²), σ = gain·√(2 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    fan_in, fan_out = _fans(tensor)
    return _normal(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


@_register(scoped=True, ndim=2)
def kaiming_uniform(
    tensor: torch.Tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
    *, generator: torch.Generator,
) -> torch.Tensor:
    """U(−b, b), b = gain·√(3 / fan), gain as torch.nn.init.calculate_gain (He et al. 2015)."""

    bound = _gain(nonlinearity, a) * math.sqrt(3.0 / _fan(tensor, mode))
    return _uniform(tensor, -bound, bound, generator)


@_register(scoped=True, ndim=2)
def kaiming_normal(
    tensor: torch.Tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
    *, generator: torch.Generator,
) -> torch.Tensor:
    """N(0, σ²), σ = gain / √fan, gain as torch.nn.init.calculate_gain (He et al. 2015)."""

    return _normal(tensor, 0.0, _gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode)), generator)


# Standard deviation of a unit normal truncated to [-2, 2]; Flax divides by it (variance_scaling).
TRUNCATED_NORMAL_STD = 0.87962566103423978


@_register(scoped=True, ndim=2)
def lecun_normal(tensor: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """σ·T, T ~ N(0, 1) truncated to [−2, 2], σ = √(1 / fan_in) / 0.8796 so Var = 1/fan_in (Flax)."""
    import torch

    fan_in, _ = _fans(tensor)
    low, high = (1 + math.erf(-2 / math.sqrt(2))) / 2, (1 + math.erf(2 / math.sqrt(2))) / 2
    u = torch.empty(tensor.shape, dtype=torch.float64).uniform_(low, high, generator=generator)
    truncated = math.sqrt(2.0) * torch.erfinv(2 * u - 1)
    sigma = math.sqrt(1.0 / fan_in) / TRUNCATED_NORMAL_STD
    return _write(tensor, (sigma * truncated).clamp_(-2 * sigma, 2 * sigma))


@_register(scoped=True, ndim=2)
def orthogonal(tensor: torch.Tensor, gain: float = 1.0, *, generator: torch.Generator) -> torch.Tensor:
    """gain·Q, Q from the QR of a normal matrix with sign(diag R) fixed: QᵀQ = I or QQᵀ = I (Saxe 2014)."""
    import torch

    rows, cols = tensor.shape
    flat = torch.empty(max(rows, cols), min(rows, cols), dtype=_compute_dtype(tensor)).normal_(generator=generator)
    q, r = torch.linalg.qr(flat)
    q = q * torch.sign(torch.diagonal(r))
    return _write(tensor, gain * (q if rows >= cols else q.T))


@_register(ndim=2)
def identity(tensor: torch.Tensor, scale: float = 1.0, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """scale·I, ones on the main diagonal for non-square blocks (as torch.nn.init.eye_) (Le et al. 2015)."""
    import torch

    return _write(tensor, scale * torch.eye(*tensor.shape, dtype=_compute_dtype(tensor)))


@_register(context=("hidden_size",))
def pytorch(tensor: torch.Tensor, hidden_size: int, *, generator: torch.Generator) -> torch.Tensor:
    """U(−1/√hidden_size, 1/√hidden_size), as torch.nn.RNNBase.reset_parameters."""

    bound = 1.0 / math.sqrt(hidden_size)
    return _uniform(tensor, -bound, bound, generator)


@_register(ndim=1, stream="chrono")
def chrono(tensor: torch.Tensor, tmax: float, negate: bool = False, *, generator: torch.Generator) -> torch.Tensor:
    """log(U[1, tmax − 1]), negated if `negate` (Tallec & Ollivier 2018)."""
    import torch

    if not tmax > 2:
        raise RuleError(f"chrono needs tmax > 2, got {tmax}")
    values = torch.log(_empty(tensor).uniform_(1.0, tmax - 1.0, generator=generator))
    return _write(tensor, -values if negate else values)


@_register(context=("input_size",))
def small_init(tensor: torch.Tensor, input_size: int, *, generator: torch.Generator) -> torch.Tensor:
    """N(0, σ²), σ = √(2 / (5·input_size)) (Nguyen & Salazar 2019; xLSTM's `small_init_init_`)."""
    return _normal(tensor, 0.0, math.sqrt(2.0 / (5.0 * input_size)), generator)


@_register(scoped=True, ndim=2)
def fan_in_normal(tensor: torch.Tensor, scale: float = 1.0, *, generator: torch.Generator) -> torch.Tensor:
    """N(0, σ²), σ = √(scale / fan_in), untruncated (Griffin's gate weights: scale 0.01)."""
    fan_in, _ = _fans(tensor)
    return _normal(tensor, 0.0, math.sqrt(scale / fan_in), generator)


@_register(ndim=1)
def linspace(tensor: torch.Tensor, start: float = 0.0, end: float = 1.0, *, generator: torch.Generator | None = None
             ) -> torch.Tensor:
    """start + (end − start)·k/(n − 1), k = 0 … n − 1, as torch.linspace in float32 (xLSTM's gate biases)."""
    import torch

    return _write(tensor, torch.linspace(start, end, tensor.shape[0], dtype=torch.float32))


@_register(ndim=1, context=("block_index", "num_blocks"))
def powerlaw_forget(tensor: torch.Tensor, block_index: int, num_blocks: int, *,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """−(−5 + 12·(k/(n − 1))^(0.3 + 1.3·r)), r = block_index/(num_blocks − 1) (0 for one block), k = 0 … n − 1, in
    float32 as xLSTM computes it (Beck et al. 2024, `powerlaw_blockdependent`); one value (n = 1) is k/(n − 1) := 0,
    i.e. 5, where xLSTM divides 0 by 0."""
    import torch

    ratio = block_index / (num_blocks - 1) if num_blocks > 1 else 0.0
    size = tensor.shape[0]
    position = torch.arange(size) / (size - 1) if size > 1 else torch.zeros(size)
    return _write(tensor, -(-5.0 + 12.0 * position ** (0.3 + 1.3 * ratio)))


@_register(ndim=1)
def rglru_radius(tensor: torch.Tensor, min_rad: float = 0.9, max_rad: float = 0.999, *,
                 generator: torch.Generator) -> torch.Tensor:
    """p = log(1/√u − 1), u ~ U(min_rad² + 1e-8, max_rad² + 1e-8), so a = σ(−p) = √u lies on [min_rad, max_rad] with
    a² uniform (Griffin, De et al. 2024; transformers' RecurrentGemma `_init_weights`)."""
    import torch

    if not 0 < min_rad <= max_rad < 1:
        raise RuleError(f"rglru_radius needs 0 < min_rad ≤ max_rad < 1, got {min_rad} and {max_rad}")
    u = torch.empty(tensor.shape, dtype=torch.float32).uniform_(min_rad**2 + 1e-8, max_rad**2 + 1e-8,
                                                                generator=generator)
    return _write(tensor, u.log_().mul_(0.5).neg_().exp_().sub_(1.0).log_())


@dataclass(frozen=True)
class FloatFormat:
    """What a floating dtype can hold: its fraction bits, whether it has a sign and a zero, its range."""

    fraction_bits: int
    signed: bool
    zero: bool
    largest: float  # the largest finite magnitude
    smallest_normal: float  # below it values lose relative precision (subnormals) or vanish

    @property
    def unit_roundoff(self) -> float:
        """u: the largest relative error of rounding a value in the normal range to this format."""
        return 2.0 ** -(self.fraction_bits + 1)


FLOAT_FORMATS: dict[str, FloatFormat] = {
    "float64": FloatFormat(52, True, True, 1.7976931348623157e308, 2.2250738585072014e-308),
    "float32": FloatFormat(23, True, True, 3.4028234663852886e38, 1.1754943508222875e-38),
    "bfloat16": FloatFormat(7, True, True, 3.3895313892515355e38, 1.1754943508222875e-38),
    "float16": FloatFormat(10, True, True, 65504.0, 2.0**-14),
    "float8_e4m3fn": FloatFormat(3, True, True, 448.0, 2.0**-6),
    "float8_e4m3fnuz": FloatFormat(3, True, True, 240.0, 2.0**-7),
    "float8_e5m2": FloatFormat(2, True, True, 57344.0, 2.0**-14),
    "float8_e5m2fnuz": FloatFormat(2, True, True, 57344.0, 2.0**-15),
    "float8_e8m0fnu": FloatFormat(0, False, False, 2.0**127, 2.0**-127),  # powers of two only, and NaN
}
# Rounding moves a stored orthogonal block's QᵀQ off I by up to 2u + u² entrywise. rnninit's checks accept an
# orthogonal block within max(1e-3, 8u), which for bfloat16 is 1/32: a coarser dtype cannot hold one honestly.
ORTHOGONAL_ROUNDING_LIMIT = 2.0**-5

_NOT_REAL_FLOAT = {
    "bool": "holds only true and false",
    "complex": "is complex: rnninit draws real values, and the imaginary parts would be lost or left as they were",
    "int": "is an integer dtype: the drawn values would be truncated",
    "uint": "is an integer dtype: the drawn values would be truncated",
    "qint": "is a quantized dtype: its values are integers with a scale and zero point that rnninit does not draw",
    "quint": "is a quantized dtype: its values are integers with a scale and zero point that rnninit does not draw",
    "bits": "holds raw bits with no arithmetic meaning",
    "float4_e2m1fn_x2": "packs two 4-bit floats into each element, which torch cannot write values into",
}


@dataclass(frozen=True)
class _Needs:
    """What an initializer's values need of a dtype."""

    negative: bool = False  # it draws negative values
    random: bool = False  # it draws continuous values (a dtype without fraction bits collapses them)
    orthogonal: bool = False  # the block must stay orthogonal
    exact: tuple[float, ...] = ()  # values it writes exactly (constants, zeros, the identity's diagonal)
    largest: float | None = None  # a bound on |value| known from the arguments alone


def _needs(initializer: str, args: dict[str, Any]) -> _Needs:
    """What `initializer` with `args` writes, as far as the arguments tell (fan-based bounds come from the draw)."""
    if initializer == "zeros":
        return _Needs(exact=(0.0,))
    if initializer == "ones":
        return _Needs(exact=(1.0,))
    if initializer == "constant":
        return _Needs(exact=(float(args["value"]),))
    if initializer == "identity":
        return _Needs(exact=(0.0, float(args.get("scale", 1.0))))
    if initializer == "uniform":
        low, high = float(args.get("a", 0.0)), float(args.get("b", 1.0))
        if low == high:
            return _Needs(exact=(low,))
        return _Needs(negative=low < 0, random=True, largest=max(abs(low), abs(high)))
    if initializer == "normal":
        if float(args.get("std", 1.0)) == 0:
            return _Needs(exact=(float(args.get("mean", 0.0)),))
        return _Needs(negative=True, random=True)
    if initializer in ("xavier_uniform", "xavier_normal", "orthogonal") and float(args.get("gain", 1.0)) == 0:
        return _Needs(exact=(0.0,))
    if initializer == "orthogonal":
        return _Needs(negative=True, random=True, orthogonal=True, largest=abs(float(args.get("gain", 1.0))))
    if initializer == "pytorch":
        return _Needs(negative=True, random=True, largest=1.0 / math.sqrt(float(args.get("hidden_size", 1))))
    if initializer == "chrono":
        return _Needs(negative=bool(args.get("negate", False)), random=True,
                      largest=math.log(max(float(args.get("tmax", 3.0)) - 1.0, 1.0)))
    return _Needs(negative=True, random=True)  # the zero-mean fan-based draws (xavier, kaiming, lecun)


def cannot_hold(dtype: str, initializer: str, args: dict[str, Any]) -> str | None:
    """Why a tensor of `dtype` (torch's name) cannot hold what `initializer(**args)` draws; None when it can."""
    if initializer == "keep":
        return None
    form = FLOAT_FORMATS.get(dtype)
    if form is None:
        kind = next((reason for prefix, reason in _NOT_REAL_FLOAT.items() if dtype.startswith(prefix)), None)
        return f"{dtype} {kind}" if kind else f"rnninit does not know what {dtype} can hold"
    needs = _needs(initializer, args)
    if (needs.negative or any(value < 0 for value in needs.exact)) and not form.signed:
        return f"it writes negative values, and {dtype} has no sign bit"
    if 0.0 in needs.exact and not form.zero:
        return f"it writes zeros, and {dtype} has no zero"
    if needs.random and form.fraction_bits == 0:
        return f"{dtype} holds powers of two only: a random draw would collapse onto a few of them"
    for value in needs.exact:
        if abs(value) > form.largest:
            return f"it writes {value:g}, beyond {dtype}'s largest finite value {form.largest:g}"
        if value and abs(value) < form.smallest_normal:
            return (f"it writes {value:g}, below {dtype}'s smallest normal value {form.smallest_normal:g}, "
                    "where it would lose its precision or become 0")
        if value and form.fraction_bits == 0 and math.frexp(abs(value))[0] != 0.5:
            return f"it writes {value:g}, and {dtype} holds powers of two only"
    if needs.largest is not None and needs.largest > form.largest:
        return f"it draws values up to {needs.largest:g}, beyond {dtype}'s largest finite value {form.largest:g}"
    if needs.orthogonal:
        error = 2 * form.unit_roundoff + form.unit_roundoff**2
        if error > ORTHOGONAL_ROUNDING_LIMIT:
            return (f"{dtype} rounds each entry by up to {form.unit_roundoff:.3g} of its value, so the stored block "
                    f"would be orthogonal only to within {error:.3g} (max|QᵀQ − I| ≤ 2u + u²), coarser than "
                    f"the {ORTHOGONAL_ROUNDING_LIMIT:g} rnninit accepts")
    return None


def overflow(dtype: str, largest: float) -> str | None:
    """Why values drawn up to `largest` in magnitude do not fit `dtype`'s range (beyond its largest value, or all
    below its smallest normal one, where they become 0 or lose their precision); None when they do."""
    form = FLOAT_FORMATS.get(dtype)
    if form is None:
        return None
    if largest > form.largest:
        return (f"it drew values up to {largest:g}, beyond {dtype}'s largest finite value {form.largest:g} "
                "(they would be stored saturated or as NaN)")
    if 0 < largest < form.smallest_normal:
        return (f"it drew values of at most {largest:g}, all below {dtype}'s smallest normal value "
                f"{form.smallest_normal:g} (they would be stored as 0 or with a few bits)")
    return None
