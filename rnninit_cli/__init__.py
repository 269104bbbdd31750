"""rnninit: initialize PyTorch RNN / GRU / LSTM layers gate by gate, by named, reproducible schemes.

    >>> import torch, rnninit_cli
    >>> lstm = torch.nn.LSTM(8, 16, num_layers=2, bidirectional=True)
    >>> plan = rnninit_cli.init_(lstm, "keras", seed=0)

Names are imported lazily so that `import rnninit_cli` (and `rnninit --help`) does not load torch. Run as the
`rnninit` command, the package takes over SIGINT and SIGTERM before anything else is imported.
"""

from __future__ import annotations

import os
import signal
import sys

_SCRIPT_NAMES = {"rnninit", "rnninit-script.py", "rnninit-script.pyw"}


def _started_as_command() -> bool:
    """Whether this interpreter runs the `rnninit` command (its console script, or `python -m rnninit_cli`)
    rather than a program that imports the library: only the command may take over SIGINT and SIGTERM."""
    if sys.argv[:1] == ["-m"]:  # `python -m` is still locating its module, one of this package's
        return any(arg.endswith(("rnninit_cli", "rnninit_cli.__main__", "rnninit_cli.cli")) for arg in sys.orig_argv)
    return os.path.basename(getattr(sys.modules.get("__main__"), "__file__", None) or "") in _SCRIPT_NAMES


def _stop_at_once(signum: int, _frame: object) -> None:
    """SIGINT or SIGTERM before a command's work begins: one `error: interrupted` line, exit 128 + signum."""
    # nothing to clean up yet; an exception raised here could be swallowed by an import or leave a module half made
    try:
        os.write(2, b"error: interrupted\n")
    finally:
        os._exit(128 + signum)


if _started_as_command():  # as early as rnninit's own code can: the imports of typer, rich and torch come later
    signal.signal(signal.SIGINT, _stop_at_once)
    signal.signal(signal.SIGTERM, _stop_at_once)

# after the handlers: a signal during these imports must not print a traceback either
import importlib  # noqa: E402
from typing import Any  # noqa: E402

__version__ = "0.1.0"

_EXPORTS = {
    "find_layers": "layout", "Layer": "layout", "Block": "layout", "GATES": "layout", "discover": "layout",
    "Discovery": "layout", "RnnInitWarning": "planning", "LayoutDeclarationError": "errors",
    "parse_layout": "declared", "load_layout_file": "declared", "BUILTIN_LAYOUTS": "declared",
    "plan": "planning", "init_": "planning", "apply_plan": "planning", "Plan": "planning",
    "PlanEntry": "planning",
    "SCHEMES": "schemes", "Scheme": "schemes", "Rule": "schemes", "get_scheme": "schemes",
    "register_scheme": "schemes", "parse_rule": "schemes",
    "INITIALIZERS": "initializers", "get_initializer": "initializers",
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint", "Checkpoint": "checkpoint",
    "RnnInitError": "errors", "UsageError": "errors", "LayoutError": "errors", "DtypeError": "errors",
    "RuleError": "errors",
    "SchemeError": "errors", "NothingToDoError": "errors", "CheckpointError": "errors",
    "UnsafeCheckpointError": "errors", "OutputError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rnninit_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
