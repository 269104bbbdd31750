"""Redraw every figure of the scheme study from its CSV alone.

    .venv/bin/python benchmarks/schemes/plot.py [benchmarks/schemes/results.csv] [--out benchmarks/schemes]

Writes one PNG per task (`loss-TASK.png`: median validation loss and interquartile band per scheme, LSTM and
GRU side by side), `summary.png` (steps to the task's threshold per scheme and cell) and `summary.md` (the
same numbers with the final validation metric, as a Markdown table).
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

HERE = Path(__file__).resolve().parent
CELLS = ("lstm", "gru")
TITLES = {
    "adding": "adding problem, T = {seq_len}",
    "copy": "copy task, delay {delay} (T = {seq_len})",
    "digits": "sequential 8×8 digits, row by row (T = {seq_len})",
}
METRIC_NAMES = {"mse": "MSE", "symbol_accuracy": "symbol accuracy", "accuracy": "accuracy"}

Row = dict[str, str]
Key = tuple[str, str, str]  # task, cell, scheme


def load(path: Path) -> list[Row]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def ordered(values: list[str]) -> list[str]:
    """First-seen order (the study writes rows task by task, scheme by scheme)."""
    return list(dict.fromkeys(values))


def style(scheme: str, schemes: list[str]) -> dict[str, object]:
    colors = plt.get_cmap("tab10").colors
    plain = [name for name in schemes if not name.startswith("mistake")]
    if scheme.startswith("mistake"):
        base = "keras"  # both mistakes are mistaken versions of `keras`
        color = colors[plain.index(base) % 10] if base in plain else "black"
        return {"color": color, "linestyle": (0, (4, 2)) if "forget" in scheme else (0, (1, 1.5)), "linewidth": 1.8}
    return {"color": colors[plain.index(scheme) % 10], "linestyle": "-", "linewidth": 1.5}


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """Median and interquartile range; `inf` (never reached) sorts last and stays `inf`."""
    finite_cap = 1e18
    capped = np.array([finite_cap if math.isinf(v) else v for v in values], dtype=float)
    q1, median, q3 = np.percentile(capped, [25, 50, 75])
    return tuple(math.inf if value >= finite_cap / 2 else float(value) for value in (q1, median, q3))  # type: ignore[return-value]


def steps_to_threshold(row: Row) -> float:
    return float(row["steps_to_threshold"]) if row["steps_to_threshold"] else math.inf


def task_title(row: Row) -> str:
    seq_len = int(row["seq_len"])
    return TITLES[row["kind"]].format(seq_len=seq_len, delay=seq_len - 10)


def plot_task(task: str, rows: list[Row], schemes: list[str], out: Path) -> Path:
    figure, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=True)
    first = rows[0]
    seeds = len({row["seed"] for row in rows})
    lowest = math.inf
    for axis, cell in zip(axes, CELLS, strict=True):
        for scheme in schemes:
            runs = [row for row in rows if row["cell"] == cell and row["scheme"] == scheme]
            if not runs:
                continue
            steps = np.array([int(s) for s in runs[0]["curve_steps"].split()])
            curves = [np.array([float(v) for v in row["curve_loss"].split()]) for row in runs]
            length = min(len(curve) for curve in curves)  # a diverged run stops early
            stacked = np.vstack([curve[:length] for curve in curves])
            q1, median, q3 = np.nanpercentile(stacked, [25, 50, 75], axis=0)
            look = style(scheme, schemes)
            axis.plot(steps[:length], median, label=scheme, **look)  # type: ignore[arg-type]
            lowest = min(lowest, float(np.nanmin(q1)))
            axis.fill_between(steps[:length], q1, q3, color=look["color"], alpha=0.12, linewidth=0)
        baseline = float(first["baseline_loss"])
        axis.axhline(baseline, color="grey", linewidth=1, linestyle=":")
        axis.annotate("trivial baseline", (0.01, baseline), xycoords=("axes fraction", "data"), ha="left",
                      va="top", fontsize=8, color="grey")
        if first["kind"] == "adding":
            threshold = float(first["threshold"])
            axis.axhline(threshold, color="black", linewidth=0.8, linestyle="--")
            axis.annotate("threshold", (0.01, threshold), xycoords=("axes fraction", "data"), ha="left",
                          va="bottom", fontsize=8)
        if first["kind"] == "adding":
            axis.set_yscale("log")
        axis.set_title(f"{cell.upper()} ({first['hidden_size']} units)")
        axis.set_xlabel("training step")
        axis.grid(True, which="major", alpha=0.3)
    # the untrained loss at step 0 (about 1 on the adding problem) would squash the interesting range
    baseline = float(first["baseline_loss"])
    if first["kind"] == "adding":
        axes[0].set_ylim(min(lowest, float(first["threshold"])) * 0.7, baseline * 1.6)
        axes[0].set_ylabel("validation MSE (log scale)")
    else:
        axes[0].set_ylim(0, baseline * 1.12)
        axes[0].set_ylabel("validation cross-entropy")
    legend: dict[str, object] = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=max(1, min(len(legend), 9)),
                  fontsize=9, frameon=False)
    figure.suptitle(f"{task_title(first)}: median over {seeds} seed{'s' if seeds != 1 else ''}, "
                    f"band = interquartile range "
                    f"(Adam lr {first['lr']}, batch {first['batch_size']})", fontsize=11)
    figure.tight_layout(rect=(0, 0.07, 1, 0.97))
    path = out / f"loss-{task}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_summary(rows: list[Row], tasks: list[str], schemes: list[str], out: Path) -> Path:
    columns = [(task, cell) for task in tasks for cell in CELLS]
    grouped: dict[Key, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[(row["task"], row["cell"], row["scheme"])].append(row)
    figure, axis = plt.subplots(figsize=(2.0 + 1.45 * len(columns), 1.4 + 0.75 * len(schemes)))
    shade = np.full((len(schemes), len(columns)), np.nan)
    cmap = plt.get_cmap("viridis_r").copy()
    cmap.set_bad("#dddddd")
    for i, scheme in enumerate(schemes):
        for j, (task, cell) in enumerate(columns):
            runs = grouped.get((task, cell, scheme))
            if not runs:
                why = "\n(no forget gate)" if cell == "gru" and "forget" in scheme else ""
                axis.text(j, i, f"not run{why}", ha="center", va="center", fontsize=8, color="#777777")
                continue
            budget = int(runs[0]["steps"])
            q1, median, q3 = quartiles([steps_to_threshold(row) for row in runs])
            solved = sum(row["solved"] == "True" for row in runs)
            if math.isinf(median):
                text = f"> {budget}"
            else:
                shade[i, j] = median / budget
                high = f"> {budget}" if math.isinf(q3) else f"{q3:.0f}"
                text = f"{median:.0f}\n[{q1:.0f}–{high}]"
            final = quartiles([float(row["final_val_metric"]) for row in runs])[1]
            final_text = f"final MSE {final:.2g}" if runs[0]["metric"] == "mse" else f"final acc. {final:.2f}"
            axis.text(j, i, f"{text}\n{solved}/{len(runs)} solved\n{final_text}", ha="center", va="center",
                      fontsize=7,
                      color="white" if not math.isnan(shade[i, j]) and shade[i, j] > 0.6 else "black")
    axis.imshow(np.ma.masked_invalid(shade), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    first_of = {row["task"]: row for row in rows}
    axis.set_xticks(range(len(columns)))
    axis.set_xticklabels([f"{task}\n{cell.upper()}\n{threshold_text(first_of[task])}" for task, cell in columns],
                         fontsize=8)
    axis.xaxis.tick_top()
    axis.set_yticks(range(len(schemes)))
    axis.set_yticklabels(schemes, fontsize=9)
    for j in range(2, len(columns), 2):
        axis.axvline(j - 0.5, color="white", linewidth=3)
    axis.set_title("Training steps until the validation metric first reaches the threshold: median [IQR] over seeds "
                   "(evaluated every 20–25 steps)\ncolour: median ÷ the task's step budget; grey: the median seed "
                   "never reached it; last line: median final validation metric", fontsize=9, pad=8)
    figure.tight_layout()
    path = out / "summary.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def threshold_text(row: Row) -> str:
    name = METRIC_NAMES[row["metric"]]
    sign = "≥" if row["higher_is_better"] == "True" else "≤"
    return f"{name} {sign} {float(row['threshold']):.3g}"


def write_table(rows: list[Row], tasks: list[str], schemes: list[str], out: Path) -> Path:
    grouped: dict[Key, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[(row["task"], row["cell"], row["scheme"])].append(row)
    first = rows[0]
    lines = [f"Generated by plot.py from the CSV ({len(rows)} runs; torch {first['torch']}, "
             f"{first['threads']} thread per run, {first['jobs']} parallel runs; {first['machine']}).", ""]
    for task in tasks:
        task_rows = [row for row in rows if row["task"] == task]
        head = task_rows[0]
        lines += [f"### {task}: {task_title(head)}; threshold {threshold_text(head)}; budget {head['steps']} steps",
                  "", "| scheme | " + " | ".join(f"{cell.upper()} solved | {cell.upper()} steps to threshold | "
                                                 f"{cell.upper()} final {METRIC_NAMES[head['metric']]}"
                                                 for cell in CELLS) + " |",
                  "|---|" + "---|---|---|" * len(CELLS)]
        for scheme in schemes:
            cells = []
            for cell in CELLS:
                runs = grouped.get((task, cell, scheme))
                if not runs:
                    cells += ["not run", "", ""]
                    continue
                q1, median, q3 = quartiles([steps_to_threshold(row) for row in runs])
                steps = "—" if math.isinf(median) else f"{median:.0f} [{q1:.0f}–{'>' if math.isinf(q3) else ''}" \
                    f"{head['steps'] if math.isinf(q3) else f'{q3:.0f}'}]"
                f1, fmedian, f3 = quartiles([float(row["final_val_metric"]) for row in runs])
                cells += [f"{sum(row['solved'] == 'True' for row in runs)}/{len(runs)}", steps,
                          f"{fmedian:.3g} [{f1:.3g}–{f3:.3g}]"]
            lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
        lines.append("")
    path = out / "summary.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="?", type=Path, default=HERE / "results.csv")
    parser.add_argument("--out", type=Path, default=None, help="folder for the figures (default: the CSV's)")
    args = parser.parse_args(argv)
    out = args.out or args.csv.parent
    out.mkdir(parents=True, exist_ok=True)
    rows = load(args.csv)
    tasks = ordered([row["task"] for row in rows])
    schemes = ordered([row["scheme"] for row in rows])
    written = [plot_task(task, [row for row in rows if row["task"] == task], schemes, out) for task in tasks]
    written.append(plot_summary(rows, tasks, schemes, out))
    written.append(write_table(rows, tasks, schemes, out))
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
