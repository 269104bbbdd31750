"""Text that is safe to show on a terminal.

Tensor names, metadata, paths and error messages come from files and command lines that anyone may have
written. Shown raw, an escape sequence in them would drive the terminal: set the clipboard (OSC 52), the
window title (OSC 0), plant hyperlinks (OSC 8), clear the screen (CSI), or reorder what the reader sees
(bidi overrides). Human output passes every such string through `visible`; JSON keeps the exact strings
(json.dumps escapes control characters itself, and writes ASCII: a lone surrogate, the part of a name that is not
valid UTF-8, stays its `\\udcff` escape, which Python's json reads back as the same string).
"""

from __future__ import annotations

import unicodedata

_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# Unicode categories shown as escapes: controls (C0, DEL, C1), lone surrogates (undecodable bytes of a path),
# line and paragraph separators
_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}
# bidirectional embeddings, overrides and isolates, and the invisible direction marks
_BIDI = {chr(code) for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every control character made visible: ESC as `\\x1b`, C1 controls (U+0080–U+009F) as
    `\\x9b`, DEL, tab, CR and LF as `\\x7f`, `\\t`, `\\r`, `\\n`, bidi controls as `\\u202e`, lone surrogates
    (a name that is not valid UTF-8, which no terminal could be sent) as `\\udcff`. Other text, including
    non-ASCII letters, is unchanged."""
    if text.isprintable() and text.isascii():
        return text  # the common case: nothing to look at
    return "".join(_escape(char) if char in _BIDI or unicodedata.category(char) in _CATEGORIES else char
                   for char in text)


def shown(text: object) -> str:
    """`visible(str(text))` with Rich markup escaped: for strings printed with markup on (tables, `error:`)."""
    from rich.markup import escape

    return escape(visible(str(text)))
