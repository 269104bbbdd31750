"""The Rich tables of every command, fitted to a terminal's width without splitting a name or a number (the JSON
documents are in `documents.py`). Nothing here prints; the CLI decides where each table goes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .diagnostics.stats import STAT_NAMES, Stats, block_stats, dtype_name, effective_bias, to_array
from .documents import Tensors, known_stats, param_document
from .init.planning import PlanEntry
from .layouts.discovery import Layer
from .terminal import shown, visible

if TYPE_CHECKING:
    import torch

    from .diagnostics import DiffReport, LayerDiagnosis, VerifyReport
    from .diagnostics.quantized import QuantizedLayer


def _fixed(value: float, digits: int = 3, *, signed: bool = False) -> str:
    """`digits` decimals, or an exponent for magnitudes of a million and more (1e100 in a column stays short)."""
    sign = "+" if signed else ""
    if math.isfinite(value) and abs(value) >= 1e6:
        return f"{value:{sign}.{digits}e}"
    return f"{value:{sign}.{digits}f}"


def _num(value: float, stat: str = "mean") -> str:
    if math.isnan(value):
        return "nan"
    return _fixed(value) if stat == "std" else _fixed(value, signed=True)


def layer_heading(layer: Layer) -> str:
    return visible(f"{layer.title}  ({_sizes(layer)})")


def _sizes(layer: Layer) -> str:
    if layer.row_blocks:  # a per-head cell: its title gives the heads; its gate rows per gate are not a hidden size
        return f"input {layer.input_size}, {'bias' if layer.bias else 'no bias'}"
    sizes = f"input {layer.input_size}, hidden {layer.hidden_size}"
    if layer.proj_size:
        sizes += f", proj {layer.proj_size}"
    return sizes + (", bias" if layer.bias else ", no bias")


# On a terminal, a checkpoint of thousands of layers shows this many in full, then one line per run of alike layers
# (`layer_runs`); a pipe or a file gets every table.
FULL_ON_A_TERMINAL = 20
ROWS_ON_A_TERMINAL = 200  # rows of diff's and verify's tables on a terminal


def layer_runs(layers: Sequence[Layer], describe: Callable[[Layer], str]) -> list[str]:
    """One line per kind of layer that `describe` tells apart, in order of first appearance: `cell20. (1 layer):
    ...` or `cell21. … cell9999. (9,979 layers): LSTM cell (input 8, hidden 16, bias): pytorch`, naming the first
    and the last layer of its kind; `describe` says what a layer is, without its name."""
    kinds: dict[str, list[Any]] = {}  # description → [first, last, count]
    for layer in layers:
        seen = kinds.setdefault(describe(layer), [layer, layer, 0])
        seen[1:] = [layer, seen[2] + 1]
    lines = []
    for text, (first, last, count) in kinds.items():
        where = f"{_where(first)} (1 layer)" if count == 1 else f"{_where(first)} … {_where(last)} ({count:,} layers)"
        lines.append(visible(f"{where}: {text}"))
    return lines


def _where(layer: Layer) -> str:
    return layer.prefix or "(top level)"  # as Layer.title names it


def layer_kind(layer: Layer) -> str:
    """What a layer is, without its name: `LSTM cell (input 8, hidden 16, bias)`."""
    return f"{layer.title[len(_where(layer)) + 2:]} ({_sizes(layer)})"


_UNBOUNDED = 1 << 20  # a width no table reaches: where a layout is measured at its natural width


def _table_width_bound(table: Table) -> int | None:
    """An upper bound of a table's natural width, from its cells' text: each column as wide as its widest text
    (markup only narrows it), plus padding and a rule; None when a cell is no text or a column has set widths."""
    _, right, _, left = table.padding
    total = 1  # the edge's rule, if it has one
    for column in table.columns:
        if column.width is not None or column.min_width is not None:
            return None
        widest = 0
        for cell in (column.header, *column.cells):
            text = cell.plain if isinstance(cell, Text) else cell
            if not isinstance(text, str):
                return None
            widest = max(widest, *(cell_len(line) for line in text.split("\n")))
        total += widest + left + right + 1
    return total


class _Fitted:
    """The first of several layouts of the same rows whose natural width fits the width at hand, else the last one
    (which may wrap its prose at words). Off a terminal the width is unbounded and the first layout, the plain table
    with one line per row, always fits; a narrow terminal gets a denser or a stacked layout in which no parameter name
    and no number is ever split across lines. Layouts are built only when tried."""

    def __init__(self, *layouts: Callable[[], RenderableType]) -> None:
        self.layouts = layouts

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for build in self.layouts[:-1]:
            layout = build()
            if self._fits(console, options, layout):
                yield layout
                return
        yield self.layouts[-1]()

    @staticmethod
    def _fits(console: Console, options: ConsoleOptions, layout: RenderableType) -> bool:
        bound = _table_width_bound(layout) if isinstance(layout, Table) else None
        if bound is not None and bound <= options.max_width:  # measuring costs as much as drawing: only where needed
            return True
        return Measurement.get(console, options.update_width(_UNBOUNDED), layout).maximum <= options.max_width

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.layouts[0]())


Cell = str | Text  # a table cell: Rich markup (names escaped by `shown`) or Text


def _width(cell: Cell) -> int:
    text = cell if isinstance(cell, Text) else Text.from_markup(cell)
    return max((cell_len(line) for line in text.plain.split("\n")), default=0)


def _stacked(header: Sequence[tuple[str, str]], groups: Sequence[tuple[Text, Sequence[Sequence[Cell]]]], *,
             dense: bool = False, prose: bool = True, split: str | None = None, show_header: bool = True) -> Group:
    """A narrow terminal's layout: the columns' header once, then per parameter its name (and facts) on a line of its
    own and its blocks' rows keyed by gate. Columns have the same width in every parameter's rows, so they line up,
    and never wrap, but for a last `prose` column, which wraps at words. With `split` the last column leaves the
    table: its text follows each parameter's rows as lines (`split: text` once when every row says the same)."""
    columns = header[:-1] if split else header
    widths = [max([cell_len(title) if show_header else 0] + [_width(row[index]) for _, rows in groups for row in rows])
              for index, (title, _) in enumerate(columns)]

    def table(*, show_header: bool) -> Table:
        made = Table(show_edge=False, pad_edge=False, show_header=show_header, padding=(0, 0) if dense else (0, 1))
        for index, (title, justify) in enumerate(columns):
            wraps = index == len(columns) - 1 and prose and not split
            made.add_column(title, justify=justify,  # type: ignore[arg-type]
                            width=None if wraps else widths[index], no_wrap=not wraps,
                            overflow="fold" if wraps else "ellipsis")
        return made

    parts: list[RenderableType] = [table(show_header=True)] if show_header else []
    for title, rows in groups:
        body = table(show_header=False)
        for row in rows:
            body.add_row(*row[:len(columns)])
        parts += [title, body]
        if split:
            texts = {str(row[-1]) for row in rows}
            if len(texts) == 1:
                parts += [_prose(f"{split}: ", rows[0][-1])] if texts != {""} else []
            else:
                parts += [_prose(f"{row[0]}: ", row[-1]) for row in rows if row[-1]]
    return Group(*parts)


