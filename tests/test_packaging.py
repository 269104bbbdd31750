"""The package people install: the sdist carries what its tests read, the wheel carries the modules, the type
marker and the licence, and the licence file says what pyproject.toml says. Built here with setuptools' own
build backend (no network, no isolated environment)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
BUILD = "from setuptools import build_meta as backend; import sys; print(getattr(backend, sys.argv[1])(sys.argv[2]))"


def tracked_files(*folders: str) -> set[str]:
    listing = subprocess.run(["git", "ls-files", "--", *folders], cwd=ROOT, capture_output=True, text=True,
                             check=False)
    if listing.returncode != 0:
        pytest.skip("not a git checkout (an unpacked sdist): the tracked files are unknown")
    return {line for line in listing.stdout.splitlines() if (ROOT / line).is_file()}


def build(kind: str, folder: Path) -> Path:
    """Build an sdist or a wheel of a copy of the tracked tree (as a fresh clone holds it; nothing is written into
    this checkout) into `folder` with setuptools' backend, in a subprocess."""
    tree = folder / "tree"
    for name in tracked_files("."):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    result = subprocess.run([sys.executable, "-c", BUILD, kind, str(folder)], cwd=tree, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    archive = build("build_sdist", tmp_path_factory.mktemp("sdist"))
    with tarfile.open(archive) as tar:
        top = archive.name.removesuffix(".tar.gz") + "/"
        return {member.name.removeprefix(top) for member in tar.getmembers() if member.isfile()}


def test_the_sdist_carries_what_its_tests_read(sdist_names: set[str]) -> None:
    """Every tracked file of tests/, examples/ and benchmarks/ (the tests read examples/ and the study code)."""
    missing = tracked_files("tests", "examples", "benchmarks", "rnninit_cli") - sdist_names
    assert not missing, sorted(missing)[:20]
    assert {"LICENSE", "README.md", "pyproject.toml", "constraints.txt", "rnninit_cli/py.typed"} <= sdist_names


def test_the_sdist_leaves_out_generated_files(sdist_names: set[str]) -> None:
    generated = [name for name in sdist_names
                 if name.startswith(("examples/out/", "tests/.hypothesis/")) or "__pycache__" in name]
    assert generated == []


def test_the_wheel_carries_every_module_the_type_marker_and_the_licence(tmp_path: Path) -> None:
    wheel = build("build_wheel", tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "rnninit_cli").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert "rnninit_cli/py.typed" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names), sorted(names)[-5:]
    schemas = {path.relative_to(ROOT).as_posix() for path in (ROOT / "rnninit_cli").rglob("*.json")}
    assert schemas <= names, sorted(schemas - names)


def test_the_licence_is_the_one_pyproject_names() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text
    assert project["license-files"] == ["LICENSE"]
