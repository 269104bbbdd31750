"""The real programs in real processes: `python -m rnninit_cli` and the `rnninit` console script.

Each process that imports torch costs about 1.5 s, so the commands are grouped into few processes.
"""

from __future__ import annotations

import filecmp
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from builders import read_metadata, read_tensor_bytes, read_tensors, stats, temp_leftovers
from typer.testing import CliRunner

import rnninit_cli
from rnninit_cli.cli import app

SCRIPT = Path(sys.executable).parent / "rnninit"
MODULE = [sys.executable, "-m", "rnninit_cli"]


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, timeout=120, check=False, **kwargs)


def shell(script: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RNNINIT": str(SCRIPT), "PY": sys.executable}
    return run(["bash", "-c", script], cwd=cwd, env=env)


def test_console_script_is_installed() -> None:
    assert SCRIPT.is_file() and os.access(SCRIPT, os.X_OK)


def test_python_m_version() -> None:
    result = run([*MODULE, "--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == f"rnninit {rnninit_cli.__version__}"


def test_help_and_schemes_do_not_import_torch() -> None:
    probe = textwrap.dedent("""
        import io, sys
        import rnninit_cli.cli as cli
        for argv in (["--help"], ["schemes"], ["schemes", "--json"], ["apply", "--help"], ["--version"]):
            sys.argv = ["rnninit", *argv]
            out, sys.stdout = sys.stdout, io.StringIO()
            try:
                cli.main()
            except SystemExit as stop:
                assert stop.code in (0, None), (argv, stop.code)
            finally:
                text, sys.stdout = sys.stdout.getvalue(), out
            loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
            assert not loaded, (argv, loaded[:5])
            print(argv[0], len(text))
    """)
    result = run([sys.executable, "-c", probe])
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split()[::2] == ["--help", "schemes", "schemes", "apply", "--version"]

    timed = run([sys.executable, "-X", "importtime", "-m", "rnninit_cli", "--help"])
    assert timed.returncode == 0
    assert b"apply" in timed.stdout
    imported = [line for line in timed.stderr.decode().splitlines() if line.startswith("import time:")]
    assert imported  # -X importtime did report
    assert not [line for line in imported if "torch" in line.split("|")[-1]]


def test_stdin_stdout_pipeline(model_pt: Path, tmp_path: Path) -> None:
    """`rnninit apply - ... -o - < model.pt | python -m rnninit_cli inspect - --json`, with a tee in between."""
    script = ('"$RNNINIT" apply - --scheme keras --seed 1 -o - < model.pt 2> apply.err '
              '| tee middle.bin | "$PY" -m rnninit_cli inspect - --json > inspect.json 2> inspect.err; '
              'echo "${PIPESTATUS[@]}"')
    result = shell(script, tmp_path)
    assert result.stdout.decode().split() == ["0", "0", "0"], (result.stdout, (tmp_path / "apply.err").read_text())

    middle = (tmp_path / "middle.bin").read_bytes()
    assert middle.startswith(b"PK\x03\x04")  # stdout carried only the checkpoint
    apply_err = (tmp_path / "apply.err").read_text()
    assert "seed 1" in apply_err and "standard output" in apply_err and "LSTM layer" in apply_err
    # the same bytes as an in-process run of the same command
    in_process = CliRunner().invoke(app, ["apply", "-", "--scheme", "keras", "--seed", "1", "-o", "-", "-q"],
                                    input=model_pt.read_bytes())
    assert in_process.exit_code == 0 and in_process.stdout_bytes == middle

    document = json.loads((tmp_path / "inspect.json").read_text())  # stdout carried only JSON
    assert document["input"] == "-" and document["format"] == "pt"
    assert document["metadata"]["rnninit.seed"] == "1"
    tensors = read_tensor_bytes(middle)
    assert len(document["layers"]) == 5
    for layer in document["layers"]:
        h = layer["hidden_size"]
        for param in layer["params"]:
            for k, block in enumerate(param["blocks"]):
                expected = stats(tensors[param["name"]][k * h:(k + 1) * h])
                assert {key: block[key] for key in expected} == pytest.approx(expected, rel=1e-9, abs=1e-12)
        forget = [entry for entry in layer["effective_bias"] if entry["gate"] == "f"]
        if layer["cell"] == "lstm":
            assert forget[0]["min"] == forget[0]["max"] == 1.0


def test_outputs_are_byte_identical_across_processes(model_pt: Path, model_safetensors: Path, tmp_path: Path) -> None:
    args = "--scheme 'chrono(tmax=30)' --seed 77 --rule 'weight_ih.g=orthogonal(per=gate)' -q"
    script = (f'umask 022; "$RNNINIT" apply {shlex.quote(str(model_pt))} {args} -o sub.pt && '
              f'"$PY" -m rnninit_cli apply {shlex.quote(str(model_safetensors))} {args} -o sub.safetensors')
    result = shell(script, tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"" and result.stderr == b""  # --quiet
    runner = CliRunner()
    for source, name in ((model_pt, "sub.pt"), (model_safetensors, "sub.safetensors")):
        here = tmp_path / ("here" + source.suffix)
        done = runner.invoke(app, ["apply", str(source), "--scheme", "chrono(tmax=30)", "--seed", "77",
                                   "--rule", "weight_ih.g=orthogonal(per=gate)", "-q", "-o", str(here)])
        assert done.exit_code == 0, done.stderr
        assert filecmp.cmp(here, tmp_path / name, shallow=False)
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
        assert read_metadata(tmp_path / name)["rnninit.seed"] == "77"
        written, original = read_tensors(tmp_path / name), read_tensors(source)
        assert not torch.equal(written["lstm.bias_ih_l0"], original["lstm.bias_ih_l0"])


def test_errors_are_one_line_without_traceback(code_running_pt, code_running_pickle, model_pt: Path,
                                               tmp_path: Path) -> None:
    evil_pt, marker = code_running_pt
    evil_pkl, _ = code_running_pickle
    assert (evil_pt.name, evil_pkl.name) == ("evil.pt", "evil.pkl")  # the names the commands use
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(model_pt.read_bytes()[:1000])
    existing = tmp_path / "out.pt"
    existing.write_bytes(b"keep")
    commands = [
        ('"$RNNINIT" inspect evil.pt', 3, "needs code to load"),
        ('"$PY" -m rnninit_cli apply evil.pkl --scheme keras -o new.pt', 3, "needs code to load"),
        ('"$RNNINIT" apply truncated.pt --scheme keras -o out.pt --force', 3, "truncated.pt"),
    ]
    script = "; ".join(f"{command} > out{i}.txt 2> err{i}.txt; echo $?" for i, (command, _, _) in enumerate(commands))
    result = shell(script, tmp_path)
    codes = [int(code) for code in result.stdout.decode().split()]
    errors = [(tmp_path / f"err{i}.txt").read_text() for i in range(len(commands))]
    assert codes == [code for _, code, _ in commands], errors
    for i, (_, _, fragment) in enumerate(commands):
        err = (tmp_path / f"err{i}.txt").read_text()
        assert (tmp_path / f"out{i}.txt").read_text() == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert not marker.exists()
    assert not (tmp_path / "new.pt").exists()
    assert existing.read_bytes() == b"keep"
    assert temp_leftovers(tmp_path) == []
