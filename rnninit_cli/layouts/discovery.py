"""Gate layout knowledge: which parameter names and shapes are recurrent, gate order, block slicing.

Works from names and shapes alone (no model code). PyTorch stores the G gates of a layer stacked on
dim 0: an LSTM's `weight_ih_l0` is (W_ii|W_if|W_ig|W_io), a GRU's is (W_ir|W_iz|W_in).

Longer than 600 lines because the look-alike search checks each `--layout` hint it gives by building the layers
that hint declares, with the same builders `discover` uses: split in two, the modules would import each other.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import LayoutDeclarationError, LayoutError
from .layer import CELL_BY_GATE_COUNT, GATES, KINDS, Block, Layer, article, brace_name, common_prefix
from .patterns import compile_user_pattern

__all__ = ["CELL_BY_GATE_COUNT", "GATES", "KINDS", "Block", "Discovery", "Layer", "Skipped", "Suspect", "article",
           "discover", "find_layers"]
from .views import GateView, Piece, View, effective_shapes, find_views, is_parametrization_part, shape_of

if TYPE_CHECKING:
    from .declared import Declaration, DeclaredCell

_NAME = re.compile(  # \Z and DOTALL: a name may hold a newline anywhere, even at its end
    r"^(?P<prefix>(?:.*[./])?)(?P<kind>weight_ih|weight_hh|weight_hr|bias_ih|bias_hh)"
    r"(?:_l(?P<layer>\d+)(?P<reverse>_reverse)?)?\Z", re.DOTALL
)


@dataclass(frozen=True)
class Skipped:
    """A group of tensors that looks recurrent but could not be understood; nothing in it is touched."""

    names: tuple[str, ...]
    reason: str
    declare: str = ""  # a --layout value that would declare the group, when one can be guessed

    def __str__(self) -> str:
        text = f"skipped {', '.join(self.names)}: {self.reason}"
        if self.declare:
            text += f"; if they form a cell of another layout, declare it: --layout '{self.declare}'"
        return text


@dataclass(frozen=True)
class Suspect:
    """A tensor not recognised as recurrent whose shape and neighbours look like a recurrent weight."""

    name: str
    shape: tuple[int, ...]
    note: str
    declare: str

    def __str__(self) -> str:
        hint = f"; declare it with --layout {shlex.quote(self.declare)}" if self.declare else ""
        return f"{self.name} {list(self.shape)}: {self.note}{hint}"


@dataclass(frozen=True)
class Discovery:
    """What `discover` found: the layers, the views behind their effective parameters, and what it left alone."""

    layers: tuple[Layer, ...]
    views: tuple[View, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    suspects: tuple[Suspect, ...] = ()

    @property
    def sources(self) -> list[str]:
        """Every stored tensor behind the layers, in order."""
        return list(dict.fromkeys(name for layer in self.layers for name in layer.all_stored()))

    def effective(self, stored: Mapping[str, Any]) -> dict[str, Any]:
        """The layers' parameters as they compute with them, by effective name (stored tensors themselves where
        no view applies), from `stored` (which holds at least `sources`): numpy arrays from numpy arrays (reading),
        torch tensors from torch tensors (apply)."""
        by_name = {view.name: view for view in self.views}
        result = {}
        for layer in self.layers:
            for name in layer.params.values():
                if name not in result:
                    view = by_name.get(name)
                    result[name] = stored[name] if view is None else view.compose(stored)
        return result


def find_layers(tensors: Mapping[str, Any]) -> list[Layer]:
    """Every recurrent layer (one per direction) or cell in `tensors`, in order of first appearance.

    Strict: a group that looks recurrent but cannot be understood raises `LayoutError` (see `discover` for the
    lenient search, with views and declared layouts)."""
    found = discover(tensors)
    if found.skipped:
        raise LayoutError(found.skipped[0].reason)
    return list(found.layers)


def discover(
    tensors: Mapping[str, Any],
    *,
    layouts: Sequence[Declaration] = (),
    only: str | None = None,
    identities: Mapping[str, Hashable] | None = None,
) -> Discovery:
    """Every recurrent layer or cell of `tensors` (names → anything with a `.shape`), in order of first appearance.

    Groups of torch.nn names are found by name; weight-normalized and weight-dropped parameters through views
    (see `views`); `layouts` declare other cells. `only` (a regex) keeps the groups with a tensor whose name it
    matches (the effective name, `weight_hh_l0` of a weight-normalized layer, or a stored one; run by RE2, see
    `patterns`), before anything is checked, so an odd group it leaves out never matters. A group
    that cannot be understood is skipped (`Discovery.skipped` says why); a declared cell whose shapes do not fit
    raises LayoutDeclarationError. `identities` (name → where its bytes lie) tells which names are one tensor: a
    second name of a tensor a layer uses (a pickled module's `_flat_weights`) is no look-alike."""
    pattern = compile_user_pattern(only, "only") if only is not None else None

    def wanted(names: Sequence[str]) -> bool:
        return pattern is None or any(pattern.search(name) for name in names)

    shapes = {name: shape for name, value in tensors.items() if (shape := shape_of(value)) is not None}
    position = {name: index for index, name in enumerate(shapes)}
    layers: list[tuple[int, Layer]] = []
    views: list[View] = []
    skipped: list[Skipped] = []

    claimed: set[str] = set()
    declarations = [*layouts, *automatic_layouts(shapes, layouts)]
    if declarations:
        from .declared import match_declarations

        for cell in match_declarations(list(shapes), declarations):
            names = [name for pieces in cell.pieces.values() for name, _ in pieces]
            claimed.update(names)
            if wanted(names):
                try:
                    layer, cell_views = _declared_layer(cell, shapes)
                except LayoutDeclarationError as error:
                    if not cell.declaration.automatic:
                        raise  # asked for: the user must hear that it does not fit
                    skipped.append(Skipped(tuple(names), f"named like the built-in layout {cell.declaration.name}, "
                                           f"but its shapes do not fit it: {error}"))
                    continue
                layers.append((min(position[name] for name in names), layer))
                views.extend(cell_views)

    free = {name: shape for name, shape in shapes.items() if name not in claimed}
    auto_views, unwritable = find_views(free)
    effective = effective_shapes(free, auto_views)
    for item in unwritable:
        for source in item.sources:
            effective.pop(source, None)
    view_of = {view.name: view for view in auto_views}
    blocked = {item.name: item for item in unwritable}

    def stored_names(name: str) -> tuple[str, ...]:
        if name in view_of:
            return view_of[name].sources
        if name in blocked:
            return blocked[name].sources
        return (name,)

    groups: dict[tuple[str, int | None, bool], dict[str, tuple[str, tuple[int, ...]]]] = {}
    for name, shape in [*effective.items(), *((item.name, ()) for item in unwritable)]:
        match = _NAME.match(name)
        if match is None:
            continue
        layer = match["layer"]
        if layer is None and match["kind"] == "weight_hr":
            continue
        key = (match["prefix"], None if layer is None else int(layer), bool(match["reverse"]))
        groups.setdefault(key, {})[match["kind"]] = (name, shape)

    used: set[str] = set(claimed)
    for (prefix, index, reverse), members in groups.items():
        names = [stored for name, _ in members.values() for stored in stored_names(name)]
        if not any(len(members.get(k, ("", ()))[1]) == 2 or members.get(k, ("",))[0] in blocked
                   for k in ("weight_ih", "weight_hh")):
            suffix = "" if index is None else f"_l{index}" + ("_reverse" if reverse else "")
            declared_weights = [prefix + k + suffix for k in ("weight_ih", "weight_hh")
                                if prefix + k + suffix in claimed]
            if declared_weights and wanted(names):  # a layout took this layer's weights but not these
                skipped.append(Skipped(tuple(names), f"the layout that declares {', '.join(declared_weights)} does "
                                       "not declare these, so they are left alone; add them to it (bias_ih=..., "
                                       "bias_hh=...)"))
            continue  # names that only end like recurrent ones
        used.update(names)
        if not wanted([*names, *(name for name, _ in members.values())]):
            continue
        stuck = [blocked[name] for name, _ in members.values() if name in blocked]
        if stuck:
            skipped.append(Skipped(tuple(names), stuck[0].reason))
            continue
        try:
            layer = _build_layer(prefix, index, reverse, members)
        except LayoutError as error:
            skipped.append(Skipped(tuple(names), str(error), _declare_group(members)))
            continue
        sources = {kind: view_of[name].sources for kind, (name, _) in members.items() if name in view_of}
        layer = replace(layer, sources=sources)
        layers.append((min(position[name] for name in names), layer))
        views.extend(view_of[name] for name, _ in members.values() if name in view_of)

    layers.sort(key=lambda pair: pair[0])
    used |= {source for view in auto_views for source in view.sources}
    if identities is not None:
        taken = {identities[name] for name in used if name in identities}
        used |= {name for name, identity in identities.items() if identity in taken and name in shapes}
    skipped = [replace(item, declare=_working_hint(item.declare, shapes, used, set(item.names))) for item in skipped]
    # the other weights of a block that holds a per-head cell (an xLSTM block's feed-forward) are no LSTM
    blocks = tuple({layer.prefix[:layer.prefix.rstrip(".").rfind(".") + 1] for _, layer in layers if layer.row_blocks}
                   - {""})
    suspects = [suspect for suspect in _suspects(shapes, used) if not suspect.name.startswith(blocks)]
    return Discovery(tuple(layer for _, layer in layers), tuple(views), tuple(skipped), tuple(suspects))


def _pattern_for(name: str) -> str:
    """A regex for `name` whose numbered path parts (between dots or slashes) match any number, so one declaration
    covers every layer."""
    return "".join(r"(\d+)" if part.isdigit() else re.escape(part) for part in re.split(r"([./])", name))


def _literal_pattern(name: str) -> str:
    """A regex for `name` alone: a declaration of this one cell."""
    return re.escape(name)


def _declare_group(members: dict[str, tuple[str, tuple[int, ...]]]) -> str:
    """A --layout value naming the group's tensors by kind, or "" when the group is no 1-, 3- or 4-gate cell with
    both weights (the caller keeps it only if it works when fed back)."""
    if not all(k in members and len(members[k][1]) == 2 and members[k][1][1] for k in ("weight_ih", "weight_hh")):
        return ""
    rows, columns = members["weight_hh"][1]
    cell = CELL_BY_GATE_COUNT.get(rows // columns) if rows % columns == 0 else None
    if cell is None:
        return ""
    return " ".join([f"cell={cell}"] + [f"{kind}={_pattern_for(name)}" for kind, (name, _) in members.items()])


class _Hints:
    """Checks `--layout` values by feeding them back as `discover` would read them, each value once."""

    LIMIT = 64  # distinct values checked; each costs one match over every name

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], used: Collection[str]) -> None:
        self.shapes = shapes
        self.used = used
        self.checked: dict[str, list[DeclaredCell] | None] = {}

    def cells(self, declare: str) -> list[DeclaredCell] | None:
        """The cells `declare` declares when given with --layout, or None when it would be refused."""
        if declare in self.checked:
            return self.checked[declare]
        if not declare or len(self.checked) >= self.LIMIT:
            return None
        from .declared import match_declarations, parse_layout

        try:
            cells: list[DeclaredCell] | None = match_declarations(list(self.shapes), parse_layout(declare, "hint"))
            for cell in cells or ():
                _declared_layer(cell, self.shapes)
        except (LayoutDeclarationError, LayoutError):
            cells = None
        self.checked[declare] = cells
        return cells

    def works(self, declare: str, own: Collection[str] = (), pair: tuple[str, str] | None = None) -> bool:
        """Whether `declare` is accepted, takes no tensor a layer already uses (but `own`), and, given `pair`
        (input weight, recurrent weight), declares a cell of exactly those two."""
        cells = self.cells(declare)
        if cells is None:
            return False
        if any(name in self.used and name not in own for cell in cells for name in cell.names):
            return False
        return pair is None or any(
            [name for name, _ in cell.pieces.get("weight_ih", ())] == [pair[0]]
            and [name for name, _ in cell.pieces.get("weight_hh", ())] == [pair[1]] for cell in cells)


