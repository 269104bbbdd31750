"""Does the initialization scheme matter? (study v2) Train small recurrent nets on long-memory tasks, one run per
(task, cell, scheme, learning rate, seed), every recurrent layer initialized through `rnninit_cli.init_`.

    .venv/bin/python benchmarks/schemes/study.py --estimate            # time a few steps: projected total on 2 cores
    nice -n 19 .venv/bin/python benchmarks/schemes/study.py --tune --jobs 2   # 1. learning-rate grid (resumable)
    nice -n 19 .venv/bin/python benchmarks/schemes/study.py --jobs 2          # 2. the study (resumable)
    .venv/bin/python benchmarks/schemes/plot.py                         # 3. figures, summary.md, README text
    .venv/bin/python benchmarks/schemes/study.py --quick --out /tmp/q   # a tiny slice, to check the script

Both phases append one CSV row per finished run and skip the runs already in their CSV, so a killed or
interrupted sitting is resumed by running the same command again (`--only-task`, `--only-scheme`, `--seeds` pick
a slice). Each sitting writes `#` comment lines (CPU model, torch version, threads, jobs) before its rows.

Tasks (generated or bundled with a package; nothing is downloaded):
- adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015): two channels, values U[0, 1] and a marker on
  one step of each half; predict the sum of the two marked values (MSE).
- copy (Arjovsky et al. 2016; Tallec & Ollivier 2018): 10 symbols of an 8-letter alphabet, `delay` blanks with
  a go marker on the last one, then 10 blanks during which the 10 symbols must be produced in order.
- pixel-wise digits: scikit-learn's bundled 8×8 digits read one pixel a step (T = 64), 10 classes.

Cells: `torch.nn.LSTM`, `torch.nn.GRU`, and `torch.nn.RNN(nonlinearity="relu")` (the IRNN's own cell, Le et al.
2015) with `pytorch`, `orthogonal` and `irnn`. Seeds are paired: seed s fixes the training batches and the
read-out layer for every scheme and cell, so schemes are compared run against run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository, so that a plain `python study.py` finds rnninit_cli

import rnninit_cli  # noqa: E402

HIDDEN_SIZE = 64
BATCH_SIZE = 32
VALIDATION_SIZE = 512
SEEDS = 10
TUNE_SEEDS = (1000, 1001)  # disjoint from the study's seeds 0..N-1: the rate is not picked on the runs it is judged by
CLIP_NORM = 1.0
COPY_SYMBOLS = 10  # K symbols to recall (Arjovsky et al. 2016)
COPY_ALPHABET = 8
LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2)
LR_EXTENSIONS = 2  # at most this many extra rates beyond either edge of the grid when a winner sits there
LR_LIMITS = (1e-4, 0.3)
TUNE_MARGIN = 0.02  # a grid whose winner is not this far below its median score has not ranked the rates
CELLS = ("lstm", "gru", "rnn-relu")

COLUMNS = (
    "task", "kind", "seq_len", "cell", "scheme", "scheme_spec", "extra_rules", "seed", "phase", "arm",
    "hidden_size", "batch_size", "steps", "eval_every", "optimizer", "lr", "clip_norm",
    "metric", "higher_is_better", "threshold", "baseline_loss", "baseline_metric",
    "steps_to_threshold", "solved", "final_val_loss", "final_val_metric", "best_val_metric", "diverged",
    "curve_steps", "curve_loss", "curve_metric", "wall_s", "finished_utc",
)
KEY = ("task", "cell", "scheme", "seed", "lr")


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # adding | copy | digits
    length: int  # adding: T; copy: the delay; digits: 64 pixels
    steps: int
    eval_every: int
    tune_steps: int  # the grid runs are shorter: they rank rates, the study measures

    @property
    def seq_len(self) -> int:
        return self.length + 2 * COPY_SYMBOLS if self.kind == "copy" else self.length

    @property
    def chrono_tmax(self) -> int:
        """chrono's T_max as Tallec & Ollivier 2018 (section 3) set it: T on the adding problem (and here on the
        digits, the longest dependency); on copy 3/2 of the delay T, "a bit larger than" the input's length."""
        return 3 * self.length // 2 if self.kind == "copy" else self.length

    @property
    def metric(self) -> str:
        return {"adding": "mse", "copy": "symbol_accuracy", "digits": "accuracy"}[self.kind]

    @property
    def higher_is_better(self) -> bool:
        return self.kind != "adding"

    def threshold(self, baseline_metric: float) -> float:
        """adding: a tenth of the best constant's MSE; copy: 90 % of symbols; digits: 90 % of held-out images."""
        return {"adding": baseline_metric / 10, "copy": 0.9, "digits": 0.9}[self.kind]


