"""Rules (`TARGET=INIT`) and the registry of named schemes (ordered lists of rules).

Torch-free on purpose: `rnninit schemes` and `--help` read this module without importing torch.
Rule *syntax* is checked here; whether an initializer and its arguments exist is checked by the
planner against `initializers.INITIALIZERS`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import RuleError, SchemeError, resolve_name, suggestion, unknown_name
from ..layouts.discovery import KINDS

Value = bool | int | float | str
TARGET_KINDS: dict[str, tuple[str, ...]] = {
    **{kind: (kind,) for kind in KINDS},
    "weight": ("weight_ih", "weight_hh"),
    "bias": ("bias_ih", "bias_hh"),
}

# what people call the gates, for suggestions: a rule's gate is the letter (LSTM i f g o, GRU r z n)
GATE_WORDS = {"input": "i", "forget": "f", "cell": "g", "output": "o", "reset": "r", "update": "z", "new": "n",
              "candidate": "n"}
KEEP = "keep"  # the initializer name of a rule that leaves its blocks as they are
_CALL = re.compile(r"^\s*(?P<name>[A-Za-z_][\w-]*)\s*(?:\((?P<args>[^()]*)\))?\s*$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_IDENT = re.compile(r"^[A-Za-z_]\w*$")
_FAMILY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# the cell families of the per-head built-in layouts (`layouts.declared.MODERN_LAYOUTS`); a declared layout may name
# its own
FAMILIES = ("slstm", "mlstm", "rglru", "hf-mlstm")


def parse_value(text: str) -> Value:
    """`1` → 1, `1e-3` → 0.001, `true` → True, `gate` or `'gate'` → 'gate'."""
    text = text.strip()
    if _NUMBER.match(text):
        number = float(text)
        return int(number) if re.fullmatch(r"[+-]?\d+", text) else number
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if _IDENT.match(text):
        return text
    raise ValueError(f"cannot read value {text!r} (a number, true/false or a name)")


def format_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def parse_call(text: str, what: str) -> tuple[str, tuple[Value, ...], tuple[tuple[str, Value], ...]]:
    """`name(1, b=2)` → ('name', (1,), (('b', 2),)). `what` names the thing in error messages."""
    match = _CALL.match(text)
    if match is None:
        raise ValueError(f"{what} {text.strip()!r} is not of the form name or name(arg=value, ...)")
    positional: list[Value] = []
    keywords: dict[str, Value] = {}
    for part in filter(None, (p.strip() for p in (match["args"] or "").split(","))):
        key, equals, value = part.partition("=")
        if not equals:
            if keywords:
                raise ValueError(f"positional argument {part!r} after keyword arguments in {text!r}")
            positional.append(parse_value(part))
            continue
        key = key.strip()
        if not _IDENT.match(key):
            raise ValueError(f"argument name {key!r} in {text!r} is not a name")
        if key in keywords:
            raise ValueError(f"argument {key!r} given twice in {text!r}")
        keywords[key] = parse_value(value)
    return match["name"], tuple(positional), tuple(keywords.items())


@dataclass(frozen=True)
class Rule:
    """`TARGET=INIT`: which blocks (kind, optional gate) get which initializer with which arguments."""

    target: str
    gate: str | None
    initializer: str
    args: tuple[Value, ...] = ()
    kwargs: tuple[tuple[str, Value], ...] = ()
    family: str | None = None  # `@slstm`: only the cells of that family (xLSTM's sLSTM...); None: any cell

    @property
    def kinds(self) -> tuple[str, ...]:
        return TARGET_KINDS[self.target]

    def hits(self, kind: str, gate: str | None, family: str = "") -> bool:
        return (kind in self.kinds and (self.gate is None or self.gate == gate)
                and (self.family is None or self.family == family))

    def __str__(self) -> str:
        target = self.target + (f".{self.gate}" if self.gate else "") + (f"@{self.family}" if self.family else "")
        parts = [format_value(v) for v in self.args] + [f"{k}={format_value(v)}" for k, v in self.kwargs]
        return f"{target}={self.initializer}" + (f"({', '.join(parts)})" if parts else "")


def parse_rule(text: str | Rule) -> Rule:
    """Parse `TARGET=INIT`, e.g. `bias_ih.f=constant(1)` or `weight_hh=orthogonal(per=gate)`."""
    if isinstance(text, Rule):
        return text
    target_text, equals, init_text = text.partition("=")
    if not equals or not init_text.strip():
        raise RuleError(f"rule {text!r} is not of the form TARGET=INIT, e.g. bias_ih.f=constant(1)")
    target_text, at, family = target_text.strip().partition("@")
    if at and not _FAMILY.match(family):
        raise RuleError(f"rule {text!r}: {family!r} after @ is not a cell family; families are "
                        f"{', '.join(FAMILIES)} (e.g. bias_ih.f@slstm=...)")
    kind_text, dot, gate = target_text.strip().partition(".")
    if dot and not gate:  # `bias_ih.$GATE=ones` with GATE empty must not hit every gate
        raise RuleError(f"rule {text!r}: the gate after {kind_text}. is empty; name one (bias_ih.f=...) or write "
                        f"{kind_text}=INIT for every gate")
    kind = resolve_name(kind_text, TARGET_KINDS)
    if kind is None:
        hint = suggestion(kind_text, TARGET_KINDS) or f"; targets are {', '.join(TARGET_KINDS)}"
        raise RuleError(f"rule {text!r}: unknown target {kind_text!r}{hint} (optionally with .GATE)")
    if gate and kind == "weight_hr":
        raise RuleError(f"rule {text!r}: weight_hr has no gates; write weight_hr=INIT")
    if gate and not _IDENT.match(gate):
        raise RuleError(f"rule {text!r}: unknown gate {gate!r}; gates are i f g o (LSTM), r z n (GRU), or the gate "
                        "names a declared layout gives its cell")
    try:
        name, args, kwargs = parse_call(init_text, "initializer")
    except ValueError as error:
        raise RuleError(f"rule {text!r}: {error}") from None
    from .initializers import INITIALIZERS  # torch-free; registered there, after this module

    name = resolve_name(name, [KEEP, *INITIALIZERS]) or name  # an unknown name is refused when the rule is planned
    return Rule(kind, gate or None, name, args, kwargs, family or None)


@dataclass(frozen=True)
class Scheme:
    """A named, documented, ordered list of rules. Rule texts may use `{arg}` for scheme arguments."""

    name: str
    description: str
    rules: tuple[str, ...]
    reference: str
    params: tuple[tuple[str, Value | None], ...] = ()  # (name, default); None = required
    cells: frozenset[str] = field(default_factory=lambda: frozenset({"rnn", "gru", "lstm"}))
    needs_bias: bool = False
    families: frozenset[str] = frozenset()  # the per-head cell families it is defined for (none: torch-style gates)

    def resolve(self, **arguments: Value) -> tuple[Rule, ...]:
        """The scheme's rules with its arguments filled in."""
        defaults = dict(self.params)
        arguments = {resolve_name(key, defaults) or key: value for key, value in arguments.items()}
        unknown = sorted(set(arguments) - set(defaults))
        if unknown:
            takes = f"it takes: {self.signature}" if self.params else "it takes no arguments"
            hint = suggestion(unknown[0], defaults)
            raise SchemeError(f"scheme {self.name!r} has no argument {unknown[0]!r}"
                              + (f"{hint} ({takes})" if hint else f"; {takes}"))
        values = {**defaults, **arguments}
        missing = [k for k, v in values.items() if v is None]
        if missing:
            raise SchemeError(f"scheme {self.name!r} needs {missing[0]}, e.g. {self.name}({missing[0]}=100)")
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SchemeError(f"scheme {self.name!r}: {key} must be a number, got {value!r}")
        return tuple(parse_rule(rule.format(**values)) for rule in self.rules)

    @property
    def signature(self) -> str:
        if not self.params:
            return self.name
        parts = [k if v is None else f"{k}={format_value(v)}" for k, v in self.params]
        return f"{self.name}({', '.join(parts)})"


