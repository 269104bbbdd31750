"""Benchmark every rnninit command against the naive torch script, at many layers and at several sizes (issue 22).

The naive script is the ten lines a competent user writes with torch: load the whole dict
(`torch.load(weights_only=True)` / `safetensors.torch.load_file`), loop over its tensors (every tensor of these
checkpoints is an LSTM parameter, 4 gate blocks on dim 0) and either print name, gate, mean, std, min and max of
each gate block (`naive inspect`, the baseline of inspect and verify), or print per gate block max |b − a| and the
mean and std of both files (`naive diff`), or redraw them with `torch.nn.init` by the keras scheme's effective rules
(`naive apply`: seed 0, `xavier_uniform_` over the whole weight_ih, `orthogonal_` over the whole weight_hh, biases
0 and the forget block of bias_ih 1) and save the whole dict (`torch.save` / `save_file`). Each command runs as its
own process from the repository root (`sys.executable -m rnninit_cli`, `sys.executable -c NAIVE`), stdout to
/dev/null (not a terminal), peak RSS from `/usr/bin/time -f %M`, in a new session killed whole after `--timeout`.

--many: checkpoints of many small layers, `--kind cells` (default): N `nn.LSTMCell(8, 16)` under `cell0.` …
(default N = 10,000); `--kind lstms`: N `nn.LSTM(16, 32, 2)` under `lstm0.` … (default N = 2,000); written with
torch.manual_seed(0) and PyTorch's default init as .pt and .safetensors, plus REF = `rnninit apply IN --scheme
keras --seed 0 -q -o REF`, and the same three files for N = 1 (the start-up). Per round, interleaved, on N and on 1:

    naive inspect  IN.pt                     inspect IN.pt                  inspect IN.pt --json
    verify REF.pt --scheme keras (exit 0)    naive diff IN.pt REF.pt        diff IN.pt REF.pt (exit 1)
    naive apply IN.pt OUT.pt                 apply IN.pt --scheme keras --seed 0 -o OUT.pt (its per-layer table)
    apply ... -q -o OUT.pt                   naive apply IN.safetensors OUT.safetensors
    apply IN.safetensors --scheme keras --seed 0 -o OUT.safetensors

It prints the medians (wall s, min–max, peak RSS MB), ms per layer (cells) or per module (lstms) = (wall −
start-up) / N (start-up: the same command on N = 1) and a PASS/FAIL line per target: inspect, verify, diff, apply
and apply .safetensors ≤ 2.0 × their naive counterpart; apply -q and inspect --json ≤ 1.0 ×.

--scaling: one table, rnninit beside naive, for inspect, inspect --json, verify, diff, apply and apply -q (.pt) at
three sizes (`--sizes`, default 100MB 500MB 2.5GB: `nn.LSTM(1536, 768, num_layers=L, bidirectional=True)`, every
layer 56.7 MB, so L = 2, 9, 44: 113 MB, 510 MB, 2,494 MB) and three layer counts (`--counts`, default 100 1000 10000
`nn.LSTMCell(8, 16)`): wall seconds, their ratio, and s/GB = (wall − start-up) / GB of the input or ms/layer =
(wall − start-up) / N. The start-up is the same command on one cell, run in every round of every case (the median
of them all). The 2.5 GB case needs about 7.5 GB of disk (its input, REF and one output at a time); each case's
files are deleted once measured, unless `--keep`.

Generation (not timed) runs in a child process; the files are deterministic, so files already in `--workdir` are
reused. Timings are reported, never asserted: the exit status is 0 whatever the results. Run by hand:

    .venv/bin/python benchmarks/bench_scaling.py --many [--kind cells|lstms] [--n N] [--rounds R]
    .venv/bin/python benchmarks/bench_scaling.py --scaling [--sizes 100MB 500MB 2.5GB] [--counts 100 1000 10000]
    (both accept [--rounds R] [--timeout S] [--workdir DIR] [--keep]; --many and --scaling can be combined)
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MB = 10**6
GB = 10**9
REPO = Path(__file__).resolve().parents[1]
TIME_BINARY = "/usr/bin/time"
RNNINIT = (sys.executable, "-m", "rnninit_cli")
GATES = 4
NAIVE_LIMIT = 2.0  # inspect, verify, diff, apply (with its table): ≤ 2.0 × the naive script
QUIET_LIMIT = 1.0  # apply -q, inspect --json: ≤ 1.0 × the naive script
TAIL_LINES = 6
DEFAULT_TIMEOUT_S = 1800.0
DEFAULT_MANY = {"cells": 10_000, "lstms": 2_000}
MANY_MODULES = {"cells": "nn.LSTMCell(8, 16)", "lstms": "nn.LSTM(16, 32, 2)"}
MANY_PREFIXES = {"cells": "cell", "lstms": "lstm"}
DEFAULT_SIZES = ("100MB", "500MB", "2.5GB")
DEFAULT_COUNTS = (100, 1000, 10_000)
SIZE_HIDDEN = 768
SIZE_INPUT = 2 * SIZE_HIDDEN  # a bidirectional layer's output: every layer then has the same shapes
FILL_ROWS = 1024  # rows filled per chunk while generating
DISK_MARGIN = 1.05
RNNINIT_TEMP_SUFFIX = ".rnninit-tmp"

NAIVE_LOAD = """\
import sys
import torch
from safetensors.torch import load_file, save_file
def load(path):
    return load_file(path) if path.endswith(".safetensors") else torch.load(path, weights_only=True)
