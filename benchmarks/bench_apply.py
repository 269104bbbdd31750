"""Benchmark `rnninit apply` on a ~2.5 GB checkpoint against a naive load/init/save script and `cp`.

The checkpoint holds an embedding and a linear head (about 2.3 GB of float32 together) and a 2-layer
bidirectional LSTM with hidden size 1024. It is written as `bench.pt` (torch.save) and
`bench.safetensors`; then, per format, these are run as separate processes, interleaved, `--repeat`
times each, under `/usr/bin/time -v` (wall time and peak RSS):

    rnninit   rnninit apply IN --scheme keras --seed 0 --quiet --force -o OUT
    naive     load the whole dict, torch.nn.init per gate block of the LSTM, save the whole dict
    cp        cp IN OUT
    cp+sync   cp IN OUT && sync OUT   (information only: rnninit fsyncs its output, cp does not)

The initializer math alone (`rnninit_cli.init_` on an in-memory LSTM of the same shape) is timed
in-process, once per round, between the runs. rnninit's outputs are checked with the official loaders.
Generation is not timed; the files are deleted at the end unless --keep. Run by hand:

    .venv/bin/python benchmarks/bench_apply.py [--workdir DIR] [--repeat N] [--keep] [--scale S]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

GB = 10**9
MB = 10**6
EMBED_DIM = 1024  # also the LSTM's input size
HIDDEN_SIZE = 1024
NUM_LAYERS = 2
GATES = 4
FULL_VOCAB = 280_000  # embedding + head at scale 1: 2 × 280000 × 1024 × 4 B ≈ 2.29 GB
DISK_NEEDED_AT_FULL_SCALE = 12 * GB
FILL_ROWS = 16_384  # rows filled per chunk while generating
COMPARE_ROWS = 32_768  # rows compared per chunk while verifying
RSS_TARGET_FRACTION = 0.25
WALL_SLACK_S = 2.0
TIME_BINARY = "/usr/bin/time"
RSS_LINE = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")
FORMATS = {"pt": "bench.pt", "safetensors": "bench.safetensors"}
VARIANTS = ("rnninit", "naive", "cp", "cp+sync")
TARGET_VARIANTS = ("rnninit", "naive", "cp")

# Used when /usr/bin/time is missing: run the command as our child and report its peak RSS the way
# `time -v` does. RUSAGE_CHILDREN of this short-lived wrapper covers that one command only.
RUSAGE_WRAPPER = """\
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stderr.write(f"Maximum resident set size (kbytes): {peak_kb}\\n")
sys.exit(code)
"""


class BenchmarkError(Exception):
    """A step of the benchmark failed (not a slow result: timings are reported, never asserted)."""


@dataclass
class Sample:
    wall_s: float
    peak_rss_mb: float


@dataclass
class FormatResult:
    fmt: str
    input_bytes: int
    output_bytes: int = 0
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    math_s: list[float] = field(default_factory=list)  # the initializer math alone, in-process

    def median_wall(self, variant: str) -> float:
        return statistics.median(s.wall_s for s in self.samples[variant])

    @property
    def median_math(self) -> float:
        return statistics.median(self.math_s)

    def excess_per_round(self, baseline: str) -> list[float]:
        """rnninit's wall minus (`baseline`'s wall + the math) in each round: pairs runs made moments apart."""
        return [r.wall_s - b.wall_s - m for r, b, m in
                zip(self.samples["rnninit"], self.samples[baseline], self.math_s, strict=True)]

    def median_rss(self, variant: str) -> float:
        return statistics.median(s.peak_rss_mb for s in self.samples[variant])


# --------------------------------------------------------------------------------------------------
# The naive script, run as its own process through this file's hidden --run-naive option.


def run_naive(source: Path, target: Path) -> None:
    """What a user would write: load everything, torch.nn.init each LSTM gate block, save everything."""
    import torch

    safetensors = source.suffix == ".safetensors"
    if safetensors:
        from safetensors.torch import load_file, save_file

        state = load_file(source)
    else:
        state = torch.load(source, weights_only=True)
    with torch.no_grad():
        for name, tensor in state.items():
            if not name.startswith("lstm."):
                continue
            rows = tensor.shape[0] // GATES
            blocks = [tensor[gate * rows:(gate + 1) * rows] for gate in range(GATES)]
            if ".weight_ih" in name:
                for block in blocks:
                    torch.nn.init.xavier_uniform_(block)
            elif ".weight_hh" in name:
                for block in blocks:
                    torch.nn.init.orthogonal_(block)
            elif ".bias" in name:
                torch.nn.init.zeros_(tensor)
                if ".bias_ih" in name:
                    torch.nn.init.ones_(blocks[1])  # forget gate (i, f, g, o)
    if safetensors:
        save_file(state, target)
    else:
        torch.save(state, target)


# --------------------------------------------------------------------------------------------------
# Generating the checkpoint (not timed).


def vocab_size(scale: float) -> int:
    return max(1, round(FULL_VOCAB * scale))


def estimated_bytes(scale: float) -> int:
    vocab = vocab_size(scale)
    lstm = 0
    for layer in range(NUM_LAYERS):
        input_size = EMBED_DIM if layer == 0 else 2 * HIDDEN_SIZE
        lstm += 2 * GATES * HIDDEN_SIZE * (input_size + HIDDEN_SIZE + 2)
    return 4 * (2 * vocab * EMBED_DIM + vocab + lstm)


def lstm_state() -> dict[str, torch.Tensor]:
    import torch

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(EMBED_DIM, HIDDEN_SIZE, num_layers=NUM_LAYERS, bidirectional=True)
    return {name: tensor.detach().clone() for name, tensor in lstm.state_dict().items()}


def filled(rows: int, cols: int, std: float, generator: torch.Generator) -> torch.Tensor:
    """A (rows, cols) float32 tensor of N(0, std²), filled in place chunk by chunk (no 2× memory)."""
    import torch

    tensor = torch.empty(rows, cols, dtype=torch.float32)
    for start in range(0, rows, FILL_ROWS):
        tensor[start:start + FILL_ROWS].normal_(0.0, std, generator=generator)
    return tensor


def input_paths(workdir: Path) -> dict[str, Path]:
    return {fmt: workdir / name for fmt, name in FORMATS.items()}


def generate(paths: dict[str, Path], scale: float) -> None:
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    vocab = vocab_size(scale)
    state: dict[str, torch.Tensor] = {"embedding.weight": filled(vocab, EMBED_DIM, 1.0, generator)}
    state |= {f"lstm.{name}": tensor for name, tensor in lstm_state().items()}
    state["head.weight"] = filled(vocab, EMBED_DIM, 0.02, generator)
    state["head.bias"] = torch.zeros(vocab)
    torch.save(state, paths["pt"])
    save_file(state, paths["safetensors"])


# --------------------------------------------------------------------------------------------------
# Measuring.


def time_tool() -> str | None:
    if Path(TIME_BINARY).exists():
        return TIME_BINARY
    print(f"note: {TIME_BINARY} is missing (install it with `apt-get install time`); measuring peak RSS "
          "with resource.getrusage(RUSAGE_CHILDREN) in a wrapper process instead", file=sys.stderr)
    return None


def measure(command: list[str], timer: str | None) -> Sample:
    """Run `command` once; its wall time (here) and peak RSS (from `time -v` or the wrapper)."""
    wrapped = [timer, "-v", *command] if timer else [sys.executable, "-c", RUSAGE_WRAPPER, *command]
    start = time.perf_counter()
    done = subprocess.run(wrapped, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise BenchmarkError(f"`{' '.join(command)}` failed with status {done.returncode}:\n{tail}")
    match = RSS_LINE.search(done.stderr)
    if match is None:
        raise BenchmarkError(f"no peak RSS in the output of `{' '.join(command)}`:\n{done.stderr[-2000:]}")
    return Sample(wall, int(match.group(1)) * 1024 / MB)


def variant_command(variant: str, source: Path, target: Path) -> list[str]:
    if variant == "rnninit":
        rnninit = Path(sys.executable).parent / "rnninit"
        program = str(rnninit) if rnninit.exists() else shutil.which("rnninit")
        if program is None:
            raise BenchmarkError("the rnninit console script is not installed next to this Python or on PATH")
        return [program, "apply", str(source), "--scheme", "keras", "--seed", "0", "--quiet", "--force",
                "-o", str(target)]
    if variant == "naive":
        return [sys.executable, str(Path(__file__).resolve()), "--run-naive", str(source), str(target)]
    if variant == "cp":
        return ["cp", str(source), str(target)]
    if variant == "cp+sync":
        return ["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", str(source), str(target)]
    raise ValueError(variant)


def output_path(source: Path, variant: str) -> Path:
    tag = variant.replace("+", "-")
    return source.with_name(f"out-{tag}{source.suffix}")


def bench_format(fmt: str, source: Path, variants: tuple[str, ...], repeat: int, timer: str | None) -> FormatResult:
    """Interleave the variants (and the in-process math) `repeat` times; keep rnninit's last output."""
    result = FormatResult(fmt, source.stat().st_size, samples={v: [] for v in variants})
    for round_index in range(repeat):
        for variant in variants:
            target = output_path(source, variant)
            target.unlink(missing_ok=True)
            os.sync()  # so that one run's pending write-back is not billed to the next (not timed)
            sample = measure(variant_command(variant, source, target), timer)
            result.samples[variant].append(sample)
            print(f"  {fmt:<11} round {round_index + 1}/{repeat}  {variant:<8} {sample.wall_s:7.2f} s "
                  f"{sample.peak_rss_mb:8.0f} MB", flush=True)
            if variant == "rnninit":
                result.output_bytes = target.stat().st_size
            else:
                target.unlink()  # keep the disk use down; only rnninit's output is verified
        result.math_s.append(time_math())
        print(f"  {fmt:<11} round {round_index + 1}/{repeat}  {'math':<8} {result.math_s[-1]:7.2f} s "
              "(in-process)", flush=True)
    return result


