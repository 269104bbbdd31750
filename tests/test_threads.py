"""Same seed, same bytes, whatever the thread count (OMP_NUM_THREADS or torch.set_num_threads).

LAPACK's QR gives different last bits at 1, 2 or 4 threads, so before the fix every orthogonal block
(keras, keras-gate, flax, orthogonal, chrono) changed with the thread count by 1e-7..1e-5. The blocks
here have 128 to 512 rows, large enough for MKL to split its QR across threads.

Each process that imports torch costs 1.5 s or more, so one process per thread count writes every
case through the CLI (`rnninit new`, `rnninit apply`) and prints the files' sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

# Every built-in scheme; chrono is for GRU and LSTM only.
SCHEMES = ["pytorch", "keras", "keras-gate", "flax", "orthogonal", "irnn", "irnn(scale=0.5)", "chrono(tmax=100)"]
FORMATS = ["pt", "safetensors"]
RECURRENT_ONLY = ("rnn", "rnncell")  # cells chrono does not apply to

# (cell, `rnninit new` flags, schemes, formats). Default run: every scheme in both formats on an LSTM
# with projections and both directions, and a few schemes on GRU, RNN and each cell.
LSTM = ["--input-size", "96", "--hidden-size", "128", "--proj-size", "64", "--bidirectional"]
CASES = [
    ("lstm", LSTM, SCHEMES, FORMATS),
    ("gru", ["--input-size", "64", "--hidden-size", "160"], ["keras", "flax", "chrono(tmax=100)"], FORMATS),
    ("rnn", ["--input-size", "48", "--hidden-size", "256"], ["keras-gate", "orthogonal"], FORMATS),
    ("lstmcell", ["--input-size", "64", "--hidden-size", "128"], ["keras", "chrono(tmax=100)"], ["safetensors"]),
    ("grucell", ["--input-size", "32", "--hidden-size", "128"], ["orthogonal", "keras-gate"], ["pt"]),
    ("rnncell", ["--input-size", "64", "--hidden-size", "192"], ["flax", "keras"], ["safetensors"]),
]
SLOW_MODELS = [
    ("lstm", LSTM),
    ("lstm", ["--input-size", "256", "--hidden-size", "512", "--num-layers", "2", "--bidirectional"]),
    ("lstm", ["--input-size", "128", "--hidden-size", "384", "--proj-size", "256"]),
    ("gru", ["--input-size", "512", "--hidden-size", "512", "--num-layers", "2"]),
    ("rnn", ["--input-size", "300", "--hidden-size", "512", "--bidirectional"]),
    ("lstmcell", ["--input-size", "256", "--hidden-size", "512"]),
    ("grucell", ["--input-size", "128", "--hidden-size", "384"]),
    ("rnncell", ["--input-size", "64", "--hidden-size", "512"]),
]
SLOW_CASES = [(cell, flags, [s for s in SCHEMES if not (s.startswith("chrono") and cell in RECURRENT_ONLY)],
               FORMATS) for cell, flags in SLOW_MODELS]

# Writes every case with the CLI in this one process; prints {"threads": N, "hashes": {case: sha256}}.
DRIVER = textwrap.dedent("""
    import hashlib, json, sys
    from pathlib import Path
    import torch
    import typer
    from rnninit_cli.cli import app

    spec = json.loads(sys.argv[1])
    folder = Path(spec["folder"])
    command = typer.main.get_command(app)  # built once: typer takes 0.1 s to build it
    hashes = {}

    def run(name, argv):
        try:
            command.main(argv, standalone_mode=False)
        except SystemExit as stop:
            assert stop.code in (0, None), (argv, stop.code)
        hashes[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()

    for index, (cell, flags, schemes, formats) in enumerate(spec["cases"]):
        for scheme in schemes:
            for fmt in formats:
                name = f"new-{index}-{cell}-{scheme}.{fmt}"
                run(name, ["new", cell, *flags, "--scheme", scheme, "--seed", "0", "-q", "-o", str(folder / name)])
    # apply on a checkpoint written by torch (its values do not depend on the thread count)
    torch.manual_seed(0)
    source = folder / "source.pt"
    torch.save(torch.nn.LSTM(64, 256, num_layers=2).state_dict(), source)
    for scheme, fmt in (("keras", "pt"), ("flax", "safetensors")):
        name = f"apply-{scheme}.{fmt}"
        run(name, ["apply", str(source), "--scheme", scheme, "--seed", "0", "-q", "-o", str(folder / name)])
    print(json.dumps({"threads": torch.get_num_threads(), "hashes": hashes}))
""")

# In one process: rnninit_cli.init_ and the orthogonal initializer under torch.set_num_threads(N).
SET_NUM_THREADS = textwrap.dedent("""
    import hashlib, json, sys, threading
    import torch
    import rnninit_cli
    from rnninit_cli.init.initializers import INITIALIZERS

    def digest(tensors):
        hasher = hashlib.sha256()
        for tensor in tensors:
            hasher.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
        return hasher.hexdigest()

    def seen_by_a_new_thread():
        seen = []
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        return seen[0]

    result = {}
    for threads in json.loads(sys.argv[1]):
        torch.set_num_threads(threads)
        hashes = {}
        for scheme in ("keras", "keras-gate", "flax", "orthogonal", "chrono(tmax=50)"):
            torch.manual_seed(0)
            modules = [torch.nn.LSTM(64, 128, proj_size=64, bidirectional=True), torch.nn.GRU(32, 192)]
            for module in modules:
                rnninit_cli.init_(module, scheme, seed=0)
            hashes[scheme] = digest(p for module in modules for p in module.parameters())
        block = torch.empty(512, 256)
        INITIALIZERS["orthogonal"].function(block, generator=torch.Generator().manual_seed(0))
        hashes["orthogonal() called directly"] = digest([block])
        result[threads] = {"hashes": hashes, "after": torch.get_num_threads(), "new thread": seen_by_a_new_thread()}
    print(json.dumps(result))
""")


def python(args: list[str], cwd: Path, threads: int | None = None, timeout: float = 120) -> dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if key not in ("MKL_NUM_THREADS", "OMP_NUM_THREADS")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def hashes_by_thread_count(tmp_path: Path, cases: list[tuple[str, list[str], list[str], list[str]]],
                           thread_counts: list[int]) -> dict[int, dict[str, Any]]:
    results = {}
    for threads in thread_counts:
        folder = tmp_path / f"omp{threads}"
        folder.mkdir()
        spec = {"folder": str(folder), "cases": cases}
        results[threads] = python(["-c", DRIVER, json.dumps(spec)], tmp_path, threads=threads, timeout=600)
    return results


def assert_same_bytes(results: dict[int, dict[str, Any]]) -> None:
    first, *others = results
    reference = results[first]["hashes"]
    assert len(reference) > 0
    for threads in others:
        hashes = results[threads]["hashes"]
        assert hashes.keys() == reference.keys()
        differ = sorted(name for name in reference if hashes[name] != reference[name])
        assert not differ, (f"{len(differ)} of {len(reference)} files differ between OMP_NUM_THREADS={first} "
                            f"and OMP_NUM_THREADS={threads}: {', '.join(differ)}")


def test_same_bytes_for_every_scheme_and_format_at_1_2_and_4_threads(tmp_path: Path) -> None:
    results = hashes_by_thread_count(tmp_path, CASES, [1, 2, 4])
    assert results[1]["threads"] == 1
    assert_same_bytes(results)


def test_the_issue_example_with_python_m(tmp_path: Path) -> None:
    """`OMP_NUM_THREADS=t rnninit new lstm --input-size 64 --hidden-size 32 --scheme keras --seed 0` (issue 12)."""
    digests = set()
    for threads in (1, 2):
        output = tmp_path / f"c{threads}.safetensors"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        env.pop("MKL_NUM_THREADS", None)
        done = subprocess.run([sys.executable, "-m", "rnninit_cli", "new", "lstm", "--input-size", "64",
                               "--hidden-size", "32", "--scheme", "keras", "--seed", "0", "-q", "-o", str(output)],
                              capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False)
        assert done.returncode == 0, done.stderr
        digests.add(hashlib.sha256(output.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_same_values_under_torch_set_num_threads_and_the_count_is_left_alone(tmp_path: Path) -> None:
    result = python(["-c", SET_NUM_THREADS, json.dumps([1, 2, 4, 3])], tmp_path)
    reference = result["1"]["hashes"]
    for threads, seen in result.items():
        differ = sorted(name for name in reference if seen["hashes"][name] != reference[name])
        assert not differ, f"torch.set_num_threads({threads}) changes {', '.join(differ)}"
        # Drawing on one-thread workers must not change the caller's count nor the one new threads get.
        assert seen["after"] == int(threads)
        assert seen["new thread"] == int(threads)


@pytest.mark.slow
def test_same_bytes_for_larger_models_at_many_thread_counts(tmp_path: Path) -> None:
    assert_same_bytes(hashes_by_thread_count(tmp_path, SLOW_CASES, [1, 2, 3, 4, 8]))