"""

NAIVE_INSPECT = NAIVE_LOAD + """\
for name, tensor in load(sys.argv[1]).items():
    for gate, block in zip("ifgo", tensor.float().chunk(4)):
        stats = torch.stack([block.mean(), block.std(), block.min(), block.max()])
        print(name, gate, *stats.tolist())
"""

NAIVE_DIFF = NAIVE_LOAD + """\
before, after = load(sys.argv[1]), load(sys.argv[2])
for name, old in before.items():
    for gate, a, b in zip("ifgo", old.float().chunk(4), after[name].float().chunk(4)):
        stats = torch.stack([(b - a).abs().max(), a.mean(), a.std(), b.mean(), b.std()])
        print(name, gate, *stats.tolist())
"""

NAIVE_APPLY = NAIVE_LOAD + """\
state = load(sys.argv[1])
torch.manual_seed(0)
with torch.no_grad():
    for name, tensor in state.items():
        kind = name.rsplit(".", 1)[-1]
        if kind.startswith("weight_ih"):
            torch.nn.init.xavier_uniform_(tensor)
        elif kind.startswith("weight_hh"):
            torch.nn.init.orthogonal_(tensor)
        elif kind.startswith("bias"):
            tensor.zero_()
            if kind.startswith("bias_ih"):
                tensor.chunk(4)[1].fill_(1.0)
(save_file if sys.argv[2].endswith(".safetensors") else torch.save)(state, sys.argv[2])
"""

# Used when /usr/bin/time is missing: the wrapper times its one child and reports the child's peak RSS.
RUSAGE_WRAPPER = """\
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as report:
    report.write(f"{wall} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n")
sys.exit(code)
"""

# rnninit command → (its naive counterpart, the target ratio); the order is the tables'.
BASELINES: dict[str, tuple[str, float]] = {
    "inspect": ("naive inspect", NAIVE_LIMIT),
    "inspect --json": ("naive inspect", QUIET_LIMIT),
    "verify": ("naive inspect", NAIVE_LIMIT),
    "diff": ("naive diff", NAIVE_LIMIT),
    "apply": ("naive apply", NAIVE_LIMIT),
    "apply -q": ("naive apply", QUIET_LIMIT),
    "apply .safetensors": ("naive apply .safetensors", NAIVE_LIMIT),
}
SAFETENSORS_LABELS = ("naive apply .safetensors", "apply .safetensors")


class BenchmarkError(Exception):
    """A step of the benchmark failed (not a slow result: timings are reported, never asserted)."""


@dataclass(frozen=True)
class Inputs:
    """One case's files: IN as .pt (and .safetensors for --many), REF = IN applied with keras, seed 0."""

    pt: Path
    ref: Path
    safetensors: Path | None = None


@dataclass(frozen=True)
class Command:
    case: str
    label: str
    argv: tuple[str, ...]
    expected_status: int = 0
    output: Path | None = None  # removed before and after each run


@dataclass
class Sample:
    wall_s: float | None  # None: timed out
    peak_rss_mb: float | None
    status: int | None
    stderr_tail: str = ""


