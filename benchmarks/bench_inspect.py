"""Benchmark `rnninit inspect`, `verify` and `diff` against a naive load-and-print-stats script (issue 11 §2, §3),
and `inspect --wide` against `inspect` (issue 22).

Generates (not timed) the state dicts of `nn.LSTM(512, 1024, num_layers=2, bidirectional=True)` (151 MB) and
`nn.LSTM(1024, 2048, num_layers=3, bidirectional=True)` (1.0 GB) with `torch.save`, two seeds each (the second
copy is what `diff` compares against), and of `nn.LSTM(32, 64, 2)` as .pt and .safetensors, in float32, bfloat16
and float16 (issue 22: narrow dtypes read without ml_dtypes' import). Then runs, as
separate processes, interleaved, `--rounds` times each (stdout to /dev/null, peak RSS from `/usr/bin/time`):

    naive          python -c: torch.load(weights_only=True), print name, mean, std of each tensor (float32)
    inspect        python -m rnninit_cli inspect FILE
    inspect --json python -m rnninit_cli inspect FILE --json
    inspect --wide python -m rnninit_cli inspect FILE --wide
    verify         python -m rnninit_cli verify FILE --scheme pytorch    (exit 0 expected)
    naive diff     python -c: load both files, print mean and std of each tensor's difference
    diff           python -m rnninit_cli diff A B                        (exit 1 expected)
    import torch   python -c "import torch"
    startup        python -m rnninit_cli inspect small.pt / small.safetensors, and small-bf16.*, small-f16.*

and prints the medians, the ratios next to the targets of issues 11 and 22, and PASS/FAIL per target. Timings are
reported, never asserted: the exit status is 0 whatever the results. Run by hand:

    .venv/bin/python benchmarks/bench_inspect.py [--rounds N] [--skip-large] [--timeout S] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MB = 10**6
GB = 10**9
REPO = Path(__file__).resolve().parents[1]
TIME_BINARY = "/usr/bin/time"
NAIVE_LIMIT = 1.5  # inspect, inspect --json, verify: ≤ 1.5 × the naive script
DIFF_LIMIT = 1.0  # diff ≤ 1.0 × the naive diff script (issue 22)
DIFF_RSS_LIMIT = 0.5  # diff's peak RSS ≤ 0.5 × the sizes of the two files it compares (issue 22)
JSON_LIMIT = 1.0  # inspect --json ≤ 1.0 × inspect
WIDE_LIMIT = 3.0  # inspect --wide ≤ 3.0 × inspect (issue 22)
STARTUP_LIMIT = 0.3  # inspect of a small file ≤ 0.3 × `python -c "import torch"`
SEED_A = 0
SEED_B = 1  # the second copy of each large checkpoint, for diff
TAIL_LINES = 6

NAIVE_STATS = """\
import sys
import torch
state = torch.load(sys.argv[1], weights_only=True)
for name, tensor in state.items():
    values = tensor.float()
    print(name, values.mean().item(), values.std().item())
"""

NAIVE_DIFF = """\
import sys
import torch
before = torch.load(sys.argv[1], weights_only=True)
after = torch.load(sys.argv[2], weights_only=True)
for name, tensor in before.items():
    change = after[name].float() - tensor.float()
    print(name, change.mean().item(), change.std().item())
"""

# Used when /usr/bin/time is missing: the wrapper times its one child and reports the child's peak RSS.
# The wrapper is small (~10 MB), so the peak it may pass on to the child across vfork + exec is negligible.
RUSAGE_WRAPPER = """\
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as report:
    report.write(f"{wall} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n")
