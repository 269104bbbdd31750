"""Rich renderables as the exact text Rich prints without colour, computed directly: thousands of per-layer tables
off a terminal cost a join per row instead of Rich's per-cell layout (10,000 layers: seconds, not minutes).

Only what the reports use is handled: Text, markup strings, Group, Padding on the left, `_Fitted` (its first
layout) and Tables of plain text cells whose natural width fits. Anything else gives None, and the caller lets Rich
draw it; tests compare both on every table the reports build.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .report import _Fitted


class _Unsupported(Exception):
    """A renderable this module does not draw: Rich draws it instead."""


def plain_text(renderable: Any, console: Console) -> str | None:
    """What `console.print(renderable)` writes when it has no colours, or None where Rich must draw it itself."""
    if console.is_terminal or console.color_system is not None or not console.encoding.startswith("utf"):
        return None
    try:
        return "".join(line + "\n" for line in _lines(renderable, console, console.options))
    except _Unsupported:
        return None


def _lines(renderable: Any, console: Console, options: ConsoleOptions) -> Iterator[str]:
    if isinstance(renderable, str):
        renderable = console.render_str(renderable, highlight=False)
    if isinstance(renderable, Text):
        yield from _text_lines(renderable, options.max_width)
    elif isinstance(renderable, Group):
        for item in renderable.renderables:
            yield from _lines(item, console, options)
    elif isinstance(renderable, Padding):
        top, right, bottom, left = renderable.top, renderable.right, renderable.bottom, renderable.left
        if top or right or bottom or renderable.expand or not isinstance(renderable.renderable, Text):
            raise _Unsupported
        for line in _text_lines(renderable.renderable, options.max_width - left):
            yield " " * left + line
    elif isinstance(renderable, Table):
        yield from _table_lines(renderable, console, options)
    elif isinstance(renderable, _Fitted):  # off a terminal Rich draws its first layout: it always fits
        yield from _lines(renderable.layouts[0](), console, options)
    else:
        raise _Unsupported


def _text_lines(text: Text, width: int) -> list[str]:
    lines = text.plain.split("\n")
    if "\t" in text.plain or text.justify not in (None, "default", "left") \
            or any(cell_len(line) > width for line in lines):
        raise _Unsupported  # tabs, justification and wrapping are Rich's
    if text.end != "\n":
        raise _Unsupported
    return lines


def _cell_text(cell: Any, console: Console) -> tuple[list[str], str | None]:
    """A cell's lines and its own justification."""
    if isinstance(cell, str):
        text = console.render_str(cell, highlight=False) if "[" in cell or ":" in cell else Text(cell)
    elif isinstance(cell, Text):
        text = cell
    else:
        raise _Unsupported
    if "\t" in text.plain:
        raise _Unsupported
    return text.plain.split("\n"), text.justify


def _aligned(line: str, width: int, justify: str) -> str:
    if justify in ("left", "default"):
        return line + " " * (width - cell_len(line))
    line = line.rstrip()  # as Rich's right and centre justification do
    room = width - cell_len(line)
    if justify == "right":
        return " " * room + line
    return " " * (room // 2) + line + " " * (room - room // 2)


def _table_lines(table: Table, console: Console, options: ConsoleOptions) -> Iterator[str]:
    if table.title or table.caption or table.show_footer or table.expand or table.width is not None \
            or table.leading or table.collapse_padding or not table.columns:
        raise _Unsupported
    top, right, bottom, left = table.padding
    if top or bottom:
        raise _Unsupported
    count = len(table.columns)
    rows: list[list[tuple[list[str], str]]] = []  # per row, per column: lines and justification
    if table.show_header:
        headers = [_cell_text(column.header, console) for column in table.columns]
        rows.append([(lines, justify or column.justify) for (lines, justify), column in zip(headers, table.columns,
                                                                                             strict=True)])
    body_rows = len(table.rows)
    columns_cells = []
    for column in table.columns:
        if column.width is not None or column.min_width is not None or column.max_width is not None \
                or column.ratio or column.overflow not in ("ellipsis", "fold", "crop") or column.vertical != "top":
            raise _Unsupported
        cells = list(column.cells)
        if len(cells) != body_rows:
            raise _Unsupported
        columns_cells.append(cells)
    for index in range(body_rows):
        if table.rows[index].end_section:
            raise _Unsupported
        row = []
        for column, cells in zip(table.columns, columns_cells, strict=True):
            lines, justify = _cell_text(cells[index], console)
            row.append((lines, justify or column.justify))
        rows.append(row)
    if not rows:
        raise _Unsupported  # Rich stretches an empty table to the console's width
    pads = []
    for index in range(count):
        pad_left, pad_right = left, right
        if not table.pad_edge:
            pad_left = 0 if index == 0 else pad_left
            pad_right = 0 if index == count - 1 else pad_right
        pads.append((pad_left, pad_right))
    contents = [max((cell_len(line) for row in rows for line in row[index][0]), default=0) for index in range(count)]
    widths = [max(content + pad_left + pad_right, 1) for content, (pad_left, pad_right) in zip(contents, pads,
                                                                                             strict=True)]
    box = table.box.substitute(options, safe=console.safe_box if table.safe_box is None else table.safe_box) \
        if table.box else None
    box = box.get_plain_headed_box() if box and not table.show_header else box
    extra = (2 if table.show_edge else 0) + count - 1 if box else 0
    if sum(widths) + extra > options.max_width:
        raise _Unsupported  # Rich would shrink columns to fit
    if box and table.show_edge:
        yield box.get_top(widths).rstrip("\n")
    for number, row in enumerate(rows):
        header = table.show_header and number == 0
        height = max(len(lines) for lines, _ in row)
        shaped = []
        for (lines, justify), width, (pad_left, pad_right) in zip(row, widths, pads, strict=True):
            inner = width - pad_left - pad_right
            if any(cell_len(line) > inner for line in lines):
                raise _Unsupported
            blank = [""] * (height - len(lines))
            lines = blank + lines if header else lines + blank  # a header cell sits at the bottom of its row
            shaped.append([" " * pad_left + _aligned(line, inner, justify) + " " * pad_right for line in lines])
        last = number == len(rows) - 1
        if box:
            edge_left, edge_right, divider = ((box.head_left, box.head_right, box.head_vertical) if number == 0 else
                                              (box.foot_left, box.foot_right, box.foot_vertical) if last else
                                              (box.mid_left, box.mid_right, box.mid_vertical))
        else:
            edge_left = edge_right = divider = ""
        for line in range(height):
            text = divider.join(cells[line] for cells in shaped)
            yield edge_left + text + edge_right if box and table.show_edge else text
        if box and header:
            yield box.get_row(widths, "head", edge=table.show_edge).rstrip("\n")
        elif box and table.show_lines and not last:
            yield box.get_row(widths, "row", edge=table.show_edge).rstrip("\n")
    if box and table.show_edge:
        yield box.get_bottom(widths).rstrip("\n")