SCHEMES: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme, *, replace: bool = False) -> Scheme:
    """Add `scheme` to the registry that the Python API and the CLI share."""
    if scheme.name in SCHEMES and not replace:
        raise SchemeError(f"scheme {scheme.name!r} is already registered; pass replace=True")
    for rule in scheme.rules:
        parse_rule(rule.format(**{k: 1 for k, _ in scheme.params}))
    SCHEMES[scheme.name] = scheme
    return scheme


def get_scheme(spec: str | Scheme) -> tuple[Scheme, tuple[Rule, ...]]:
    """`'chrono(tmax=200)'` → (the chrono scheme, its rules with tmax=200)."""
    if isinstance(spec, Scheme):
        return spec, spec.resolve()
    try:
        name, args, kwargs = parse_call(spec, "scheme")
    except ValueError as error:
        raise SchemeError(str(error)) from None
    known = resolve_name(name, SCHEMES)
    if known is None:
        raise SchemeError(unknown_name("scheme", name, SCHEMES))
    name, scheme = known, SCHEMES[known]
    if len(args) > len(scheme.params):
        raise SchemeError(f"scheme {name!r} takes at most {len(scheme.params)} positional "
                          f"argument(s): {scheme.signature}")
    positional = {key: value for (key, _), value in zip(scheme.params, args, strict=False)}
    return scheme, scheme.resolve(**positional, **dict(kwargs))


