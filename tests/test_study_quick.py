"""`benchmarks/schemes/study.py --quick` runs end to end in subprocesses: the learning-rate grid on one task, the
study (tuned and shared arms), the figures and summary.md; a second sitting skips the finished runs and a torn
last line is cut. It checks that the scripts work, not what the study finds."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

import rnninit_cli

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "benchmarks" / "schemes" / "study.py"
TASKS = ("adding-150", "copy-100", "digits-pixels")
PLAIN_RNN_SCHEMES = ("pytorch", "orthogonal", "irnn")
COLUMNS = {"task", "seq_len", "cell", "scheme", "scheme_spec", "extra_rules", "seed", "phase", "arm", "lr",
           "steps_to_threshold", "solved", "final_val_loss", "final_val_metric", "baseline_metric", "threshold",
           "curve_steps", "curve_metric", "wall_s"}


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, str(STUDY), "--quick", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def rows_of(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        lines = handle.read().splitlines(keepends=True)
    comments = [line for line in lines if line.startswith("#")]
    reader = csv.DictReader(line for line in lines if not line.startswith("#"))
    rows = list(reader)
    assert set(reader.fieldnames or ()) >= COLUMNS, sorted(COLUMNS - set(reader.fieldnames or ()))
    return comments, rows


def test_quick_study_tunes_runs_resumes_and_draws(tmp_path: Path) -> None:
    run("--tune", "--only-task", "copy-100", "--out", str(tmp_path), cwd=tmp_path)
    tuned = json.loads((tmp_path / "tuning" / "tuned.json").read_text(encoding="utf-8"))
    variants = {(entry["cell"], entry["scheme"]) for entry in tuned["entries"]}
    builtin = [name for name, scheme in rnninit_cli.SCHEMES.items() if not scheme.families]
    expected_variants = {(cell, name) for name in builtin for cell in ("lstm", "gru")}
    expected_variants |= {("rnn-relu", name) for name in PLAIN_RNN_SCHEMES}
    expected_variants |= {("lstm", "flax-input-matched"), ("gru", "flax-input-matched")}
    assert variants == expected_variants
    for entry in tuned["entries"]:
        assert entry["tuned_lr"] in entry["grid"] and entry["shared_lr"] in entry["grid"]
        expected_rate = entry["grid_best_lr"] if entry["grid_decides"] else entry["shared_lr"]
        assert entry["tuned_lr"] == expected_rate
        assert entry["on_edge"] == (entry["grid_decides"] and expected_rate in (min(entry["grid"]), max(entry["grid"])))

    run("--out", str(tmp_path), cwd=tmp_path)
    results = tmp_path / "results.csv"
    comments, rows = rows_of(results)
    assert any(line.startswith("# cpu: ") for line in comments)
    assert any(line.startswith("# torch ") and "1 thread per run" in line for line in comments)
    study = [(row["task"], row["cell"], row["scheme"]) for row in rows]
    assert set(study) == {(task, cell, name) for task in TASKS for cell, name in expected_variants}
    for row in rows:
        assert row["phase"] == "study" and row["arm"] in ("tuned", "shared", "tuned+shared")
        assert len(row["curve_metric"].split()) == len(row["curve_steps"].split()) >= 2, row["scheme"]
        if row["scheme"] == "irnn" and row["cell"] == "rnn-relu":
            assert row["scheme_spec"] == "irnn"
    for row in rows:  # T_max: T on adding and the digits; 3/2 of the delay (T − 20 recall steps) on copy
        if row["scheme"] == "chrono":
            seq_len = int(row["seq_len"])
            tmax = 3 * (seq_len - 20) // 2 if row["task"].startswith("copy") else seq_len
            assert row["scheme_spec"] == f"chrono(tmax={tmax})", row
    matched = {row["extra_rules"] for row in rows if row["scheme"] == "flax-input-matched"}
    assert matched == {f"weight_ih=normal(0.0, {1 / (3 * 8) ** 0.5:.6g})"}  # PyTorch's std 1/√(3h), h = 8
    seeds = {(row["task"], row["cell"], row["scheme"], row["arm"]): set() for row in rows}
    for row in rows:
        seeds[(row["task"], row["cell"], row["scheme"], row["arm"])].add(row["seed"])
    assert all(found == {"0", "1"} for found in seeds.values()), "every configuration runs the same seeds"

    for name in [*(f"{kind}-{task}.png" for task in TASKS for kind in ("curves", "solved")), "summary.png"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    summary = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith("<!-- study:begin") and summary.rstrip().endswith("<!-- study:end -->")
    assert summary.count("| LSTM | pytorch |") >= len(TASKS)

    # a second sitting: nothing to run; a torn last line (a killed run) is cut, and the missing run redone
    lines = results.read_bytes().splitlines(keepends=True)
    while lines[-1].startswith(b"#"):  # the sitting's end line: a killed sitting has none
        lines.pop()
    results.write_bytes(b"".join(lines[:-1]) + lines[-1][:40])
    again = run("--no-plot", "--out", str(tmp_path), cwd=tmp_path)
    assert f"{len(rows) - 1} of {len(rows)} runs already there, 1 to run" in again.stderr
    _, resumed = rows_of(results)
    assert len(resumed) == len(rows)
    assert sorted(tuple(row[k] for k in ("task", "cell", "scheme", "seed", "lr")) for row in resumed) == sorted(
        tuple(row[k] for k in ("task", "cell", "scheme", "seed", "lr")) for row in rows)


def test_the_readme_section_between_the_markers_is_replaced(tmp_path: Path) -> None:
    sys.path.insert(0, str(STUDY.parent))
    import plot

    folder = tmp_path / "benchmarks" / "schemes"
    folder.mkdir(parents=True)
    summary = folder / "summary.md"
    summary.write_text(f"{plot.BEGIN}\nnew text ![x](summary.png) [y](https://example.org)\n{plot.END}\n",
                       encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text(f"# head\n\n{plot.BEGIN}\nold findings\n{plot.END}\n\n## Rules\n", encoding="utf-8")
    plot.update_readme(readme, summary)
    assert readme.read_text(encoding="utf-8") == (
        f"# head\n\n{plot.BEGIN}\nnew text ![x](benchmarks/schemes/summary.png) [y](https://example.org)\n"
        f"{plot.END}\n\n## Rules\n")
    readme.write_text("# no markers\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        plot.update_readme(readme, summary)


def test_a_csv_with_other_columns_is_not_appended_to(tmp_path: Path) -> None:
    sys.path.insert(0, str(STUDY.parent))
    import study

    old = tmp_path / "results.csv"
    old.write_text("task,kind,seq_len\nadding-100,adding,100\n", encoding="utf-8")  # a v1 CSV's shape
    with pytest.raises(SystemExit, match="other columns"):
        study.open_for_append(old, 1, "test")
    assert old.read_text(encoding="utf-8") == "task,kind,seq_len\nadding-100,adding,100\n"
    fresh = tmp_path / "fresh.csv"
    study.open_for_append(fresh, 2, "test").close()
    handle = study.open_for_append(fresh, 2, "again")  # a second sitting appends only its comment lines
    handle.close()
    lines = fresh.read_text(encoding="utf-8").splitlines()
    assert [line for line in lines if not line.startswith("#")] == [",".join(study.COLUMNS)]
    assert sum(line.startswith("# sitting started") for line in lines) == 2
    assert study.read_rows(fresh) == []