def _prose(label: str, cell: Cell) -> Text:
    """A line of prose after a stacked table's rows, wrapped at words, a word longer than the line folded."""
    text = Text(label)
    text.append_text(cell if isinstance(cell, Text) else Text.from_markup(cell))
    text.overflow = "fold"
    return text


def _ladder(full: Callable[[bool], Table], header: Sequence[tuple[str, str]],
            groups: Callable[[], Sequence[tuple[Text, Sequence[Sequence[Cell]]]]], *, prose: str | None) -> _Fitted:
    """The layouts tried, widest first: the full table, without its cells' padding, stacked per parameter (padded,
    dense), and with `prose` (the last column: family, rule) split out of the stacked rows onto lines of its own."""
    cached: list[Sequence[tuple[Text, Sequence[Sequence[Cell]]]]] = []

    def rows() -> Sequence[tuple[Text, Sequence[Sequence[Cell]]]]:
        if not cached:
            cached.append(groups())
        return cached[0]

    layouts: list[Callable[[], RenderableType]] = [
        lambda: full(False), lambda: full(True),
        lambda: _stacked(header, rows(), prose=prose is not None),
        lambda: _stacked(header, rows(), dense=True, prose=prose is not None)]
    if prose is not None:
        layouts += [lambda: _stacked(header, rows(), split=prose),
                    lambda: _stacked(header, rows(), dense=True, split=prose)]
    return _Fitted(*layouts, lambda: _records(header, rows()))