sys.exit(code)
"""


class BenchmarkError(Exception):
    """A step of the benchmark failed (not a slow result: timings are reported, never asserted)."""


@dataclass(frozen=True)
class LstmSpec:
    label: str
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    dtype: str = "float32"

    def file_name(self, seed: int, suffix: str) -> str:
        direction = "bi" if self.bidirectional else "uni"
        dtype = "" if self.dtype == "float32" else f"-{self.dtype}"
        return (f"lstm-{self.input_size}x{self.hidden_size}x{self.num_layers}{direction}"
                f"-seed{seed}{dtype}{suffix}")


MEDIUM = LstmSpec("151 MB", 512, 1024, 2, True)
LARGE = LstmSpec("1 GB", 1024, 2048, 3, True)
SMALL = LstmSpec("small", 32, 64, 2, False)
# the small files' names in the tables → what they hold: one LSTM, in float32 and in the two 16-bit float dtypes
SMALL_FILES = {"small": SMALL, "small-bf16": LstmSpec("small", 32, 64, 2, False, "bfloat16"),
               "small-f16": LstmSpec("small", 32, 64, 2, False, "float16")}
SMALL_SUFFIXES = (".pt", ".safetensors")


@dataclass(frozen=True)
class Command:
    group: str  # the table the command belongs to: a checkpoint size, or "startup"
    label: str
    argv: tuple[str, ...]
    expected_status: int = 0


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
        if not self.samples or self.timed_out:
            return None
        return statistics.median(sample.wall_s for sample in self.samples if sample.wall_s is not None)

    @property
    def peak_rss(self) -> float | None:
        values = [sample.peak_rss_mb for sample in self.samples if sample.peak_rss_mb is not None]
        return statistics.median(values) if values else None

    @property
    def unexpected_statuses(self) -> list[int]:
        return [sample.status for sample in self.samples
                if sample.status is not None and sample.status != self.command.expected_status]


@dataclass(frozen=True)
class Target:
    group: str
    name: str  # e.g. "inspect / naive"
    numerator: str  # command labels within the group
    denominator: str
    limit: float


@dataclass(frozen=True)
class RssTarget:
    """A command's median peak RSS over the sizes of the files it reads."""

    group: str
    name: str  # e.g. "diff peak RSS / both files"
    command: str  # a command label within the group
    files: tuple[str, ...]  # keys of the checkpoints it reads ("1 GB a", "1 GB b")
    limit: float


# --------------------------------------------------------------------------------------------------
# Generating the checkpoints (not timed).


def write_lstm(spec: LstmSpec, seed: int, path: Path) -> None:
    """The state dict of a freshly built (PyTorch default init) LSTM in `spec.dtype`, written atomically."""
    import torch

    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(spec.input_size, spec.hidden_size, num_layers=spec.num_layers,
                         bidirectional=spec.bidirectional)
    dtype = getattr(torch, spec.dtype)
    state = {name: tensor.detach().to(dtype).contiguous() for name, tensor in lstm.state_dict().items()}
    partial = path.with_name(path.name + ".partial")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, partial)
    else:
        torch.save(state, partial)
    os.replace(partial, path)


def checkpoint_specs(workdir: Path, skip_large: bool) -> dict[str, tuple[LstmSpec, int, Path]]:
    """Key ("small.pt", "151 MB a", ...) → what to build, its seed, and where it goes."""
    found = {f"{name}{suffix}": (spec, SEED_A, workdir / spec.file_name(SEED_A, suffix))
             for name, spec in SMALL_FILES.items() for suffix in SMALL_SUFFIXES}
    for spec in large_specs(skip_large):
        found[f"{spec.label} a"] = (spec, SEED_A, workdir / spec.file_name(SEED_A, ".pt"))
        found[f"{spec.label} b"] = (spec, SEED_B, workdir / spec.file_name(SEED_B, ".pt"))
    return found


def large_specs(skip_large: bool) -> tuple[LstmSpec, ...]:
    return (MEDIUM,) if skip_large else (MEDIUM, LARGE)


def generate(planned: dict[str, tuple[LstmSpec, int, Path]]) -> None:
    """Write the missing checkpoints (deterministic: fixed seeds, so files already in --workdir are reused)."""
    for spec, seed, path in planned.values():
        if path.exists():
            print(f"reusing {path.name} ({path.stat().st_size:,} B)", file=sys.stderr, flush=True)
            continue
        start = time.perf_counter()
        write_lstm(spec, seed, path)
        print(f"wrote {path.name} ({path.stat().st_size:,} B) in {time.perf_counter() - start:.1f} s",
              file=sys.stderr, flush=True)


def needed_bytes(skip_large: bool) -> int:
    """Disk for both copies of each large checkpoint (151,1xx,xxx and 1,007,0xx,xxx B) and the small ones (~0.2 MB
    each at most)."""
    per_copy = sum(152 * MB if spec is MEDIUM else 1008 * MB for spec in large_specs(skip_large))
    return 2 * per_copy + 2 * MB


# --------------------------------------------------------------------------------------------------
# Running one command.


