"""What rnninit prints does not depend on the last bits of BLAS, LAPACK or torch's CPU kernels (issue #19 §0).

Another CPU gives QR-drawn values, Gram matrices and eigenvalues that differ in their last bits. Here those last bits
are changed on purpose, and what is printed must not change:
- README.md's excerpts, written by cog with every QR result, weight norm, Gram matrix and eigenvalue moved by an ulp
  at random places, and with other CPU kernels chosen by the libraries' own switches (MKL_CBWR,
  ATEN_CPU_CAPABILITY, OPENBLAS_CORETYPE);
- inspect (with and without --wide), verify and diff on checkpoints of every kind of draw, their weights moved by an
  ulp at random places, and their Gram matrices and eigenvalues too;
- and the bound below which an orthogonality error is only rounding holds every fresh orthogonal draw with room.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_readme import README, REPO, _newcomer_environment
from typer.testing import CliRunner

import rnninit_cli
from rnninit_cli.cli import app
from rnninit_cli.diagnostics import cache as cache_module
from rnninit_cli.diagnostics import orthogonality
from rnninit_cli.diagnostics.formatting import _at_rounding
from rnninit_cli.diagnostics.orthogonality import _scaled_gram, rounding_level
from rnninit_cli.init.initializers import orthogonal

runner = CliRunner()

# On PYTHONPATH as sitecustomize.py, in every Python process of a cog run (README commands with a pipe or a `$` run in
# a shell): each QR result, weight norm, Gram matrix and eigenvalue computed there comes out with about half its
# values moved one ulp up or down, as on another CPU; at exit, how many of each were moved goes to $PERTURBED_LOG.
PERTURB = r"""
import atexit, importlib.util, json, os, sys, threading

lock = threading.Lock()
calls = {}
state = {}


def nudge(array):
    import numpy as np

    with lock:
        if "generator" not in state:
            state["generator"] = np.random.default_rng([int(os.environ["PERTURBED_SEED"]), os.getpid()])
        up, chosen = state["generator"].random(array.shape) < 0.5, state["generator"].random(array.shape) < 0.5
    if type(array).__module__.startswith("torch"):
        import torch

        up, chosen = torch.from_numpy(up), torch.from_numpy(chosen)
        return torch.where(chosen, torch.nextafter(array, torch.where(up, np.inf, -np.inf).to(array.dtype)), array)
    return np.where(chosen, np.nextafter(array, np.where(up, np.inf, -np.inf)), array)


def gram(parts):
    import numpy as np

    _, small, scale = parts
    small = nudge(small)
    with np.errstate(over="ignore"):
        return small * scale * scale, small, scale


def perturb(module, name, change):
    original = getattr(module, name)

    def perturbed(*args, **kwargs):
        with lock:
            calls[name] = calls.get(name, 0) + 1
        return change(original(*args, **kwargs))

    setattr(module, name, perturbed)


PATCHES = {
    "torch": lambda m: [perturb(m, "_weight_norm", nudge), perturb(m, "norm_except_dim", nudge)],
    "torch.linalg": lambda m: perturb(m, "qr", lambda result: (nudge(result[0]), result[1])),
    "numpy.linalg": lambda m: perturb(m, "eigvalsh", nudge),
    "rnninit_cli.layouts.views": lambda m: perturb(m, "weight_norm", nudge),
    "rnninit_cli.diagnostics.orthogonality": lambda m: perturb(m, "_scaled_gram", gram),
}


class AfterImport:
    def find_spec(self, name, path=None, target=None):
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, AfterImport())


