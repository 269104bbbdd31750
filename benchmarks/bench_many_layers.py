"""Benchmark rnninit on checkpoints with many small recurrent layers: time per layer at several sizes.

Every per-file step of rnninit must stay O(n log n) in the number of tensors (issue 9, item 11: a 10,000-layer
LSTM took 94-149 s to `apply` and 413 s to `inspect`, because the tied-weights check compared every pair of
tensors). This script writes `nn.LSTM(4, 4, num_layers=n)` state dicts for several n (or a bidirectional LSTM
with n/2 layers, or n separate one-layer GRUs under different prefixes), runs each command on each as a separate
process, and prints the wall time per layer side by side: on linear code the per-layer times of a row are about
equal, and the last column (per-layer time at the largest n / at the smallest) stays near 1; a quadratic step
makes it grow with the sizes' ratio (about 10 from 1,000 to 10,000 layers). The start-up of a process (importing
torch, measured on a one-layer checkpoint) is subtracted before dividing. Nothing is asserted. Run by hand:

    .venv/bin/python benchmarks/bench_many_layers.py [--layers 1000 2000 4000 10000] [--kind lstm|bilstm|grus]
                                                      [--commands inspect apply ...] [--repeat N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODULE = [sys.executable, "-m", "rnninit_cli"]
DEFAULT_LAYERS = (1000, 2000, 4000, 10000)
# name: (arguments after the command, input format); IN is the input, REF an applied copy, OUT a new path
COMMANDS: dict[str, tuple[list[str], str]] = {
    "inspect": (["inspect", "IN"], "pt"),
    "inspect-json": (["inspect", "IN", "--json"], "pt"),
    "apply": (["apply", "IN", "--scheme", "keras", "--seed", "0", "-o", "OUT.pt"], "pt"),
    "apply-st": (["apply", "IN", "--scheme", "keras", "--seed", "0", "-o", "OUT.safetensors"], "safetensors"),
    "apply-quiet": (["apply", "IN", "--scheme", "keras", "--seed", "0", "--quiet", "-o", "OUT.pt"], "pt"),
    "apply-format": (["apply", "IN", "--scheme", "keras", "--seed", "0", "-o", "OUT.safetensors"], "pt"),
    "apply-stdout": (["apply", "IN", "--scheme", "keras", "--seed", "0", "-o", "-"], "pt"),
    "apply-json": (["apply", "IN", "--scheme", "keras", "--seed", "0", "--json", "-o", "OUT.pt"], "pt"),
    "dry-run": (["apply", "IN", "--scheme", "keras", "--dry-run"], "pt"),
    "verify": (["verify", "REF", "--scheme", "keras"], "pt"),
    "diff": (["diff", "IN", "REF"], "pt"),
}
DEFAULT_COMMANDS = ("inspect", "apply", "apply-st", "apply-format", "apply-stdout", "dry-run", "verify", "diff")


class BenchmarkError(Exception):
    """A command failed (not a slow result: timings are reported, never asserted)."""


def state_dict(kind: str, layers: int) -> dict:
    import torch

    torch.manual_seed(0)
    if kind == "lstm":
        state = torch.nn.LSTM(4, 4, num_layers=layers).state_dict()
    elif kind == "bilstm":
        state = torch.nn.LSTM(4, 4, num_layers=max(1, layers // 2), bidirectional=True).state_dict()
    else:
        state = {f"block{index}.gru.{name}": tensor for index in range(layers)
                 for name, tensor in torch.nn.GRU(4, 4).state_dict().items()}
    return {name: tensor.detach().clone() for name, tensor in state.items()}


def generate(workdir: Path, kind: str, layers: int) -> dict[str, Path]:
    """IN as .pt and .safetensors, and REF (the .pt applied with keras, seed 0) for verify and diff."""
    import torch
    from safetensors.torch import save_file

    paths = {"pt": workdir / f"{kind}{layers}.pt", "safetensors": workdir / f"{kind}{layers}.safetensors",
             "ref": workdir / f"{kind}{layers}-keras.pt"}
    if not paths["pt"].exists():
        state = state_dict(kind, layers)
        torch.save(state, paths["pt"])
        save_file(state, paths["safetensors"])
    if not paths["ref"].exists():
        run([*MODULE, "apply", str(paths["pt"]), "--scheme", "keras", "--seed", "0", "--quiet", "-o",
             str(paths["ref"])], ok=(0,))
    return paths


def run(argv: list[str], ok: tuple[int, ...] = (0, 1)) -> float:
    """Wall seconds of one process; its output is discarded (the console is 160 columns wide, as in a log)."""
    start = time.perf_counter()
    result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode not in ok:
        raise BenchmarkError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.decode()[-2000:]}")
    return elapsed


def command_line(command: str, paths: dict[str, Path], workdir: Path) -> list[str]:
    arguments, fmt = COMMANDS[command]
    replaced = []
    for argument in arguments:
        if argument == "IN":
            argument = str(paths[fmt])
        elif argument == "REF":
            argument = str(paths["ref"])
        elif argument.startswith("OUT"):
            target = workdir / f"out{argument.removeprefix('OUT')}"
            target.unlink(missing_ok=True)
            argument = str(target)
        replaced.append(argument)
    return [*MODULE, *replaced]


def measure(command: str, paths: dict[str, Path], workdir: Path, repeat: int) -> float:
    return statistics.median(run(command_line(command, paths, workdir)) for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=list(DEFAULT_LAYERS), help="layer counts n")
    parser.add_argument("--kind", choices=("lstm", "bilstm", "grus"), default="lstm",
                        help="lstm: nn.LSTM(4, 4, num_layers=n); bilstm: bidirectional, n/2 layers (n directions); "
                        "grus: n separate nn.GRU(4, 4) under prefixes block0. ... block{n-1}.")
    parser.add_argument("--commands", nargs="+", choices=sorted(COMMANDS), default=list(DEFAULT_COMMANDS))
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the median is shown")
    parser.add_argument("--workdir", type=Path, help="where the checkpoints go (kept); default a temporary folder")
    args = parser.parse_args()
    sizes = sorted(args.layers)
    with tempfile.TemporaryDirectory(prefix="rnninit-many-") as temporary:
        workdir = args.workdir or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        inputs = {n: generate(workdir, args.kind, n) for n in [1, *sizes]}
        print(f"generated {args.kind} checkpoints for n = {', '.join(map(str, sizes))} in "
              f"{time.perf_counter() - started:.0f} s; {os.cpu_count()} CPUs, load average "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        header = f"{'command':<14}{'start-up s':>11}" + "".join(f"{f'n={n} s':>12}{'ms/layer':>10}" for n in sizes)
        print(header + f"{'ratio':>8}", flush=True)
        for command in args.commands:
            startup = measure(command, inputs[1], workdir, args.repeat)
            line = f"{command:<14}{startup:>11.2f}"
            per_layer = []
            for n in sizes:
                seconds = measure(command, inputs[n], workdir, args.repeat)
                per_layer.append(max(seconds - startup, 0.0) / n * 1000)
                line += f"{seconds:>12.2f}{per_layer[-1]:>10.2f}"
            ratio = per_layer[-1] / per_layer[0] if per_layer[0] > 0 else float("nan")
            print(line + f"{ratio:>8.2f}", flush=True)
        print(f"ratio: ms/layer at n={sizes[-1]} / at n={sizes[0]}; about 1 when the command is linear, "
              f"about {sizes[-1] / sizes[0]:.0f} when it is quadratic. Load average at the end: "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as error:
        sys.exit(f"benchmark failed: {error}")
