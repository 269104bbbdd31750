"""Typed exceptions. The library raises these; only the CLI turns them into exit codes.

Each class's `exit_code` is its row of the exit-status table (README, Exit status; `rnninit --help`): 2 usage errors,
3 an input that cannot be used, 4 an output that cannot be written. 0 and 1 are answers, 5 a bug, 130/143 signals.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar


class RnnInitError(Exception):
    """Base class: every error rnninit raises on purpose. The message says what to do next."""

    exit_code = 3
    # the message in the command line's words (`--only` where the Python API says `only=`), where they differ
    cli_message: str | None = None


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


class NotRecognisedError(NothingToDoError):
    """Nothing recurrent found, but tensors that look like a cell's weights: `suspects` say how to declare them."""

    def __init__(self, message: str, suspects: tuple[object, ...]) -> None:
        super().__init__(message)
        self.suspects = suspects


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


_Error = TypeVar("_Error", bound=RnnInitError)
# How a message names what the caller set: the Python API's argument, or the command line's flag
_API_TERMS = {"{only=}": "only=", "{only}": "only", "{rules}": "rules", "{layouts}": "layouts",
              "{strict}": "strict=True", "{tensors_only}": "tensors_only=True"}
_CLI_TERMS = {"{only=}": "--only ", "{only}": "--only", "{rules}": "--rule", "{layouts}": "--layout",
              "{strict}": "--strict", "{tensors_only}": "--tensors-only"}


def _worded(template: str, terms: dict[str, str]) -> str:
    for placeholder, term in terms.items():
        template = template.replace(placeholder, term)
    return template


def naming_arguments(cls: type[_Error], template: str) -> _Error:
    """`cls(message)` whose {only=}, {only}, {rules}, {layouts} and {strict} name the Python API's arguments
    (`only=`, `strict=True`), with `cli_message` naming the command line's flags instead (`--only `, `--strict`)."""
    error = cls(_worded(template, _API_TERMS))
    error.cli_message = _worded(template, _CLI_TERMS)
    return error


def resolve_name(name: str, known: Iterable[str]) -> str | None:
    """`name` as `known` spells it: the name itself, or the one known name it equals ignoring case (None when there
    is none, or several: then case decides)."""
    known = list(known)
    if name in known:
        return name
    folded = [candidate for candidate in known if candidate.casefold() == name.casefold()]
    return folded[0] if len(folded) == 1 else None


def suggestion(name: str, known: Iterable[str]) -> str:
    """`; did you mean 'keras'?` for the known names closest to `name` (difflib), or '' when none is close."""
    import difflib  # only when a name is unknown: the command's start stays light

    known = list(known)
    by_folded = {candidate.casefold(): candidate for candidate in known}
    close = difflib.get_close_matches(name.casefold(), list(by_folded), n=2, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(by_folded[match]) for match in close) + "?"


def unknown_name(what: str, name: str, known: Iterable[str], *, listed_by: str = "") -> str:
    """`unknown scheme 'kears'; did you mean 'keras'?`; without a close name, the known names when they are few,
    else where they are listed (`listed_by`)."""
    known = list(known)
    hint = suggestion(name, known)
    if not hint:
        hint = f"; known: {', '.join(known)}" if len(known) <= 16 or not listed_by else f"; {listed_by} lists them"
    shown = name if len(name) <= 80 else f"{name[:60]}... ({len(name)} characters)"  # an error stays one short line
    return f"unknown {what} {shown!r}{hint}"
