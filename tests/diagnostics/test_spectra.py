"""inspect --wide on large blocks (issue 22): extreme singular values by Lanczos, checked against numpy's SVD with the
accuracy `spectra` states, and the orthogonality error from column norms, checked against the Gram matrix."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from rnninit_cli import init_
from rnninit_cli.diagnostics import diagnose
from rnninit_cli.diagnostics.blocks import EXACT_SIDE
from rnninit_cli.diagnostics.orthogonality import (
    FAR_FROM_ORTHOGONAL,
    LowerBound,
    error_from_diagonal,
    gram_diagonal,
    rounding_level,
)
from rnninit_cli.diagnostics.spectra import ACCURACY, extreme_singular_values
from rnninit_cli.diagnostics.stats import safe_scale

NOISE_UNITS = 8.0  # spectra's stated noise of a product with the Gram operator, in unit roundoffs · √size · ‖G‖


def _orthogonal(rows: int, cols: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((max(rows, cols), min(rows, cols))))
    q = q * np.sign(np.diagonal(r))
    return q if rows >= cols else q.T


def _with_singular_values(rows: int, cols: int, values: np.ndarray, seed: int) -> np.ndarray:
    """U·diag(values)·Vᵀ with random orthogonal U, V: a matrix whose singular values are known exactly."""
    short = min(rows, cols)
    return (_orthogonal(rows, short, seed) * values) @ _orthogonal(short, cols, seed + 1)


def _gaussian(rows: int, cols: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols))


def _cases() -> dict[str, tuple[np.ndarray, bool]]:
    """name: (matrix, whether its σ min must converge: its smallest singular values stand apart)."""
    generator = np.random.default_rng(7)
    log_spaced = np.logspace(0, -6, 300)
    return {
        "gaussian tall": (_gaussian(600, 200, 1), False),
        "gaussian square": (_gaussian(300, 300, 2), False),
        "uniform wide float32": (generator.uniform(-1, 1, (200, 700)).astype(np.float32), False),
        "pytorch-like float32": ((generator.uniform(-1, 1, (1200, 300)) / math.sqrt(300)).astype(np.float32), False),
        "orthogonal tall": (_orthogonal(500, 300, 3), True),
        "orthogonal wide float32": (_orthogonal(300, 500, 4).astype(np.float32), True),
        "orthogonal with gain 0.3": (0.3 * _orthogonal(400, 400, 5), True),
        "rank-deficient": (_with_singular_values(400, 300, np.r_[np.linspace(1, 2, 100), np.zeros(200)], 6), True),
        "condition 1e6, two clusters": (_with_singular_values(400, 300, np.repeat([1.0, 1e-6], 150), 8), True),
        "condition 1e6, log-spaced": (_with_singular_values(400, 300, log_spaced, 10), False),
        "identity times 3": (3.0 * np.eye(300), True),
        "three repeated values": (_with_singular_values(400, 300, np.repeat([1.0, 2.0, 5.0], 100), 12), True),
        "one row": (_gaussian(1, 500, 14), True),
        "one column": (_gaussian(500, 1, 15), True),
        "float16 values": (_gaussian(500, 300, 16).astype(np.float16), False),
        "bfloat16 values": (_gaussian(300, 500, 17).astype(ml_dtypes.bfloat16), False),
        "integers": (generator.integers(-5, 6, (500, 300)).astype(np.int32), False),
        "float64 of 1e300": (_gaussian(400, 300, 18) * 1e300, False),
        "float64 of 1e-300": (_gaussian(300, 400, 19) * 1e-300, False),
        "float32 of 1e30": ((_gaussian(400, 300, 20) * 1e30).astype(np.float32), False),
        "float32 of 1e-30": ((_gaussian(300, 400, 21) * 1e-30).astype(np.float32), False),
        "orthogonal of 1e-200": (1e-200 * _orthogonal(400, 300, 22), True),
    }


CASES = _cases()


def _noise(matrix: np.ndarray) -> float:
    """The stated noise of λ = σ² for this matrix, relative to σ max²: NOISE_UNITS·u·√(short side), u of the
    working precision (float32 for float32 and narrower floats, float64 otherwise)."""
    narrow = str(matrix.dtype).startswith(("float", "bfloat")) and matrix.dtype.itemsize <= 4
    unit = float(np.finfo(np.float32 if narrow else np.float64).eps)
    return NOISE_UNITS * unit * math.sqrt(min(matrix.shape))


@pytest.mark.parametrize("name", list(CASES))
def test_extreme_singular_values_agree_with_numpy_svd(name: str) -> None:
    matrix, must_converge = CASES[name]
    exact = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)  # ml_dtypes and ints as numbers
    smallest, largest = float(exact[-1]), float(exact[0])
    found = extreme_singular_values(matrix)
    # in units of σ max (1e300² overflows); the noise of σ², relative to σ max²
    high, low, smallest, noise = found.high / largest, found.low / largest, smallest / largest, 1.01 * _noise(matrix)
    # σ max: a Ritz value (at most σ max, up to the noise), converged to ACCURACY
    assert high**2 <= 1 + noise
    assert abs(high - 1) <= ACCURACY
    # σ min: a Ritz value, at least σ min (up to the noise); converged: within ACCURACY, or the noise for σ² near it
    assert low**2 >= smallest**2 - noise
    if must_converge:
        assert found.low_converged
    if found.low_converged:
        assert abs(low**2 - smallest**2) <= max(2 * ACCURACY * low**2, noise) * 1.01


def test_a_wrong_smallest_value_is_caught() -> None:
    """The σ min checks above can fail: a column-norm bound (also at least σ min) is far off where σ min converges."""
    matrix, _ = CASES["three repeated values"]
    column_norm_bound = float(np.sqrt((matrix**2).sum(axis=0)).min())
    assert abs(column_norm_bound**2 - 1.0) > 2 * ACCURACY
    assert abs(extreme_singular_values(matrix).low**2 - 1.0) <= 2 * ACCURACY


def test_the_same_matrix_gives_the_same_estimates() -> None:
    matrix, _ = CASES["gaussian square"]
    assert extreme_singular_values(matrix) == extreme_singular_values(matrix.copy())


def test_an_unconverged_smallest_value_is_an_upper_bound_of_it() -> None:
    """A square random block: its σ min (≈ σ max / n) is not resolved in few steps, and stays above the truth."""
    matrix, _ = CASES["gaussian square"]
    found = extreme_singular_values(matrix)
    smallest = float(np.linalg.svd(matrix, compute_uv=False)[-1])
    assert not found.low_converged
    assert found.low > smallest


def test_a_run_that_ends_in_an_invariant_subspace_keeps_its_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """One run starting on an eigenvector ends at once; the other goes on, and the first adds no spurious value."""
    from rnninit_cli.diagnostics import spectra

    eigenvalues = np.linspace(1.0, 4.0, 50)
    first = np.zeros(50)
    first[10] = 1.0  # an eigenvector of diag(eigenvalues)
    second = np.random.default_rng(3).standard_normal(50)
    monkeypatch.setattr(spectra, "_starts", lambda runs, size: np.stack([first, second / np.linalg.norm(second)]))
    low, high, _, high_converged, steps = spectra.lanczos_extremes(
        lambda x: eigenvalues[:, None] * x, 50, np.dtype(np.float64))
    assert steps > 1 and high_converged
    assert low >= 1.0 - 1e-12 and high == pytest.approx(4.0, rel=2 * ACCURACY)


# --- the orthogonality error from column norms -------------------------------------------------------------------


def _error_by_definition(matrix: np.ndarray) -> float:
    values = matrix.astype(np.float64)
    gram = values.T @ values if values.shape[0] >= values.shape[1] else values @ values.T
    return float(np.abs(gram - np.eye(gram.shape[0])).max())


def _from_diagonal(matrix: np.ndarray) -> float | None:
    largest = float(np.abs(matrix).max())
    return error_from_diagonal(gram_diagonal(matrix, largest), safe_scale(largest))


@pytest.mark.parametrize(("shape", "bound"), [((2048, 512), 1 / math.sqrt(2048)), ((512, 2048), 1 / math.sqrt(2048)),
                                              ((300, 300), 0.05), ((1, 400), 0.01), ((400, 1), 0.01)])
def test_column_norms_decide_the_error_of_small_columns_exactly(shape: tuple[int, int], bound: float) -> None:
    """Columns (rows) of norm² well below 1/2, as PyTorch's uniform(±1/√h) draws: the diagonal holds the largest
    |G − I|, and its value is the Gram matrix's."""
    matrix = np.random.default_rng(1).uniform(-bound, bound, shape).astype(np.float32)
    found = _from_diagonal(matrix)
    assert found is not None
    assert found == pytest.approx(_error_by_definition(matrix), rel=1e-9)


