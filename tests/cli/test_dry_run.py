"""`apply --dry-run` without torch: the plan comes from the shapes and dtypes rnninit's own reader finds, rule
arguments are checked without drawing, and the plan, warnings and errors are those of the run that writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import build_state
from safetensors.torch import save_file

# runs the command as the console script does, then says which torch modules the process imported
_RUN_AND_LIST_TORCH = """
import sys
from rnninit_cli.cli import main
sys.argv = ["rnninit", *sys.argv[1:]]
try:
    main()
finally:
    loaded = sorted(name for name in sys.modules if name == "torch" or name.startswith("torch."))
    sys.stderr.write("TORCH-MODULES " + json.dumps(loaded) + "\\n")
""".replace("import sys", "import json, sys", 1)


def _run(*args: str | Path, stdin: bytes | None = None) -> tuple[int, str, str, list[str]]:
    """(exit status, stdout, stderr without the module list, torch modules imported) of one real process."""
    done = subprocess.run([sys.executable, "-c", _RUN_AND_LIST_TORCH, *map(str, args)], input=stdin,
                          capture_output=True, timeout=300, check=False)
    stderr = done.stderr.decode()
    head, _, listed = stderr.rpartition("TORCH-MODULES ")
    return done.returncode, done.stdout.decode(), head, json.loads(listed)


@pytest.fixture
def checkpoints(tmp_path: Path) -> dict[str, Path]:
    """The same model as .pt, .safetensors, a training checkpoint with optimizer state, and a model folder."""
    state = build_state()
    torch.save(state, tmp_path / "model.pt")
    save_file(state, str(tmp_path / "model.safetensors"))
    model = torch.nn.LSTM(3, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 3))[0].sum().backward()
    optimizer.step()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "train.pt")
    (tmp_path / "folder").mkdir()
    save_file(state, str(tmp_path / "folder" / "model.safetensors"))
    return {"pt": tmp_path / "model.pt", "safetensors": tmp_path / "model.safetensors",
            "train": tmp_path / "train.pt", "folder": tmp_path / "folder"}


@pytest.mark.parametrize("kind", ["pt", "safetensors", "train", "folder"])
@pytest.mark.parametrize("flags", [("--json",), ("--rule", "bias_hh.f=constant(0.5)", "--seed", "7")])
def test_dry_run_plans_without_torch_and_matches_the_torch_path(checkpoints: dict[str, Path], kind: str,
                                                                flags: tuple[str, ...]) -> None:
    """The plan from a file read without torch equals the plan from the same bytes loaded whole by torch (standard
    input takes that path); both processes are real, and only the second imports torch."""
    source = checkpoints[kind]
    status, stdout, stderr, loaded = _run("apply", source, "--scheme", "keras", "--dry-run", *flags)
    assert (status, loaded) == (0, []), stderr
    if kind == "folder":  # a folder cannot come through standard input: its plan is checked against the file's
        _, expected, expected_stderr, _ = _run("apply", source / "model.safetensors", "--scheme", "keras",
                                               "--dry-run", *flags)
    else:
        _, expected, expected_stderr, torch_loaded = _run("apply", "-", "--scheme", "keras", "--dry-run", *flags,
                                                          stdin=source.read_bytes())
        assert "torch" in torch_loaded  # the comparison is with the path that loads with torch
    if "--json" in flags:
        document, reference = json.loads(stdout), json.loads(expected)
        assert document["input"] == str(source)
        assert {**document, "input": None} == {**reference, "input": None}
    else:
        assert stdout == expected
    assert stderr == expected_stderr  # the same warnings (stale optimizer state) and notes


@pytest.mark.parametrize(("rule", "named"), [("bias=uniform(1, 0)", "a = 1 > b = 0"),
                                             ("bias=normal(0, -1)", "std = -1 < 0"),
                                             ("weight_hh=kaiming_uniform(mode=fan_both)", "fan_in or fan_out"),
                                             ("bias=chrono(2)", "tmax > 2")])
def test_dry_run_still_refuses_bad_arguments_without_torch(checkpoints: dict[str, Path], rule: str,
                                                           named: str) -> None:
    status, stdout, stderr, loaded = _run("apply", checkpoints["pt"], "--scheme", "keras", "--rule", rule,
                                          "--dry-run")
    assert status == 2 and stdout == "" and loaded == []
    assert stderr.startswith("error: ") and named in stderr, stderr


def test_dry_run_refuses_what_cannot_be_written_without_torch(tmp_path: Path) -> None:
    """Integer weights and float8 orthogonal blocks are refused by name in the plan, as the run that writes does."""
    state = build_state()
    state["gru.weight_hh_l0"] = state["gru.weight_hh_l0"].to(torch.int8)
    torch.save(state, tmp_path / "int.pt")
    status, _, stderr, loaded = _run("apply", tmp_path / "int.pt", "--scheme", "keras", "--dry-run")
    assert status != 0 and loaded == [] and "not floating point: gru.weight_hh_l0 (int8)" in stderr, stderr
    state = build_state()
    state["gru.weight_hh_l0"] = state["gru.weight_hh_l0"].to(torch.float8_e4m3fn)
    save_file(state, str(tmp_path / "f8.safetensors"))
    status, _, stderr, loaded = _run("apply", tmp_path / "f8.safetensors", "--scheme", "keras", "--dry-run")
    assert status != 0 and loaded == [] and "gru.weight_hh_l0 (float8_e4m3fn)" in stderr, stderr
