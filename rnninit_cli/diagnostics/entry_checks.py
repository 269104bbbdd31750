"""Checking planned entries (shared by verify and scheme recognition): whether each planned block is consistent
with its initializer, arguments and scope."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..init.initializers import TRUNCATED_NORMAL_STD, _gain
from ..init.planning import PlanEntry
from ..init.schemes import KEEP
from ..layouts.discovery import article
from .cache import _Cache
from .checks import (
    ALPHA,
    MIN_SAMPLES,
    Verdict,
    _chi2_bounds,
    _nonfinite,
    check_chrono,
    check_constant,
    check_identity,
    check_normal,
    check_radius,
    check_truncated_normal,
    check_uniform,
    check_values,
    orthogonal_tolerance,
)
from .formatting import _fmt
from .orthogonality import orthogonality_decidable
from .stats import Summary, as_float64, quiet_floats


@dataclass(frozen=True)
class _Scope:
    """The fans of the tensor an initializer saw: the block (per gate) or the whole parameter (per matrix)."""

    fan_in: int
    fan_out: int


def _scope(entry: PlanEntry, cache: _Cache) -> _Scope:
    whole = cache.whole(entry.name)
    rows = whole.shape[0] if entry.per == "matrix" else entry.stop - entry.start
    return _Scope(int(whole.shape[1]), int(rows))


def _check_energy(summary: Summary, gain: float, rows: int, u: float, alpha: float) -> Verdict:
    """Rows of a per-matrix orthogonal Q (R rows) carry energy E[q²] = g²/R: χ² bound on Σq²·R/g² (the sphere
    and orthogonality constraints make the true spread smaller than χ², so the bound is conservative)."""
    n = summary.n
    ratio = summary.scale / gain
    q = summary.squares * ratio * ratio * rows  # from the scaled sum: squares of 1e200 values would overflow
    low, high = _chi2_bounds(n, alpha)
    decided = n >= MIN_SAMPLES
    if q < low * (1 - 4 * u) or q > high * (1 + 4 * u):
        rms = math.sqrt(q / n) * gain / math.sqrt(rows)
        return Verdict(False, decided, f"rms {_fmt(rms)}, expected {_fmt(gain / math.sqrt(rows))} for a gate "
                                       f"block of {article(f'{rows}-row')} orthogonal matrix")
    return Verdict(True, decided, "block energy consistent")


def _check_orthogonal_matrix(entry: PlanEntry, group: Sequence[PlanEntry], cache: _Cache, alpha: float) -> Verdict:
    """Per-matrix orthogonal: the rows drawn together must be (a slice of) g·Q with orthonormal columns or rows."""
    gain = float(dict(entry.args).get("gain", 1.0))
    whole = cache.whole(entry.name)
    rows, cols = whole.shape
    tolerance = orthogonal_tolerance(cache.dtype(entry.name))
    block = cache.block(entry.name, entry.start, entry.stop)
    summary = cache.summary(entry.name, entry.start, entry.stop)
    if (bad := _nonfinite(block, summary)) is not None:
        return bad
    if gain == 0:
        return check_constant(block, 0.0, summary=summary)
    covered = sum(e.stop - e.start for e in group)
    if covered == rows:
        whole_verdict = cache.orthogonal_verdict(entry.name, None, None, gain, tolerance)
        if whole_verdict.ok:
            return Verdict(True, whole_verdict.decided, f"whole {entry.kind} {whole_verdict.detail}")
    else:
        whole_verdict = Verdict(True, False, "only part of the matrix is planned")
    if rows <= cols:  # wide: rows orthonormal, so every row block is orthogonal on its own
        own = cache.orthogonal_verdict(entry.name, entry.start, entry.stop, gain, tolerance)
        if not own.ok:
            return Verdict(False, True, f"rows of a wide orthogonal matrix: {own.detail}")
    else:
        own = _check_energy(summary, gain, rows, cache.u(entry.name), alpha)
        if not own.ok:
            return own
    if not whole_verdict.ok:
        others = [e for e in group if e is not entry]
        peers_ok = all(_block_energy_ok(e, gain, rows, cols, tolerance, cache, alpha) for e in others)
        if peers_ok:  # nothing singles out another block: this one shares the blame
            return Verdict(False, True, f"whole {entry.kind} {whole_verdict.detail}")
        return Verdict(True, own.decided, f"block consistent; whole {entry.kind} {whole_verdict.detail} "
                                          "because of another block")
    return own


def _block_energy_ok(entry: PlanEntry, gain: float, rows: int, cols: int, tolerance: float, cache: _Cache,
                     alpha: float) -> bool:
    if rows <= cols:
        return cache.orthogonal_verdict(entry.name, entry.start, entry.stop, gain, tolerance).ok
    summary = cache.summary(entry.name, entry.start, entry.stop)
    return summary.nonfinite == 0 and _check_energy(summary, gain, rows, cache.u(entry.name), alpha).ok


@quiet_floats
def check_entry(entry: PlanEntry, tensors: Mapping[str, Any], group: Sequence[PlanEntry] = (), *,
                alpha: float = ALPHA) -> Verdict:
    """Whether the block of `entry` is consistent with its planned initializer, arguments and scope.

    `group`: the entries of the same parameter drawn together with it (same rule, per matrix); default the entry.
    `alpha`: the size of each statistical test (a block drawn as planned fails with probability ≤ 7α, see checks).
    """
    return _check_entry(entry, _Cache(tensors), group or (entry,), (), alpha)


def _check_entry(entry: PlanEntry, cache: _Cache, group: Sequence[PlanEntry],
                 chrono_peers: Sequence[PlanEntry], alpha: float = ALPHA) -> Verdict:
    init = entry.initializer
    args = dict(entry.args)
    if init == KEEP:
        return Verdict(True, True, "kept as it was")
    block = cache.block(entry.name, entry.start, entry.stop)
    summary = cache.summary(entry.name, entry.start, entry.stop)
    u = cache.u(entry.name)
    if (bad := _nonfinite(block, summary)) is not None:
        return bad
    if block.size == 0:  # e.g. a (rows, 0) weight: nothing to check, and min()/max() would fail
        return Verdict(True, True, "empty")
    if init in ("zeros", "ones", "constant"):
        value = {"zeros": 0.0, "ones": 1.0}.get(init, float(args.get("value", 0.0)))
        return check_constant(block, value, u, summary=summary)
    if init == "identity":
        return check_identity(block, float(args.get("scale", 1.0)), u, summary=summary)
    if init == "chrono":
        return _check_chrono_entry(entry, block, u, cache, chrono_peers, alpha)
    if init == "orthogonal":
        if entry.per == "matrix":
            return _check_orthogonal_matrix(entry, group, cache, alpha)
        tolerance = orthogonal_tolerance(cache.dtype(entry.name))
        return cache.orthogonal_verdict(entry.name, entry.start, entry.stop, float(args["gain"]), tolerance)
    if init in _IID and (structure := _structured(entry, cache, alpha)):
        return Verdict(False, True, f"{structure}; {init} draws i.i.d. values, which never are")
    if init in _LAWS:
        return _check_law(block, _law(entry, cache), u, summary=summary, alpha=alpha)
    if init == "linspace":
        start, end = float(args["start"]), float(args["end"])
        return check_values(block, linspace_values(start, end, block.shape[0]), u,
                            f"linspace({_fmt(start)}, {_fmt(end)})", max(abs(start), abs(end)))
    if init == "powerlaw_forget":
        expected = powerlaw_forget_values(block.shape[0], int(args["block_index"]), int(args["num_blocks"]))
        return check_values(block, expected, u, f"the power law of block {args['block_index']} of "
                                                f"{args['num_blocks']}", 12.0)  # x = 5 − 12·t: terms up to 12
    if init == "rglru_radius":
        return check_radius(block, float(args["min_rad"]), float(args["max_rad"]), u, alpha=alpha)
    if init in ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "lecun_normal"):
        fans = _scope(entry, cache)
        if init == "xavier_uniform":
            bound = float(args["gain"]) * math.sqrt(6 / (fans.fan_in + fans.fan_out))
            return check_uniform(block, -bound, bound, u, summary=summary, alpha=alpha)
        if init == "xavier_normal":
            std = float(args["gain"]) * math.sqrt(2 / (fans.fan_in + fans.fan_out))
            return check_normal(block, 0.0, std, u, summary=summary, alpha=alpha)
        if init == "lecun_normal":
            scale = math.sqrt(1 / fans.fan_in) / TRUNCATED_NORMAL_STD
            return check_truncated_normal(block, scale, u, summary=summary, alpha=alpha)
        fan = fans.fan_in if args["mode"] == "fan_in" else fans.fan_out
        gain = _gain(str(args["nonlinearity"]), float(args["a"]))
        if init == "kaiming_uniform":
            bound = gain * math.sqrt(3 / fan)
            return check_uniform(block, -bound, bound, u, summary=summary, alpha=alpha)
        return check_normal(block, 0.0, gain / math.sqrt(fan), u, summary=summary, alpha=alpha)
    return Verdict(True, False, f"no check is known for initializer {init!r}")


_IID = ("uniform", "normal", "pytorch", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
        "lecun_normal", "small_init", "fan_in_normal")


def linspace_values(start: float, end: float, size: int) -> np.ndarray:
    """start + (end − start)·k/(n − 1), k = 0 … n − 1 (one value: start), in float64."""
    return np.linspace(start, end, size) if size > 1 else np.full(size, start)


def powerlaw_forget_values(size: int, block_index: int, num_blocks: int) -> np.ndarray:
    """−(−5 + 12·(k/(n − 1))^(0.3 + 1.3·r)), r = block_index/(num_blocks − 1), in float64 (one value: 5)."""
    ratio = block_index / (num_blocks - 1) if num_blocks > 1 else 0.0
    position = np.arange(size) / (size - 1) if size > 1 else np.zeros(size)
    return -(-5.0 + 12.0 * position ** (0.3 + 1.3 * ratio))


def _structured(entry: PlanEntry, cache: _Cache, alpha: float = ALPHA) -> str:
    """'block is orthogonal' / 'whole matrix is orthogonal' when G ≈ g²I for a Gram matrix of size ≥ 3, else ''.

    An i.i.d. continuous draw meets the k(k+1)/2 − 1 ≥ 5 constraints of scaled orthogonality within 1e-3 with
    negligible probability (≈ 1e-3 per constraint), so an orthogonal block rules out every i.i.d. initializer
    (e.g. an orthogonal 16×16 block has the variance 1/16 of lecun_normal and could pass its moment tests).
    Each of the two looks is claimed only where `orthogonality_decidable` puts the chance of such a meeting below
    `alpha`: they are two of a block's TESTS_PER_BLOCK tests.
    """
    tolerance = orthogonal_tolerance(cache.dtype(entry.name))
    for start, stop, what in ((entry.start, entry.stop, "block is orthogonal"),
                              (None, None, "whole matrix is orthogonal")):
        values = cache.whole(entry.name)[start:stop]
        if values.ndim == 2 and min(values.shape) >= 3 and orthogonality_decidable(values.shape, tolerance, alpha) \
                and cache.orthogonal_gain(entry.name, start, stop, tolerance) is not None:
            return what
    return ""


def _check_chrono_entry(entry: PlanEntry, block: np.ndarray, u: float, cache: _Cache,
                        peers: Sequence[PlanEntry], alpha: float) -> Verdict:
    """Range/uniformity of exp(±b), then b_i = −b_f: chrono blocks of one parameter share their draws."""
    args = dict(entry.args)
    tmax, negate = float(args["tmax"]), bool(args.get("negate", False))
    block = as_float64(block)
    verdict = check_chrono(block, tmax, negate, u, alpha=alpha)
    if not verdict.ok:
        return verdict
    sign = -1.0 if negate else 1.0
    for peer in peers:
        if peer is entry or peer.stop - peer.start != entry.stop - entry.start:
            continue
        peer_sign = -1.0 if dict(peer.args).get("negate", False) else 1.0
        other = as_float64(cache.block(peer.name, peer.start, peer.stop))
        error = float(np.abs(sign * block - peer_sign * other).max())
        if not error <= 2 * u * max(1.0, math.log(tmax)):
            relation = "−" if sign != peer_sign else ""
            return Verdict(False, True, f"gate {entry.gate} ≠ {relation}gate {peer.gate} (max diff {_fmt(error)}): "
                                        "chrono draws once per unit, b_i = −b_f")
        break
    return verdict


# i.i.d. laws their arguments set: checked alone, and pooled over the heads of one rule
_LAWS = ("small_init", "fan_in_normal", "normal", "uniform", "pytorch")


def _law(entry: PlanEntry, cache: _Cache) -> tuple[str, float, float]:
    """("uniform", low, high) or ("normal", mean, std) of an entry whose initializer is in `_LAWS`:
    U(a, b); N(mean, std); PyTorch's U(±1/√h); small_init N(0, √(2/(5·d))); fan_in_normal N(0, √(scale/fan_in))."""
    args = dict(entry.args)
    if entry.initializer == "uniform":
        return "uniform", float(args["a"]), float(args["b"])
    if entry.initializer == "pytorch":
        bound = 1 / math.sqrt(int(args["hidden_size"]))
        return "uniform", -bound, bound
    if entry.initializer == "small_init":
        return "normal", 0.0, math.sqrt(2 / (5 * int(args["input_size"])))
    if entry.initializer == "fan_in_normal":
        return "normal", 0.0, math.sqrt(float(args["scale"]) / _scope(entry, cache).fan_in)
    return "normal", float(args["mean"]), float(args["std"])


