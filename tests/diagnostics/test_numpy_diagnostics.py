"""The numpy diagnostics (issue 11 §2, §3): the shortcuts they take decide exactly as the definitions do, the
goodness-of-fit tests keep their size and power on blocks larger than their sample, and numpy arrays, ml_dtypes
arrays, the reader's bfloat16 arrays and torch tensors give the same diagnosis."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from rnninit_cli import init_
from rnninit_cli.bfloat16 import BFloat16Array
from rnninit_cli.diagnostics import diagnose
from rnninit_cli.diagnostics.cache import _Cache
from rnninit_cli.diagnostics.checks import GOF_SAMPLE, check_normal_fit, check_uniform_fit, gof_sample
from rnninit_cli.diagnostics.stats import summarize, to_array
from rnninit_cli.errors import RuleError
from rnninit_cli.init.arguments import _check_arguments, _try_arguments
from rnninit_cli.init.schemes import parse_rule

TOLERANCE = 1e-3


def _orthogonal(rows: int, cols: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((max(rows, cols), min(rows, cols))))
    q = q * np.sign(np.diagonal(r))
    return q if rows >= cols else q.T


def _by_definition(matrix: np.ndarray) -> float | None:
    """The gain g with max|G/g² − I| ≤ 1e-3, g² = mean diag G (G = BᵀB tall, BBᵀ wide), from numpy directly."""
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    scale2 = float(np.diagonal(gram).mean())
    if not scale2 > 0:
        return None
    error = float(np.abs(gram / scale2 - np.eye(gram.shape[0])).max())
    return math.sqrt(scale2) if error <= TOLERANCE else None


def _matrices() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    cases = []
    for rows, cols in ((16, 16), (48, 16), (16, 48)):
        q = _orthogonal(rows, cols, rows * cols)
        cases += [(f"orthogonal {rows}x{cols}", q), (f"gain 3 {rows}x{cols}", 3 * q),
                  (f"gain 1e-5 {rows}x{cols}", 1e-5 * q), (f"uniform {rows}x{cols}", rng.uniform(-1, 1, (rows, cols)))]
        # near the tolerance on both sides: a column (row) norm off by ±(1 ± 1e-3)·tolerance, the rest orthogonal
        for factor in (0.999, 1.001, 0.5, 2.0):
            bent = q.copy()
            stretch = math.sqrt(1 + factor * TOLERANCE * 2)
            if rows >= cols:
                bent[:, 0] *= stretch
            else:
                bent[0] *= stretch
            cases.append((f"one norm ×(1 + {factor}·2e-3) {rows}x{cols}", bent))
        # off-diagonal only: equal norms, two columns (rows) tilted towards each other
        tilted = q.copy()
        angle = 0.9 * TOLERANCE
        if rows >= cols:
            tilted[:, 0], tilted[:, 1] = (math.cos(angle) * q[:, 0] + math.sin(angle) * q[:, 1],
                                          math.cos(angle) * q[:, 1] + math.sin(angle) * q[:, 0])
        else:
            tilted[0], tilted[1] = (math.cos(angle) * q[0] + math.sin(angle) * q[1],
                                    math.cos(angle) * q[1] + math.sin(angle) * q[0])
        cases.append((f"tilted {rows}x{cols}", tilted))
    return cases


@pytest.mark.parametrize(("label", "matrix"), _matrices(), ids=[label for label, _ in _matrices()])
def test_column_norm_shortcut_decides_orthogonality_as_the_gram_matrix_does(label: str, matrix: np.ndarray) -> None:
    expected = _by_definition(matrix)
    for dtype in (np.float64, np.float32):
        stored = matrix.astype(dtype)
        found = _Cache({"w": stored}).orthogonal_gain("w", None, None, TOLERANCE)
        reference = _by_definition(stored.astype(np.float64))
        assert (found is None) == (reference is None), (label, dtype, found, reference)
        if found is not None:
            assert found == pytest.approx(reference, rel=1e-9)
    assert ("orthogonal" in label or "gain" in label) <= (expected is not None), label  # the cases mean something


def test_a_whole_matrix_of_orthogonal_gate_blocks_is_found_per_gate_and_per_matrix() -> None:
    blocks = [_orthogonal(16, 16, seed) for seed in range(3)]
    whole = np.concatenate(blocks)  # WᵀW = 3I: orthogonal with gain √3
    cache = _Cache({"w": whole})
    assert cache.orthogonal_gain("w", None, None, TOLERANCE) == pytest.approx(math.sqrt(3))
    assert all(cache.orthogonal_gain("w", 16 * k, 16 * (k + 1), TOLERANCE) == pytest.approx(1) for k in range(3))


def test_goodness_of_fit_reads_every_kth_value_of_a_large_block() -> None:
    values = np.arange(10 * GOF_SAMPLE + 3, dtype=np.float64)
    sample = gof_sample(values)
    assert sample.size <= GOF_SAMPLE and sample.size > GOF_SAMPLE * 0.9
    steps = np.diff(sample)
    assert steps.min() == steps.max() == 11  # ⌈n / GOF_SAMPLE⌉
    assert gof_sample(values[:100]).size == 100


@pytest.mark.parametrize("seed", range(3))
def test_goodness_of_fit_on_blocks_larger_than_its_sample(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300_000
    assert check_normal_fit(rng.normal(0, 0.02, n)).ok  # misjudged with probability ≤ 1e-6
    assert check_uniform_fit(rng.uniform(-0.03, 0.03, n)).ok
    for heavy in (rng.standard_t(5, n) * 0.02, rng.laplace(0, 0.02, n)):
        assert not check_normal_fit(heavy).ok
        assert not check_uniform_fit(heavy).ok
    assert not check_normal_fit(rng.uniform(-1, 1, n)).ok


def test_summary_equals_exact_sums() -> None:
    rng = np.random.default_rng(3)
    for values in (rng.normal(0.3, 2.0, 10_001), rng.normal(0, 1, 999) * 1e200, rng.normal(0, 1, 999) * 1e-200):
        summary = summarize(values)
        assert summary.n == values.size and summary.nonfinite == 0
        assert summary.minimum == values.min() and summary.maximum == values.max()
        assert summary.mean == pytest.approx(math.fsum(values) / values.size, rel=1e-12)
        scaled = values / summary.scale
        exact = math.fsum(float(v) * float(v) for v in scaled) / values.size
        assert summary.squares / values.size == pytest.approx(exact, rel=1e-12)  # Σx² itself may exceed float64
    with_nan = np.array([1.0, np.nan, np.inf, -2.0])
    assert summarize(with_nan).nonfinite == 2


def _state(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(12, 20, num_layers=2, bidirectional=True)
    init_(lstm, "keras", seed=1)
    return {name: tensor.detach().to(dtype) for name, tensor in lstm.state_dict().items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_numpy_arrays_and_torch_tensors_give_the_same_diagnosis(dtype: torch.dtype) -> None:
    tensors = _state(dtype)
    forms = [{name: to_array(tensor) for name, tensor in tensors.items()}]
    if dtype == torch.bfloat16:  # what the reader holds (the bits, no ml_dtypes) and what a caller may pass
        forms = [{name: BFloat16Array(tensor.view(torch.int16).numpy().view(np.uint16))
                  for name, tensor in tensors.items()},
                 {name: tensor.float().numpy().astype(ml_dtypes.bfloat16) for name, tensor in tensors.items()}]
        assert np.array_equal(np.asarray(forms[0]["weight_hh_l0"]), tensors["weight_hh_l0"].float().numpy())
    from_torch = diagnose(tensors, geometry=True).as_dict()
    dtype_name = str(dtype).removeprefix("torch.")
    for arrays in forms:
        from_numpy = diagnose(arrays, geometry=True).as_dict()
        assert from_numpy == from_torch
        assert {layer["scheme"]["primary"] for layer in from_numpy["layers"]} == {"keras"}
        assert {block["dtype"] for layer in from_numpy["layers"] for block in layer["blocks"]} == {dtype_name}


@pytest.mark.parametrize("text", ["uniform(1, 0)", "normal(0, -1)", "chrono(2)", "chrono(1.5)",
                                  "kaiming_uniform(mode=fan_x)", "kaiming_normal(nonlinearity=swish)"])
def test_arguments_no_draw_can_use_are_refused_without_torch_as_by_drawing(text: str) -> None:
    rule = parse_rule(f"weight_ih={text}")
    with pytest.raises(RuleError):
        _try_arguments(rule)
    with pytest.raises(RuleError):
        _check_arguments(rule)


@pytest.mark.parametrize("text", ["uniform(0, 0)", "normal(0, 0)", "chrono(2.5)", "kaiming_uniform(mode=fan_out)",
                                  "orthogonal(gain=2)", "constant(1)"])
def test_arguments_a_draw_accepts_pass_without_torch_too(text: str) -> None:
    rule = parse_rule(f"weight_ih={text}")
    _try_arguments(rule)
    _check_arguments(rule)


def test_summary_over_several_chunks_equals_exact_sums() -> None:
    from rnninit_cli.diagnostics.stats import CHUNK

    rng = np.random.default_rng(11)
    values = (1e4 + rng.normal(0, 1e-3, 2 * CHUNK + CHUNK // 2 + 7)).astype(np.float32)  # |mean| ≫ std
    summary = summarize(values)
    exact = values.astype(np.float64)
    mean = math.fsum(exact) / exact.size
    assert summary.mean == pytest.approx(mean, rel=1e-15)
    spread = math.sqrt(math.fsum((float(v) - mean) ** 2 for v in exact) / exact.size)
    assert summary.moments()[1] == pytest.approx(spread, rel=1e-9)
    assert (summary.minimum, summary.maximum) == (float(exact.min()), float(exact.max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.int64, np.bool_, np.complex64],
                         ids=str)
def test_float64_chunks_into_a_buffer_are_the_fresh_chunks(dtype: type) -> None:
    """Converted into a reused buffer (what summarize and diff do), each chunk holds exactly the values a fresh
    conversion gives (astype), and the summaries agree bit for bit with one built chunk by chunk."""
    from rnninit_cli.diagnostics.stats import CHUNK, Accumulator, float64_chunks

    values = (np.random.default_rng(3).normal(0, 10, CHUNK + 1234)).astype(dtype)
    buffer = np.empty(CHUNK)
    fresh = [chunk.copy() for chunk in float64_chunks(values)]
    reused = [chunk.copy() for chunk in float64_chunks(values, buffer)]
    real = values.real if np.iscomplexobj(values) else values
    assert [chunk.tobytes() for chunk in reused] == [chunk.tobytes() for chunk in fresh]
    assert np.concatenate(fresh).tobytes() == real.astype(np.float64).tobytes()
    accumulator = Accumulator()
    for chunk in fresh:
        accumulator.add(chunk)
    assert accumulator.summary() == summarize(values)


def test_results_do_not_depend_on_the_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    from rnninit_cli.diagnostics import cache, comparison
    from rnninit_cli.diagnostics import diff as diff_tensors

    before = _state(torch.float32)
    after = {name: tensor * (1 + (index % 3 == 0)) for index, (name, tensor) in enumerate(before.items())}
    results = []
    for workers in (1, 2, 4):
        monkeypatch.setattr(cache, "worker_count", lambda workers=workers: workers)
        monkeypatch.setattr(comparison, "worker_count", lambda workers=workers: workers)
        results.append((diagnose(before, geometry=True).as_dict(), diff_tensors(before, after).as_dict()))
    assert results[0] == results[1] == results[2]
    assert results[0][1]["changed_blocks"] > 0


def test_a_whole_summary_merged_from_its_blocks_equals_one_read_of_the_whole() -> None:
    rng = np.random.default_rng(5)
    whole = np.concatenate([rng.normal(mean, 0.1, (30, 7)) for mean in (0.0, 5.0, -3.0)]).astype(np.float32)
    whole[4, 2] = np.nan
    cache = _Cache({"w": whole})
    for start in (0, 30, 60):
        cache.summary("w", start, start + 30)
    merged, direct = cache.summary("w"), summarize(whole)
    assert merged is not direct and (merged.n, merged.nan, merged.nonfinite) == (direct.n, direct.nan, direct.nonfinite)
    assert (merged.minimum, merged.maximum) == (direct.minimum, direct.maximum)
    for field in ("total", "squares", "centred"):
        assert getattr(merged, field) == pytest.approx(getattr(direct, field), rel=1e-12), field


def test_the_cache_forgets_a_parameter_whole_and_merges_its_blocks_by_name() -> None:
    """Blocks are found, and forgotten, through the index by name (10,000 layers: no scan of the whole cache):
    after `forget` nothing of the parameter is left, the other parameter's entries stay, and the whole parameter's
    summary merged from its blocks equals the one computed from its values."""
    from rnninit_cli.diagnostics.cache import _Cache
    from rnninit_cli.diagnostics.stats import summarize

    rng = np.random.default_rng(3)
    tensors = {"a.weight_hh": rng.standard_normal((8, 4)).astype(np.float32),
               "b.weight_hh": rng.standard_normal((8, 4)).astype(np.float32)}
    cache = _Cache(tensors)
    for name in tensors:
        for start in (0, 4):
            cache.summary(name, start, start + 4)
        cache.gram(name, 0, 4)
    merged = cache.summary("a.weight_hh")
    direct = summarize(tensors["a.weight_hh"])
    assert (merged.n, merged.minimum, merged.maximum) == (direct.n, direct.minimum, direct.maximum)
    assert np.isclose(merged.total, direct.total)
    cache.forget(["a.weight_hh"])
    stores = (cache._summaries, cache._grams, cache._diagonals, cache._gains)
    assert not [key for store in stores for key in store if "a.weight_hh" in str(key)]
    assert all(not store.keys_of("a.weight_hh") for store in stores)
    kept = ("b.weight_hh", 0, 4)
    assert kept in cache._summaries and kept in cache._summaries.keys_of("b.weight_hh")
