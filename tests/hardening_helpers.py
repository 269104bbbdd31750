"""Subprocess helpers for tests/test_hardening.py, run as `python tests/hardening_helpers.py COMMAND ...`.

    peak-rss -- CMD...          run CMD as a child; print JSON {returncode, stdout, stderr, maxrss_kib}.
                                The peak RSS is this helper's RUSAGE_CHILDREN, so only CMD is counted.
    hostile OUTDIR MARKERDIR MODDIR MODNAME
                                write .pt files whose pickles would run code (os.system, builtins.exec,
                                subprocess.Popen, importing MODNAME from MODDIR, importing antigravity),
                                each as a torch.save zip, a legacy torch.save file and a raw pickle.
                                MODDIR is put on sys.path here to pickle a reference to it (the test
                                makes it importable for the readers too, so that an unsafe loader
                                would really import and run it).
    many SPEC.json              run the rnninit commands listed in SPEC ([{"argv": [...], "stdin": PATH|null}])
                                in this one process through typer's CliRunner; print JSON results
                                [{argv, exit_code, stdout, stderr}]. Exceptions are not caught.
    rnninit ARGS...             run rnninit's console entry point in this process, instrumented by:
        HARDENING_PAUSE=FILE      the first os.fsync (atomic_write's, of the finished temporary file)
                                  touches FILE and sleeps, so a signal can be sent at a known moment;
                                  with HARDENING_PAUSE_AT=copy, the end of the first copy_range instead
                                  (the input's bytes copied, the new tensors not yet written);
        HARDENING_BARRIER=DIR     atomic_write touches DIR/ready-PID and waits for DIR/go before it
                                  starts, so that two processes write at the same moment;
        HARDENING_SAFETY=MOMENT   (tests/test_safety_writes.py) touch HARDENING_SAFETY_READY=FILE and wait
                                  for FILE.signalled, at most HARDENING_SAFETY_SECONDS (default 3), at
                                  MOMENT: `committed` (a file's output just renamed into place), `held`
                                  (a model folder's swap about to happen, SIGINT/SIGTERM held), `atexit`
                                  (the interpreter shutting down).
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PAYLOADS = ("system", "exec", "popen", "module", "antigravity")
LAYOUTS = ("zip", "legacy", "raw")


def peak_rss(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, check=False, timeout=300)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"returncode": result.returncode, "stdout": result.stdout.decode(errors="replace"),
                      "stderr": result.stderr.decode(errors="replace"), "maxrss_kib": usage.ru_maxrss}))


class _Reduce:
    """Pickles as a call of `function(*args)`: what an unsafe unpickler would run."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function = function
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.function, self.args)


def hostile(outdir: Path, markers: Path, moddir: Path, modname: str) -> None:
    import importlib

    import torch

    sys.path.insert(0, str(moddir))
    os.environ["HARDENING_GENERATING"] = "1"  # the module's import-time payload stays quiet here
    module = importlib.import_module(modname)
    payloads = {
        "system": _Reduce(os.system, f"touch '{markers / 'system'}'"),
        "exec": _Reduce(exec, f"open({str(markers / 'exec')!r}, 'w').close()"),
        "popen": _Reduce(subprocess.Popen, ["touch", str(markers / "popen")]),
        "module": _Reduce(module.run, str(markers / "module-call")),
        "antigravity": _Reduce(__import__, "antigravity"),
    }
    for name, payload in payloads.items():
        # the payload comes first, so a loader meets it before any tensor
        checkpoint = {"payload": payload, "lstm.weight_ih_l0": torch.zeros(8, 3),
                      "lstm.weight_hh_l0": torch.zeros(8, 2)}
        torch.save(checkpoint, outdir / f"{name}-zip.pt")
        torch.save(checkpoint, outdir / f"{name}-legacy.pt", _use_new_zipfile_serialization=False)
        with open(outdir / f"{name}-raw.pt", "wb") as handle:
            pickle.dump({"payload": payload, "epoch": 3}, handle, protocol=2)


