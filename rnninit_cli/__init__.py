"""rnninit: initialize PyTorch RNN / GRU / LSTM layers gate by gate, by named, reproducible schemes.

    >>> import torch, rnninit_cli
    >>> lstm = torch.nn.LSTM(8, 16, num_layers=2, bidirectional=True)
    >>> plan = rnninit_cli.init_(lstm, "keras", seed=0)

Names are imported lazily so that `import rnninit_cli` (and `rnninit --help`) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

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