def _records(header: Sequence[tuple[str, str]], groups: Sequence[tuple[Text, Sequence[Sequence[Cell]]]]) -> Group:
    """The narrowest layout: per parameter its name on a line, then each block as a line of `label value` pairs,
    wrapped at spaces (so a number or a name may move to the next line, but is never split)."""
    parts: list[RenderableType] = []
    for title, rows in groups:
        parts.append(title)
        for gate, *cells in rows:
            line = Text(f"{_plain(gate)}:")
            for (label, _), cell in zip(header[1:], cells, strict=True):
                if _plain(cell):
                    line.append(f"  {label} " if label != "values" else "  ")
                    line.append_text(cell if isinstance(cell, Text) else Text.from_markup(cell))
            line.overflow = "fold"
            parts.append(Padding(line, (0, 0, 0, 2), expand=False))
    return Group(*parts)


def _plain(cell: Cell) -> str:
    return (cell if isinstance(cell, Text) else Text.from_markup(cell)).plain


def _small(value: float | None) -> str:
    return "" if value is None else f"{value:.1e}" if value and abs(value) < 1e-2 else _fixed(value)


def _error(value: float | None, dtype: str, shape: tuple[int, ...]) -> str:
    """max|BᵀB − I| as `_small` writes it, or its bound ('< 1e-5') where it is rounding noise (`rounding_level`)."""
    from .diagnostics.formatting import _at_rounding
    from .diagnostics.orthogonality import LowerBound, rounding_level

    if isinstance(value, LowerBound):
        return f"≥ {_small(value)}"
    return _at_rounding(value, rounding_level(dtype, shape)) or _small(value)


def inspect_table(
    layer: Layer, tensors: Tensors, kinds: Iterable[str],
    diagnosis: LayerDiagnosis | None = None, *, wide: bool = False,
) -> Group:
    """Per gate block: mean, std, min, max; with a diagnosis also the initializer family and a histogram of the
    values. `wide` adds shape and dtype, max|BᵀB − I| (orth), the singular values' range (σ) and the whole
    matrices' lines. On a terminal too narrow for one line per block the layout stacks (`_ladder`): no name and
    no number is ever split or cut."""
    shape_columns = ("shape", "dtype") if wide else ()
    extra = ((("orth err", "σ min–max") if wide else ()) + ("family", "values")) if diagnosis else ()
    found = {} if diagnosis is None else {(b.name, b.start): b for b in diagnosis.blocks}
    known = known_stats(diagnosis)
    # per parameter: its short name, shape and dtype, and per block: gate, statistics, [orth, σ], [family, values]
    params: list[tuple[str, str, str, list[list[str]]]] = []
    for kind in kinds:
        doc = param_document(layer, kind, tensors, known, as_json=False)  # inf shown as inf, not as a missing value
        rows = []
        for block, spec in zip(doc["blocks"], layer.blocks(kind), strict=True):
            cells = [spec.label, *(_num(math.nan if block[s] is None else block[s], s) for s in STAT_NAMES)]
            stats = found.get((spec.name, spec.start))
            if stats is not None:
                nonfinite = f" [bold red]{stats.nan} NaN {stats.inf} Inf[/]" if stats.nan or stats.inf else ""
                if wide:
                    span = "" if stats.sv_min is None else f"{_fixed(stats.sv_min, 2)}–{_fixed(stats.sv_max or 0, 2)}"
                    cells += [_error(stats.orthogonality_error, stats.dtype, stats.shape), span]
                cells += [shown(stats.family.label) + nonfinite, stats.histogram]
            rows.append(cells)
        params.append((shown(_short(doc["name"], layer)), "x".join(map(str, doc["shape"])), doc["dtype"], rows))
    bias_rows = [[gate or "-", *(_num(stats[s], s) for s in STAT_NAMES)] + [""] * len(extra)
                 for gate, stats in effective_bias(layer, tensors)]

    def full(dense: bool) -> Table:
        table = Table(show_edge=False, pad_edge=False, padding=(0, 0) if dense else (0, 1))
        for column in ("parameter", "gate", *shape_columns, *STAT_NAMES, *extra):
            table.add_column(column, justify="right" if column in STAT_NAMES else "left", no_wrap=column != "family")
        for name, shape, dtype, rows in params:
            for index, (gate, *cells) in enumerate(rows):
                first = index == 0
                facts = [shape if first else "", dtype if first else ""] if wide else []
                table.add_row(name if first else "", gate, *facts, *cells)
        for index, (gate, *cells) in enumerate(bias_rows):
            label = Text("effective bias", style="bold") if index == 0 else ""
            facts = ["ih + hh" if index == 0 else "", ""] if wide else []
            table.add_row(label, gate, *facts, *cells)
        return table

    def groups() -> list[tuple[Text, list[list[str]]]]:
        """Stacked, shape and dtype join the name's line, and the family moves last (it alone wraps)."""
        def swapped(cells: list[str]) -> list[str]:
            return [*cells[:-2], cells[-1], cells[-2]] if diagnosis else cells
        made = [(Text.from_markup(f"{name}  {shape} {dtype}" if wide else name, style="bold"),
                 [swapped(row) for row in rows]) for name, shape, dtype, rows in params]
        if bias_rows:
            made.append((Text("effective bias" + ("  ih + hh" if wide else ""), style="bold"),
                         [swapped(row) for row in bias_rows]))
        return made

    stacked_columns = ["gate", *STAT_NAMES, *((*extra[:-2], "values", "family") if diagnosis else ())]
    header = [(column, "right" if column in STAT_NAMES else "left") for column in stacked_columns]
    parts: list[Any] = [_ladder(full, header, groups, prose="family" if diagnosis else None)]
    if diagnosis is not None:
        for matrix in diagnosis.matrices if wide else ():
            if matrix.orthogonality_error is not None:
                sigma = "" if matrix.sv_min is None else \
                    f", σ {_fixed(matrix.sv_min)}–{_fixed(matrix.sv_max or 0)} {matrix.spectrum or ''}"
                error = _error(matrix.orthogonality_error, dtype_name(tensors[matrix.name]), matrix.shape)
                parts.append(Text(f"whole {visible(_short(matrix.name, layer))}: max|WᵀW − I| {error}{sigma}"))
        parts.append(Text("scheme: " + scheme_line(diagnosis), style="bold"))
        parts += [Text(note) for note in diagnosis.notes]
    return Group(Text(layer_heading(layer), style="bold"), *parts)