# Sized by --estimate to about 6 CPU-hours, 3 h on 2 idle cores (see README.md): literature-scale lengths, budgets
# long enough that the v1 truncation (350 steps) is gone, grid runs a third to a half of the study's budget.
TASKS: tuple[Task, ...] = (
    Task("adding-150", "adding", 150, steps=1200, eval_every=50, tune_steps=400),
    Task("copy-100", "copy", 100, steps=1000, eval_every=50, tune_steps=400),
    Task("digits-pixels", "digits", 64, steps=800, eval_every=25, tune_steps=400),
)

QUICK_TASKS: tuple[Task, ...] = (
    Task("adding-150", "adding", 12, steps=4, eval_every=2, tune_steps=2),
    Task("copy-100", "copy", 6, steps=4, eval_every=2, tune_steps=2),
    Task("digits-pixels", "digits", 64, steps=4, eval_every=2, tune_steps=2),
)


def pytorch_input_std(hidden_size: int) -> float:
    """PyTorch's U(±1/√h) has standard deviation 1/√(3h)."""
    return 1.0 / math.sqrt(3.0 * hidden_size)


@dataclass(frozen=True)
class Variant:
    """A scheme as the study runs it: a built-in scheme, or a built-in scheme with extra rules (an ablation)."""

    name: str
    spec: str  # a scheme spec; `{tmax}` is the task's chrono tmax
    rules: tuple[str, ...] = ()  # `{input_std}`: PyTorch's input-weight std at the study's hidden size
    cells: tuple[str, ...] = ("lstm", "gru")


def builtin_variants() -> tuple[Variant, ...]:
    """Every built-in scheme for torch-style cells (`not scheme.families`); on the ReLU RNN only the three that
    are meant for plain RNNs."""
    made = []
    for name, scheme in rnninit_cli.SCHEMES.items():
        if scheme.families:
            continue
        spec = "chrono(tmax={tmax})" if name == "chrono" else name
        cells = ("lstm", "gru", "rnn-relu") if name in ("pytorch", "orthogonal", "irnn") else ("lstm", "gru")
        made.append(Variant(name, spec, cells=cells))
    return tuple(made)


VARIANTS: tuple[Variant, ...] = (
    *builtin_variants(),
    # flax's input weights are LeCun per gate, std 1/√fan_in (0.71 on the adding task's 2 inputs, 1 on the
    # digits' single pixel): the same scheme with PyTorch's input std, to separate "flax" from "large inputs"
    Variant("flax-input-matched", "flax", ("weight_ih=normal(0.0, {input_std})",)),
)


@dataclass(frozen=True)
class Job:
    task: Task
    cell: str
    variant: Variant
    seed: int
    lr: float
    phase: str  # tune | study
    arm: str  # tuned | shared | tuned+shared (study); grid (tune)
    hidden_size: int
    batch_size: int
    validation_size: int

    @property
    def steps(self) -> int:
        return self.task.tune_steps if self.phase == "tune" else self.task.steps

    def key(self) -> tuple[str, ...]:
        return (self.task.name, self.cell, self.variant.name, str(self.seed), format_lr(self.lr))


def format_lr(lr: float) -> str:
    return f"{lr:.3g}"


class Net(nn.Module):
    def __init__(self, cell: str, input_size: int, hidden_size: int, output_size: int, seed: int) -> None:
        super().__init__()
        if cell == "rnn-relu":
            self.rnn: nn.RNNBase = nn.RNN(input_size, hidden_size, nonlinearity="relu", batch_first=True)
        else:
            self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](input_size, hidden_size, batch_first=True)
        torch.manual_seed(seed)  # the read-out: the same for every scheme and cell at a given seed
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, inputs: torch.Tensor, last: int) -> torch.Tensor:
        states, _ = self.rnn(inputs)
        return self.head(states[:, -last:])


# ---- data --------------------------------------------------------------------------------------------


