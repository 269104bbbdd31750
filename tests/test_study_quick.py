"""`benchmarks/schemes/study.py --quick` runs end to end in a subprocess: one CSV row per run, every built-in
scheme on both cells, and the figures. It checks that the script works, not what the study finds."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import rnninit_cli

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "benchmarks" / "schemes" / "study.py"
TASKS = ("adding-100", "adding-400", "copy-100", "digits-rows")
MISTAKES = {"mistake:forget-both": ("lstm",), "mistake:glorot-gate": ("lstm", "gru")}
COLUMNS = {"task", "seq_len", "cell", "scheme", "scheme_spec", "extra_rules", "seed", "steps_to_threshold",
           "solved", "final_val_loss", "final_val_metric", "curve_steps", "curve_loss", "torch", "threads",
           "machine"}


def test_quick_study_writes_one_row_per_run_and_the_figures(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(STUDY), "--quick", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    with (tmp_path / "results.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert set(reader.fieldnames or ()) >= COLUMNS, sorted(COLUMNS - set(reader.fieldnames or ()))
        rows = list(reader)
    # every scheme for torch-style gates (xlstm, griffin, xlstm-7b are for their own cells: refused on these)
    expected = {(task, cell, name) for task in TASKS for cell in ("lstm", "gru")
                for name, scheme in rnninit_cli.SCHEMES.items() if not scheme.families}
    expected |= {(task, cell, mistake) for task in TASKS for mistake, cells in MISTAKES.items() for cell in cells}
    runs = [(row["task"], row["cell"], row["scheme"]) for row in rows]
    assert sorted(runs) == sorted(expected), "one run per task, cell and scheme (the quick slice has one seed)"
    for row in rows:
        assert len(row["curve_loss"].split()) == len(row["curve_steps"].split()) >= 2, row["scheme"]
        assert row["threads"] == "1" and row["torch"]
    chrono = {row["scheme_spec"] for row in rows if row["scheme"] == "chrono"}
    assert all(spec.startswith("chrono(tmax=") for spec in chrono), chrono

    for name in [*(f"loss-{task}.png" for task in TASKS), "summary.png"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (tmp_path / "summary.md").read_text(encoding="utf-8").count("| pytorch |") == len(TASKS)
