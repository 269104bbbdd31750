"""The quantities a user reasons about in modern recurrences, read from their values: the sLSTM forget bias per head
(and the block of the stack its power law belongs to), the mLSTM gate biases over heads, the RG-LRU recurrence
a = σ(−p) and whether a² is uniform; and the mistakes they reveal (gate names taken for roles, a power law written
for another block)."""

from __future__ import annotations

import numpy as np

from ..layouts.discovery import Block, Layer
from .cache import _Cache
from .checks import check_uniform_fit
from .formatting import _fmt
from .stats import as_float64, quiet_floats

POWERLAW_TOLERANCE = 0.01  # in r: the block position a power law belongs to, estimated from its exponent


def _bias_blocks(layer: Layer, gate: str) -> list[Block]:
    return [block for block in layer.blocks("bias_ih") if block.gate == gate] if "bias_ih" in layer.params else []


def _values(cache: _Cache, block: Block) -> np.ndarray:
    return as_float64(cache.block(block.name, block.start, block.stop)).reshape(-1)


@quiet_floats
def powerlaw_position(values: np.ndarray, u: float) -> float | None:
    """r of xLSTM's power-law forget bias −(−5 + 12·(k/(n − 1))^(0.3 + 1.3·r)) that `values` follow, or None when
    they follow none (or n < 3: two values are 5 and −7 for every r)."""
    n = values.size
    if n < 3 or not np.isfinite(values).all():
        return None
    slack = 8 * max(u, 2.0**-23) * max(1.0, float(np.abs(values).max()))
    if abs(values[0] - 5.0) > slack or abs(values[-1] + 7.0) > slack:
        return None
    x = np.arange(1, n - 1) / (n - 1)
    share = (5.0 - values[1:-1]) / 12.0
    if not (share > 0).all():
        return None
    exponent = float(np.median(np.log(share) / np.log(x)))
    expected = -(-5.0 + 12.0 * x**exponent)
    if float(np.abs(expected - values[1:-1]).max()) > slack:
        return None
    return (exponent - 0.3) / 1.3


def _expected_position(layer: Layer) -> float:
    return layer.block_index / (layer.num_blocks - 1) if layer.num_blocks > 1 else 0.0


def _range(values: np.ndarray) -> str:
    return f"{_fmt(float(values[0]))} → {_fmt(float(values[-1]))}" if values.size else "empty"


def _sigmoid_range(values: np.ndarray) -> str:
    gates = 1 / (1 + np.exp(-values))
    return f"σ {float(gates.min()):.3f}–{float(gates.max()):.3f}"


def _slstm_notes(layer: Layer, cache: _Cache) -> list[str]:
    notes = []
    heads = _bias_blocks(layer, "f")
    if not heads:
        return notes
    u = cache.u(heads[0].name)
    described: dict[str, list[int]] = {}
    for index, block in enumerate(heads):
        values = _values(cache, block)
        position = powerlaw_position(values, u)
        if position is not None:
            block_at = position * (layer.num_blocks - 1)
            shape = (f"power law, r = {abs(position) if abs(position) < 0.005 else position:.2f}"
                     + (f" (block {round(block_at)} of {layer.num_blocks})"
                        if layer.num_blocks > 1 and abs(block_at - round(block_at)) < POWERLAW_TOLERANCE * 10 else ""))
        else:
            shape = "not xLSTM's power law"
        text = f"{_range(values)} over {values.size} dims, {shape}"
        described.setdefault(text, []).append(block.head if block.head is not None else index)
    for text, head_list in described.items():
        which = "every head" if len(head_list) == len(heads) and len(heads) > 1 else \
            ("head " if len(head_list) == 1 else "heads ") + ", ".join(map(str, head_list))
        notes.append(f"forget bias ({which}): {text}")
    return notes


def _over_heads_notes(layer: Layer, cache: _Cache) -> list[str]:
    notes = []
    for gate, word in (("i", "input"), ("f", "forget")):
        for block in _bias_blocks(layer, gate):
            values = _values(cache, block)
            if values.size:
                notes.append(f"{word} bias over {values.size} heads: {_fmt(float(values.min()))} … "
                             f"{_fmt(float(values.max()))} ({_sigmoid_range(values) if gate == 'f' else 'exp gate'})")
    return notes


@quiet_floats
def _rglru_notes(layer: Layer, cache: _Cache) -> list[str]:
    if "radius" not in layer.params:
        return []
    block = layer.blocks("radius")[0]
    p = _values(cache, block)
    if p.size == 0 or not np.isfinite(p).all():
        return []
    radius = 1 / (1 + np.exp(p))
    squared = radius**2
    low, high = float(radius.min()), float(radius.max())
    fit = check_uniform_fit(squared)
    verdict = ("too few values to tell whether a² is uniform" if not fit.decided
               else f"a² {'looks uniform' if fit.ok else 'is NOT uniform'} on [{low**2:.4f}, {high**2:.4f}] (KS)")
    return [f"recurrence a = σ(−p): {low:.4f} … {high:.4f} (a⁸ per step at full gate: {low**8:.3f} … "
            f"{high**8:.3f}); {verdict}"]


def recurrence_notes(layer: Layer, cache: _Cache) -> tuple[str, ...]:
    """What a per-head cell's gate biases and recurrence mean, as lines for inspect."""
    if layer.family == "slstm":
        return tuple(_slstm_notes(layer, cache))
    if layer.family in ("mlstm", "hf-mlstm"):
        return tuple(_over_heads_notes(layer, cache))
    if layer.family == "rglru":
        return tuple(_rglru_notes(layer, cache))
    return ()


def slstm_mistakes(layer: Layer, cache: _Cache) -> list[tuple[str, str]]:
    """(code, text) of the sLSTM mistakes seen in practice: the forget gate's bias found in the input gate's rows
    (the modules `igate`/`fgate` taken for their roles), and a power law written for another block of the stack."""
    if layer.family != "slstm":
        return []
    found: list[tuple[str, str]] = []
    forget, inputs = _bias_blocks(layer, "f"), _bias_blocks(layer, "i")
    if not forget:
        return found
    u = cache.u(forget[0].name)
    forget_values = [_values(cache, block) for block in forget]
    input_values = [_values(cache, block) for block in inputs]
    if (all(v.size and not np.any(v) for v in forget_values)
            and any(v.size > 1 and float(v.max() - v.min()) > 0 for v in input_values)):
        found.append(("swapped-gate-names", f"{layer.title}: the input gate's bias varies over the head dims "
                      f"({_range(input_values[0])}) while the forget gate's is 0: a forget bias written into the "
                      "rows of the module named igate? In xlstm's sLSTM `igate` is the FORGET gate's projection "
                      "and `fgate` the input gate's; the bias is stored i, f, z, o by role"))
    positions = [powerlaw_position(values, u) for values in forget_values]
    expected = _expected_position(layer)
    wrong = [p for p in positions if p is not None and abs(p - expected) > POWERLAW_TOLERANCE]
    if wrong:
        block_at = wrong[0] * (layer.num_blocks - 1)
        guess = (f"block {round(block_at)} of {layer.num_blocks}" if layer.num_blocks > 1
                 and abs(block_at - round(block_at)) < 0.1 else f"r = {wrong[0]:.3f}")
        found.append(("forget-bias-block-index", f"{layer.title}: the forget bias is xLSTM's power law of "
                      f"{guess}, but this is block {layer.block_index} of {layer.num_blocks} (r = {expected:.3f}): "
                      "written with the wrong block index or block count"))
    return found