@pytest.mark.parametrize("case", ["orthogonal", "two equal columns", "stacked orthogonal blocks", "long columns"])
def test_column_norms_leave_it_to_the_gram_matrix_where_they_cannot_decide(case: str) -> None:
    if case == "orthogonal":  # |dᵢ − 1| ≈ 0: any off-diagonal entry may be larger
        matrix = _orthogonal(400, 300, 2)
    elif case == "two equal columns":  # norms² 2: the diagonal says 1, the off-diagonal entry is 2
        column = np.ones((50, 1)) / 5
        matrix = np.hstack([column, column, _gaussian(50, 3, 3) / 100])
        assert _error_by_definition(matrix) == pytest.approx(2.0)
    elif case == "stacked orthogonal blocks":  # a keras-gate recurrent matrix: G = 4I, error 3, bound 4
        matrix = np.vstack([_orthogonal(300, 300, seed) for seed in range(4)])
    else:  # columns of norm² 400: error 399, off-diagonal bound 400 (the longest column alone would decide)
        matrix = _gaussian(400, 300, 4)
        matrix *= 20 / np.linalg.norm(matrix, axis=0)
    assert _from_diagonal(matrix) is None


def test_column_norms_of_extreme_magnitudes() -> None:
    tiny = _gaussian(300, 200, 5) * 1e-200  # G ≈ 0: the error is |0 − 1| = 1 on the diagonal
    assert _from_diagonal(tiny) == pytest.approx(1.0)
    assert _from_diagonal(np.zeros((3, 2))) == 1.0
    huge = _gaussian(300, 200, 6) * 1e200  # G overflows: only the Gram matrix (inf) decides
    assert _from_diagonal(huge) is None