def commands(paths: dict[str, Path], skip_large: bool) -> list[Command]:
    python = sys.executable
    rnninit = (python, "-m", "rnninit_cli")
    found: list[Command] = []
    for spec in large_specs(skip_large):
        a, b = str(paths[f"{spec.label} a"]), str(paths[f"{spec.label} b"])
        found += [
            Command(spec.label, "naive", (python, "-c", NAIVE_STATS, a)),
            Command(spec.label, "inspect", (*rnninit, "inspect", a)),
            Command(spec.label, "inspect --json", (*rnninit, "inspect", a, "--json")),
            Command(spec.label, "inspect --wide", (*rnninit, "inspect", a, "--wide")),
            Command(spec.label, "verify --scheme pytorch", (*rnninit, "verify", a, "--scheme", "pytorch")),
            Command(spec.label, "naive diff", (python, "-c", NAIVE_DIFF, a, b)),
            Command(spec.label, "diff", (*rnninit, "diff", a, b), expected_status=1),
        ]
    found.append(Command("startup", 'python -c "import torch"', (python, "-c", "import torch")))
    found += [Command("startup", f"inspect {key}", (*rnninit, "inspect", str(paths[key]))) for key in small_keys()]
    return found


def small_keys() -> list[str]:
    """"small.pt", "small.safetensors", "small-bf16.pt"...: the small files, in table order."""
    return [f"{name}{suffix}" for name in SMALL_FILES for suffix in SMALL_SUFFIXES]


def targets(skip_large: bool) -> list[Target]:
    found: list[Target] = []
    for spec in large_specs(skip_large):
        group = spec.label
        found += [
            Target(group, "inspect / naive", "inspect", "naive", NAIVE_LIMIT),
            Target(group, "inspect --json / naive", "inspect --json", "naive", NAIVE_LIMIT),
            Target(group, "verify / naive", "verify --scheme pytorch", "naive", NAIVE_LIMIT),
            Target(group, "diff / naive diff", "diff", "naive diff", DIFF_LIMIT),
            Target(group, "inspect --json / inspect", "inspect --json", "inspect", JSON_LIMIT),
            Target(group, "inspect --wide / inspect", "inspect --wide", "inspect", WIDE_LIMIT),
        ]
    torch_import = 'python -c "import torch"'
    found += [Target("startup", f"inspect {key} / import torch", f"inspect {key}", torch_import, STARTUP_LIMIT)
              for key in small_keys()]
    return found


def rss_targets(skip_large: bool) -> list[RssTarget]:
    return [RssTarget(spec.label, "diff peak RSS / both files", "diff", (f"{spec.label} a", f"{spec.label} b"),
                      DIFF_RSS_LIMIT) for spec in large_specs(skip_large)]


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
    tail = "\n".join(stderr.strip().splitlines()[-TAIL_LINES:])
    if not fields:
        return Sample(wall, None, process.returncode, tail)
    if timer:  # GNU time writes "Command exited with non-zero status N" before the format's output
        return Sample(wall, int(fields[-1]) * 1024 / MB, process.returncode, tail)
    return Sample(float(fields[0]), int(fields[1]) * 1024 / MB, process.returncode, tail)


def run_rounds(planned: list[Command], rounds: int, timer: str | None, timeout_s: float) -> list[Measured]:
    """Every command once per round, in the same order; a command that timed out is not run again."""
    results = [Measured(command) for command in planned]
    for round_index in range(rounds):
        for result in results:
            command = result.command
            if result.timed_out:
                continue
            sample = measure(command, timer, timeout_s)
            result.samples.append(sample)
            shown = "timeout" if sample.wall_s is None else f"{sample.wall_s:8.2f} s"
            rss = "" if sample.peak_rss_mb is None else f"{sample.peak_rss_mb:8.0f} MB"
            status = "" if sample.status is None else f"exit {sample.status}"
            print(f"  round {round_index + 1}/{rounds}  {command.group:<8} {command.label:<32} {shown:>10} "
                  f"{rss:>11}  {status}", file=sys.stderr, flush=True)
    return results


def warm_up(planned: list[Command], timer: str | None, timeout_s: float) -> None:
    """Untimed: fill the page cache with the interpreter's, torch's, rnninit's and the checkpoints' files."""
    for command in planned:
        if command.group == "startup":
            measure(command, timer, timeout_s)


# --------------------------------------------------------------------------------------------------
# Reporting.


def format_seconds(value: float | None) -> str:
    return "timeout" if value is None else f"{value:.2f}"


