"""A rule's arguments: bound to its initializer's parameters (with a layer's sizes where the initializer takes
them), their types checked against the initializer's annotations, tried once before anything is drawn."""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any

from ..errors import RuleError
from ..layouts.discovery import Layer
from .schemes import KEEP, Rule, Value, format_value

if TYPE_CHECKING:

    import torch




def _bind_args(rule: Rule, layer: Layer | None) -> tuple[str, tuple[tuple[str, Value], ...]]:
    """Check `rule`'s initializer and arguments; return (per, bound arguments without per)."""
    if rule.initializer == KEEP:
        if rule.args or rule.kwargs:
            raise RuleError(f"rule {rule}: keep takes no arguments")
        return "gate", ()
    from .initializers import get_initializer

    spec = get_initializer(rule.initializer)
    params = spec.parameters
    user = [name for name in params if name not in spec.context]
    if len(rule.args) > len(user):
        raise RuleError(f"rule {rule}: {spec.name} takes at most {len(user)} positional argument(s) "
                        f"({', '.join(user) or 'none'})")
    given = dict(zip(user, rule.args, strict=False))
    for key, value in rule.kwargs:
        if key not in user:
            valid = ", ".join(user) or "no arguments"
            raise RuleError(f"rule {rule}: {spec.name} has no argument {key!r}; it takes {valid}")
        if key in given:
            raise RuleError(f"rule {rule}: argument {key!r} given twice")
        given[key] = value
    per = str(given.pop("per", "gate"))
    if per not in ("gate", "matrix"):
        raise RuleError(f"rule {rule}: per must be gate or matrix, got {per!r}")
    bound = {}
    for key in user:
        if key == "per":
            continue
        default = params[key]
        if key not in given and default is inspect.Parameter.empty:
            raise RuleError(f"rule {rule}: {spec.name} needs argument {key!r}")
        bound[key] = _check_type(rule, key, given.get(key, default), spec.annotations.get(key))
    if layer is not None:
        bound.update({key: getattr(layer, key) for key in spec.context})
    return per, tuple(bound.items())



def _try_arguments(rule: Rule) -> None:
    """Run the rule's initializer once on a tiny block, so that arguments it rejects (chrono's
    tmax <= 2, an unknown kaiming mode) fail here, before any tensor is written."""
    if rule.initializer == KEEP:
        return
    import torch

    from .initializers import get_initializer

    spec = get_initializer(rule.initializer)
    _, args = _bind_args(rule, None)
    context = dict.fromkeys(spec.context, 1)
    probe = torch.empty((2,) if spec.ndim == 1 else (2, 2))
    _call_initializer(spec.function, f"rule {rule}", probe, **dict(args), **context, generator=torch.Generator())



def _check_arguments(rule: Rule) -> None:
    """The argument errors `_try_arguments` finds by drawing, found without torch: non-finite numbers, a > b for
    uniform, a negative std for normal, tmax ≤ 2 for chrono (plus the initializer's own checks of names)."""
    if rule.initializer == KEEP:
        return
    from .initializers import _gain, get_initializer

    spec = get_initializer(rule.initializer)
    args = dict(_bind_args(rule, None)[1])
    for key, value in args.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise RuleError(f"rule {rule}: {key} must be a finite number, got {format_value(value)}; change the rule")
    problem = ""
    largest = 3.4028234663852886e38  # float32's: the draws are made in float32 (apply's probe refuses beyond it)
    if spec.name == "uniform" and float(args["a"]) > float(args["b"]):
        problem = f"a = {format_value(args['a'])} > b = {format_value(args['b'])}"
    elif spec.name == "uniform" and max(abs(float(args["a"])), abs(float(args["b"]))) > largest:
        problem = "a bound beyond float32's range, in which the values are drawn"
    elif spec.name == "constant" and abs(float(args["value"])) > largest:
        problem = f"value = {format_value(args['value'])} beyond float32's range, in which the values are drawn"
    elif spec.name in ("xavier_uniform", "xavier_normal") and float(args["gain"]) < 0:
        problem = f"gain = {format_value(args['gain'])} < 0 (a negative bound or standard deviation)"
    elif spec.name == "xavier_uniform" and float(args["gain"]) * math.sqrt(1.5) > largest:  # as the 2×2 probe
        problem = f"gain = {format_value(args['gain'])} puts the bound beyond float32's range"
    elif spec.name == "chrono" and float(args["tmax"]) - 1 > largest:
        problem = f"tmax = {format_value(args['tmax'])} beyond float32's range, in which the values are drawn"
    elif spec.name == "normal" and float(args["std"]) < 0:
        problem = f"std = {format_value(args['std'])} < 0"
    elif spec.name == "chrono" and not float(args["tmax"]) > 2:
        problem = f"chrono needs tmax > 2, got {format_value(args['tmax'])}"
    elif spec.name == "fan_in_normal" and float(args["scale"]) < 0:
        problem = f"scale = {format_value(args['scale'])} < 0"
    elif spec.name == "rglru_radius" and not 0 < float(args["min_rad"]) <= float(args["max_rad"]) < 1:
        problem = (f"rglru_radius needs 0 < min_rad ≤ max_rad < 1, got {format_value(args['min_rad'])} and "
                   f"{format_value(args['max_rad'])}")
    elif spec.name in ("kaiming_uniform", "kaiming_normal"):
        _gain(str(args["nonlinearity"]), float(args["a"]))  # RuleError for an unknown nonlinearity
        if args["mode"] not in ("fan_in", "fan_out"):
            problem = f"mode must be fan_in or fan_out, got {format_value(args['mode'])}"
    if problem:
        raise RuleError(f"rule {rule}: {problem}; change the rule")



def _call_initializer(function: Any, what: str, values: torch.Tensor, **kwargs: Any) -> None:
    """Run an initializer; arguments torch itself rejects (uniform(1, 0), normal(0, -1), bounds beyond float32)
    become a RuleError naming the rule instead of an internal error."""
    try:
        function(values, **kwargs)
    except (RuntimeError, ValueError, OverflowError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RuleError(f"{what}: torch rejects these arguments ({reason}); change the rule") from None



def _check_type(rule: Rule, key: str, value: Value, annotation: str | None) -> Value:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation in ("float", "int") and not is_number:
        raise RuleError(f"rule {rule}: {key} must be a number, got {format_value(value)}")
    if annotation == "bool" and not isinstance(value, bool):
        raise RuleError(f"rule {rule}: {key} must be true or false, got {format_value(value)}")
    if annotation == "str" and not isinstance(value, str):
        raise RuleError(f"rule {rule}: {key} must be a name, got {format_value(value)}")
    return value



def _check_dims(rule: Rule) -> None:
    if rule.initializer == KEEP:
        return
    from .initializers import get_initializer

    spec = get_initializer(rule.initializer)
    if spec.ndim == 2 and any(k.startswith("bias") or k == "radius" for k in rule.kinds):
        raise RuleError(f"rule {rule}: {spec.name} needs a 2-D weight block; biases and radii are 1-D")
    if spec.ndim == 1 and any(k.startswith("weight") for k in rule.kinds):
        raise RuleError(f"rule {rule}: {spec.name} is for biases; weights are 2-D")
