"""Run a program on a pseudo-terminal, as a person at a terminal runs it, and read everything it wrote."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

TERMINAL_VARIABLES = ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def terminal_environment(**extra: str) -> dict[str, str]:
    """This process's environment without what would tell Rich the size or colours of a terminal, UTF-8 I/O."""
    env = {key: value for key, value in os.environ.items() if key not in TERMINAL_VARIABLES}
    return env | {"PYTHONIOENCODING": "utf-8"} | extra


def address_space_limit(gib: int) -> Callable[[], None]:
    """A preexec_fn that caps the child's address space at `gib` GiB."""
    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (gib << 30, gib << 30))

    return limit


def run_on_terminal(argv: list[str], *, columns: int, env: dict[str, str], cwd: Path | None = None,
                    preexec_fn: Callable[[], None] | None = None) -> str:
    """Run `python ARGV` with a pseudo-terminal of `columns` columns as its standard input, output and error;
    what it wrote, decoded (as a terminal shows it: with "\\r\\n" line ends)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen([sys.executable, *argv], stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env,
                               start_new_session=True, preexec_fn=preexec_fn)
    os.close(slave)
    try:
        shown = read_until_closed(master, 240)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    return shown.decode("utf-8", errors="replace")


def read_until_closed(master: int, seconds: float) -> bytes:
    """Everything written to a pseudo-terminal until its last writer closes it (EIO or end of file)."""
    chunks = []
    deadline = time.monotonic() + seconds
    while True:
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, "timed out"
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


# Several commands in one interpreter (torch is imported once), each exactly as `rnninit ARGS` runs it, argv lists
# as JSON in argv[1]; each ends with `<<exit N>>` on standard error. The console is created at import, on the
# inherited standard error: a terminal, or a pipe.
COMMANDS_DRIVER = """
import json, sys
from rnninit_cli.cli import main
for argv in json.loads(sys.argv[1]):
    sys.argv = ["rnninit", *argv]
    try:
        main()
    except SystemExit as done:
        sys.stdout.flush()  # on a pipe, the answer before its exit mark
        print(f"<<exit {done.code}>>", file=sys.stderr, flush=True)
"""
