"""Diagnostics: per-block statistics, initializer-family and scheme recognition, warnings, verify, diff.

Library code only (no printing, no exit codes). Every result is a dataclass with `as_dict()` giving a
JSON-serializable dict (non-finite floats become None).

Modules, each importing only the ones above it:

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
- mistakes: the warnings;
- diagnosis: `diagnose()`;
- verification: `verify()`;
- comparison: `diff()`.
"""

from .blocks import BlockStats, MatrixStats, block_statistics, sparkline, value_stats
from .checks import (
    ALPHA,
    MIN_SAMPLES,
    Verdict,
    check_chrono,
    check_constant,
    check_identity,
    check_normal,
    check_truncated_normal,
    check_uniform,
    orthogonal_tolerance,
)
from .comparison import BlockDiff, DiffReport, LayerDiff, diff
from .diagnosis import Diagnosis, diagnose
from .entry_checks import check_entry
from .families import UNDETERMINED, Family, classify_block
from .layer_diagnosis import LayerDiagnosis
from .mistakes import DiagnosticWarning, find_warnings
from .orthogonality import check_orthogonal, gram
from .recognition import UNKNOWN, SchemeMatch, recognize_layer
from .verification import VerifyBlock, VerifyReport, verify

__all__ = [
    "ALPHA",
    "MIN_SAMPLES",
    "UNDETERMINED",
    "UNKNOWN",
    "BlockDiff",
    "BlockStats",
    "Diagnosis",
    "DiagnosticWarning",
    "DiffReport",
    "Family",
    "LayerDiagnosis",
    "LayerDiff",
    "MatrixStats",
    "SchemeMatch",
    "Verdict",
    "VerifyBlock",
    "VerifyReport",
    "block_statistics",
    "check_chrono",
    "check_constant",
    "check_entry",
    "check_identity",
    "check_normal",
    "check_orthogonal",
    "check_truncated_normal",
    "check_uniform",
    "classify_block",
    "diagnose",
    "diff",
    "find_warnings",
    "gram",
    "orthogonal_tolerance",
    "recognize_layer",
    "sparkline",
    "value_stats",
    "verify",
]