def ratio_of(results: dict[tuple[str, str], Measured], target: Target) -> tuple[float | None, str]:
    """The ratio of the medians (None after a timeout), and why it cannot count ("" when it can)."""
    top, bottom = results[(target.group, target.numerator)], results[(target.group, target.denominator)]
    for measured in (top, bottom):
        if measured.timed_out:
            return None, f"`{measured.command.label}` timed out"
    assert top.wall is not None and bottom.wall is not None
    for measured in (top, bottom):
        if measured.unexpected_statuses:
            return top.wall / bottom.wall, (f"`{measured.command.label}` exited {measured.unexpected_statuses[0]}, "
                                            f"expected {measured.command.expected_status}")
    return top.wall / bottom.wall, ""


def print_table(group: str, measured: list[Measured], results: dict[tuple[str, str], Measured],
                planned_targets: list[Target], file_note: str) -> None:
    print()
    print(f"{group}{file_note}")
    print(f"  {'command':<32}{'wall s':>9}{'min–max s':>16}{'peak RSS MB':>13}{'exit':>6}   ratio")
    by_numerator: dict[str, list[Target]] = {target.numerator: [] for target in planned_targets
                                             if target.group == group}
    for target in planned_targets:
        if target.group == group:
            by_numerator[target.numerator].append(target)
    for result in measured:
        walls = [sample.wall_s for sample in result.samples if sample.wall_s is not None]
        spread = f"{min(walls):.2f}–{max(walls):.2f}" if walls and not result.timed_out else ""
        rss = "" if result.peak_rss is None else f"{result.peak_rss:.0f}"
        statuses = sorted({sample.status for sample in result.samples if sample.status is not None})
        exit_text = ",".join(str(status) for status in statuses)
        ratios = []
        for target in by_numerator.get(result.command.label, []):
            value, reason = ratio_of(results, target)
            shown = "n/a" if value is None else f"{value:.2f}" + ("!" if reason else "")
            ratios.append(f"{shown} × {target.denominator} (target ≤ {target.limit})")
        print(f"  {result.command.label:<32}{format_seconds(result.wall):>9}{spread:>16}{rss:>13}"
              f"{exit_text:>6}   {'; '.join(ratios)}")
    if any(result.unexpected_statuses for result in measured):
        print("  (a ratio marked ! involves an unexpected exit status and does not count)")
    for result in measured:
        if result.unexpected_statuses:
            sample = next(s for s in result.samples if s.status in result.unexpected_statuses)
            print(f"  NOTE: `{result.command.label}` exited {sample.status}, expected "
                  f"{result.command.expected_status}; the end of its stderr:")
            for line in sample.stderr_tail.splitlines():
                print(f"      {line}")


def rss_ratio_of(results: dict[tuple[str, str], Measured], target: RssTarget,
                 sizes: dict[str, int]) -> tuple[float | None, str]:
    """The median peak RSS over the files' sizes (None without a measurement), and why it cannot count."""
    measured = results[(target.group, target.command)]
    if measured.timed_out:
        return None, f"`{measured.command.label}` timed out"
    if measured.peak_rss is None:
        return None, f"no peak RSS measured for `{measured.command.label}`"
    value = measured.peak_rss * MB / sum(sizes[key] for key in target.files)
    if measured.unexpected_statuses:
        return value, (f"`{measured.command.label}` exited {measured.unexpected_statuses[0]}, "
                       f"expected {measured.command.expected_status}")
    return value, ""


def verdicts(results: dict[tuple[str, str], Measured], planned_targets: list[Target],
             planned_rss: list[RssTarget], sizes: dict[str, int]) -> list[str]:
    lines = []
    for target in planned_targets:
        value, reason = ratio_of(results, target)
        if value is None or reason:
            lines.append(f"FAIL  {target.group}: {target.name} ≤ {target.limit}: {reason}")
        else:
            verdict = "PASS" if value <= target.limit else "FAIL"
            lines.append(f"{verdict}  {target.group}: {target.name} = {value:.2f} (target ≤ {target.limit})")
    for rss in planned_rss:
        value, reason = rss_ratio_of(results, rss, sizes)
        if value is None or reason:
            lines.append(f"FAIL  {rss.group}: {rss.name} ≤ {rss.limit}: {reason}")
        else:
            verdict = "PASS" if value <= rss.limit else "FAIL"
            peak = results[(rss.group, rss.command)].peak_rss
            both = sum(sizes[key] for key in rss.files) / MB
            lines.append(f"{verdict}  {rss.group}: {rss.name} = {value:.3f} (target ≤ {rss.limit}; "
                         f"{peak:.0f} MB of {both:.0f} MB)")
    return lines