def _check_law(values: Any, law: tuple[str, float, float], u: float, **options: Any) -> Verdict:
    kind, first, second = law
    return (check_uniform if kind == "uniform" else check_normal)(values, first, second, u, **options)


def pooled_groups(entries: Sequence[PlanEntry]) -> list[list[int]]:
    """Positions of the per-head blocks one rule drew with the same arguments in one parameter (two or more): small
    heads test weakly one by one (64 values cannot tell a σ √2 too large), their union tests well."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, entry in enumerate(entries):
        if entry.head is not None and entry.per == "gate" and entry.initializer in _LAWS:
            key = (entry.name, entry.rule, entry.initializer, entry.args, entry.stop - entry.start)
            groups.setdefault(key, []).append(index)
    return [group for group in groups.values() if len(group) > 1]


@quiet_floats
def check_pooled(group: Sequence[PlanEntry], cache: _Cache, alpha: float = ALPHA) -> Verdict:
    """The blocks of a pooled group (see `pooled_groups`) as one i.i.d. sample of their initializer."""
    first = group[0]
    values = np.concatenate([as_float64(cache.block(e.name, e.start, e.stop)).reshape(-1) for e in group])
    verdict = _check_law(values, _law(first, cache), cache.u(first.name), alpha=alpha)
    if verdict.ok:
        return verdict
    return Verdict(False, True, f"its {len(group)} head blocks of {first.rule} pooled: {verdict.detail}")


def _groups(entries: Sequence[PlanEntry]) -> tuple[dict[int, list[PlanEntry]], dict[int, list[PlanEntry]]]:
    """Per entry: the entries drawn as one matrix with it (same parameter and rule, per matrix), and its chrono
    peers (chrono entries of the same parameter and tmax)."""
    by_matrix: dict[tuple[str, str], list[PlanEntry]] = {}
    by_chrono: dict[tuple[str, float], list[PlanEntry]] = {}
    for entry in entries:
        if entry.per == "matrix":
            by_matrix.setdefault((entry.name, entry.rule), []).append(entry)
        if entry.initializer == "chrono":
            by_chrono.setdefault((entry.name, float(dict(entry.args)["tmax"])), []).append(entry)
    matrix = {id(e): group for group in by_matrix.values() for e in group}
    chrono = {id(e): group for group in by_chrono.values() for e in group}
    return matrix, chrono


def _check_all(entries: Sequence[PlanEntry], cache: _Cache, alpha: float = ALPHA) -> Iterator[Verdict]:
    """Each entry's verdict, in order, as it is decided (a caller can report progress between them); `alpha`: the
    size of each statistical test."""
    matrix, chrono = _groups(entries)
    return (_check_entry(e, cache, matrix.get(id(e), [e]), chrono.get(id(e), []), alpha) for e in entries)


def _first_failure(entries: Sequence[PlanEntry], cache: _Cache) -> tuple[PlanEntry | None, Verdict | None, bool]:
    """(the first entry whose check fails and its verdict, or None, None; whether every verdict up to there was
    decided): stops at the first failure, as scheme recognition needs no more."""
    matrix, chrono = _groups(entries)
    decided = True
    for entry in entries:
        verdict = _check_entry(entry, cache, matrix.get(id(entry), [entry]), chrono.get(id(entry), []))
        if not verdict.ok:
            return entry, verdict, decided
        decided = decided and verdict.decided
    return None, None, decided
