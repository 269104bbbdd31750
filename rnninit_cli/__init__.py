"""rnninit: initialize PyTorch RNN / GRU / LSTM layers gate by gate, by named, reproducible schemes.

    >>> import torch, rnninit_cli
    >>> lstm = torch.nn.LSTM(8, 16, num_layers=2, bidirectional=True)
    >>> plan = rnninit_cli.init_(lstm, "keras", seed=0)

Names are imported lazily so that `import rnninit_cli` (and `rnninit --help`) does not load torch. Run as the
`rnninit` command, the package takes over SIGINT and SIGTERM before anything else is imported.
"""

from __future__ import annotations

# modules the interpreter has loaded before any script runs: a signal during their import statements runs no
# import machinery, so from here on only the few bytecodes before the handlers below can still miss it
import _signal
import os
import sys

_SCRIPT_NAMES = {"rnninit", "rnninit-script.py", "rnninit-script.pyw"}


_COMMAND_MODULES = {"rnninit_cli", "rnninit_cli.__main__", "rnninit_cli.cli"}


def _started_as_command() -> bool:
    """Whether this interpreter runs the `rnninit` command (its console script, or `python -m rnninit_cli`)
    rather than a program that imports the library: only the command may take over SIGINT and SIGTERM."""
    if sys.argv[:1] == ["-m"]:  # `python -m MODULE` is still locating MODULE: is it one of this package's?
        return _module_run_by_dash_m() in _COMMAND_MODULES
    return os.path.basename(getattr(sys.modules.get("__main__"), "__file__", None) or "") in _SCRIPT_NAMES


def _module_run_by_dash_m() -> str | None:
    """MODULE of `python [options] -m MODULE ...` (`-m` alone or closing a cluster of flags such as `-Im`)."""
    arguments = iter(getattr(sys, "orig_argv", [])[1:])
    for argument in arguments:
        if argument == "--check-hash-based-pycs":
            next(arguments, None)  # its value
            continue
        if not argument.startswith("-") or argument in ("-", "--") or argument.startswith("--"):
            return None  # the script, or standard input: the interpreter's options are over
        flags = argument[1:]
        for position, flag in enumerate(flags):
            if flag in "cmXW":  # the rest of the cluster, or the next argument, is this option's value
                value = flags[position + 1:] or next(arguments, None)
                if flag == "m":
                    return value
                if flag == "c":
                    return None  # -c CODE: what follows is the program's own arguments
                break
    return None


def _stop_at_once(signum: int, _frame: object) -> None:
    """SIGINT or SIGTERM before a command's work begins: one `error: interrupted` line, exit 128 + signum."""
    # nothing to clean up yet; an exception raised here could be swallowed by an import or leave a module half made
    try:
        os.write(2, b"error: interrupted\n")
    finally:
        os._exit(128 + signum)


_AS_COMMAND = _started_as_command()
if _AS_COMMAND:  # as early as rnninit's own code can: the imports of typer, rich and torch come later
    for _signum in (_signal.SIGINT, _signal.SIGTERM):
        if _signal.getsignal(_signum) != _signal.SIG_IGN:  # ignored when started (`&` in a script): stays so
            _signal.signal(_signum, _stop_at_once)

# after the handlers: a signal during these imports must not print a traceback either
import importlib  # noqa: E402
from typing import Any  # noqa: E402

__version__ = "0.1.0"

_EXPORTED_FROM = {  # module → the names the package exports from it
    "layouts.discovery": ("find_layers", "Layer", "Block", "GATES", "discover", "Discovery"),
    "init.planning": ("RnnInitWarning", "plan", "init_", "apply_plan", "Plan", "PlanEntry"),
    "errors": (
        "LayoutDeclarationError", "RnnInitError", "UsageError", "LayoutError", "DtypeError", "RuleError", "SchemeError",
        "NothingToDoError", "CheckpointError", "UnsafeCheckpointError", "OutputError", "MetaDeviceError",
        "PlacementError", "NotRecognisedError",
    ),
    "layouts.declared": ("parse_layout", "load_layout_file", "BUILTIN_LAYOUTS"),
    "init.schemes": ("SCHEMES", "Scheme", "Rule", "get_scheme", "register_scheme", "parse_rule"),
    "init.initializers": ("INITIALIZERS", "get_initializer"),
    "formats.checkpoint": ("load_checkpoint", "save_checkpoint", "Checkpoint"),
}
_EXPORTS = {name: module for module, names in _EXPORTED_FROM.items() for name in names}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rnninit_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
