"""User-supplied regular expressions (`--only`, `--layout`, `--layout-file`), matched by RE2 in linear time.

A layout file may come with a downloaded model, and a backtracking matcher can take hours on one crafted pattern
and one long tensor name (`(x+x+)+y` against 40 x's). Here a pattern is read by Python's own regex parser, so it
keeps the meaning it had when `re` ran it (octal escapes, `{,n}`, `\\Z`, verbose mode, character-class quirks), and
is written back in RE2's syntax; RE2 then matches it in time linear in the name. What RE2 cannot run that way
(backreferences, lookaround, conditionals, atomic groups, possessive quantifiers) is refused by name.

Differences from Python's `re` remain for unusual names and patterns only: `\\d`, `\\w`, `\\s` and `\\b` are ASCII
(as with Python's `re.ASCII`); `$` matches at the very end of a name only (Python's also before a final newline);
where a repeated body can match the empty string (`(a*)*`, `(x|)+`), Python ends the repetition at an empty pass
and RE2 does not, so a group inside it may capture another pass (which names match never changes). Cost is bounded
twice: a pattern's length (`MAX_PATTERN_CHARS`) and RE2's memory for its compiled program and matching cache
(`MAX_MEM`).
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import re2

from ..errors import RnnInitError, UsageError, naming_arguments

if sys.version_info >= (3, 11):
    from re import _constants as sre_constants
    from re import _parser as sre_parse
else:  # pragma: no cover - exercised on Python 3.10 only
    import sre_constants
    import sre_parse

MAX_PATTERN_CHARS = 1 << 14  # room for an alternation of several hundred tensor names
MAX_MEM = 1 << 18  # bytes per pattern; real patterns need a few KiB, a hostile one is refused at compile time
MAX_REPEAT = 1000  # RE2's largest repetition count (nested counts multiplied)
MAX_DEPTH = 200

_SPACE = ((0x09, 0x0D), (0x20, 0x20))  # Python's ASCII \s; RE2's \s leaves out \v
_NOT_SPACE = ((0x00, 0x08), (0x0E, 0x1F), (0x21, 0x10FFFF))
_CATEGORIES = {"CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_WORD": r"\w",
               "CATEGORY_NOT_WORD": r"\W"}
_ANCHORS = {"AT_BEGINNING": "^", "AT_BEGINNING_STRING": r"\A", "AT_END": "$", "AT_END_STRING": r"\z",
            "AT_BOUNDARY": r"\b", "AT_NON_BOUNDARY": r"\B"}
_FLAGS = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"))
_UNSUPPORTED = {
    "GROUPREF": ("a backreference (\\N or (?P=name))", "rewrite it without the backreference"),
    "GROUPREF_EXISTS": ("a conditional group (?(N)...|...)", "rewrite it as an alternation (...|...)"),
    "ATOMIC_GROUP": ("an atomic group (?>...)", "write a plain group (?:...) instead"),
    "POSSESSIVE_REPEAT": ("a possessive quantifier (*+, ++, ?+ or {m,n}+)", "write the plain quantifier instead"),
}
_RE2_SYNTAX = "rewrite it in the syntax RE2 runs (https://github.com/google/re2/wiki/Syntax)"


class _Refused(Exception):
    """Why a pattern cannot be run: the end of the message that names it."""


@dataclass(frozen=True)
class UserMatch:
    """One match of a `UserPattern`: its groups by number or name, as text."""

    _match: Any
    _names: Mapping[str, int]

    def group(self, key: int | str = 0) -> str | None:
        """The text of group `key` (0: the whole match), or None where the group took no part."""
        value = self._match.group(self._names[key] if isinstance(key, str) else key)
        return None if value is None else value.decode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class UserPattern:
    """A user's pattern compiled for RE2: `pattern` as given, `groups` and `groupindex` as Python numbers them."""

    pattern: str
    groups: int = field(compare=False)
    groupindex: Mapping[str, int] = field(compare=False)
    _regexp: Any = field(compare=False, repr=False)

    def search(self, name: str) -> UserMatch | None:
        """The first match anywhere in `name` (as `re.search`)."""
        return self._wrap(self._regexp.search(_subject(name)))

    def fullmatch(self, name: str) -> UserMatch | None:
        """A match of the whole of `name` (as `re.fullmatch`)."""
        return self._wrap(self._regexp.fullmatch(_subject(name)))

    def _wrap(self, match: Any) -> UserMatch | None:
        return None if match is None else UserMatch(match, self.groupindex)


def _subject(name: str) -> bytes:
    # surrogatepass: a pickle may name a tensor with a lone surrogate; RE2 reads it as one character
    return name.encode("utf-8", "surrogatepass")


def _char(code: int) -> str:
    text = chr(code)
    return text if text.isascii() and (text.isalnum() or text == "_") else f"\\x{{{code:x}}}"


def _ranges(ranges: tuple[tuple[int, int], ...]) -> str:
    return "".join(_char(lo) if lo == hi else f"{_char(lo)}-{_char(hi)}" for lo, hi in ranges)


def _class(items: list[tuple[Any, Any]]) -> str:
    parts = []
    for op, value in items:
        kind = op.name
        if kind == "NEGATE":
            parts.append("^")
        elif kind == "LITERAL":
            parts.append(_char(value))
        elif kind == "RANGE":
            parts.append(_ranges((value,)))
        elif kind == "CATEGORY" and value.name in _CATEGORIES:
            parts.append(_CATEGORIES[value.name])
        elif kind == "CATEGORY" and value.name in ("CATEGORY_SPACE", "CATEGORY_NOT_SPACE"):
            parts.append(_ranges(_SPACE if value.name == "CATEGORY_SPACE" else _NOT_SPACE))
        else:
            raise _Refused(f"uses {kind} {value} in a character class, which RE2 cannot run: {_RE2_SYNTAX}")
    return "[" + "".join(parts) + "]"