@dataclass
class Measured:
    command: Command
    samples: list[Sample] = field(default_factory=list)

    @property
    def timed_out(self) -> bool:
        return any(sample.wall_s is None for sample in self.samples)

    @property
    def wall(self) -> float | None:
        """Median wall seconds; None after a timeout or before any run."""
        if not self.samples or self.timed_out:
            return None
        return statistics.median(sample.wall_s for sample in self.samples if sample.wall_s is not None)

    @property
    def spread(self) -> str:
        walls = [sample.wall_s for sample in self.samples if sample.wall_s is not None]
        return f"{min(walls):.2f}–{max(walls):.2f}" if walls and not self.timed_out else ""

    @property
    def peak_rss(self) -> float | None:
        values = [sample.peak_rss_mb for sample in self.samples if sample.peak_rss_mb is not None]
        return statistics.median(values) if values else None

    @property
    def statuses(self) -> str:
        return ",".join(str(s) for s in sorted({sample.status for sample in self.samples if sample.status is not None}))

    @property
    def unexpected(self) -> Sample | None:
        """The first run that exited with another status than expected."""
        return next((sample for sample in self.samples
                     if sample.status is not None and sample.status != self.command.expected_status), None)


# --------------------------------------------------------------------------------------------------
# Generating the checkpoints (not timed; in a child process, so that this one stays small).


def many_state(kind: str, count: int) -> dict[str, torch.Tensor]:
    """`count` freshly built modules (PyTorch default init, seed 0) under prefixes cell0. … or lstm0. …"""
    import torch

    torch.manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    for index in range(count):
        module = torch.nn.LSTMCell(8, 16) if kind == "cells" else torch.nn.LSTM(16, 32, 2)
        prefix = f"{MANY_PREFIXES[kind]}{index}."
        state.update({prefix + name: tensor.detach().clone() for name, tensor in module.state_dict().items()})
    return state


def layer_bytes() -> int:
    """Bytes of one bidirectional layer: 2 directions × 4h × (input + h + 2) float32 values."""
    return 2 * GATES * SIZE_HIDDEN * (SIZE_INPUT + SIZE_HIDDEN + 2) * 4


def sized_state(layers: int) -> dict[str, torch.Tensor]:
    """nn.LSTM(SIZE_INPUT, SIZE_HIDDEN, layers, bidirectional=True)'s names, U(−1/√h, 1/√h) filled in chunks."""
    import torch

    generator = torch.Generator().manual_seed(0)
    bound = 1 / math.sqrt(SIZE_HIDDEN)
    rows = GATES * SIZE_HIDDEN
    shapes = {"weight_ih": (rows, SIZE_INPUT), "weight_hh": (rows, SIZE_HIDDEN), "bias_ih": (rows,), "bias_hh": (rows,)}
    state: dict[str, torch.Tensor] = {}
    for layer in range(layers):
        for direction in ("", "_reverse"):
            for kind, shape in shapes.items():
                tensor = torch.empty(shape)
                for start in range(0, rows, FILL_ROWS):
                    tensor[start:start + FILL_ROWS].uniform_(-bound, bound, generator=generator)
                state[f"lstm.{kind}_l{layer}{direction}"] = tensor
    return state


def write_atomically(state: dict[str, torch.Tensor], path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    partial = path.with_name(path.name + ".partial")
    if path.suffix == ".safetensors":
        save_file(state, partial)
    else:
        torch.save(state, partial)
    os.replace(partial, path)


def generate_in_child(kind: str, count: int, targets: list[Path]) -> None:
    """The hidden --generate entry point: build the state dict once, write it to each target."""
    state = sized_state(count) if kind == "sized" else many_state(kind, count)
    for path in targets:
        write_atomically(state, path)


class Workdir:
    """The checkpoints' folder: makes missing files (deterministic, so existing ones are reused), removes its own."""

    def __init__(self, path: Path, keep: bool) -> None:
        self.path = path
        self.keep = keep
        self.created: list[Path] = []

    def inputs(self, kind: str, count: int, with_safetensors: bool) -> Inputs:
        stem = (f"lstm{SIZE_INPUT}x{SIZE_HIDDEN}x{count}bi" if kind == "sized" else f"{kind}{count}")
        found = Inputs(self.path / f"{stem}.pt", self.path / f"{stem}-keras.pt",
                       self.path / f"{stem}.safetensors" if with_safetensors else None)
        missing = [path for path in (found.pt, found.safetensors) if path is not None and not path.exists()]
        ref_missing = not found.ref.exists()
        started = time.perf_counter()
        if missing:
            self.run_untimed([sys.executable, str(Path(__file__).resolve()), "--generate", kind, str(count),
                              *map(str, missing)])
            self.created += missing
        if ref_missing:
            self.run_untimed([*RNNINIT, "apply", str(found.pt), "--scheme", "keras", "--seed", "0", "-q", "-o",
                              str(found.ref)])
            self.created.append(found.ref)
        made = missing or ref_missing
        note = f"wrote {stem} in {time.perf_counter() - started:.1f} s" if made else f"reusing {stem}"
        print(f"{note} ({found.pt.stat().st_size:,} B .pt)", file=sys.stderr, flush=True)
        return found

    @staticmethod
    def run_untimed(argv: list[str]) -> None:
        done = subprocess.run(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, errors="replace", check=False)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-TAIL_LINES:])
            raise BenchmarkError(f"generating the checkpoints failed ({done.returncode}): {' '.join(argv[:6])} "
                                 f"...:\n{tail}")

    def remove(self, inputs: Inputs) -> None:
        """Delete a case's files if this run made them and --keep is not given."""
        if self.keep:
            return
        for path in (inputs.pt, inputs.ref, inputs.safetensors):
            if path is not None and path in self.created:
                path.unlink(missing_ok=True)
                self.created.remove(path)

    def clean(self) -> None:
        if not self.keep:
            for path in self.created:
                path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# The commands, and running one.