def environment_line() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    import numpy
    import torch

    changed = len([line for line in git("status", "--porcelain").splitlines() if line.strip()])
    return (f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"torch {torch.__version__}, numpy {numpy.__version__}; rnninit at {git('rev-parse', '--short', 'HEAD')} "
            f"with {changed} changed/untracked paths in the working tree")


def sources_fingerprint() -> str:
    """A digest of rnninit_cli's sources: the report warns when they changed while the commands ran."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "rnninit_cli").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


# --------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per command; medians (default 3)")
    parser.add_argument("--skip-large", action="store_true", help="skip the 1 GB checkpoint")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds per command before it is killed and shown as timeout (default 600)")
    parser.add_argument("--workdir", type=Path,
                        help="folder for the checkpoints, reused and kept (default: a new temporary one, removed)")
    args = parser.parse_args()
    if args.rounds < 1 or args.timeout <= 0:
        parser.error("--rounds must be ≥ 1 and --timeout > 0")
    return args


def main() -> None:
    args = parse_args()
    made_workdir = args.workdir is None
    workdir: Path = Path(tempfile.mkdtemp(prefix="rnninit-bench-inspect-")) if made_workdir else args.workdir
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        planned_files = checkpoint_specs(workdir, args.skip_large)
        paths = {key: path for key, (_, _, path) in planned_files.items()}
        missing = needed_bytes(args.skip_large) - sum(path.stat().st_size for path in paths.values() if path.exists())
        free = shutil.disk_usage(workdir).free
        if free < missing:
            raise BenchmarkError(f"{workdir} has {free / GB:.1f} GB free; the checkpoints need {missing / GB:.1f} GB "
                                 "more. Pass --workdir on a larger disk, or --skip-large.")
        print(f"workdir {workdir}; generating the checkpoints (not timed)...", file=sys.stderr, flush=True)
        generate(planned_files)
        sizes = {key: path.stat().st_size for key, path in paths.items()}
        timer = time_tool()
        environment = environment_line()
        load = [load_average()]
        fingerprints = [sources_fingerprint()]
        planned = commands(paths, args.skip_large)
        warm_up(planned, timer, args.timeout)
        planned_targets = targets(args.skip_large)
        measured = run_rounds(planned, args.rounds, timer, args.timeout)
        load.append(load_average())
        fingerprints.append(sources_fingerprint())
    except BenchmarkError as error:
        raise SystemExit(f"error: {error}") from None
    finally:
        if made_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    rss_source = (f"{TIME_BINARY} -f %M (the child's own peak)" if timer else
                  "resource.getrusage(RUSAGE_CHILDREN) in a small wrapper process (/usr/bin/time missing)")
    results = {(m.command.group, m.command.label): m for m in measured}
    print(environment)
    print(f"medians of {args.rounds} interleaved round(s); timeout {args.timeout:g} s per command; stdout to "
          f"/dev/null; peak RSS from {rss_source}")
    print(f"load average (1, 5, 15 min) at start / end: {load[0]} / {load[1]}")
    if fingerprints[0] != fingerprints[1]:
        print("WARNING: rnninit_cli's sources changed while the commands ran: the rounds mix versions of the code")
    for group in dict.fromkeys(m.command.group for m in measured):
        if group == "startup":
            note = ": nn.LSTM(32, 64, 2), " + ", ".join(f"{key} {sizes[key]:,} B" for key in small_keys())
        else:
            spec = MEDIUM if group == MEDIUM.label else LARGE
            note = (f": nn.LSTM({spec.input_size}, {spec.hidden_size}, num_layers={spec.num_layers}, "
                    f"bidirectional=True), torch.save, {sizes[f'{group} a']:,} B; seeds {SEED_A} and {SEED_B} "
                    "(diff compares the two)")
        print_table(group, [m for m in measured if m.command.group == group], results, planned_targets, note)
    print()
    print("targets:")
    for line in verdicts(results, planned_targets, rss_targets(args.skip_large), sizes):
        print(f"  {line}")


if __name__ == "__main__":
    main()
