"""Write README.md's output excerpts and synopses from the tool itself, for cog.

    .venv/bin/cog -r README.md        # regenerate every excerpt after changing the tool
    .venv/bin/cog --check README.md   # only check (tests/test_readme.py compares the same way)

README.md's cog blocks call `setup(commands)`, which writes the set-up line, and `run(command)`, which
runs the command exactly as written on copies of the example checkpoints made by
examples/make_readme_files.py in a temporary folder (in the order of the README, so a command reads what
an earlier one wrote) and prints the command and its real output; `synopsis(name)` prints a command's
synopsis from the CLI's own parameters.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path

import cog

REPO = Path(__file__).resolve().parent.parent
RNNINIT = ".venv/bin/rnninit "

# Human output must look as it does in a log: no colours, no terminal width, whatever cog runs in.
for _name in ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
    os.environ.pop(_name, None)
with contextlib.redirect_stderr(io.StringIO()):
    from rnninit_cli import cli
for _console in (cli.answer, cli.console):  # a pipe or a log: never folded, no colours
    if _console.width != cli.UNFOLDED or _console.color_system is not None:
        raise RuntimeError(f"rnninit's console is {_console.width} columns wide with colours "
                           f"{_console.color_system}; run cog in a fresh process")

sys.path.insert(0, str(REPO / "examples"))
import make_readme_files  # noqa: E402

_workdir: Path | None = None


def _folder() -> Path:
    """A temporary copy of what the README's commands need, made once per cog run."""
    global _workdir
    if _workdir is None:
        _workdir = Path(tempfile.mkdtemp(prefix="rnninit-readme-"))
        atexit.register(shutil.rmtree, _workdir, ignore_errors=True)
        (_workdir / ".venv").symlink_to(REPO / ".venv")
        examples = _workdir / "examples"
        examples.mkdir()
        for script in [*(REPO / "examples").glob("*.sh"), *(REPO / "examples").glob("*.toml")]:
            (examples / script.name).write_bytes(script.read_bytes())
        with contextlib.redirect_stderr(io.StringIO()):
            make_readme_files.main(examples / "out")
    return _workdir


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _execute(command: str) -> tuple[int, str]:
    """(exit status, what the terminal shows) for one command line of the README."""
    folder = _folder()
    if command.startswith(RNNINIT) and not re.search(r"[|<>;&$`]", command):
        from typer.testing import CliRunner

        with _inside(folder):
            result = CliRunner().invoke(cli.app, shlex.split(command.removeprefix(RNNINIT)))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.output
    environment = {name: value for name, value in os.environ.items() if name != "VIRTUAL_ENV"}
    environment["PATH"] = os.pathsep.join(part for part in environment.get("PATH", "").split(os.pathsep)
                                          if Path(part).resolve() != (REPO / ".venv" / "bin").resolve())
    done = subprocess.run(["bash", "-c", command], cwd=folder, env=environment, capture_output=True,
                          text=True, timeout=300, check=False)
    return done.returncode, done.stdout + done.stderr


def _trim(lines: list[str], *, rows: int | None, keep: str | None, head: int | None,
          tables: int | None) -> list[str]:
    """Shorten the tables of an output, the same way every time:
    - `tables`: keep the first tables whole; of each later one only its title (the line above its header),
    - `rows`: keep the first rows of each parameter (a row whose first cell is not blank starts one),
    - `head`: keep the first entries of each table (a row whose first cell is not blank starts one),
    - `keep`: and keep the rows that match this regular expression.
    Each run of dropped lines becomes one '...' line."""
    kept: list[str] = []
    index, table = 0, 0
    while index < len(lines):
        line = lines[index]
        if "┃" not in line:
            kept.append(line)
            index += 1
            continue
        table += 1
        end = index + 2
        while end < len(lines) and "│" in lines[end]:
            end += 1
        header, body = lines[index:index + 2], lines[index + 2:end]
        index = end
        if tables is not None and table > tables:
            kept.append("...")
            continue
        kept.extend(header)
        dropping, entry, entry_row = False, 0, 0
        for row in body:
            starts_entry = bool(row.split("│", 1)[0].strip())
            entry, entry_row = (entry + 1, 1) if starts_entry else (entry, entry_row + 1)
            drop = (rows is not None and entry_row > rows) or (head is not None and entry > head)
            if drop and not (keep and re.search(keep, row)):
                if not dropping:
                    kept.append(" " * row.index("│") + "...")
                dropping = True
            else:
                kept.append(row)
                dropping = False
    return kept