def case_commands(case: str, inputs: Inputs, workdir: Path, with_safetensors: bool) -> list[Command]:
    """rnninit beside the naive scripts on one case, in the order of a round."""
    pt, ref = str(inputs.pt), str(inputs.ref)
    keras = ("--scheme", "keras", "--seed", "0")
    out_pt, naive_pt = workdir / "out-rnninit.pt", workdir / "out-naive.pt"
    found = [
        Command(case, "naive inspect", (sys.executable, "-c", NAIVE_INSPECT, pt)),
        Command(case, "inspect", (*RNNINIT, "inspect", pt)),
        Command(case, "inspect --json", (*RNNINIT, "inspect", pt, "--json")),
        Command(case, "verify", (*RNNINIT, "verify", ref, "--scheme", "keras")),
        Command(case, "naive diff", (sys.executable, "-c", NAIVE_DIFF, pt, ref)),
        Command(case, "diff", (*RNNINIT, "diff", pt, ref), expected_status=1),
        Command(case, "naive apply", (sys.executable, "-c", NAIVE_APPLY, pt, str(naive_pt)), output=naive_pt),
        Command(case, "apply", (*RNNINIT, "apply", pt, *keras, "-o", str(out_pt)), output=out_pt),
        Command(case, "apply -q", (*RNNINIT, "apply", pt, *keras, "-q", "-o", str(out_pt)), output=out_pt),
    ]
    if with_safetensors:
        assert inputs.safetensors is not None
        st = str(inputs.safetensors)
        out_st, naive_st = workdir / "out-rnninit.safetensors", workdir / "out-naive.safetensors"
        found += [
            Command(case, "naive apply .safetensors", (sys.executable, "-c", NAIVE_APPLY, st, str(naive_st)),
                    output=naive_st),
            Command(case, "apply .safetensors", (*RNNINIT, "apply", st, *keras, "-o", str(out_st)), output=out_st),
        ]
    return found


def time_tool() -> str | None:
    """GNU time when it works here (`-f %M`: the child's own peak RSS in kB), else None (the Python wrapper)."""
    if not Path(TIME_BINARY).exists():
        return None
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        done = subprocess.run([TIME_BINARY, "-f", "%M", "-o", report.name, "true"], check=False,
                              capture_output=True)
        try:
            int(Path(report.name).read_text().split()[-1])
        except (ValueError, IndexError):
            return None
    return TIME_BINARY if done.returncode == 0 else None


