"""Does the initialization scheme matter? Train small LSTMs and GRUs on long-memory tasks, one run per
(task, cell, scheme, seed), every recurrent layer initialized through `rnninit_cli.init_`.

    .venv/bin/python benchmarks/schemes/study.py --jobs 2             # the full study (see README.md)
    .venv/bin/python benchmarks/schemes/study.py --quick --out /tmp/q  # a tiny slice, to check the script
    .venv/bin/python benchmarks/schemes/study.py --tune               # the learning-rate grid on `pytorch`

Tasks (all generated or bundled, nothing downloaded):
- adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015): two channels, values U[0, 1] and a marker
  on one step of each half; predict the sum of the two marked values. Predicting 1 gives MSE 1/6 ≈ 0.167.
- copy / delayed recall (Arjovsky et al. 2016; Tallec & Ollivier 2018): K symbols of an 8-letter alphabet,
  `delay` blanks, a go marker, then K blanks during which the K symbols must be produced in order. The loss
  is the cross-entropy on those K outputs; guessing gives ln 8 ≈ 2.08.
- sequential digits: scikit-learn's bundled 8×8 digits read row by row (T = 8), 10 classes, 360 held out.

Every run writes one row of the CSV (with its validation curve), so `plot.py` redraws every figure from it.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import sys
import time
from collections.abc import Iterator
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

HIDDEN_SIZE = 32
BATCH_SIZE = 32
VALIDATION_SIZE = 256
SEEDS = 5
CLIP_NORM = 1.0
COPY_SYMBOLS = 5  # K symbols to recall
COPY_ALPHABET = 8

COLUMNS = (
    "task", "kind", "seq_len", "cell", "scheme", "scheme_spec", "extra_rules", "seed",
    "hidden_size", "batch_size", "steps", "eval_every", "optimizer", "lr", "clip_norm",
    "metric", "higher_is_better", "threshold", "baseline_loss",
    "steps_to_threshold", "solved", "final_val_loss", "final_val_metric", "diverged",
    "curve_steps", "curve_loss", "curve_metric",
    "wall_s", "torch", "threads", "jobs", "machine", "python", "finished_utc",
)


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # adding | copy | digits
    length: int  # adding: T; copy: the delay; digits: 8 rows
    steps: int
    eval_every: int
    lr: float  # Adam; tuned once on `pytorch` (see --tune), then frozen for every scheme
    chrono_tmax: int

    @property
    def seq_len(self) -> int:
        return self.length + 2 * COPY_SYMBOLS if self.kind == "copy" else self.length

    @property
    def metric(self) -> str:
        return {"adding": "mse", "copy": "symbol_accuracy", "digits": "accuracy"}[self.kind]

    @property
    def higher_is_better(self) -> bool:
        return self.kind != "adding"

    @property
    def baseline_loss(self) -> float:
        return {"adding": 1 / 6, "copy": math.log(COPY_ALPHABET), "digits": math.log(10)}[self.kind]

    @property
    def threshold(self) -> float:
        # adding: a tenth of the variance baseline; copy: 90 % of the symbols right (chance 12.5 %);
        # digits: 80 % of the held-out images right (chance 10 %)
        return {"adding": 0.1 / 6, "copy": 0.9, "digits": 0.8}[self.kind]


# chrono's tmax as Tallec & Ollivier 2018 set it: the adding problem's T, 3/2 of the copy delay; for the
# digits read row by row, the sequence length (8: the longest dependency there is).
# Sizes fit the whole study (85 runs per task) in about an hour on 2 shared cores; see README.md.
# lr 3e-2 everywhere: the lowest mean final validation loss of `pytorch` on the --tune grid (tuning/summary.txt)
# for adding-100 and digits; on adding-400 and copy the grid's means were within 1 % (nothing learned).
TASKS: tuple[Task, ...] = (
    Task("adding-100", "adding", 100, steps=350, eval_every=25, lr=3e-2, chrono_tmax=100),
    Task("adding-400", "adding", 400, steps=100, eval_every=20, lr=3e-2, chrono_tmax=400),
    Task("copy-100", "copy", 100, steps=250, eval_every=25, lr=3e-2, chrono_tmax=150),
    Task("digits-rows", "digits", 8, steps=200, eval_every=25, lr=3e-2, chrono_tmax=8),
)

QUICK_TASKS: tuple[Task, ...] = (
    Task("adding-100", "adding", 12, steps=6, eval_every=3, lr=1e-2, chrono_tmax=12),
    Task("adding-400", "adding", 16, steps=6, eval_every=3, lr=1e-2, chrono_tmax=16),
    Task("copy-100", "copy", 6, steps=6, eval_every=3, lr=1e-2, chrono_tmax=9),
    Task("digits-rows", "digits", 8, steps=6, eval_every=3, lr=1e-2, chrono_tmax=8),
)


@dataclass(frozen=True)
class Variant:
    """A scheme as the study runs it: a built-in scheme, or one of the two common mistakes as extra rules."""

    name: str
    spec: str  # a scheme spec; `{tmax}` is the task's chrono tmax
    rules: tuple[str, ...] = ()
    cells: tuple[str, ...] = ("lstm", "gru")


VARIANTS: tuple[Variant, ...] = (
    Variant("pytorch", "pytorch"),
    Variant("keras", "keras"),
    Variant("keras-gate", "keras-gate"),
    Variant("flax", "flax"),
    Variant("orthogonal", "orthogonal"),
    Variant("irnn", "irnn"),
    Variant("chrono", "chrono(tmax={tmax})"),
    # mistake 1: forget value 1 written into both bias vectors (effective forget bias 2); a GRU has no
    # forget gate, so this is the `keras` GRU exactly and is not run twice
    Variant("mistake:forget-both", "keras", ("bias_hh.f=ones",), cells=("lstm",)),
    # mistake 2: Glorot fans per gate block where Keras draws the whole weight_ih as one matrix
    Variant("mistake:glorot-gate", "keras", ("weight_ih=xavier_uniform(per=gate)",)),
)


@dataclass(frozen=True)
class Job:
    task: Task
    cell: str
    variant: Variant
    seed: int
    hidden_size: int
    batch_size: int
    validation_size: int
    jobs: int


class Net(nn.Module):
    def __init__(self, cell: str, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        rnn_class = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn_class(input_size, hidden_size, batch_first=True)
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
    """scikit-learn's bundled 8×8 digits (1797 images, in the package), read row by row (T = 8, 8 pixels a
    step), pixels /16, a fixed 80/20 split."""
    global _DIGITS
    if _DIGITS is None:
        from sklearn.datasets import load_digits

        data = load_digits()
        images = torch.tensor(data.data, dtype=torch.float32).div(16.0).reshape(-1, 8, 8)  # (N, rows, pixels)
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
            "digits": (8, 10, 1)}[task.kind]


def loss_and_metric(task: Task, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, float]:
    if task.kind == "adding":
        loss = nn.functional.mse_loss(outputs[:, -1], targets)
        return loss, float(loss.detach())
    if task.kind == "copy":
        loss = nn.functional.cross_entropy(outputs.reshape(-1, COPY_ALPHABET), targets.reshape(-1))
        return loss, float((outputs.detach().argmax(2) == targets).float().mean())
    loss = nn.functional.cross_entropy(outputs[:, -1], targets)
    return loss, float((outputs.detach()[:, -1].argmax(1) == targets).float().mean())


# ---- one run -----------------------------------------------------------------------------------------


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {model}, {os.cpu_count()} CPUs"


def run_one(job: Job) -> dict[str, Any]:
    torch.set_num_threads(1)
    started = time.perf_counter()
    task, variant = job.task, job.variant
    input_size, output_size, last = input_output(task)
    torch.manual_seed(job.seed)  # the read-out layer: the same for every scheme at a given seed
    net = Net(job.cell, input_size, job.hidden_size, output_size)
    spec = variant.spec.format(tmax=task.chrono_tmax)
    rnninit_cli.init_(net.rnn, spec, seed=job.seed, rules=list(variant.rules))
    optimizer = torch.optim.Adam(net.parameters(), lr=task.lr)
    stream = batches(task, job.batch_size, torch.Generator().manual_seed(job.seed))  # same data for each scheme
    val_inputs, val_targets = validation_set(task, job.validation_size)

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
        reached = metric >= task.threshold if task.higher_is_better else metric <= task.threshold
        if reached and steps_to_threshold is None:
            steps_to_threshold = step

    evaluate(0)
    for step in range(1, task.steps + 1):
        inputs, targets = next(stream)
        loss, _ = loss_and_metric(task, net(inputs, last), targets)
        if not math.isfinite(float(loss.detach())):
            diverged = True
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), CLIP_NORM)
        optimizer.step()
        if step % task.eval_every == 0 or step == task.steps:
            evaluate(step)

    return {
        "task": task.name, "kind": task.kind, "seq_len": task.seq_len, "cell": job.cell,
        "scheme": variant.name, "scheme_spec": spec, "extra_rules": " ".join(variant.rules), "seed": job.seed,
        "hidden_size": job.hidden_size, "batch_size": job.batch_size, "steps": task.steps,
        "eval_every": task.eval_every, "optimizer": "Adam", "lr": task.lr, "clip_norm": CLIP_NORM,
        "metric": task.metric, "higher_is_better": task.higher_is_better, "threshold": round(task.threshold, 6),
        "baseline_loss": round(task.baseline_loss, 6),
        "steps_to_threshold": "" if steps_to_threshold is None else steps_to_threshold,
        "solved": steps_to_threshold is not None,
        "final_val_loss": curve_loss[-1], "final_val_metric": curve_metric[-1], "diverged": diverged,
        "curve_steps": " ".join(map(str, curve_steps)),
        "curve_loss": " ".join(f"{value:.5g}" for value in curve_loss),
        "curve_metric": " ".join(f"{value:.5g}" for value in curve_metric),
        "wall_s": round(time.perf_counter() - started, 2), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "jobs": job.jobs, "machine": machine_description(),
        "python": platform.python_version(), "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _worker_start() -> None:
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


# ---- the study ---------------------------------------------------------------------------------------


def make_jobs(tasks: tuple[Task, ...], variants: tuple[Variant, ...], seeds: int, hidden_size: int,
              batch_size: int, validation_size: int, jobs: int) -> list[Job]:
    made = [Job(task, cell, variant, seed, hidden_size, batch_size, validation_size, jobs)
            for task in tasks for cell in ("lstm", "gru") for variant in variants if cell in variant.cells
            for seed in range(seeds)]
    # longest first, so that the last job to finish is a short one
    cost = {"lstm": 1.0, "gru": 3.0}  # measured: torch's CPU GRU step is about 3× the LSTM's at this size
    return sorted(made, key=lambda job: -job.task.seq_len * job.task.steps * cost[job.cell])


def run_jobs(jobs: list[Job], out_csv: Path, workers: int) -> list[dict[str, Any]]:
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    partial = out_csv.with_suffix(".partial.csv")
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()

        def record(row: dict[str, Any]) -> None:
            rows.append(row)
            writer.writerow(row)
            handle.flush()
            print(f"[{len(rows)}/{len(jobs)} {time.perf_counter() - started:6.0f}s] {row['task']} {row['cell']} "
                  f"{row['scheme']} seed {row['seed']}: {row['metric']} {row['final_val_metric']:.4g}, "
                  f"threshold at {row['steps_to_threshold'] or '-'} ({row['wall_s']}s)", file=sys.stderr, flush=True)

        if workers <= 1:
            _worker_start()
            for job in jobs:
                record(run_one(job))
        else:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start) as pool:
                for future in as_completed([pool.submit(run_one, job) for job in jobs]):
                    record(future.result())
    order = {(job.task.name, job.cell, job.variant.name, job.seed): index for index, job in enumerate(
        sorted(jobs, key=lambda j: ([t.name for t in TASKS].index(j.task.name), j.cell != "lstm",
                                    VARIANTS.index(j.variant), j.seed)))}
    rows.sort(key=lambda row: order[(row["task"], row["cell"], row["scheme"], row["seed"])])
    with out_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    partial.unlink()
    return rows


LEARNING_RATES = (3e-3, 1e-2, 3e-2)


def tune(out_dir: Path, workers: int, seeds: int) -> None:
    """The learning-rate grid, run once on the default `pytorch` scheme; the study's lr values come from it."""
    folder = out_dir / "tuning"
    for lr in LEARNING_RATES:
        tasks = tuple(replace(task, lr=lr) for task in TASKS)
        jobs = make_jobs(tasks, VARIANTS[:1], seeds, HIDDEN_SIZE, BATCH_SIZE, VALIDATION_SIZE, workers)
        run_jobs(jobs, folder / f"tuning-lr{lr:g}.csv", workers)
    summary = summarize_tuning(folder)
    (folder / "summary.txt").write_text(summary, encoding="utf-8")
    print(summary, end="")