def many(spec: Path) -> None:
    from typer.testing import CliRunner

    from rnninit_cli.cli import app

    runner = CliRunner()
    results = []
    for entry in json.loads(spec.read_text()):
        stdin = Path(entry["stdin"]).read_bytes() if entry.get("stdin") else None
        result = runner.invoke(app, entry["argv"], input=stdin, catch_exceptions=False)
        results.append({"argv": entry["argv"], "exit_code": result.exit_code, "stdout": result.stdout,
                        "stderr": result.stderr})
    print(json.dumps(results))


def run_rnninit(argv: list[str]) -> None:
    import rnninit_cli
    import rnninit_cli.formats.checkpoint as checkpoint
    import rnninit_cli.rewrite as rewrite
    from rnninit_cli.cli import main

    pause = os.environ.get("HARDENING_PAUSE")
    if pause and os.environ.get("HARDENING_PAUSE_AT") == "copy":
        import rnninit_cli.formats.tensorfile as tensorfile

        real_copy = tensorfile.copy_range

        def copy_range(*args: Any) -> None:
            tensorfile.copy_range = real_copy
            real_copy(*args)
            Path(pause).touch()
            time.sleep(60)  # the test sends its signal now: the input copied, the new tensors not yet written

        tensorfile.copy_range = copy_range
    elif pause:
        real_fsync = os.fsync

        def fsync(descriptor: int) -> None:
            os.fsync = real_fsync
            Path(pause).touch()
            time.sleep(60)  # the test sends its signal now: the file complete, not yet renamed
            real_fsync(descriptor)

        os.fsync = fsync

    barrier = os.environ.get("HARDENING_BARRIER")
    if barrier:
        real_write = checkpoint.atomic_write

        def atomic_write(*args: Any, **kwargs: Any) -> None:
            Path(barrier, f"ready-{os.getpid()}").touch()
            deadline = time.monotonic() + 60
            while not Path(barrier, "go").exists() and time.monotonic() < deadline:
                time.sleep(0.001)
            real_write(*args, **kwargs)

        checkpoint.atomic_write = atomic_write  # type: ignore[assignment]
        rewrite.atomic_write = atomic_write  # type: ignore[assignment]

    _safety_hooks()
    sys.argv = ["rnninit", *argv]
    rnninit_cli._AS_COMMAND = True  # this script stands in for the console script: its process ends with main()
    main()


def _safety_hooks() -> None:
    """HARDENING_SAFETY: pause at one moment of a write, so that a test can send a signal then."""
    import atexit

    import rnninit_cli.formats.atomic as atomic
    import rnninit_cli.formats.folders as folders

    moment = os.environ.get("HARDENING_SAFETY")
    if not moment:
        return
    ready = Path(os.environ["HARDENING_SAFETY_READY"])
    seconds = float(os.environ.get("HARDENING_SAFETY_SECONDS", "3"))

    def pause() -> None:
        # until the test has sent its signal (it touches READY.signalled then), at most `seconds`
        ready.touch()
        deadline = time.monotonic() + seconds
        while not ready.with_name(ready.name + ".signalled").exists() and time.monotonic() < deadline:
            time.sleep(0.005)

    if moment == "committed":
        real_fsync_folder = atomic.fsync_folder

        def fsync_folder(folder: Path) -> None:  # atomic_write calls it right after the rename
            pause()
            real_fsync_folder(folder)

        atomic.fsync_folder = fsync_folder
    elif moment == "held":
        real_refuse = folders.refuse_foreign_entries

        def refuse_foreign_entries(*args: Any) -> None:  # the last check before the swap
            pause()
            real_refuse(*args)

        folders.refuse_foreign_entries = refuse_foreign_entries  # type: ignore[assignment]
    elif moment == "atexit":
        atexit.register(pause)
    else:
        raise SystemExit(f"unknown HARDENING_SAFETY moment {moment!r}")


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "peak-rss":
        peak_rss(rest[1:] if rest[:1] == ["--"] else rest)
    elif command == "hostile":
        hostile(Path(rest[0]), Path(rest[1]), Path(rest[2]), rest[3])
    elif command == "many":
        many(Path(rest[0]))
    elif command == "rnninit":
        run_rnninit(rest)
    else:
        raise SystemExit(f"unknown helper command {command!r}")