def measure(command: Command, timer: str | None, timeout_s: float) -> Sample:
    """Run `command` once in its own session, stdout to /dev/null; kill its whole group after `timeout_s`."""
    if command.output is not None:
        command.output.unlink(missing_ok=True)
    os.sync()  # so that one run's pending write-back is not billed to the next (not timed)
    try:
        with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
            if timer:
                wrapped = [timer, "-f", "%M", "-o", report.name, *command.argv]
            else:
                wrapped = [sys.executable, "-c", RUSAGE_WRAPPER, report.name, *command.argv]
            start = time.perf_counter()
            process = subprocess.Popen(wrapped, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
            try:
                _, stderr = process.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                return Sample(None, None, None)
            wall = time.perf_counter() - start
            fields = Path(report.name).read_text().split()
    finally:
        if command.output is not None:
            command.output.unlink(missing_ok=True)
            # a killed rnninit leaves its temporary output (rnninit_cli/formats/atomic.py) beside the target
            for leftover in command.output.parent.glob(f".*{RNNINIT_TEMP_SUFFIX}"):
                leftover.unlink(missing_ok=True)
    tail = "\n".join(stderr.strip().splitlines()[-TAIL_LINES:])
    if not fields:
        return Sample(wall, None, process.returncode, tail)
    if timer:  # GNU time writes "Command exited with non-zero status N" before the format's output
        return Sample(wall, int(fields[-1]) * 1024 / MB, process.returncode, tail)
    return Sample(float(fields[0]), int(fields[1]) * 1024 / MB, process.returncode, tail)


def run_rounds(results: list[Measured], rounds: int, timer: str | None, timeout_s: float) -> None:
    """Every command once per round, in the same order, samples appended; one that timed out is not run again."""
    for round_index in range(rounds):
        for result in results:
            if result.timed_out:
                continue
            sample = measure(result.command, timer, timeout_s)
            result.samples.append(sample)
            shown = "timeout" if sample.wall_s is None else f"{sample.wall_s:8.2f} s"
            rss = "" if sample.peak_rss_mb is None else f"{sample.peak_rss_mb:8.0f} MB"
            status = "" if sample.status is None else f"exit {sample.status}"
            print(f"  round {round_index + 1}/{rounds}  {result.command.case:<14} {result.command.label:<26} "
                  f"{shown:>10} {rss:>11}  {status}", file=sys.stderr, flush=True)


def warm_up(planned: Iterable[Command], timer: str | None, timeout_s: float) -> None:
    """Untimed: fill the page cache with the interpreter's, torch's and rnninit's files."""
    for command in planned:
        if command.label in ("naive inspect", "inspect"):
            measure(command, timer, timeout_s)


# --------------------------------------------------------------------------------------------------
# Reporting.


def seconds(value: float | None) -> str:
    return "timeout" if value is None else f"{value:.2f}"


def per_unit(measured: Measured, startup: Measured | None, units: float) -> float | None:
    """(median wall − the start-up's median wall) / units; None when either is missing."""
    if measured.wall is None or startup is None or startup.wall is None:
        return None
    return (measured.wall - startup.wall) / units


def ratio_of(top: Measured, bottom: Measured) -> tuple[float | None, str]:
    """The ratio of the medians (None after a timeout), and why it cannot count ("" when it can)."""
    for measured in (top, bottom):
        if measured.timed_out:
            return None, f"`{measured.command.label}` timed out"
    if top.wall is None or bottom.wall is None:
        return None, "not measured"
    for measured in (top, bottom):
        if (sample := measured.unexpected) is not None:
            return top.wall / bottom.wall, (f"`{measured.command.label}` exited {sample.status}, "
                                            f"expected {measured.command.expected_status}")
    return top.wall / bottom.wall, ""


def unexpected_notes(measured: Iterable[Measured]) -> list[str]:
    lines = []
    for result in measured:
        if (sample := result.unexpected) is not None:
            lines.append(f"  NOTE: {result.command.case}: `{result.command.label}` exited {sample.status}, expected "
                         f"{result.command.expected_status}; the end of its stderr:")
            lines += [f"      {line}" for line in sample.stderr_tail.splitlines()]
    return lines


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def cpu_model() -> str:
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        found = None
    return found.group(1).strip() if found else (platform.processor() or "unknown CPU")


def version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def environment_lines(timer: str | None, rounds: int, timeout_s: float) -> list[str]:
    changed = len([line for line in git("status", "--porcelain").splitlines() if line.strip()])
    rss_source = (f"{TIME_BINARY} -f %M (the child's own peak)" if timer else
                  "resource.getrusage(RUSAGE_CHILDREN) in a small wrapper process (/usr/bin/time missing)")
    lines = [f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs ({cpu_model()}), Python "
             f"{platform.python_version()}, torch {version_of('torch')}, numpy {version_of('numpy')}, safetensors "
             f"{version_of('safetensors')}; rnninit at {git('rev-parse', '--short', 'HEAD')} with {changed} "
             "changed/untracked paths in the working tree",
             f"{rounds} interleaved round(s), medians; timeout {timeout_s:g} s per command; stdout to /dev/null; "
             f"peak RSS from {rss_source}"]
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        lines.append("note: PYTHONDONTWRITEBYTECODE is set: run `python -m compileall rnninit_cli` first, or every "
                     "rnninit run compiles its modules (~0.1 s)")
    return lines


def sources_fingerprint() -> str:
    """A digest of rnninit_cli's sources: the report warns when they changed while the commands ran."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "rnninit_cli").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


class Session:
    """The header's facts, taken at the start and the end of a part."""

    def __init__(self, timer: str | None, rounds: int, timeout_s: float) -> None:
        self.header = environment_lines(timer, rounds, timeout_s)
        self.load = [load_average()]
        self.fingerprints = [sources_fingerprint()]

    def finish(self) -> list[str]:
        self.load.append(load_average())
        self.fingerprints.append(sources_fingerprint())
        lines = [*self.header, f"load average (1, 5, 15 min) at start / end: {self.load[0]} / {self.load[-1]}"]
        if self.fingerprints[0] != self.fingerprints[-1]:
            lines.append("WARNING: rnninit_cli's sources changed while the commands ran: the rounds mix versions")
        return lines


# --------------------------------------------------------------------------------------------------
# --many


def run_many(args: argparse.Namespace, workdir: Workdir, timer: str | None) -> None:
    count = args.n if args.n is not None else DEFAULT_MANY[args.kind]
    rounds = args.rounds or 3
    module, prefix = MANY_MODULES[args.kind], MANY_PREFIXES[args.kind]
    unit = "layer" if args.kind == "cells" else "module"
    print(f"--many: {count:,} {module} and 1 (start-up), in {workdir.path} (not timed)...", file=sys.stderr,
          flush=True)
    big = workdir.inputs(args.kind, count, with_safetensors=True)
    one = workdir.inputs(args.kind, 1, with_safetensors=True)
    case_n, case_1 = f"N={count:,}", "start-up"
    planned = [*case_commands(case_n, big, workdir.path, True), *case_commands(case_1, one, workdir.path, True)]
    session = Session(timer, rounds, args.timeout)
    warm_up([command for command in planned if command.case == case_1], timer, args.timeout)
    measured = [Measured(command) for command in planned]
    run_rounds(measured, rounds, timer, args.timeout)
    results = {(m.command.case, m.command.label): m for m in measured}

    print()
    print(f"== --many --kind {args.kind}: {count:,} {module} under {prefix}0. … {prefix}{count - 1}.")
    print("\n".join(session.finish()))
    safetensors_bytes = big.safetensors.stat().st_size if big.safetensors else 0
    print(f"IN: {big.pt.stat().st_size:,} B .pt, {safetensors_bytes:,} B .safetensors "
          f"(torch.manual_seed(0), PyTorch default init); REF: IN applied with keras, seed 0; start-up: the same "
          f"command on 1 {module}; ms/{unit} = (wall − start-up) / {count:,}")
    print(f"  {'command':<26}{'wall s':>9}{'min–max s':>15}{'peak RSS MB':>13}{'exit':>6}{'start-up s':>12}"
          f"{f'ms/{unit}':>11}   ratio")
    for result in (m for m in measured if m.command.case == case_n):
        label = result.command.label
        startup = results[(case_1, label)]
        rate = per_unit(result, startup, count / 1000)
        ratio = ""
        if label in BASELINES:
            baseline, limit = BASELINES[label]
            value, reason = ratio_of(result, results[(case_n, baseline)])
            shown = "n/a" if value is None else f"{value:.2f}" + ("!" if reason else "")
            ratio = f"{shown} × {baseline} (target ≤ {limit})"
        rss = "" if result.peak_rss is None else f"{result.peak_rss:.0f}"
        print(f"  {label:<26}{seconds(result.wall):>9}{result.spread:>15}{rss:>13}{result.statuses:>6}"
              f"{seconds(startup.wall):>12}{'' if rate is None else f'{rate:.2f}':>11}   {ratio}")
    notes = unexpected_notes(measured)
    if notes:
        print("  (a ratio marked ! involves an unexpected exit status and does not count)")
        print("\n".join(notes))
    print("targets:")
    for label, (baseline, limit) in BASELINES.items():
        value, reason = ratio_of(results[(case_n, label)], results[(case_n, baseline)])
        if value is None or reason:
            print(f"  FAIL  {label} ≤ {limit} × {baseline}: {reason}")
        else:
            print(f"  {'PASS' if value <= limit else 'FAIL'}  {label} = {value:.2f} × {baseline} (target ≤ {limit})")
    sys.stdout.flush()
    workdir.remove(big)


# --------------------------------------------------------------------------------------------------
# --scaling


def parse_size(text: str) -> int:
    """'100MB', '2.5GB', '750M' → bytes (10⁶ and 10⁹)."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([MG])B?\s*", text, re.IGNORECASE)
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 100MB or 2.5GB")
    return round(float(found.group(1)) * (MB if found.group(2).upper() == "M" else GB))


def layers_for(size: int) -> int:
    return max(1, round(size / layer_bytes()))


def count_label(count: int) -> str:
    return f"{count:,} cells"


def check_disk(path: Path, sizes: list[int], keep: bool) -> None:
    """The largest size case needs its input, REF and one output at once; with --keep the others' stay too."""
    if not sizes:
        return
    per_case = [layers_for(size) * layer_bytes() for size in sizes]
    needed = (2 * sum(per_case) + max(per_case) if keep else 3 * max(per_case)) * DISK_MARGIN
    free = shutil.disk_usage(path).free
    if free < needed:
        raise BenchmarkError(f"{path} has {free / GB:.1f} GB free; --scaling needs {needed / GB:.1f} GB. Pass "
                             "--workdir on a larger disk, or leave the largest case out of --sizes.")


def scaling_row(case: str, label: str, results: dict[tuple[str, str], Measured], startup_case: str,
                units: float | None, unit: str) -> str:
    """One line of the scaling table; units None for the start-up case (no per-unit column)."""
    mine = results[(case, label)]
    baseline = results[(case, BASELINES[label][0])]
    value, reason = ratio_of(mine, baseline)
    ratio = "n/a" if value is None else f"{value:.2f}" + ("!" if reason else "")
    rates = []
    for measured in (mine, baseline):
        rate = per_unit(measured, results.get((startup_case, measured.command.label)), units) if units else None
        rates.append("" if rate is None else f"{rate:.2f} {unit}")
    rss = ["" if m.peak_rss is None else f"{m.peak_rss:.0f}" for m in (mine, baseline)]
    return (f"  {case:<15}{label:<16}{seconds(mine.wall):>11}{seconds(baseline.wall):>10}{ratio:>8}"
            f"{rates[0]:>18}{rates[1]:>18}{rss[0]:>12}{rss[1]:>10}")


def run_scaling(args: argparse.Namespace, workdir: Workdir, timer: str | None) -> None:
    rounds = args.rounds or 1
    labels = [label for label in BASELINES if label not in SAFETENSORS_LABELS]
    sizes = [(text, parse_size(text)) for text in args.sizes]
    check_disk(workdir.path, [size for _, size in sizes], args.keep)
    session = Session(timer, rounds, args.timeout)
    startup_case = "start-up"
    legend = []
    measured: list[Measured] = []

    print(f"--scaling in {workdir.path}: generating and measuring case by case (generation not timed)...",
          file=sys.stderr, flush=True)
    one = workdir.inputs("cells", 1, with_safetensors=False)
    startups = [Measured(command) for command in case_commands(startup_case, one, workdir.path, False)]
    measured.extend(startups)
    warm_up((m.command for m in startups), timer, args.timeout)
    legend.append(f"  {startup_case}: 1 nn.LSTMCell(8, 16), {one.pt.stat().st_size:,} B; run in every round of "
                  "every case, before its commands (the medians pool them all)")

    def measure_case(case: str, inputs: Inputs) -> None:
        planned = [Measured(command) for command in case_commands(case, inputs, workdir.path, False)]
        measured.extend(planned)
        run_rounds(startups + planned, rounds, timer, args.timeout)

    units: dict[str, tuple[float, str]] = {}
    for text, size in sizes:
        layers = layers_for(size)
        case = text
        inputs = workdir.inputs("sized", layers, with_safetensors=False)
        file_bytes = inputs.pt.stat().st_size
        legend.append(f"  {case}: nn.LSTM({SIZE_INPUT}, {SIZE_HIDDEN}, num_layers={layers}, bidirectional=True), "
                      f"{file_bytes:,} B")
        units[case] = (file_bytes / GB, "s/GB")
        measure_case(case, inputs)
        workdir.remove(inputs)
    for count in args.counts:
        case = count_label(count)
        inputs = workdir.inputs("cells", count, with_safetensors=False)
        legend.append(f"  {case}: {count:,} nn.LSTMCell(8, 16) under cell0. …, {inputs.pt.stat().st_size:,} B")
        units[case] = (count / 1000, "ms/layer")
        measure_case(case, inputs)
        workdir.remove(inputs)
    if not (sizes or args.counts):
        run_rounds(startups, rounds, timer, args.timeout)

    results = {(m.command.case, m.command.label): m for m in measured}
    print()
    print("== --scaling: rnninit beside the naive script (.pt; IN from torch.manual_seed(0), REF = IN applied with "
          "keras, seed 0)")
    print("\n".join(session.finish()))
    print("cases:")
    print("\n".join(legend))
    print("per unit = (wall − the same command's start-up wall) / GB of the input (s/GB) or / layers × 1000 "
          "(ms/layer); naive: inspect, inspect --json, verify → naive inspect; diff → naive diff; apply, apply -q "
          "→ naive apply")
    print(f"  {'case':<15}{'command':<16}{'rnninit s':>11}{'naive s':>10}{'ratio':>8}{'rnninit/unit':>18}"
          f"{'naive/unit':>18}{'rnninit MB':>12}{'naive MB':>10}")
    for case in [startup_case, *(text for text, _ in sizes), *map(count_label, args.counts)]:
        for label in labels:
            unit_count, unit = units.get(case, (None, ""))
            print(scaling_row(case, label, results, startup_case, unit_count, unit))
    notes = unexpected_notes(measured)
    if notes:
        print("  (a ratio marked ! involves an unexpected exit status)")
        print("\n".join(notes))
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--many", action="store_true", help="part 1: many small layers, with targets")
    parser.add_argument("--kind", choices=sorted(DEFAULT_MANY), default="cells",
                        help="--many: cells = N nn.LSTMCell(8, 16); lstms = N nn.LSTM(16, 32, 2) (default cells)")
    parser.add_argument("--n", type=int, help="--many: how many modules (default 10,000 cells / 2,000 lstms)")
    parser.add_argument("--scaling", action="store_true", help="part 2: s/GB and ms/layer at several sizes")
    parser.add_argument("--sizes", nargs="*", default=list(DEFAULT_SIZES),
                        help="--scaling: checkpoint sizes (default 100MB 500MB 2.5GB; none: no size case)")
    parser.add_argument("--counts", nargs="*", type=int, default=list(DEFAULT_COUNTS),
                        help="--scaling: numbers of nn.LSTMCell(8, 16) (default 100 1000 10000; none: no count case)")
    parser.add_argument("--rounds", type=int, help="interleaved runs per command; medians (default --many 3, "
                        "--scaling 1)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds per command before its process group is killed (default {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--workdir", type=Path, help="folder for the checkpoints; files already there are reused "
                        "(default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints (and the temporary folder)")
    parser.add_argument("--generate", nargs="+", help=argparse.SUPPRESS)  # KIND COUNT PATH...: the child's job
    args = parser.parse_args()
    if args.generate:
        return args
    if not (args.many or args.scaling):
        parser.error("choose --many, --scaling or both")
    if (args.rounds is not None and args.rounds < 1) or args.timeout <= 0 or (args.n is not None and args.n < 1):
        parser.error("--rounds and --n must be ≥ 1 and --timeout > 0")
    if any(count < 1 for count in args.counts):
        parser.error("--counts must be ≥ 1")
    for text in args.sizes:
        try:
            parse_size(text)
        except argparse.ArgumentTypeError as error:
            parser.error(str(error))
    return args


def main() -> None:
    args = parse_args()
    if args.generate:
        kind, count, *targets = args.generate
        generate_in_child(kind, int(count), [Path(target) for target in targets])
        return
    made = args.workdir is None
    path: Path = Path(tempfile.mkdtemp(prefix="rnninit-bench-scaling-")) if made else args.workdir
    path.mkdir(parents=True, exist_ok=True)
    workdir = Workdir(path, args.keep)
    timer = time_tool()
    try:
        if args.many:
            run_many(args, workdir, timer)
        if args.scaling:
            run_scaling(args, workdir, timer)
    except BenchmarkError as error:
        raise SystemExit(f"error: {error}") from None
    finally:
        workdir.clean()
        if made and not args.keep:
            shutil.rmtree(path, ignore_errors=True)
        elif args.keep:
            print(f"kept the checkpoints in {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