def _working_hint(declare: str, shapes: Mapping[str, tuple[int, ...]], used: Collection[str],
                  own: Collection[str]) -> str:
    """`declare` if it works when fed back (see `_Hints.works`), else ""."""
    return declare if declare and _Hints(shapes, used).works(declare, own) else ""


_RECURRENT_HINT = re.compile(r"hh|h2h|p2g|recurr|hidden|(?:^|[._/])(?:u|h|uh|wh|w_h)(?:\Z|[._/])", re.IGNORECASE)
_INPUT_HINT = re.compile(r"ih|i2h|x2h|x2g|i2g|input|(?:^|[._/])(?:w|x|wx|w_x|kernel)(?:\Z|[._/])", re.IGNORECASE)


def _recurrent_score(name: str, position: int) -> tuple[int, int]:
    """How much `name` looks like the recurrent weight of a pair: its name first, then its place (torch and
    hand-written cells alike define the input weight first)."""
    last = name.rsplit("/", 1)[-1]
    return (_RECURRENT_HINT.search(last) is not None) - (_INPUT_HINT.search(last) is not None), position


def _builtin_suspects(shapes: Mapping[str, tuple[int, ...]], used: Collection[str],
                      hints: _Hints) -> tuple[list[Suspect], set[str]]:
    """Look-alikes whose names and shapes a built-in layout declares: the hint is its name."""
    from .declared import BUILTIN_LAYOUTS

    found: list[Suspect] = []
    taken: set[str] = set()
    free = [name for name in shapes if name not in used]
    for name, declaration in BUILTIN_LAYOUTS.items():
        if declaration.automatic:
            continue  # found without being asked for
        recurrent_pattern = declaration.patterns["weight_hh"]
        if not any(recurrent_pattern.fullmatch(tensor) for tensor in free) or not hints.works(name):
            continue  # the first test is cheap: most checkpoints have no such names
        for cell in hints.cells(name) or ():
            if taken.intersection(cell.names):
                continue
            layer, _ = _declared_layer(cell, shapes)
            taken.update(cell.names)
            (recurrent, _), = cell.pieces["weight_hh"][:1]
            (partner, _), = cell.pieces["weight_ih"][:1]
            note = (f"named and shaped like the built-in layout {name} ({declaration.title} cell, hidden size "
                    f"{layer.hidden_size}, input weight {partner}), which rnninit uses only when asked")
            found.append(Suspect(recurrent, shapes[recurrent], note, name))
    return found, taken