def test_random_matrices_decided_by_column_norms_agree_with_the_gram_matrix() -> None:
    generator = np.random.default_rng(11)
    decided = 0
    for _ in range(200):
        rows, cols = (int(side) for side in generator.integers(1, 40, 2))
        matrix = generator.standard_normal((rows, cols)) * generator.uniform(0.01, 0.5) / math.sqrt(rows)
        matrix[:, generator.integers(cols)] *= generator.uniform(0.5, 4)  # one column longer or shorter
        found = _from_diagonal(matrix)
        if found is not None:
            decided += 1
            assert found == pytest.approx(_error_by_definition(matrix), rel=1e-9)
    assert decided > 50


# --- inspect --wide on blocks beyond EXACT_SIDE ---------------------------------------------------------------------


def _lstm(scheme: str | None, hidden: int = EXACT_SIDE + 44, inputs: int = 24) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.LSTM(inputs, hidden)
    if scheme is not None:
        init_(model, scheme, seed=1)
    return {name: value.detach() for name, value in model.state_dict().items()}


def _assert_error_or_its_bound(shown: float, values: np.ndarray, is_bound: bool) -> None:
    """The exact max|G − I| (by definition, in float64), or a lower bound of it that is 0.1 or more (blocks beyond
    EXACT_SIDE whose column norms put them far from orthogonal), flagged as such."""
    exact = _error_by_definition(values)
    assert is_bound == isinstance(shown, LowerBound)
    if is_bound:
        assert min(values.shape) > EXACT_SIDE
        assert FAR_FROM_ORTHOGONAL <= shown <= exact * (1 + 1e-9)
        # the bound is the largest |column norm² − 1|: what the diagonal of G − I holds, computed independently
        gram = values.T @ values if values.shape[0] >= values.shape[1] else values @ values.T
        assert shown == pytest.approx(float(np.abs(np.diagonal(gram) - 1).max()), rel=1e-9)
    else:
        assert shown == pytest.approx(exact, rel=1e-9)