def adding_batch(length: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.rand(size, length, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (size,), generator=generator)
    second = torch.randint(half, length, (size,), generator=generator)
    markers = torch.zeros(size, length)
    rows = torch.arange(size)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    target = values[rows, first] + values[rows, second]
    return torch.stack([values, markers], dim=2), target.unsqueeze(1)


def copy_batch(delay: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Categories: 0 blank, 1..8 symbols, 9 go marker. Targets are the K symbols (0..7)."""
    symbols = torch.randint(0, COPY_ALPHABET, (size, COPY_SYMBOLS), generator=generator)
    length = delay + 2 * COPY_SYMBOLS
    sequence = torch.zeros(size, length, dtype=torch.long)
    sequence[:, :COPY_SYMBOLS] = symbols + 1
    sequence[:, COPY_SYMBOLS + delay - 1] = COPY_ALPHABET + 1
    return nn.functional.one_hot(sequence, COPY_ALPHABET + 2).float(), symbols


_DIGITS: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8×8 digits (1797 images), one pixel a step (T = 64), pixels /16, a fixed 80/20 split."""
    global _DIGITS
    if _DIGITS is None:
        from sklearn.datasets import load_digits

        data = load_digits()
        images = torch.tensor(data.data, dtype=torch.float32).div(16.0).unsqueeze(2)  # (N, 64 pixels, 1)
        labels = torch.tensor(data.target, dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        cut = int(0.8 * len(labels))
        _DIGITS = images[order[:cut]], labels[order[:cut]], images[order[cut:]], labels[order[cut:]]
    return _DIGITS


def batches(task: Task, size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if task.kind == "digits":
        images, labels, _, _ = digits_split()
        while True:
            picked = torch.randint(0, len(labels), (size,), generator=generator)
            yield images[picked], labels[picked]
    make = adding_batch if task.kind == "adding" else copy_batch
    while True:
        yield make(task.length, size, generator)


def validation_set(task: Task, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if task.kind == "digits":
        _, _, images, labels = digits_split()
        return images, labels
    generator = torch.Generator().manual_seed(1_000_003)  # the same held-out set for every run of a task
    make = adding_batch if task.kind == "adding" else copy_batch
    return make(task.length, size, generator)


def input_output(task: Task) -> tuple[int, int, int]:
    """(input size, output size, how many last steps are read out)."""
    return {"adding": (2, 1, 1), "copy": (COPY_ALPHABET + 2, COPY_ALPHABET, COPY_SYMBOLS),
            "digits": (1, 10, 1)}[task.kind]


def constant_baseline(task: Task, targets: torch.Tensor) -> tuple[float, float]:
    """(loss, metric) of the best constant prediction on the validation set itself: the targets' mean for MSE;
    per read-out position, the empirical class frequencies for cross-entropy and the commonest class for accuracy."""
    if task.kind == "adding":
        mse = float((targets - targets.mean()).pow(2).mean())
        return mse, mse
    classes = COPY_ALPHABET if task.kind == "copy" else 10
    columns = targets if targets.dim() == 2 else targets.unsqueeze(1)
    losses, hits = [], []
    for position in range(columns.shape[1]):
        frequencies = torch.bincount(columns[:, position], minlength=classes).double() / len(columns)
        present = frequencies[frequencies > 0]
        losses.append(float(-(present * present.log()).sum()))
        hits.append(float(frequencies.max()))
    return sum(losses) / len(losses), sum(hits) / len(hits)


def loss_and_metric(task: Task, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, float]:
    if task.kind == "adding":
        loss = nn.functional.mse_loss(outputs[:, -1], targets)
        return loss, float(loss.detach())
    if task.kind == "copy":
        loss = nn.functional.cross_entropy(outputs.reshape(-1, COPY_ALPHABET), targets.reshape(-1))
        return loss, int((outputs.detach().argmax(2) == targets).sum()) / targets.numel()
    loss = nn.functional.cross_entropy(outputs[:, -1], targets)
    # counted as an integer and divided in double precision: a float32 mean made 324/360 = 0.89999998 < 0.9
    return loss, int((outputs.detach()[:, -1].argmax(1) == targets).sum()) / targets.numel()


# ---- one run -----------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def spec_and_rules(job: Job) -> tuple[str, list[str]]:
    spec = job.variant.spec.format(tmax=job.task.chrono_tmax)
    std = f"{pytorch_input_std(job.hidden_size):.6g}"
    return spec, [rule.format(input_std=std) for rule in job.variant.rules]


def run_one(job: Job, steps_limit: int | None = None) -> dict[str, Any]:
    """Train one net; `steps_limit` stops early (the --estimate timing), the row then says so in `steps`."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    task = job.task
    input_size, output_size, last = input_output(task)
    net = Net(job.cell, input_size, job.hidden_size, output_size, job.seed)
    spec, rules = spec_and_rules(job)
    rnninit_cli.init_(net.rnn, spec, seed=job.seed, rules=rules)
    optimizer = torch.optim.Adam(net.parameters(), lr=job.lr)
    stream = batches(task, job.batch_size, torch.Generator().manual_seed(job.seed))  # same data for each scheme
    val_inputs, val_targets = validation_set(task, job.validation_size)
    baseline_loss, baseline_metric = constant_baseline(task, val_targets)
    threshold = task.threshold(baseline_metric)
    steps = min(job.steps, steps_limit) if steps_limit else job.steps

    curve_steps: list[int] = []
    curve_loss: list[float] = []
    curve_metric: list[float] = []
    steps_to_threshold: int | None = None
    diverged = False

    def evaluate(step: int) -> None:
        nonlocal steps_to_threshold
        with torch.no_grad():
            loss, metric = loss_and_metric(task, net(val_inputs, last), val_targets)
        curve_steps.append(step)
        curve_loss.append(float(loss))
        curve_metric.append(metric)
        reached = metric >= threshold if task.higher_is_better else metric <= threshold
        if reached and steps_to_threshold is None:
            steps_to_threshold = step

    evaluate(0)
    for step in range(1, steps + 1):
        inputs, targets = next(stream)
        loss, _ = loss_and_metric(task, net(inputs, last), targets)
        if not math.isfinite(float(loss.detach())):
            diverged = True  # censored at the budget: it never solves
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), CLIP_NORM)
        optimizer.step()
        if step % task.eval_every == 0 or step == steps:
            evaluate(step)

    finite = [value for value in curve_metric if math.isfinite(value)]
    best = (max if task.higher_is_better else min)(finite) if finite else math.nan
    return {
        "task": task.name, "kind": task.kind, "seq_len": task.seq_len, "cell": job.cell,
        "scheme": job.variant.name, "scheme_spec": spec, "extra_rules": " ".join(rules), "seed": job.seed,
        "phase": job.phase, "arm": job.arm, "hidden_size": job.hidden_size, "batch_size": job.batch_size,
        "steps": steps, "eval_every": task.eval_every, "optimizer": "Adam", "lr": format_lr(job.lr),
        "clip_norm": CLIP_NORM, "metric": task.metric, "higher_is_better": task.higher_is_better,
        "threshold": f"{threshold:.6g}", "baseline_loss": f"{baseline_loss:.6g}",
        "baseline_metric": f"{baseline_metric:.6g}",
        "steps_to_threshold": "" if steps_to_threshold is None else steps_to_threshold,
        "solved": steps_to_threshold is not None,
        "final_val_loss": f"{curve_loss[-1]:.6g}", "final_val_metric": f"{curve_metric[-1]:.6g}",
        "best_val_metric": f"{best:.6g}", "diverged": diverged,
        "curve_steps": " ".join(map(str, curve_steps)),
        "curve_loss": " ".join(f"{value:.5g}" for value in curve_loss),
        "curve_metric": " ".join(f"{value:.5g}" for value in curve_metric),
        "wall_s": round(time.perf_counter() - started, 2),
        "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _worker_start() -> None:
    torch.set_num_threads(1)
    if torch.get_num_interop_threads() != 1:
        with contextlib.suppress(RuntimeError):  # already set in this process (the grid calls run_jobs again)
            torch.set_num_interop_threads(1)


# ---- the resumable CSV -------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a study CSV: `#` lines skipped, a torn last line (a killed sitting) dropped."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(line for line in handle if not line.startswith("#"))
        return [row for row in reader if row.get(COLUMNS[-1])]


def sitting_header(jobs: int, note: str) -> list[str]:
    return [f"# sitting started {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}: {note}",
            f"# cpu: {cpu_model()}; {os.cpu_count()} CPUs; {platform.system()} {platform.machine()}",
            f"# torch {torch.__version__}; python {platform.python_version()}; 1 thread per run; {jobs} parallel runs"]


def open_for_append(path: Path, jobs: int, note: str) -> Any:
    """Append mode, after cutting a torn last line; a new file gets the column header. Then this sitting's header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with path.open("r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(encoding="utf-8") as existing:
            header = next((line.rstrip("\n") for line in existing if not line.startswith("#")), "")
        if header != ",".join(COLUMNS):
            raise SystemExit(f"{path}: written with other columns (an older study?); move it away or pick --out")
    handle = path.open("a", newline="", encoding="utf-8")
    if new:
        handle.write("# rnninit scheme study v2 (benchmarks/schemes/study.py); read with plot.read_rows\n")
        handle.write(",".join(COLUMNS) + "\n")
    handle.write("\n".join(sitting_header(jobs, note)) + "\n")
    handle.flush()
    return handle


def run_jobs(jobs: list[Job], out_csv: Path, workers: int, note: str) -> list[dict[str, str]]:
    """Run the jobs whose key is not in the CSV yet, appending each row as it finishes."""
    done = {tuple(row[name] for name in KEY) for row in read_rows(out_csv)}
    todo = [job for job in jobs if job.key() not in done]
    print(f"{out_csv}: {len(jobs) - len(todo)} of {len(jobs)} runs already there, {len(todo)} to run",
          file=sys.stderr)
    if not todo:
        return read_rows(out_csv)
    started = time.perf_counter()
    count = 0
    with open_for_append(out_csv, workers, note) as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)

        def record(row: dict[str, Any]) -> None:
            nonlocal count
            count += 1
            writer.writerow(row)
            handle.flush()
            os.fsync(handle.fileno())
            print(f"[{count}/{len(todo)} {time.perf_counter() - started:6.0f}s] {row['task']} {row['cell']} "
                  f"{row['scheme']} lr {row['lr']} seed {row['seed']}: {row['metric']} {row['final_val_metric']}, "
                  f"threshold at {row['steps_to_threshold'] or '-'} ({row['wall_s']}s)", file=sys.stderr, flush=True)

        if workers <= 1:
            _worker_start()
            for job in longest_first(todo):
                record(run_one(job))
        else:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start) as pool:
                for future in as_completed([pool.submit(run_one, job) for job in longest_first(todo)]):
                    record(future.result())
        # the sitting's wall time (a killed sitting has no such line; plot.py then says so)
        handle.write(f"# sitting finished: {count} runs in {time.perf_counter() - started:.0f} s wall\n")
    return read_rows(out_csv)


CELL_COST = {"lstm": 1.0, "gru": 1.0, "rnn-relu": 0.3}  # relative step cost, for ordering only


def longest_first(jobs: list[Job]) -> list[Job]:
    """The tuned arm before the shared-rate arm (a sitting cut short leaves the main comparison whole), and within
    an arm the longest first, so that the last job to finish is a short one."""
    return sorted(jobs, key=lambda job: (job.arm == "shared", -job.task.seq_len * job.steps * CELL_COST[job.cell]))


# ---- the learning-rate grid --------------------------------------------------------------------------


def tuning_score(row: dict[str, str]) -> float:
    """Mean validation loss over the run's evaluations ÷ the best constant's loss (rewards both speed and the level
    reached; a diverged run scores +inf)."""
    if row["diverged"] == "True":
        return math.inf
    losses = [float(value) for value in row["curve_loss"].split()]
    if not all(math.isfinite(value) for value in losses):
        return math.inf
    return sum(losses) / len(losses) / float(row["baseline_loss"])


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def scores_by_rate(rows: list[dict[str, str]]) -> dict[tuple[str, str, str], dict[float, float]]:
    """(task, cell, scheme) → {lr: median tuning score over the grid seeds}."""
    collected: dict[tuple[str, str, str], dict[float, list[float]]] = {}
    for row in rows:
        by_rate = collected.setdefault((row["task"], row["cell"], row["scheme"]), {})
        by_rate.setdefault(float(row["lr"]), []).append(tuning_score(row))
    return {key: {lr: median(scores) for lr, scores in sorted(rates.items())} for key, rates in collected.items()}


def best_rate(scores: dict[float, float]) -> float:
    """The lowest median score; ties go to the smaller rate."""
    return min(scores, key=lambda lr: (scores[lr], lr))


def ladder(lr: float, up: bool) -> float:
    """The next rate on the 1-3-10 ladder of the grid: 3e-2 → 1e-1 → 3e-1 upwards, 1e-3 → 3e-4 → 1e-4 downwards."""
    exponent = math.floor(math.log10(lr) + 1e-9)
    leading = round(lr / 10**exponent)
    if up:
        return 3 * 10.0**exponent if leading < 3 else 10.0 ** (exponent + 1)
    return 3 * 10.0 ** (exponent - 1) if leading < 3 else 10.0**exponent


def edge_extension(scores: dict[float, float]) -> float | None:
    """One more rate past the grid's edge when the winner sits on that edge (None: no need, or a limit reached)."""
    rates = sorted(scores)
    if len(rates) < 2 or all(math.isinf(value) for value in scores.values()):
        return None
    best = best_rate(scores)
    below = sum(lr < min(LR_GRID) for lr in rates)
    above = sum(lr > max(LR_GRID) for lr in rates)
    if best == rates[0] and below < LR_EXTENSIONS and ladder(rates[0], up=False) >= LR_LIMITS[0] * 0.999:
        return float(f"{ladder(rates[0], up=False):.1g}")
    if best == rates[-1] and above < LR_EXTENSIONS and ladder(rates[-1], up=True) <= LR_LIMITS[1] * 1.001:
        return float(f"{ladder(rates[-1], up=True):.1g}")
    return None


def shared_rate(scores: dict[tuple[str, str, str], dict[float, float]], task: str, cell: str) -> float:
    """One rate for every scheme of a task and cell: the grid rate with the lowest median of the schemes' scores."""
    tables = [rates for (t, c, _), rates in scores.items() if t == task and c == cell]
    common = sorted(set.intersection(*(set(rates) for rates in tables)))
    return min(common, key=lambda lr: (median([rates[lr] for rates in tables]), lr))


def tuning_jobs(tasks: Iterable[Task], variants: Iterable[Variant], rates: dict[tuple[str, str, str], list[float]],
                sizes: tuple[int, int, int]) -> list[Job]:
    hidden, batch, validation = sizes
    return [Job(task, cell, variant, seed, lr, "tune", "grid", hidden, batch, validation)
            for task in tasks for variant in variants for cell in variant.cells
            for lr in rates.get((task.name, cell, variant.name), LR_GRID) for seed in TUNE_SEEDS]


def tune(tasks: tuple[Task, ...], variants: tuple[Variant, ...], out: Path, workers: int,
         sizes: tuple[int, int, int]) -> dict[str, Any]:
    """Run the grid, extend it past an edge that holds a winner, repeat; write tuning/tuned.json."""
    path = out / "tuning" / "tuning.csv"
    rates: dict[tuple[str, str, str], list[float]] = {}
    while True:
        rows = run_jobs(tuning_jobs(tasks, variants, rates, sizes), path, workers, "learning-rate grid")
        scores = scores_by_rate(rows)
        grown = False
        for key, by_rate in scores.items():
            extra = edge_extension(by_rate)
            if extra is not None and extra not in by_rate:
                rates[key] = sorted({*by_rate, extra})
                grown = True
            else:
                rates[key] = sorted(by_rate)
        if not grown:
            break
    tuned = summarize_tuning(scores)
    write_atomically(out / "tuning" / "tuned.json", json.dumps(tuned, indent=1) + "\n")
    return tuned


def grid_decides(scores: dict[float, float]) -> bool:
    """Whether the grid ranks the rates at all: its winner scores at least TUNE_MARGIN below the median of the finite
    scores. A flat grid (no rate learned anything within the grid's budget) names its smallest rate only by the
    tie rule; such a configuration runs at the shared rate instead."""
    finite = [value for value in scores.values() if math.isfinite(value)]
    return bool(finite) and min(finite) < (1 - TUNE_MARGIN) * median(finite)


def summarize_tuning(scores: dict[tuple[str, str, str], dict[float, float]]) -> dict[str, Any]:
    entries = []
    for (task, cell, scheme), by_rate in sorted(scores.items()):
        best = best_rate(by_rate)
        rates = sorted(by_rate)
        shared = shared_rate(scores, task, cell)
        decided = grid_decides(by_rate)
        entries.append({"task": task, "cell": cell, "scheme": scheme, "tuned_lr": best if decided else shared,
                        "shared_lr": shared, "grid_best_lr": best, "grid_decides": decided,
                        "on_edge": decided and best in (rates[0], rates[-1]), "grid": rates,
                        "scores": [by_rate[lr] for lr in rates]})
    return {"rule": "median over the grid seeds of (mean validation loss over evaluations / best constant loss); "
                    f"lowest wins when it is at least {TUNE_MARGIN:.0%} below the median of the grid's finite scores, "
                    "otherwise (a flat grid) the shared rate", "grid_seeds": list(TUNE_SEEDS), "entries": entries}


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def study_jobs(tasks: tuple[Task, ...], variants: tuple[Variant, ...], tuned: dict[str, Any] | None, seeds: int,
               sizes: tuple[int, int, int], fixed_lr: float | None, fallback_lr: float | None = None) -> list[Job]:
    """Per configuration: the seeds at its tuned rate and at the shared rate (one run when the two agree).
    `fallback_lr` (the --quick slice only) stands in for a configuration the grid has not tuned."""
    hidden, batch, validation = sizes
    table = {(e["task"], e["cell"], e["scheme"]): e for e in (tuned or {}).get("entries", [])}
    made = []
    for task in tasks:
        for variant in variants:
            for cell in variant.cells:
                if fixed_lr is not None:
                    arms = {fixed_lr: "tuned+shared"}
                else:
                    entry = table.get((task.name, cell, variant.name))
                    if entry is None and fallback_lr is not None:
                        entry = {"tuned_lr": fallback_lr, "shared_lr": fallback_lr}
                    if entry is None:
                        raise SystemExit(f"no tuned rate for {task.name} {cell} {variant.name}: run --tune first "
                                         "(or give --lr)")
                    arms = {entry["tuned_lr"]: "tuned", entry["shared_lr"]: "shared"}
                    if entry["tuned_lr"] == entry["shared_lr"]:
                        arms = {entry["tuned_lr"]: "tuned+shared"}
                made += [Job(task, cell, variant, seed, lr, "study", arm, hidden, batch, validation)
                         for lr, arm in arms.items() for seed in range(seeds)]
    return made


# ---- --estimate --------------------------------------------------------------------------------------


def probe_seconds(job: Job, steps: int) -> float:
    """Seconds per training step: the faster of two timed stretches (a shared machine's bursts inflate one)."""
    run_one(job, steps_limit=2)  # warm-up: the data set, the allocator
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        run_one(replace(job, task=replace(job.task, eval_every=10**9)), steps_limit=steps)
        timings.append((time.perf_counter() - started) / steps)
    return min(timings)


def estimate(tasks: tuple[Task, ...], variants: tuple[Variant, ...], seeds: int, sizes: tuple[int, int, int],
             workers: int, probe_steps: int) -> str:
    """Time `probe_steps` training steps (twice) and one evaluation per task and cell, then project both phases."""
    _worker_start()
    load = os.getloadavg()[0]
    lines = [f"probe: {probe_steps} steps per task and cell, 1 thread, on {cpu_model()} "
             f"(load average {load:.2f} on {os.cpu_count()} CPUs at the start)"]
    grid_total = tuned_total = 0.0
    for task in tasks:
        for cell in CELLS:
            runs_here = [variant for variant in variants if cell in variant.cells]
            if not runs_here:
                continue
            probe = Job(task, cell, runs_here[0], 0, 1e-3, "study", "probe", *sizes)
            per_step = probe_seconds(probe, probe_steps)
            started = time.perf_counter()
            with torch.no_grad():
                val_inputs, _ = validation_set(task, sizes[2])
                Net(cell, *input_output(task)[:2], sizes[0], 0)(val_inputs, input_output(task)[2])
            per_eval = time.perf_counter() - started
            study_s = task.steps * per_step + (task.steps // task.eval_every + 1) * per_eval
            tune_s = task.tune_steps * per_step + (task.tune_steps // task.eval_every + 1) * per_eval
            configs = len(runs_here)
            tuned_cost = configs * seeds * study_s
            grid_cost = configs * len(LR_GRID) * len(TUNE_SEEDS) * tune_s
            tuned_total += tuned_cost
            grid_total += grid_cost
            lines.append(f"{task.name:14} {cell:8} {per_step * 1000:6.1f} ms/step, eval {per_eval * 1000:4.0f} ms: "
                         f"run {study_s:4.0f} s, grid run {tune_s:4.0f} s; {configs} schemes x {seeds} seeds "
                         f"{tuned_cost / 3600:5.2f} CPU-h + grid {grid_cost / 3600:4.2f} CPU-h")
    lines.append(f"load average {os.getloadavg()[0]:.2f} at the end")
    hours = [(grid_total + tuned_total * (1 + shared)) / 3600 for shared in (0.0, 0.5, 1.0)]
    lines.append(f"grid {grid_total / 3600:.2f} CPU-h (each edge extension: {len(TUNE_SEEDS)} more grid runs of that "
                 f"configuration) + study {tuned_total / 3600:.2f} CPU-h at the tuned rates, plus the shared-rate "
                 f"arm where a configuration's tuned rate is not the shared one (0 / half / all of them):")
    lines.append(f"total {hours[0]:.2f} / {hours[1]:.2f} / {hours[2]:.2f} CPU-h = {hours[0] / workers:.2f} / "
                 f"{hours[1] / workers:.2f} / {hours[2] / workers:.2f} h wall on {workers} cores ({workers} jobs of "
                 "1 thread, nothing else running)")
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------------


def scaled(task: Task, factor: float) -> Task:
    """The task with its budgets times `factor`, rounded to whole evaluation intervals."""
    if factor == 1.0:
        return task
    def whole(steps: int) -> int:
        return max(task.eval_every, round(steps * factor / task.eval_every) * task.eval_every)
    return replace(task, steps=whole(task.steps), tune_steps=whole(task.tune_steps))


def pick(items: tuple[Any, ...], wanted: str | None) -> tuple[Any, ...]:
    if not wanted:
        return items
    names = set(wanted.split(","))
    unknown = names - {item.name for item in items}
    if unknown:
        raise SystemExit(f"unknown: {', '.join(sorted(unknown))} (known: {', '.join(i.name for i in items)})")
    return tuple(item for item in items if item.name in names)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny slice (short sequences, 4 steps, 1 seed)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes, one thread each")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results.csv, tuning/ and the figures")
    parser.add_argument("--seeds", type=int, default=None, help=f"seeds per configuration (default {SEEDS}; quick 2)")
    parser.add_argument("--only-task", default=None, help="comma-separated task names")
    parser.add_argument("--only-scheme", default=None, help="comma-separated scheme names")
    parser.add_argument("--tune", action="store_true", help="run the learning-rate grid (writes tuning/tuned.json)")
    parser.add_argument("--lr", type=float, default=None, help="one rate for every run instead of tuning/tuned.json")
    parser.add_argument("--estimate", action="store_true", help="time a few steps; print the projected total")
    parser.add_argument("--probe-steps", type=int, default=20)
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply every task's budget and grid budget (to size the study; recorded per row)")
    parser.add_argument("--no-plot", action="store_true", help="write the CSV only")
    args = parser.parse_args(argv)

    tasks = tuple(scaled(task, args.steps_scale) for task in pick(QUICK_TASKS if args.quick else TASKS, args.only_task))
    variants = pick(VARIANTS, args.only_scheme)
    seeds = args.seeds or (2 if args.quick else SEEDS)
    sizes = (8, 8, 32) if args.quick else (HIDDEN_SIZE, BATCH_SIZE, VALIDATION_SIZE)
    if args.estimate:
        print(estimate(tasks, variants, seeds, sizes, max(args.jobs, 2), args.probe_steps))
        return
    if args.tune:
        tuned = tune(tasks, variants, args.out, args.jobs, sizes)
        edges = [e for e in tuned["entries"] if e["on_edge"]]
        print(f"{len(tuned['entries'])} configurations tuned; winners on the grid's edge: "
              f"{', '.join(' '.join((e['task'], e['cell'], e['scheme'])) for e in edges) or 'none'}", file=sys.stderr)
        return
    tuned_path = args.out / "tuning" / "tuned.json"
    tuned = json.loads(tuned_path.read_text(encoding="utf-8")) if args.lr is None and tuned_path.exists() else None
    jobs = study_jobs(tasks, variants, tuned, seeds, sizes, args.lr, fallback_lr=1e-2 if args.quick else None)
    started = time.perf_counter()
    out_csv = args.out / "results.csv"
    rows = run_jobs(jobs, out_csv, args.jobs, "study")
    print(f"{len(rows)} rows in {out_csv} ({time.perf_counter() - started:.0f} s wall this sitting, "
          f"{args.jobs} job(s))", file=sys.stderr)
    if not args.no_plot:
        import plot

        plot.main([str(out_csv), "--out", str(args.out)])


if __name__ == "__main__":
    main()