def _suspects(shapes: Mapping[str, tuple[int, ...]], used: set[str]) -> list[Suspect]:
    """Tensors no layer uses that a built-in layout declares, then 2-D tensors shaped like the recurrent weight of
    a GRU or LSTM, (G·h, h) or transposed (h, G·h), beside a tensor of the same module or its parent with G·h rows
    (or columns) too. Parts of a parametrization (weight_norm's g and v...) are not weights of their own and are
    left out. Each comes with the --layout value that declares it, checked by feeding it back (none if none
    works)."""
    hints = _Hints(shapes, used)
    found, taken = _builtin_suspects(shapes, used, hints)
    free = {name: shape for name, shape in shapes.items()
            if name not in used and name not in taken and len(shape) == 2 and 0 not in shape
            and not is_parametrization_part(name, shapes)}
    position = {name: index for index, name in enumerate(shapes)}
    # the first two names of each shape, by (module path above them, G·h, orientation): partners in O(1)
    index: dict[tuple[str, int, bool], dict[tuple[int, ...], list[str]]] = {}
    for name, shape in free.items():
        for depth in range(name.count(".") + 1):
            parent = name.rsplit(".", depth + 1)[0] + "." if depth < name.count(".") else ""
            for transposed in (False, True):
                names = index.setdefault((parent, shape[1] if transposed else shape[0], transposed), {})
                kept = names.setdefault(shape, [])
                if len(kept) < 2:
                    kept.append(name)
    candidates: dict[str, tuple[str, int, int, bool]] = {}  # name → (partner, gates, hidden size, transposed)
    for name, shape in free.items():
        for transposed in (False, True):
            rows, columns = (shape[1], shape[0]) if transposed else shape
            gates = rows // columns if rows % columns == 0 else 0
            if gates not in (3, 4):
                continue
            parent = name.rsplit(".", 2)[0] + "." if name.count(".") >= 2 else ""
            by_shape = index.get((parent, rows, transposed), {})
            # the input weight: another input size if there is one, else (input size = hidden size) a same-shaped one
            partner = next((names[0] for other, names in by_shape.items() if other != shape), None)
            if partner is None:
                partner = next((other for other in by_shape.get(shape, ()) if other != name), None)
                if partner is None or _recurrent_score(partner, position[partner]) > _recurrent_score(
                        name, position[name]):
                    continue  # two same-shaped weights: the one named like a recurrent weight (or the later) is it
            candidates[name] = (partner, gates, columns, transposed)
            break
    for name, (partner, gates, hidden, transposed) in candidates.items():
        if partner in candidates and candidates[partner][0] == name and _recurrent_score(
                partner, position[partner]) > _recurrent_score(name, position[name]):
            continue  # each could be the other's recurrent weight: the one named like one (or the later) is it
        rows = gates * hidden
        cell = CELL_BY_GATE_COUNT[gates]
        weights = f"cell={cell} weight_ih={{}} weight_hh={{}}"
        biases = []
        bias = partner.rsplit(".", 1)[0] + ".bias" if "." in partner else ""
        if shapes.get(bias) == (rows,) and bias not in used:
            biases.append(("bias_ih", bias))
        own_bias = name.rsplit(".", 1)[0] + ".bias" if "." in name else ""
        if shapes.get(own_bias) == (rows,) and own_bias != bias and own_bias not in used:
            biases.append(("bias_hh", own_bias))
        tail = " transposed=weight_ih,weight_hh" if transposed else ""
        declare = ""
        for pattern in (_pattern_for, _literal_pattern):  # every layer at once, else this cell alone
            text = (weights.format(pattern(partner), pattern(name))
                    + "".join(f" {kind}={pattern(tensor)}" for kind, tensor in biases) + tail)
            if hints.works(text, pair=(partner, name)):
                declare = text
                break
        note = (f"looks like the recurrent weight of {article(cell.upper())} with hidden size {hidden}"
                f"{' stored transposed' if transposed else ''} (its input weight would be {partner}); it is not "
                "named like a torch.nn layer, so rnninit left it alone")
        found.append(Suspect(name, shapes[name], note, declare))
    found.sort(key=lambda suspect: position[suspect.name])
    return found