def quantized_count(layers: Sequence[QuantizedLayer]) -> str:
    """`2 quantized layer(s) (rewritten by apply)`, `(shown, not rewritten)`, or `(1 not rewritten by apply)`."""
    kept = sum(layer.kept is not None for layer in layers)
    fate = "rewritten by apply" if not kept else "shown, not rewritten" if kept == len(layers) else \
        f"{kept} not rewritten by apply"
    return f"{len(layers)} quantized layer(s) ({fate})"


def quantized_table(layer: QuantizedLayer) -> Group:
    """A dynamically quantized layer: per packed weight its dtype, scale and zero point, and per gate block the
    statistics of its dequantized values ((integer − zero point) × scale), then the float biases'."""
    quantized = {param.dtype for param in layer.params if param.scale is not None}
    packing = ", ".join(sorted(quantized)) + " per tensor" if quantized else "fp16 packed"
    fate = "rewritten by apply as its float layer, packed again" if layer.kept is None else "not rewritten by apply"
    heading = f"{layer.title}  (input {layer.input_size}, hidden {layer.hidden_size}, {packing}; {fate})"
    params = [(param.kind, param.dtype, "" if param.scale is None else f"{param.scale:.6g}",
               "" if param.zero_point is None else str(param.zero_point),
               [[gate, *(_num(stats[s], s) for s in STAT_NAMES)] for gate, stats in param.blocks])
              for param in layer.params]

    def full(dense: bool) -> Table:
        table = Table(show_edge=False, pad_edge=False, padding=(0, 0) if dense else (0, 1))
        for column in ("parameter", "gate", "dtype", "scale", "zero point", *STAT_NAMES):
            table.add_column(column, justify="right" if column in (*STAT_NAMES, "scale", "zero point") else "left",
                             no_wrap=True)
        for kind, dtype, scale, zero_point, rows in params:
            for index, (gate, *cells) in enumerate(rows):
                facts = [kind, gate, dtype, scale, zero_point] if index == 0 else ["", gate, "", "", ""]
                table.add_row(*facts, *cells)
        return table

    def groups() -> list[tuple[Text, list[list[str]]]]:
        return [(Text(" ".join(part for part in (kind, dtype, scale and f"scale {scale}",
                                                 zero_point and f"zero point {zero_point}") if part), style="bold"),
                 rows) for kind, dtype, scale, zero_point, rows in params]

    header = [("gate", "left"), *((stat, "right") for stat in STAT_NAMES)]
    return Group(Text(visible(heading), style="bold"), _ladder(full, header, groups, prose=None))