@atexit.register
def report():
    with open(os.environ["PERTURBED_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(calls) + "\n")
"""

# Prints a digest of normal and uniform draws, a QR and a Gram matrix: whether OTHER_KERNELS change any bit here.
PROBE = r"""
import hashlib, json
import numpy as np
import torch

torch.set_num_threads(1)
generator = torch.Generator().manual_seed(0)
normal = torch.empty(128, 32).normal_(generator=generator)
uniform = torch.empty(128, 32).uniform_(-0.3, 0.3, generator=generator)
q = torch.linalg.qr(normal).Q.double().numpy()
print(json.dumps({name: hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
                  for name, value in (("normal", normal.numpy()), ("uniform", uniform.numpy()), ("qr", q),
                                      ("eigenvalues", np.linalg.eigvalsh(q.T @ q)))}))
"""

# Other code paths of the libraries, each safe on any x86-64 CPU: MKL's compatible path (another QR), torch's kernels
# for CPUs without AVX2 (other float32 normal and uniform draws), OpenBLAS's SSE3 kernels (other eigenvalues).
OTHER_KERNELS = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default", "OPENBLAS_CORETYPE": "Prescott"}


def _cog(written: Path, environment: dict[str, str]) -> None:
    """Write what cog writes from README.md, with this tree's rnninit_cli in every process (shells included)."""
    path = os.pathsep.join(filter(None, (environment.get("PYTHONPATH"), str(REPO))))
    done = subprocess.run([sys.executable, "-m", "cogapp", "-o", str(written), "README.md"], cwd=REPO,
                          env=environment | {"PYTHONPATH": path}, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, f"cog could not write README.md:\n{done.stdout}{done.stderr[-3000:]}"


def _readme_difference(written: Path) -> str:
    lines = difflib.unified_diff(README.read_text(encoding="utf-8").splitlines(keepends=True),
                                 written.read_text(encoding="utf-8").splitlines(keepends=True), "README.md",
                                 "what cog writes on another CPU")
    return "".join(list(lines)[:60])


def test_readme_excerpts_do_not_depend_on_the_last_bits(tmp_path: Path) -> None:
    hooks, log = tmp_path / "hooks", tmp_path / "perturbed.jsonl"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(PERTURB, encoding="utf-8")
    environment = _newcomer_environment() | {"PYTHONPATH": str(hooks), "PERTURBED_SEED": "19",
                                             "PERTURBED_LOG": str(log)}
    _cog(tmp_path / "README.md", environment)
    calls: dict[str, int] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        for name, count in json.loads(line).items():
            calls[name] = calls.get(name, 0) + count
    assert {"qr", "eigvalsh", "_scaled_gram", "_weight_norm", "norm_except_dim", "weight_norm"} <= set(calls), calls
    assert not _readme_difference(tmp_path / "README.md")


def test_readme_excerpts_are_the_same_with_other_cpu_kernels(tmp_path: Path) -> None:
    environment = _newcomer_environment()
    other = environment | OTHER_KERNELS
    _cog(tmp_path / "README.md", other)
    assert not _readme_difference(tmp_path / "README.md")
    probes = [subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120,
                             check=False) for env in (environment, other)]
    assert all(probe.returncode == 0 for probe in probes), [probe.stderr[-2000:] for probe in probes]
    if json.loads(probes[0].stdout) == json.loads(probes[1].stdout):
        pytest.skip(f"{', '.join(OTHER_KERNELS)} change no bit on this machine: no other kernel was compared")


# --- inspect, verify and diff on every kind of draw ------------------------------------------------------------


def _drawn(scheme: str, rules: tuple[str, ...] = (), dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A 2-layer LSTM and a GRU initialized by `scheme` (and `rules`), drawn in `dtype`."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"lstm": torch.nn.LSTM(12, 16, num_layers=2), "gru": torch.nn.GRU(8, 24)}).to(dtype)
    rnninit_cli.init_(model, scheme, seed=3, rules=list(rules))
    return {name: value.detach() for name, value in model.state_dict().items()}


# name: (scheme, rules, dtype drawn in, dtype stored in, scheme verified against)
CASES: dict[str, tuple[str, tuple[str, ...], torch.dtype, torch.dtype, str]] = {
    "keras": ("keras", (), torch.float32, torch.float32, "keras"),
    "keras-gate": ("keras-gate", (), torch.float32, torch.float32, "keras-gate"),
    "orthogonal": ("orthogonal", (), torch.float32, torch.float32, "orthogonal"),
    "flax": ("flax", (), torch.float32, torch.float32, "flax"),
    "chrono": ("chrono(tmax=50)", (), torch.float32, torch.float32, "chrono(tmax=50)"),
    "pytorch": ("pytorch", (), torch.float32, torch.float32, "pytorch"),
    "irnn": ("irnn", (), torch.float32, torch.float32, "irnn"),
    "gain": ("keras-gate", ("weight_hh=orthogonal(gain=1.5)",), torch.float32, torch.float32, "keras-gate"),
    "float64": ("orthogonal", (), torch.float64, torch.float64, "orthogonal"),
    "float32-in-float64": ("keras", (), torch.float32, torch.float64, "keras"),
    "bfloat16": ("keras", (), torch.float32, torch.bfloat16, "keras"),
}


def _nudged(tensors: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The weights with about half their values moved one ulp up or down, as drawn on another CPU (QR, normal and
    uniform kernels); biases and identities are exact on any CPU."""
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for name, value in tensors.items():
        if value.dim() == 2 and torch.unique(value).numel() > 2:  # not a constant or stacked identities
            up = torch.rand(value.shape, generator=generator) < 0.5
            moved = torch.nextafter(value, torch.where(up, math.inf, -math.inf).to(value.dtype))
            value = torch.where(torch.rand(value.shape, generator=generator) < 0.5, moved, value)
        result[name] = value
    return result


@contextlib.contextmanager
def _perturbed_gram_and_eigenvalues(seed: int) -> Iterator[None]:
    """Every Gram matrix and every eigenvalue computed inside, with about half its values moved one ulp."""
    generator = np.random.default_rng(seed)
    lock = threading.Lock()

    def nudge(array: np.ndarray) -> np.ndarray:
        with lock:
            up, chosen = generator.random(array.shape) < 0.5, generator.random(array.shape) < 0.5
        return np.where(chosen, np.nextafter(array, np.where(up, np.inf, -np.inf)), array)

    def gram(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        _, small, scale = _scaled_gram(matrix)
        small = nudge(small)
        with np.errstate(over="ignore"):
            return small * scale * scale, small, scale

    eigvalsh = np.linalg.eigvalsh
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(orthogonality, "_scaled_gram", gram)
        patch.setattr(cache_module, "_scaled_gram", gram)
        patch.setattr(np.linalg, "eigvalsh", lambda matrix: nudge(eigvalsh(matrix)))
        yield


def _printed(folder: Path, scheme: str) -> tuple[dict[str, Any], list[float]]:
    """What inspect, verify and diff print about folder/model.pt (and folder/base.pt): human output as it is, JSON
    without its numbers (they keep every digit, and so do the arguments estimated from stored values); and the
    whole matrices' orthogonality errors."""
    commands = {"inspect": ["inspect", "model.pt"], "wide": ["inspect", "model.pt", "--wide"],
                "verify": ["verify", "model.pt", "--scheme", scheme], "diff": ["diff", "base.pt", "model.pt"],
                "verify-json": ["verify", "model.pt", "--scheme", scheme, "--json"],
                "inspect-json": ["inspect", "model.pt", "--wide", "--json"]}
    printed: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        for name, command in commands.items():
            result = runner.invoke(app, command)
            assert result.exit_code in (0, 1), (command, result.output)
            printed[name] = json.loads(result.stdout) if name.endswith("json") else result.output
    errors = [matrix["orthogonality_error"] for layer in printed["inspect-json"]["layers"]
              for matrix in layer["matrices"]]
    return {name: _without_numbers(value) for name, value in printed.items()}, errors


def _without_numbers(document: Any) -> Any:
    if isinstance(document, dict):
        return {re.sub(r"=[-+.\de]+", "=…", key): _without_numbers(value) for key, value in document.items()}
    if isinstance(document, list):
        return [_without_numbers(value) for value in document]
    if isinstance(document, str):  # an estimate's call, as `irnn(scale=-0.2034226)`
        return re.sub(r"=[-+.\de]+", "=…", document)
    return None if isinstance(document, float) else document


@pytest.mark.parametrize("case", list(CASES))
def test_what_is_printed_does_not_depend_on_the_last_bits(case: str, tmp_path: Path) -> None:
    scheme, rules, drawn_in, stored_in, verified = CASES[case]
    tensors, base = _drawn(scheme, rules, drawn_in), _drawn("pytorch", dtype=drawn_in)
    here, there = tmp_path / "here", tmp_path / "there"
    for folder, nudge in ((here, False), (there, True)):
        folder.mkdir()
        for name, values in (("model.pt", tensors), ("base.pt", base)):
            values = _nudged(values, seed=19) if nudge else values
            torch.save({key: value.to(stored_in) for key, value in values.items()}, folder / name)
    expected, errors = _printed(here, verified)
    with _perturbed_gram_and_eigenvalues(19):
        found, other_errors = _printed(there, verified)
    assert found == expected
    assert other_errors != errors  # the last bits did change what was computed


# --- the bound itself --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 2), (3, 2), (8, 8), (2, 64), (64, 64), (128, 32), (1024, 16), (256, 256)])
def test_fresh_orthogonal_draws_stay_below_the_rounding_level(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    """A fresh orthogonal block is at most half the rounding level in float32 and float64, so that a CPU's other last
    bits cannot move it across; in narrower types its storage rounding, at most 2u + u², is part of the level."""
    level = rounding_level(str(dtype), shape)
    worst = 0.0
    for seed in range(40 if math.prod(shape) <= 4096 else 8):
        values = torch.empty(shape, dtype=dtype)
        orthogonal(values, generator=torch.Generator().manual_seed(seed))
        array = values.double().numpy()
        the_gram = _scaled_gram(array)[0]
        worst = max(worst, float(np.abs(the_gram - np.eye(the_gram.shape[0])).max()))
    assert worst <= level / (2 if dtype in (torch.float32, torch.float64) else 1), (worst, level)


@pytest.mark.parametrize(("value", "level", "shown"), [
    (4.7e-7, 5.5e-6, "< 1e-5"), (5.5e-6, 5.5e-6, "< 1e-5"), (6e-6, 5.5e-6, None), (1e-5, 1e-5, "< 1e-4"),
    (0.0, 5.5e-6, "< 1e-5"), (math.nan, 5.5e-6, None), (None, 5.5e-6, None), (0.0, 0.0, None), (0.3, 0.6, "< 1e0"),
])
def test_a_rounding_level_error_is_shown_as_a_power_of_ten_above_its_bound(value: float | None, level: float,
                                                                            shown: str | None) -> None:
    assert _at_rounding(value, level) == shown


def test_rounding_levels_follow_the_dtype_and_the_sides() -> None:
    assert rounding_level("float32", (128, 32)) == rounding_level("float64", (32, 128)) < 1e-5
    assert rounding_level("float32", (4096, 1024)) > rounding_level("float32", (128, 32))
    assert 2 * 2.0**-8 < rounding_level("bfloat16", (32, 32)) < 1e-2
