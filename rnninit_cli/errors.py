"""Typed exceptions. The library raises these; only the CLI turns them into exit codes.

Each class's `exit_code` is its row of the exit-status table (README, Exit status; `rnninit --help`): 2 usage errors,
3 an input that cannot be used, 4 an output that cannot be written. 0 and 1 are answers, 5 a bug, 130/143 signals.
"""

from __future__ import annotations


class RnnInitError(Exception):
    """Base class: every error rnninit raises on purpose. The message says what to do next."""

    exit_code = 3


class UsageError(RnnInitError):
    """The command line or the call is wrong."""

    exit_code = 2


class LayoutError(RnnInitError):
    """Recurrent parameters whose names or shapes do not form a valid PyTorch layer."""

    exit_code = 3


class DtypeError(RnnInitError):
    """Recurrent parameters to be rewritten whose dtype cannot hold the rule's values (integers, bool, complex,
    float8_e8m0fnu: no sign or zero, float8 for an orthogonal block, values beyond the dtype's range)."""

    exit_code = 3


class RuleError(UsageError):
    """A malformed rule, an unknown initializer or argument, or a rule that hits nothing."""


class LayoutDeclarationError(UsageError):
    """A malformed `--layout` / `--layout-file` declaration, or one that matches no tensor or matches ambiguously."""


class SchemeError(UsageError):
    """An unknown scheme, bad scheme arguments, or a scheme that cannot apply to a layer."""


class NothingToDoError(RnnInitError):
    """No recurrent parameter found, or none selected by `only`."""

    exit_code = 2


class CheckpointError(RnnInitError):
    """A file that is missing, unreadable, truncated or not a checkpoint."""

    exit_code = 3


class UnsafeCheckpointError(CheckpointError):
    """A `.pt` file that would need arbitrary code to load; nothing in it was run."""


class OutputError(RnnInitError):
    """The output cannot be written: it exists, equals the input, or the format cannot hold the data."""

    exit_code = 4


class MetaDeviceError(UsageError):
    """Parameters to initialize that live on the `meta` device: they have a shape but no storage to write."""


class PlacementError(RnnInitError):
    """A distributed tensor (DTensor) placed in a way `init_` cannot write exactly (only Shard(0) and Replicate())."""

    exit_code = 3


def first_line(text: str) -> str:
    """The first sentence of a library's error message, at most 200 characters, to quote in rnninit's own."""
    line = (text.strip().splitlines() or ["unknown error"])[0]
    return line.split(". ")[0][:200]