def automatic_layouts(shapes: Mapping[str, Any], given: Sequence[Declaration]) -> list[Declaration]:
    """The per-head built-ins (`MODERN_LAYOUTS`) whose marker some name holds, unless given already: they apply
    without --layout, since their names belong to nothing else."""
    from .declared import MODERN_LAYOUTS, MODERN_MARKERS

    return [declaration for name, declaration in MODERN_LAYOUTS.items()
            if not any(declaration.same_layout(other) for other in given)
            and any(MODERN_MARKERS[name] in tensor for tensor in shapes)]


def _declared_layer(cell: DeclaredCell, shapes: Mapping[str, tuple[int, ...]]) -> tuple[Layer, list[View]]:
    """The layer a declared cell makes, with views for the parameters it does not store in torch's form."""
    declaration = cell.declaration
    if declaration.headed:
        from .headed import headed_layer

        layer, head_views = headed_layer(cell, shapes)
        return layer, list(head_views)
    custom = declaration.cell == "custom"
    stored_order: tuple[str | None, ...] = tuple(None if gate == "" else gate for gate in declaration.gates)
    effective_order = stored_order if custom else ((None,) if declaration.cell == "rnn" else GATES[declaration.cell])
    where = declaration.name if "layout" in declaration.name else f"layout {declaration.name}"

    def fail(text: str) -> LayoutDeclarationError:
        return LayoutDeclarationError(f"{where}: {text}; check the declaration against the tensors' shapes")

    params: dict[str, str] = {}
    sources: dict[str, tuple[str, ...]] = {}
    views: list[View] = []
    effective: dict[str, tuple[int, ...]] = {}
    both_biases = ({name for name, _ in cell.pieces.get("bias_ih", ())}
                   & {name for name, _ in cell.pieces.get("bias_hh", ())})
    for kind, found in cell.pieces.items():
        transposed = kind in declaration.transposed
        # one (2, G·h) tensor named as both biases holds bias_ih in row 0 and bias_hh in row 1 (Keras's GRU)
        row = {"bias_ih": 0, "bias_hh": 1}.get(kind)
        pieces = tuple(Piece(name, stored_order if gate is None else (gate,), transposed,
                             row if name in both_biases else None) for name, gate in found)
        for piece in pieces:
            if is_parametrization_part(piece.source, shapes):
                raise fail(f"{piece.source} is one part of a parametrized weight (weight_norm's g or v, spectral_norm"
                           "...), not the weight the cell computes with; rnninit cannot write a declared cell through "
                           "a parametrization: remove it before saving (torch.nn.utils.parametrize."
                           "remove_parametrizations), or leave this cell out")
            shape = shapes[piece.source]
            if piece.row is not None:
                if len(shape) != 2 or shape[0] != 2:
                    raise fail(f"{piece.source} has shape {list(shape)} and is named as both biases; a tensor "
                               "holding both is [2, gates × hidden size] (bias_ih in row 0, bias_hh in row 1)")
                shape = shape[1:]
            if len(shape) != (1 if kind.startswith("bias") else 2):
                raise fail(f"{piece.source} has shape {list(shape)}; a {kind} is "
                           f"{'1-D' if kind.startswith('bias') else '2-D'}")
            rows = shape[1] if transposed and len(shape) == 2 else shape[0]
            if kind != "weight_hr" and rows % len(piece.gates):
                raise fail(f"{piece.source} has shape {list(shape)}: {rows} rows do not split into "
                           f"{len(piece.gates)} gates")
        if kind == "weight_hr":
            pieces = tuple(Piece(piece.source, (None,), piece.transposed) for piece in pieces)
        plain = len(pieces) == 1 and not transposed and pieces[0].row is None and (
            kind == "weight_hr" or pieces[0].gates == effective_order)
        if plain:
            params[kind] = pieces[0].source
            effective[kind] = shapes[pieces[0].source]
            continue
        view = GateView(_view_name(pieces, effective_order != stored_order), pieces,
                        (None,) if kind == "weight_hr" else effective_order, "declared")
        params[kind] = view.name
        sources[kind] = view.sources
        effective[kind] = view.shape(shapes)
        views.append(view)

    for kind in ("weight_ih", "weight_hh"):
        if kind not in effective:
            raise fail(f"it matches no {kind} tensor for {', '.join(cell.key) or 'its cell'}")
    gate_count = len(effective_order)
    ih_rows, input_size = effective["weight_ih"]
    hh_rows, hh_columns = effective["weight_hh"]
    hidden, proj = hh_columns, 0
    if "weight_hr" in effective:
        proj, hidden = effective["weight_hr"]
        if proj != hh_columns:
            raise fail(f"{params['weight_hr']} has shape {list(effective['weight_hr'])}; expected "
                       f"[{hh_columns}, hidden size] since {params['weight_hh']} has {hh_columns} columns")
    told = (f"the rows of weight_hr, {_stored_shapes(params, sources, shapes, 'weight_hr')}" if "weight_hr" in effective
            else f"the columns of weight_hh, {_stored_shapes(params, sources, shapes, 'weight_hh')}")
    for view in views:  # one tensor per gate: each holds hidden-size rows
        for piece in view.pieces:
            shape = shapes[piece.source][1:] if piece.row is not None else shapes[piece.source]
            rows = shape[1] if piece.transposed and len(shape) == 2 else shape[0]
            wanted_rows = len(piece.gates) * (proj if view.name == params.get("weight_hr") else hidden)
            if len(view.pieces) > 1 and rows != wanted_rows:
                raise fail(f"{piece.source} has shape {list(shapes[piece.source])}: it holds gate(s) "
                           f"{', '.join(g or '' for g in piece.gates)}, {wanted_rows} rows at hidden size {hidden} "
                           f"(the hidden size is {told})")
    for kind in sorted(effective, key=lambda k: k != "weight_hh"):  # weight_hh first: it gives the hidden size
        if kind != "weight_hr" and effective[kind][0] != gate_count * hidden:
            raise fail(f"{kind} is {_stored_shapes(params, sources, shapes, kind)}: {effective[kind][0]} rows where "
                       f"{gate_count} gate(s) × hidden size {hidden} = {gate_count * hidden} were expected (the "
                       f"hidden size is {told})")
    del ih_rows, hh_rows
    names = [name for kind in params for name in sources.get(kind, (params[kind],))]
    prefix = common_prefix(names)
    layer = Layer(prefix=prefix, cell=declaration.cell, is_cell=True, layer=0, direction="forward",
                  input_size=input_size, hidden_size=hidden, proj_size=proj,
                  bias=any(kind.startswith("bias") for kind in params), params=params, sources=sources,
                  gate_names=tuple(g or "" for g in effective_order) if custom else None,
                  label=declaration.title, declared=declaration.name)
    return layer, views


