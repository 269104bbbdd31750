"""Diagnostics: per-block statistics, initializer-family and scheme recognition, warnings, verify, diff.

Library code only (no printing, no exit codes). Every result is a dataclass with `as_dict()` giving a
JSON-serializable dict (non-finite floats become None). The package's names are imported lazily, so that a
module that needs one part (the report needs `stats`) does not load them all.

Modules, each importing only the ones above it:

- progress: reports of (bytes done, bytes in all) to a caller's callback (the CLI's bar);
- stats: float64 block statistics without overflow, the effective bias (shared with the report);
- formatting: numbers in messages and JSON-serializable values;
- checks: the statistical tests and their bounds (the module docstring says how each decision is made);
- orthogonality: Gram matrices, orthogonality checks and singular values;
- cache: float64 views of the tensors and their Gram matrices, computed once;
- entry_checks: planned blocks checked against their initializer (shared by verify and recognition);
- families: which known initializer a block looks like, without a plan;
- recognition: which schemes a layer matches;
- blocks: per-block and per-matrix statistics;
- layer_diagnosis: what a diagnosis found for one layer;
- recurrences: what a per-head cell's biases and recurrence mean (notes), and its mistakes;
- mistakes: the warnings;
- diagnosis: `diagnose()`;
- verification: `verify()`;
- comparison: `diff()`;
- quantized: what inspect shows of a dynamically quantized (packed) LSTM or GRU.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTED_FROM = {  # module → the names the package exports from it
    "blocks": ("BlockStats", "MatrixStats", "block_statistics", "sparkline", "value_stats"),
    "checks": (
        "ALPHA", "FILE_ALPHA", "MIN_SAMPLES", "TESTS_PER_BLOCK", "Verdict", "bonferroni_level", "check_chrono",
        "check_constant", "check_identity", "check_normal", "check_truncated_normal", "check_uniform",
        "orthogonal_tolerance"
    ),
    "comparison": ("BlockDiff", "DiffReport", "LayerDiff", "diff"),
    "diagnosis": ("Diagnosis", "diagnose"),
    "entry_checks": ("check_entry",),
    "families": ("UNDETERMINED", "Family", "classify_block"),
    "layer_diagnosis": ("LayerDiagnosis",),
    "mistakes": ("DiagnosticWarning", "find_warnings"),
    "orthogonality": ("check_orthogonal", "gram"),
    "recognition": ("UNKNOWN", "SchemeMatch", "recognize_layer"),
    "verification": ("VerifyBlock", "VerifyReport", "verify"),
}
_EXPORTS = {name: module for module, names in _EXPORTED_FROM.items() for name in names}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