def _flags(flags: int) -> str:
    return "".join(letter for flag, letter in _FLAGS if flags & flag)


def _unsupported(kind: str, value: Any) -> str:
    if kind in ("ASSERT", "ASSERT_NOT"):
        behind = value[0] < 0
        negative = "!" if kind == "ASSERT_NOT" else "="
        construct = f"a look{'behind' if behind else 'ahead'} (?{'<' if behind else ''}{negative}...)"
        advice = "rewrite it without lookaround"
    else:
        construct, advice = _UNSUPPORTED.get(kind, (kind, _RE2_SYNTAX))
    return f"uses {construct}, which RE2 cannot run (rnninit matches patterns in linear time): {advice}"


def _emit(items: Any, depth: int) -> str:
    """RE2 syntax for a parsed Python pattern (a sequence of (opcode, argument) pairs)."""
    if depth > MAX_DEPTH:
        raise _Refused(f"nests groups more than {MAX_DEPTH} deep: write it flatter")
    out = []
    for op, value in items:
        kind = op.name
        if kind == "LITERAL":
            out.append(_char(value))
        elif kind == "NOT_LITERAL":
            out.append(f"[^{_char(value)}]")
        elif kind == "ANY":
            out.append(".")
        elif kind == "IN":
            out.append(_class(value))
        elif kind == "AT":
            out.append(_ANCHORS[value.name])
        elif kind == "BRANCH":
            out.append("(?:" + "|".join(_emit(branch, depth + 1) for branch in value[1]) + ")")
        elif kind == "SUBPATTERN":
            group, add, remove, body = value
            if group is not None:
                out.append("(" + _emit(body, depth + 1) + ")")
            else:
                flags = _flags(add) + ("-" + _flags(remove) if _flags(remove) else "")
                out.append(f"(?{flags}:" + _emit(body, depth + 1) + ")")
        elif kind in ("MAX_REPEAT", "MIN_REPEAT"):
            low, high, body = value
            if low > MAX_REPEAT or (high != sre_constants.MAXREPEAT and high > MAX_REPEAT):
                raise _Refused(f"repeats something more than {MAX_REPEAT} times, RE2's limit: use a smaller count, "
                               "or * or +")
            count = f"{{{low},}}" if high == sre_constants.MAXREPEAT else f"{{{low},{high}}}"
            out.append("(?:" + _emit(body, depth + 1) + ")" + count + ("?" if kind == "MIN_REPEAT" else ""))
        else:
            raise _Refused(_unsupported(kind, value))
    return "".join(out)


@lru_cache(maxsize=128)
def _translate(text: str) -> tuple[str, int, tuple[tuple[str, int], ...]]:
    """RE2 syntax for Python pattern `text`, its number of groups and its named groups."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "possible nested set": about Python's future syntax, not RE2's
            parsed = sre_parse.parse(text)
    except (re.error, OverflowError) as error:
        raise _Refused(f"is not a valid regular expression: {error}") from None
    except RecursionError:
        raise _Refused("nests groups too deeply: write it flatter") from None
    state = parsed.state
    prefix = f"(?{_flags(state.flags)})" if _flags(state.flags) else ""
    return prefix + _emit(parsed, 0), state.groups - 1, tuple(state.groupdict.items())


def _options() -> re2.Options:
    options = re2.Options()
    options.max_mem = MAX_MEM
    options.log_errors = False  # RE2 would print its own errors on stderr; ours say what to do
    return options


def _shown(text: str) -> str:
    return text if len(text) <= 200 else f"{text[:200]}... ({len(text)} characters)"


def compile_user_pattern(text: str, where: str, error: type[RnnInitError] = UsageError) -> UserPattern:
    """`text` compiled for linear-time matching; `error` (one line naming `where`=`text`) for one that cannot be.

    `where` names the pattern's source: the flag (`--only`) or the file, declaration and key
    (`layouts.toml: my-lstm: weight_ih`)."""
    try:
        if len(text) > MAX_PATTERN_CHARS:
            raise _Refused(f"is {len(text)} characters long: a pattern may have at most {MAX_PATTERN_CHARS}")
        translated, groups, names = _translate(text)
        try:
            regexp = re2.compile(translated, _options())
        except re2.error as failure:
            reason = failure.args[0] if failure.args else ""
            reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
            if "pattern too large" in reason:
                raise _Refused(f"needs more than the {MAX_MEM >> 10} KiB of RE2 memory a pattern may use: "
                               "write it with fewer or smaller counted repetitions ({m,n})") from None
            if "repetition" in reason:
                raise _Refused(f"repeats something more than {MAX_REPEAT} times in all (nested counts multiply), "
                               "RE2's limit: use smaller counts, or * or +") from None
            raise _Refused(f"cannot be compiled by RE2 ({reason}): {_RE2_SYNTAX}") from None
        if regexp.groups != groups:
            raise _Refused(f"has {groups} groups, but RE2 counts {regexp.groups}: {_RE2_SYNTAX}")
    except _Refused as refused:
        if where == "only":  # the Python API's argument, or the command line's flag
            raise naming_arguments(error, f"{{only}}={_shown(text)} {refused}") from None
        raise error(f"{where}={_shown(text)} {refused}") from None
    return UserPattern(text, groups, MappingProxyType(dict(names)), regexp)