def _stored_shapes(params: Mapping[str, str], sources: Mapping[str, tuple[str, ...]],
                   shapes: Mapping[str, tuple[int, ...]], kind: str) -> str:
    """`a.h2h.weight shape [64, 15]`: the stored tensors behind parameter `kind`, with their shapes."""
    return ", ".join(f"{name} shape {list(shapes[name])}" for name in sources.get(kind, (params[kind],)))


def _view_name(pieces: Sequence[Piece], reordered: bool) -> str:
    """A readable name for an assembled parameter: `cell.x2g.weight.T`, `cell.W_{i,f,g,o}.weight`."""
    names = [piece.source for piece in pieces]
    if len(names) == 1:
        name = names[0] + (f"[{pieces[0].row}]" if pieces[0].row is not None else "")
    else:
        name = brace_name(names) + (f"[{pieces[0].row}]" if pieces[0].row is not None else "")
    if pieces[0].transposed:
        name += ".T"
    if reordered and len(pieces) == 1:
        name += f"[{','.join(g or '' for g in pieces[0].gates)}]"
    return name


def _build_layer(
    prefix: str, index: int | None, reverse: bool, members: dict[str, tuple[str, tuple[int, ...]]]
) -> Layer:
    suffix = "" if index is None else f"_l{index}" + ("_reverse" if reverse else "")
    for kind in ("weight_ih", "weight_hh"):
        if kind not in members:
            raise LayoutError(
                f"{prefix}{kind}{suffix} is missing: a recurrent layer has both weight_ih and "
                f"weight_hh, but only {', '.join(name for name, _ in members.values())} were found"
            )
        name, shape = members[kind]
        if len(shape) != 2:
            raise LayoutError(f"{name} has shape {list(shape)}; a recurrent {kind} is 2-D")
    hh_name, (hh_rows, h_out) = members["weight_hh"]
    ih_name, (ih_rows, input_size) = members["weight_ih"]

    proj_size = 0
    hidden_size = h_out
    if "weight_hr" in members:
        hr_name, hr_shape = members["weight_hr"]
        if len(hr_shape) != 2 or hr_shape[0] != h_out:
            raise LayoutError(
                f"{hr_name} has shape {list(hr_shape)}; expected [{h_out}, hidden_size] since "
                f"{hh_name} has {h_out} columns"
            )
        proj_size, hidden_size = hr_shape
    if hidden_size == 0 or hh_rows % hidden_size:
        raise LayoutError(
            f"{hh_name} has {hh_rows} rows, not a multiple of the hidden size {hidden_size}"
        )
    gate_count = hh_rows // hidden_size
    cell = CELL_BY_GATE_COUNT.get(gate_count)
    if cell is None:
        raise LayoutError(
            f"{hh_name} has shape {[hh_rows, h_out]}: {gate_count} gates of size {hidden_size}; "
            "expected 1 (RNN), 3 (GRU) or 4 (LSTM)"
        )
    if proj_size and cell != "lstm":
        raise LayoutError(f"{members['weight_hr'][0]} exists but {hh_name} is {article(cell.upper())}; "
                          "only an LSTM has weight_hr (proj_size)")
    if ih_rows != hh_rows:
        raise LayoutError(f"{ih_name} has {ih_rows} rows; expected {hh_rows} like {hh_name}")

    has_bias = "bias_ih" in members or "bias_hh" in members
    if has_bias:
        for kind in ("bias_ih", "bias_hh"):
            if kind not in members:
                other = members["bias_hh" if kind == "bias_ih" else "bias_ih"][0]
                raise LayoutError(f"{other} exists but {prefix}{kind}{suffix} is missing; "
                                  "a recurrent layer has both biases or neither")
            name, shape = members[kind]
            if shape != (hh_rows,):
                raise LayoutError(f"{name} has shape {list(shape)}; expected [{hh_rows}] "
                                  f"({gate_count} gates × hidden size {hidden_size})")

    return Layer(
        prefix=prefix,
        cell=cell,
        is_cell=index is None,
        layer=index or 0,
        direction="reverse" if reverse else "forward",
        input_size=input_size,
        hidden_size=hidden_size,
        proj_size=proj_size,
        bias=has_bias,
        params={kind: name for kind, (name, _) in members.items()},
    )