def test_large_blocks_get_estimated_geometry_of_the_stated_accuracy() -> None:
    tensors = _lstm(None)
    layer = diagnose(tensors, geometry=True).layers[0]
    estimated = 0
    for block in layer.blocks:
        if len(block.shape) != 2:
            continue
        values = tensors[block.name][block.start:block.stop].double().numpy()
        exact = np.linalg.svd(values, compute_uv=False)
        _assert_error_or_its_bound(block.orthogonality_error, values, block.as_dict()["orthogonality_error_is_bound"])
        assert block.sv_max == pytest.approx(exact[0], rel=ACCURACY)
        assert block.sv_min >= exact[-1] * (1 - 1e-6)
        if min(block.shape) > EXACT_SIDE:
            estimated += 1
            assert block.spectrum is None  # only σ min and σ max are computed
        else:
            assert block.sv_min == pytest.approx(exact[-1], rel=1e-6)
            assert block.spectrum
    assert estimated == 4
    for matrix in layer.matrices:
        values = tensors[matrix.name].double().numpy()
        exact = np.linalg.svd(values, compute_uv=False)
        _assert_error_or_its_bound(matrix.orthogonality_error, values, matrix.as_dict()["orthogonality_error_is_bound"])
        assert matrix.sv_max == pytest.approx(exact[0], rel=ACCURACY)
        assert matrix.sv_min >= exact[-1] * (1 - 1e-6)
    # the stacked matrices of PyTorch's draws: column norms² near 4/3, which the norms alone cannot decide
    bounded = {matrix.kind for matrix in layer.matrices if matrix.as_dict()["orthogonality_error_is_bound"]}
    assert bounded == {"weight_hh"}  # weight_ih (1200 × 24) is small enough to be exact


def test_large_orthogonal_blocks_show_one_bar_and_exact_values() -> None:
    tensors = _lstm("keras-gate")  # each recurrent gate block orthogonal, the stacked matrix 2·(orthogonal)
    layer = diagnose(tensors, geometry=True).layers[0]
    shape = (EXACT_SIDE + 44, EXACT_SIDE + 44)
    recurrent = [block for block in layer.blocks if block.kind == "weight_hh"]
    assert {block.shape for block in recurrent} == {shape}
    for block in recurrent:
        assert block.orthogonality_error <= rounding_level("float32", shape)
        assert block.sv_min == pytest.approx(1.0, abs=1e-5)
        assert block.sv_max == pytest.approx(1.0, abs=1e-5)
        assert block.spectrum is not None and block.spectrum.strip() == "█"
    whole = next(matrix for matrix in layer.matrices if matrix.kind == "weight_hh")
    values = tensors[whole.name].double().numpy()
    assert whole.orthogonality_error == pytest.approx(_error_by_definition(values), rel=1e-9)
    assert whole.orthogonality_error == pytest.approx(3.0, abs=1e-4)  # G = 4I
    assert whole.sv_min == pytest.approx(2.0, abs=1e-5)
    assert whole.sv_max == pytest.approx(2.0, abs=1e-5)
    assert whole.spectrum is not None and whole.spectrum.strip() == "█"


def test_estimated_geometry_does_not_depend_on_the_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Lanczos runs go to a pool of threads; each runs alone, so one thread gives the same numbers."""
    from rnninit_cli.diagnostics import blocks

    tensors = _lstm(None)
    pooled = diagnose(tensors, geometry=True).as_dict()
    monkeypatch.setattr(blocks, "worker_count", lambda: 1)
    assert diagnose(tensors, geometry=True).as_dict() == pooled