def scheme_line(diagnosis: LayerDiagnosis) -> str:
    """`keras (also keras-gate)`, or `unknown / trained`, or why it is undetermined."""
    match = diagnosis.scheme
    if not match.claimed and match.undetermined:
        return (f"{match.primary}: consistent with {', '.join(match.undetermined)}, "
                "but some blocks are too small to decide")
    line = match.primary
    others = [name for name in match.matches if name != match.primary]
    if others:
        line += f" (also matches {', '.join(others)})"
    if match.undetermined:
        line += f"; too small to decide against {', '.join(match.undetermined)}"
    return line


def _gate_label(gate: str | None, head: int | None) -> str:
    """`f`, `f.h1` (head 1 of a per-head cell), `-` (no gates)."""
    return (gate or "-") + (f".h{head}" if head is not None else "")


def verify_table(report: VerifyReport, limit: int | None = None) -> _Fitted:
    """The failing blocks (the first `limit`): what the scheme would draw, what was found, and the numbers that
    decided. Where a row does not fit on one line, each parameter's name gets a line and each block three rows:
    expected, found, why."""
    rows = [(shown(block.name), _gate_label(block.gate, block.head), f"{block.start}:{block.stop}",
             shown(block.expected),
             shown(block.found), shown(block.detail)) for block in report.failures[:limit]]

    def full(dense: bool) -> Table:
        table = Table(show_edge=False, pad_edge=False, padding=(0, 0) if dense else (0, 1))
        for column in ("parameter", "gate", "rows", "expected", "found", "why"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        return table

    def groups() -> list[tuple[Text, list[list[str]]]]:
        return [(Text.from_markup(name, style="bold"),
                 [cells for gate, span, expected, found, why in members
                  for cells in ([f"{gate}, rows {span}", "expected", expected], ["", "found", found],
                                ["", "why", why])])
                for name, members in _by_name(rows)]

    header = [("block", "left"), ("", "left"), ("", "left")]
    return _Fitted(lambda: full(False), lambda: full(True), lambda: _stacked(header, groups(), show_header=False))


def _by_name(rows: Iterable[Sequence[str]]) -> list[tuple[str, list[Sequence[str]]]]:
    """Rows grouped by their first cell (a parameter's name), in order, the name left out of each row."""
    grouped: dict[str, list[Sequence[str]]] = {}
    for name, *cells in rows:
        grouped.setdefault(name, []).append(cells)
    return list(grouped.items())


def diff_table(report: DiffReport, limit: int | None = None) -> _Fitted:
    """Changed gate blocks (the first `limit`): max |Δ|, how many values changed, mean and std before → after."""
    columns = ("parameter", "gate", "changed", "max |Δ|", "mean a → b", "std a → b")
    justify = {column: "right" if column in ("changed", "max |Δ|") else "left" for column in columns}
    rows = []
    for block in report.changed_blocks[:limit]:
        before, after = block.before, block.after
        rows.append((shown(block.name), _gate_label(block.gate, block.head), f"{block.changed_count}/{before['count']}",
                     f"{block.max_abs_delta:.3g}", f"{_num(before['mean'])} → {_num(after['mean'])}",
                     f"{_num(before['std'], 'std')} → {_num(after['std'], 'std')}"))

    def full(dense: bool) -> Table:
        table = Table(show_edge=False, pad_edge=False, padding=(0, 0) if dense else (0, 1))
        for column in columns:
            table.add_column(column, justify=justify[column])  # type: ignore[arg-type]
        for row in rows:
            table.add_row(*row)
        return table

    def groups() -> list[tuple[Text, list[list[str]]]]:
        return [(Text.from_markup(name, style="bold"), [list(cells) for cells in members])
                for name, members in _by_name(rows)]

    return _ladder(full, [(column, justify[column]) for column in columns[1:]], groups, prose=None)


def _short(name: str, layer: Layer) -> str:
    return name.removeprefix(layer.prefix)


def apply_table(
    layer: Layer, entries: Iterable[PlanEntry], tensors: Mapping[str, torch.Tensor] | None,
    before: Mapping[tuple[str, int], Stats] | None,
) -> Group:
    """Per block: parameter, gate, rule, and mean/std before → after (the plan alone without tensors). Stacked on a
    narrow terminal: the parameter's name on a line, its blocks keyed by gate, the rule last (or on lines below)."""
    with_stats = tensors is not None and before is not None
    rows: list[list[str]] = []  # per block: short name, gate, rule, [mean, std]
    arrays: dict[str, Any] = {}  # each parameter converted once, not once per block
    for entry in entries:
        cells = [shown(_short(entry.name, layer)), entry.label, shown(entry.rule)]
        if with_stats:
            old = before[(entry.name, entry.start)]
            if entry.name not in arrays:
                arrays[entry.name] = to_array(tensors[entry.name])
            new = block_stats(arrays[entry.name][entry.start:entry.stop])
            cells += [f"{_num(old['mean'])} → {_num(new['mean'])}",
                      f"{_num(old['std'], 'std')} → {_num(new['std'], 'std')}"]
        rows.append(cells)

    def full(dense: bool) -> Table:
        table = Table(show_edge=False, pad_edge=False, padding=(0, 0) if dense else (0, 1))
        table.add_column("parameter", no_wrap=True)
        table.add_column("gate")
        table.add_column("rule", overflow="fold")
        if with_stats:
            table.add_column("mean before → after", justify="right", no_wrap=True)
            table.add_column("std before → after", justify="right", no_wrap=True)
        last = None
        for name, *cells in rows:
            table.add_row(name if name != last else "", *cells)
            last = name
        return table

    def groups() -> list[tuple[Text, list[list[str]]]]:
        return [(Text.from_markup(name, style="bold"), [[gate, *stats, rule] for gate, rule, *stats in members])
                for name, members in _by_name(rows)]

    stats_header = [("mean before → after", "right"), ("std before → after", "right")] if with_stats else []
    header = [("gate", "left"), *stats_header, ("rule", "left")]
    return Group(Text(layer_heading(layer), style="bold"), _ladder(full, header, groups, prose="rule"))


def schemes_table(schemes: Iterable[Any]) -> _Fitted:
    """One row per scheme, its name on the row's first line (grep finds it), one rule a line. Off a terminal
    nothing wraps: the description and the reference each stay one line. On a terminal they wrap at words in
    columns of at most 48 characters; where even that does not fit, each scheme is a paragraph of its own."""
    rows = [(escape(scheme.signature), escape(scheme.description),
             # a template's placeholder shows as the argument's name: identity(scale), not identity({scale})
             "\n".join(escape(re.sub(r"\{(\w+)\}", r"\1", rule)) for rule in scheme.rules), escape(scheme.reference))
            for scheme in schemes]

    def table(prose_width: int | None) -> Table:
        made = Table(show_lines=True)
        made.add_column("scheme", no_wrap=True)
        made.add_column("description", max_width=prose_width)
        made.add_column("rules (in order; later rules win)", no_wrap=True)
        made.add_column("reference", max_width=prose_width)
        for row in rows:
            made.add_row(*row)
        return made

    def paragraphs() -> Group:
        parts: list[RenderableType] = []
        for signature, description, rules, reference in rows:
            parts += [Text.from_markup(signature, style="bold"), _indented(description),
                      _indented("rules (in order; later rules win):"),
                      *(_indented(rule, 4) for rule in rules.split("\n")), _indented("reference: " + reference), ""]
        return Group(*parts[:-1])

    return _Fitted(lambda: table(None), lambda: table(48), paragraphs)


def _indented(markup: str, by: int = 2) -> Padding:
    """Prose indented under its heading, wrapped at words (a word longer than the line folded, never cut)."""
    text = Text.from_markup(markup)
    text.overflow = "fold"
    return Padding(text, (0, 0, 0, by), expand=False)


def provenance(metadata: Mapping[str, str]) -> str | None:
    """`initialized by rnninit 0.1.0: scheme keras, seed 0` from a checkpoint's rnninit metadata."""
    if "rnninit.scheme" not in metadata:
        return None
    line = f"initialized by rnninit {metadata.get('rnninit.version', '?')}: scheme {metadata['rnninit.scheme']}"
    line += f", seed {metadata.get('rnninit.seed', '?')}"
    rules = metadata.get("rnninit.rules", "[]")
    if rules not in ("[]", ""):
        line += f", rules {rules}"
    if metadata.get("rnninit.only"):
        line += f", only {metadata['rnninit.only']!r}"
    return line