def time_math() -> float:
    """Seconds of rnninit_cli.init_(keras) on the state dict of an in-memory LSTM of the benchmark's shape."""
    import rnninit_cli

    state = lstm_state()
    start = time.perf_counter()
    rnninit_cli.init_(state, "keras", seed=0)
    return time.perf_counter() - start


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def time_torch_import(repeat: int) -> float:
    """Median wall time of a bare `python -c 'import torch'` (rnninit's fixed start-up cost)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------------
# Verifying rnninit's output with the official loaders.


def lstm_names(names: list[str]) -> list[str]:
    return [name for name in names if name.startswith("lstm.")]


def check_lstm(name: str, tensor: torch.Tensor, original: torch.Tensor) -> None:
    import torch

    if tensor.shape != original.shape or tensor.dtype != original.dtype:
        raise BenchmarkError(f"{name}: shape or dtype changed")
    rows = tensor.shape[0] // GATES
    if ".weight_hh" in name:
        matrix = tensor.double()
        error = (matrix.T @ matrix - torch.eye(matrix.shape[1], dtype=torch.float64)).abs().max().item()
        if error > 1e-4:
            raise BenchmarkError(f"{name}: WᵀW differs from I by {error:.2e}")
    elif ".weight_ih" in name:
        if torch.equal(tensor, original):
            raise BenchmarkError(f"{name}: unchanged")
    elif ".bias_ih" in name:
        expected = torch.zeros_like(tensor)
        expected[rows:2 * rows] = 1.0
        if not torch.equal(tensor, expected):
            raise BenchmarkError(f"{name}: not 0 with forget gate 1")
    elif ".bias_hh" in name and tensor.count_nonzero().item():
        raise BenchmarkError(f"{name}: not 0")


def equal_in_chunks(name: str, read: Any, original: Any, rows: int) -> None:
    """Compare an untouched tensor row chunk by row chunk (both sides are mmap-backed or slices)."""
    import torch

    for start in range(0, rows, COMPARE_ROWS):
        left = read[start:start + COMPARE_ROWS]
        right = original[start:start + COMPARE_ROWS]
        if not torch.equal(left, right):
            raise BenchmarkError(f"{name}: rows {start}..{start + COMPARE_ROWS} differ from the input")


def verify_pt(source: Path, output: Path) -> list[str]:
    import json

    import torch

    written = torch.load(output, weights_only=True, mmap=True)
    original = torch.load(source, weights_only=True, mmap=True)
    if list(written) != list(original):
        raise BenchmarkError("the output's keys differ from the input's")
    for name, tensor in written.items():
        if name.startswith("lstm."):
            check_lstm(name, tensor, original[name])
        else:
            equal_in_chunks(name, tensor, original[name], tensor.shape[0])
    with zipfile.ZipFile(output) as archive:
        record = next(n for n in archive.namelist() if n.endswith("/rnninit.json"))
        metadata = json.loads(archive.read(record))
    if metadata.get("rnninit.seed") != "0" or metadata.get("rnninit.scheme") != "keras":
        raise BenchmarkError(f"unexpected rnninit record: {metadata}")
    return [f"torch.load(weights_only=True, mmap=True) reads {len(written)} tensors",
            "every non-LSTM tensor equals the input's (compared in full)",
            f"{len(lstm_names(list(written)))} LSTM tensors: each weight_hh has WᵀW = I (max |err| ≤ 1e-4), "
            "weight_ih redrawn, bias_ih 0 with forget gate 1, bias_hh 0",
            f"{record} records seed 0, scheme keras"]


def verify_safetensors(source: Path, output: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(output, framework="pt") as written, safe_open(source, framework="pt") as original:
        names = list(written.keys())
        if sorted(names) != sorted(original.keys()):
            raise BenchmarkError("the output's keys differ from the input's")
        for name in names:
            if name.startswith("lstm."):
                check_lstm(name, written.get_tensor(name), original.get_tensor(name))
            else:
                rows = written.get_slice(name).get_shape()[0]
                equal_in_chunks(name, written.get_slice(name), original.get_slice(name), rows)
        metadata = written.metadata() or {}
    if metadata.get("rnninit.seed") != "0" or metadata.get("rnninit.scheme") != "keras":
        raise BenchmarkError(f"unexpected safetensors metadata: {metadata}")
    return [f"safetensors.safe_open reads {len(names)} tensors",
            "every non-LSTM tensor equals the input's (compared in full, by slices)",
            f"{len(lstm_names(names))} LSTM tensors: each weight_hh has WᵀW = I (max |err| ≤ 1e-4), "
            "weight_ih redrawn, bias_ih 0 with forget gate 1, bias_hh 0",
            "metadata records seed 0, scheme keras"]


# --------------------------------------------------------------------------------------------------
# Reporting.


def verdict(value: float, limit: float, unit: str) -> str:
    if value <= limit:
        return f"met ({value:.2f} {unit} ≤ {limit:.2f} {unit})"
    return f"MISSED by {value - limit:.2f} {unit} ({value / limit:.2f}× the limit {limit:.2f} {unit})"


def report(results: list[FormatResult], math_first: float, torch_import: float, load: list[str]) -> None:
    print()
    print(f"load average (1, 5, 15 min) at start / end: {load[0]} / {load[-1]}; first (cold) init_ call "
          f"{math_first:.2f} s; bare `python -c 'import torch'`: {torch_import:.2f} s")
    for result in results:
        size_mb = result.input_bytes / MB
        math_s = result.median_math
        print()
        print(f"{result.fmt}: input {size_mb:,.0f} MB ({result.input_bytes:,} B), rnninit output "
              f"{result.output_bytes:,} B; medians of {len(result.samples['rnninit'])} interleaved runs")
        print(f"  {'variant':<9} {'wall s':>8} {'min–max s':>13} {'peak RSS MB':>12} {'RSS/file':>9}")
        for variant, samples in result.samples.items():
            walls = [s.wall_s for s in samples]
            print(f"  {variant:<9} {result.median_wall(variant):8.2f} {min(walls):6.2f}–{max(walls):<6.2f} "
                  f"{result.median_rss(variant):12.0f} {result.median_rss(variant) / size_mb:9.3f}")
        print(f"  {'math':<9} {math_s:8.2f} {min(result.math_s):6.2f}–{max(result.math_s):<6.2f} "
              f"{'(in-process rnninit_cli.init_ on the LSTM alone)':>12}")
        rnninit_wall = result.median_wall("rnninit")
        print(f"  rnninit/naive wall {rnninit_wall / result.median_wall('naive'):.2f}, rnninit/cp wall "
              f"{rnninit_wall / result.median_wall('cp'):.2f}, rnninit/naive peak RSS "
              f"{result.median_rss('rnninit') / result.median_rss('naive'):.3f}")
        print("  targets:")
        print(f"    peak RSS ≤ {RSS_TARGET_FRACTION} × file size: "
              f"{verdict(result.median_rss('rnninit'), RSS_TARGET_FRACTION * size_mb, 'MB')}")
        print(f"    wall ≤ naive: {verdict(rnninit_wall, result.median_wall('naive'), 's')}")
        limit = result.median_wall("cp") + math_s + WALL_SLACK_S
        print(f"    wall ≤ cp + math + {WALL_SLACK_S:.0f} s: {verdict(rnninit_wall, limit, 's')}")
        if "cp+sync" in result.samples:
            print(f"    (information: wall ≤ cp+sync + math + {WALL_SLACK_S:.0f} s: "
                  f"{verdict(rnninit_wall, result.median_wall('cp+sync') + math_s + WALL_SLACK_S, 's')})")
        for baseline in ("cp", "cp+sync"):
            if baseline in result.samples:
                excess = result.excess_per_round(baseline)
                print(f"    (information: rnninit − {baseline} − math, paired per round: median "
                      f"{statistics.median(excess):+.2f} s, range {min(excess):+.2f}…{max(excess):+.2f} s; "
                      f"allowance {WALL_SLACK_S:.0f} s)")
        print("  output checks:")
        for line in result.checks:
            print(f"    ok: {line}")


# --------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="folder for the checkpoints (default: a new one under /tmp)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant, interleaved (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints and rnninit's outputs")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="scale of the embedding and head (0.05 for a quick check of this script)")
    parser.add_argument("--no-cp-sync", action="store_true", help="skip the informational cp+sync variant")
    parser.add_argument("--run-naive", nargs=2, type=Path, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeat < 1 or args.scale <= 0:
        parser.error("--repeat must be ≥ 1 and --scale > 0")
    return args


def check_disk(workdir: Path, scale: float) -> None:
    needed = DISK_NEEDED_AT_FULL_SCALE * estimated_bytes(scale) / estimated_bytes(1.0)
    free = shutil.disk_usage(workdir).free
    if free < needed:
        raise SystemExit(f"error: {workdir} has {free / GB:.1f} GB free; this run needs {needed / GB:.1f} GB "
                         "(two inputs and two outputs). Pass --workdir on a larger disk or a smaller --scale.")


def main() -> None:
    args = parse_args()
    if args.run_naive:
        run_naive(*args.run_naive)
        return
    timer = time_tool()
    made_workdir = args.workdir is None
    workdir: Path = Path(tempfile.mkdtemp(prefix="rnninit-bench-", dir="/tmp")) if made_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    variants = TARGET_VARIANTS if args.no_cp_sync else VARIANTS
    paths = input_paths(workdir)
    created = [*paths.values(), *(output_path(path, v) for path in paths.values() for v in VARIANTS)]
    try:
        check_disk(workdir, args.scale)
        print(f"workdir {workdir}; generating ~{estimated_bytes(args.scale) / GB:.2f} GB per format "
              "(not timed)...", flush=True)
        start = time.perf_counter()
        generate(paths, args.scale)
        print(f"generated in {time.perf_counter() - start:.0f} s", flush=True)
        load = [load_average()]
        math_first = time_math()  # the first call pays for lazy imports; the interleaved ones do not
        torch_import = time_torch_import(args.repeat)
        results = []
        for fmt, path in paths.items():
            result = bench_format(fmt, path, variants, args.repeat, timer)
            verify = verify_pt if fmt == "pt" else verify_safetensors
            result.checks = verify(path, output_path(path, "rnninit"))
            results.append(result)
        load.append(load_average())
        report(results, math_first, torch_import, load)
    except BenchmarkError as error:
        raise SystemExit(f"error: {error}") from None
    finally:
        if args.keep:
            print(f"\nkept the files in {workdir}")
        elif made_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for path in created:
                path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