def summarize_tuning(folder: Path) -> str:
    """Per task and learning rate, the mean final validation loss of the `pytorch` runs (the rule: lowest wins)."""
    lines = ["task, lr: mean final validation loss of the pytorch runs (2 seeds x LSTM and GRU); lowest wins", ""]
    for task in TASKS:
        for lr in LEARNING_RATES:
            with (folder / f"tuning-lr{lr:g}.csv").open(newline="") as handle:
                finals = [float(row["final_val_loss"]) for row in csv.DictReader(handle) if row["task"] == task.name]
            lines.append(f"{task.name:12} lr {lr:<6g} mean {sum(finals) / len(finals):.4g} over {len(finals)} runs")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny slice (short sequences, 6 steps, 1 seed)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes, one thread each")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results.csv and the figures")
    parser.add_argument("--seeds", type=int, default=None, help=f"seeds per cell (default {SEEDS}; quick 1)")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    parser.add_argument("--tune", action="store_true", help="run the learning-rate grid on `pytorch` only")
    parser.add_argument("--no-plot", action="store_true", help="write the CSV only")
    args = parser.parse_args(argv)

    if args.tune:
        tune(args.out, args.jobs, args.seeds or 2)
        return
    tasks = QUICK_TASKS if args.quick else TASKS
    if args.tasks:
        wanted = set(args.tasks.split(","))
        tasks = tuple(task for task in tasks if task.name in wanted)
    seeds = args.seeds or (1 if args.quick else SEEDS)
    hidden, batch, validation = (8, 8, 32) if args.quick else (HIDDEN_SIZE, BATCH_SIZE, VALIDATION_SIZE)
    jobs = make_jobs(tasks, VARIANTS, seeds, hidden, batch, validation, args.jobs)
    started = time.perf_counter()
    out_csv = args.out / "results.csv"
    run_jobs(jobs, out_csv, args.jobs)
    print(f"{len(jobs)} runs in {time.perf_counter() - started:.0f} s wall with {args.jobs} job(s): {out_csv}",
          file=sys.stderr)
    if not args.no_plot:
        import plot

        plot.main([str(out_csv), "--out", str(args.out)])


if __name__ == "__main__":
    main()