def scheme_label(spec: str | Scheme) -> str:
    """How plans and outputs record `spec`: as written, with the scheme's name spelled as registered (`Keras` →
    `keras`)."""
    if isinstance(spec, Scheme):
        return spec.name
    text = spec.strip()
    match = _CALL.match(text)
    known = resolve_name(match["name"], SCHEMES) if match else None
    return known + text[len(match["name"]):] if match and known else text


def parse_rules(rules: Iterable[str | Rule]) -> tuple[Rule, ...]:
    return tuple(parse_rule(rule) for rule in rules)


_KERAS_RULES = (
    "weight_ih=xavier_uniform(per=matrix)",
    "weight_hh=orthogonal(per=matrix)",
    "weight_hr=xavier_uniform(per=matrix)",
    "bias=zeros",
    "bias_ih.f=ones",
)
_KERAS_REF = ("Keras 3 LSTM/GRU/SimpleRNN defaults (glorot_uniform kernel, orthogonal recurrent "
              "kernel, zero bias, unit_forget_bias=True); Glorot & Bengio 2010; Saxe et al. 2014")

for _scheme in (
    Scheme(
        "pytorch",
        "PyTorch's default: every parameter, biases and weight_hr included, U(−1/√h, 1/√h).",
        ("weight=pytorch", "weight_hr=pytorch", "bias=pytorch"),
        "torch.nn.RNNBase.reset_parameters (PyTorch)",
    ),
    Scheme(
        "keras",
        "Keras defaults in PyTorch layout: Glorot uniform over the whole weight_ih, orthogonal over "
        "the whole weight_hh (gate blocks are not orthogonal), biases 0, LSTM effective forget bias 1.",
        _KERAS_RULES,
        _KERAS_REF,
    ),
    Scheme(
        "keras-gate",
        "Per-gate variant: Glorot uniform per gate block, each recurrent gate block orthogonal, "
        "biases 0, LSTM effective forget bias 1.",
        ("weight_ih=xavier_uniform(per=gate)", "weight_hh=orthogonal(per=gate)",
         "weight_hr=xavier_uniform(per=matrix)", "bias=zeros", "bias_ih.f=ones"),
        "Glorot & Bengio 2010; Saxe et al. 2014; forget bias 1: Gers et al. 2000, Jozefowicz et al. 2015",
    ),
    Scheme(
        "flax",
        "Flax linen LSTMCell/GRUCell defaults: input blocks lecun_normal (truncated) per gate, "
        "recurrent blocks orthogonal per gate, biases 0.",
        ("weight_ih=lecun_normal(per=gate)", "weight_hh=orthogonal(per=gate)",
         "weight_hr=lecun_normal(per=matrix)", "bias=zeros"),
        "Flax linen recurrent.py (LSTMCell, GRUCell); LeCun et al. 1998",
    ),
    Scheme(
        "orthogonal",
        "Every input and recurrent gate block orthogonal on its own, biases 0.",
        ("weight_ih=orthogonal(per=gate)", "weight_hh=orthogonal(per=gate)",
         "weight_hr=orthogonal(per=matrix)", "bias=zeros"),
        "Saxe, McClelland & Ganguli 2014, Exact solutions to the nonlinear dynamics of learning "
        "in deep linear neural networks",
    ),
    Scheme(
        "irnn",
        "Identity recurrence: recurrent gate blocks (and weight_hr) scale·I, input weights "
        "N(0, 0.001²), biases 0.",
        ("weight_ih=normal(0.0, 0.001)", "weight_hh=identity({scale})",
         "weight_hr=identity({scale})", "bias=zeros"),
        "Le, Jaitly & Hinton 2015, A Simple Way to Initialize Recurrent Networks of Rectified "
        "Linear Units (arXiv:1504.00941)",
        params=(("scale", 1.0),),
    ),
    Scheme(
        "chrono",
        "As keras, then LSTM forget bias b_f ~ log(U[1, tmax−1]) and input bias b_i = −b_f; "
        "GRU update bias b_z ~ log(U[1, tmax−1]); written into bias_ih, bias_hh stays 0.",
        (*_KERAS_RULES, "bias_ih.f=chrono({tmax})", "bias_ih.i=chrono({tmax}, negate=true)",
         "bias_ih.z=chrono({tmax})"),
        "Tallec & Ollivier 2018, Can recurrent neural networks warp time? (ICLR)",
        params=(("tmax", None),),
        cells=frozenset({"gru", "lstm"}),
        needs_bias=True,
    ),
    Scheme(
        "xlstm",
        "xLSTM's own init. sLSTM: gate projections small_init N(0, 2/(5E)), recurrent kernel 0, biases 0 but the "
        "forget gate's power law in the block index (powerlaw_blockdependent). mLSTM: gate weights 0, input bias "
        "N(0, 0.1²), forget bias linspace(3, 6) over heads. Other xlstm options as rules: "
        "bias_ih.f@slstm=linspace(3, 6) (small_init), bias_ih@slstm=pytorch and weight_hh@slstm=pytorch (standard).",
        ("weight_ih@slstm=small_init", "weight_hh@slstm=zeros", "bias_ih@slstm=zeros",
         "bias_ih.f@slstm=powerlaw_forget", "weight_ih@mlstm=zeros", "bias_ih.i@mlstm=normal(0.0, 0.1)",
         "bias_ih.f@mlstm=linspace(3.0, 6.0)"),
        "Beck et al. 2024, xLSTM: Extended Long Short-Term Memory (NeurIPS); NX-AI xlstm 2.x sLSTMLayer/mLSTMCell "
        "reset_parameters; small_init: Nguyen & Salazar 2019",
        cells=frozenset(),
        families=frozenset({"slstm", "mlstm"}),
    ),
    Scheme(
        "griffin",
        "Griffin's RG-LRU: input and recurrence gate weights N(0, scale/bw) per head (bw = the head's width), "
        "biases 0, recurrence radius a = σ(−p) with a² ~ U(min_rad², max_rad²) (the ring init).",
        ("weight_ih@rglru=fan_in_normal({scale})", "bias_ih@rglru=zeros",
         "radius@rglru=rglru_radius({min_rad}, {max_rad})"),
        "De et al. 2024, Griffin: Mixing Gated Linear Recurrences with Local Attention (arXiv:2402.19427); "
        "google-deepmind/recurrentgemma rnn_param_init; transformers RecurrentGemma _init_weights",
        params=(("scale", 0.01), ("min_rad", 0.9), ("max_rad", 0.999)),
        cells=frozenset(),
        families=frozenset({"rglru"}),
    ),
    Scheme(
        "xlstm-7b",
        "xLSTM-7B's mLSTM gates: input, forget and output gate weights 0, input bias −10, forget bias "
        "linspace(3, 6) over heads.",
        ("weight_ih@hf-mlstm=zeros", "bias_ih@hf-mlstm=zeros", "bias_ih.i@hf-mlstm=constant(-10.0)",
         "bias_ih.f@hf-mlstm=linspace(3.0, 6.0)"),
        "Beck et al. 2025, xLSTM 7B: A Recurrent LLM for Fast and Efficient Inference; transformers "
        "xLSTMPreTrainedModel._init_weights",
        cells=frozenset(),
        families=frozenset({"hf-mlstm"}),
    ),
):
    register_scheme(_scheme)