INSTALL = "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt torch==2.13.0 -e '.[test]'"
MAKE_FILES = ".venv/bin/python examples/make_readme_files.py"


def setup(*commands: str) -> None:
    """Print the ```sh block of the set-up line: the install, making the example files, then `commands`;
    and run those commands (quietly) so that the excerpts below see what the set-up line leaves."""
    for command in commands:
        code, output = _execute(command)
        if code != 0:
            raise RuntimeError(f"set-up command exited {code}: {command}\n{output}")
    cog.outl("```sh")
    cog.outl(" && ".join((INSTALL, MAKE_FILES, *commands)))
    cog.outl("```")


def run(command: str, *, status: int = 0, rows: int | None = None, keep: str | None = None,
        head: int | None = None, tables: int | None = None) -> None:
    """Print a ```console block: `$ command` and the output it gives, its tables shortened by `_trim`'s
    `rows`, `keep`, `head` and `tables`. Fails unless the command exits with `status`."""
    code, output = _execute(command)
    if code != status:
        raise RuntimeError(f"README command exited {code}, not {status}: {command}\n{output}")
    lines = [line.rstrip() for line in output.rstrip("\n").split("\n")]
    cog.outl("```console")
    cog.outl(f"$ {command}")
    for line in _trim(lines, rows=rows, keep=keep, head=head, tables=tables):
        cog.outl(line)
    cog.outl("```")


METAVARS = {"--scheme": "SCHEME", "--output": "OUTPUT", "--seed": "N", "--rule": "TARGET=INIT",
            "--only": "REGEX", "--plot": "IMAGE", "--input-size": "N", "--hidden-size": "N", "--num-layers": "N",
            "--proj-size": "N", "--prefix": "P", "--layout-file": "TOML"}


def _choices(parameter: object) -> list[str] | None:
    """The values an option takes, if it is a choice (click's Choice, or the Enum typer read it from)."""
    choices = getattr(getattr(parameter, "type", None), "choices", None)
    if choices:
        return [str(getattr(choice, "value", choice)) for choice in choices]
    annotation = getattr(getattr(parameter, "type_descriptor", None), "annotation", None)
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
            return [str(member.value) for member in candidate]
    return None


def synopsis(*names: str) -> None:
    """Print a ``` block with each command's synopsis, read from the CLI's parameters (so none is missing)."""
    import typer

    group = typer.main.get_command(cli.app)
    cog.outl("```")
    for name in names:
        command = group.commands[name]
        words = [f"rnninit {name}"]
        for parameter in sorted(command.params, key=lambda p: p.param_type_name != "argument" and not p.required):
            if parameter.param_type_name == "argument":
                words.append((parameter.metavar or parameter.name).upper() + ("..." if parameter.nargs != 1 else ""))
                continue
            if parameter.name == "help":
                continue
            flag = max(parameter.opts, key=len)
            choices = _choices(parameter)
            if getattr(parameter, "is_flag", False):
                word = flag
            else:
                value = "|".join(str(c) for c in choices) if choices else METAVARS.get(flag, parameter.name.upper())
                word = f"{flag} {value}"
            if not parameter.required:
                word = f"[{word}]" + ("..." if parameter.multiple else "")
            words.append(word)
        indent = " " * (len(words[0]) + 1)
        line = ""
        for word in words:
            if line and len(line) + 1 + len(word) > 110:
                cog.outl(line)
                line = indent + word
            else:
                line = f"{line} {word}" if line else word
        cog.outl(line)
    cog.outl("```")
