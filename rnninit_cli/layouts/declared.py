"""Declared layouts: how a user tells rnninit which tensors of a hand-written cell are its recurrent parameters.

PyTorch's `nn.RNN/GRU/LSTM` and `nn.*Cell` are found by their names alone. Hand-written cells (`nn.Linear` i2h /
h2h pairs, one `Linear` per gate, Keras kernels ported as `(in, 4h)`, other gate orders or gate sets) are
declared once, with regular expressions, and the declaration covers every layer through its capture groups.

A declaration is a set of `key=value` settings:

- `cell`: `rnn`, `gru`, `lstm` or `custom` (default `lstm`).
- `gates`: the gate names in the order the tensors STORE them. For `lstm` a permutation of `i,f,g,o` (default
  `i,f,g,o`; `c` is accepted for `g`, so Keras's `i,f,c,o` reads as is), for `gru` a permutation of `r,z,n`
  (default `r,z,n`; `h` is accepted for `n`, so Keras's `z,r,h` reads as is). An `rnn` cell has no gates.
  A `custom` cell needs its own names (identifiers), e.g. `gates=a,z` for speechbrain's LiGRU.
- `title`: the name shown in tables (default `LSTM`, `GRU`, `RNN`; `custom` for a custom cell).
- `weight_ih`, `weight_hh` (both required), `weight_hr`, `bias_ih`, `bias_hh`: a regular expression matched
  against whole tensor names (as `re.fullmatch`, run by RE2 in linear time: see `patterns`).
- `transposed`: the weight kinds stored transposed, e.g. `transposed=weight_ih,weight_hh` for Keras kernels
  stored `(in, 4h)`.

Matching: the tensors of one cell are those whose names give the same capture groups (the cell's `key`),
e.g. `weight_ih=(.*)\\.x2g\\.weight` and `weight_hh=(.*)\\.p2g\\.weight` pair `dec.0.x2g.weight` with
`dec.0.p2g.weight`. Every pattern of a declaration must have the same number of such groups. A named group
`(?P<gate>...)` is not part of the key: a pattern with it matches one tensor per gate (one `Linear` per gate),
and the text it captures names the gate (aliases as above). A tensor whose captured gate is not one of the
declared gates is not part of the cell (a pattern may be broader than the gates); a cell then missing a gate
of that kind is an error that lists the gate texts seen. A key is a cell only when both `weight_ih` and
`weight_hh` matched for it; other kinds are optional per cell (torchaudio's `_CustomLSTM` has an `x2g` bias only
without layer norm). The same tensor may be named by both `bias_ih` and `bias_hh` (Keras's GRU keeps both as
rows of one `(2, 3h)` bias); any other tensor claimed twice, within or across declarations, is an error.

Where declarations come from:

- `--layout TEXT`, repeatable: a built-in name (`BUILTIN_LAYOUTS`, e.g. `torchaudio-rnnt`) or whitespace-separated
  settings on one line, e.g. `--layout 'cell=lstm weight_ih=(.*)\\.i2h\\.weight weight_hh=(.*)\\.h2h\\.weight'`.
  Values cannot contain whitespace (write `\\s` or `\\x20` in a pattern).
- `--layout-file FILE`: TOML, one `[layout.NAME]` table per declaration, with the same keys; `gates` and
  `transposed` are arrays of strings (a comma-separated string is accepted too)::

      [layout.my-lstm]
      cell = "lstm"
      gates = ["i", "f", "c", "o"]
      weight_ih = '(.*)\\.kernel'
      weight_hh = '(.*)\\.recurrent_kernel'
      bias_ih = '(.*)\\.bias'
      transposed = ["weight_ih", "weight_hh"]

  (TOML literal strings, in single quotes, keep backslashes as written.)

Per-head cells (xLSTM, RG-LRU) add settings: `KIND_axes` (the stored axes, see `heads`), `roles`, `partial`,
`radius`, `family` and `block`; the README's "Modern recurrences" describes them.

Only names are matched here; shapes are checked where the declared cells become layers.

Longer than 600 lines because the built-in layouts are declarations written in this module's own settings and
checked by its own validation, and `parse_layout` resolves their names: split, the modules would import each other.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import LayoutDeclarationError, resolve_name, suggestion
from .heads import Axes, axes_text, parse_axes
from .patterns import UserPattern, compile_user_pattern

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

KINDS = ("weight_ih", "weight_hh", "weight_hr", "bias_ih", "bias_hh", "radius")
REQUIRED_KINDS = ("weight_ih", "weight_hh")
WEIGHT_KINDS = ("weight_ih", "weight_hh", "weight_hr")
GATELESS_KINDS = ("weight_hr", "radius")
CELLS = ("rnn", "gru", "lstm", "custom")
TORCH_GATES: dict[str, tuple[str, ...]] = {"rnn": ("",), "gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o")}
GATE_ALIASES: dict[str, dict[str, str]] = {"lstm": {"c": "g"}, "gru": {"h": "n"}}
TITLES = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM", "custom": "custom"}
AXES_SETTINGS = tuple(f"{kind}_axes" for kind in KINDS)
SETTINGS = ("cell", "gates", "title", "transposed", *KINDS, "family", "roles", "partial", "block", *AXES_SETTINGS)
GATE_GROUP = "gate"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BUILTIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Declaration:
    """One declared cell layout: which tensors are its parameters, its gate order as stored, what is transposed."""

    name: str
    cell: str
    title: str
    gates: tuple[str, ...]
    patterns: dict[str, UserPattern]
    transposed: frozenset[str]
    source: str
    family: str = ""
    roles: tuple[tuple[str, str], ...] = ()  # (text the gate group captures, the gate it is)
    partial: frozenset[str] = frozenset()  # per-gate kinds that may hold only some of the gates
    block: UserPattern | None = None  # finds the cell's index in a residual stack from its prefix
    axes: tuple[tuple[str, tuple[Axes, ...]], ...] = ()  # kind → its stored axes, one per form (see `heads`)
    automatic: bool = False  # a built-in applied without --layout (its names cannot be anything else)

    @property
    def headed(self) -> bool:
        """Whether the cell is built per gate and head (`heads`): stored axes, a radius or a family declared."""
        return bool(self.axes or self.family or "radius" in self.patterns)

    @property
    def required(self) -> tuple[str, ...]:
        """The kinds a cell must have: a per-head cell needs only the matrices (and radius) it declares, since some
        have no hidden-to-hidden matrix (mLSTM, RG-LRU)."""
        if not self.headed:
            return REQUIRED_KINDS
        return tuple(kind for kind in ("weight_ih", "weight_hh", "radius") if kind in self.patterns)

    @property
    def aliases(self) -> dict[str, str]:
        """Captured gate text → gate: the cell kind's aliases (`c` for `g`) and the declared roles."""
        return {**GATE_ALIASES.get(self.cell, {}), **dict(self.roles)}

    @property
    def forms(self) -> int:
        return max((len(forms) for _, forms in self.axes), default=1)

    def axes_of(self, kind: str, form: int) -> Axes | None:
        """The stored axes of `kind` in form `form` (None: the default for its pieces)."""
        forms = dict(self.axes).get(kind)
        if not forms:
            return None
        return forms[form] if len(forms) > 1 else forms[0]

    def per_gate(self, kind: str) -> bool:
        """Whether `kind` is stored one tensor per gate (its pattern has a `(?P<gate>...)` group)."""
        return kind in self.patterns and GATE_GROUP in self.patterns[kind].groupindex

    def describe(self) -> str:
        """The patterns, for messages: `weight_ih=(.*)\\.x2g\\.weight weight_hh=...`."""
        return " ".join(f"{kind}={pattern.pattern}" for kind, pattern in self.patterns.items())

    def same_layout(self, other: Declaration) -> bool:
        """Whether `other` declares exactly the same thing (names and sources aside)."""
        return (
            self.cell == other.cell
            and self.title == other.title
            and self.gates == other.gates
            and self.transposed == other.transposed
            and {k: p.pattern for k, p in self.patterns.items()} == {k: p.pattern for k, p in other.patterns.items()}
            and (self.family, self.roles, self.partial, self.axes) == (other.family, other.roles, other.partial,
                                                                       other.axes)
            and (self.block.pattern if self.block else None) == (other.block.pattern if other.block else None)
        )


@dataclass(frozen=True)
class DeclaredCell:
    """The tensors of one declared cell (one layer, one direction).

    `pieces[kind]` lists `(tensor name, gate)`: one entry with gate None for a tensor that holds every gate in the
    declaration's stored order, or one entry per gate (in that order) for a kind stored one tensor per gate.
    """

    declaration: Declaration
    key: tuple[str, ...]
    pieces: dict[str, tuple[tuple[str, str | None], ...]]

    @property
    def names(self) -> tuple[str, ...]:
        """Every tensor of the cell, each once, kinds in `KINDS` order."""
        seen: dict[str, None] = {}
        for kind in KINDS:
            for name, _ in self.pieces.get(kind, ()):
                seen.setdefault(name)
        return tuple(seen)


def _fail(where: str, message: str) -> LayoutDeclarationError:
    return LayoutDeclarationError(f"{where}: {message}")


def _as_list(value: Any, key: str, where: str) -> list[str]:
    """A comma-separated string or (TOML) an array of strings, as a list of stripped, non-empty items."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = list(value)
    else:
        raise _fail(where, f"{key} must be a list of names, e.g. {key}=a,b (got {value!r})")
    items = [item.strip() for item in items]
    if not items or any(not item for item in items):
        raise _fail(where, f"{key} has an empty name: write {key}=a,b,c with no empty entries")
    return items


def _gates(cell: str, raw: Any, where: str) -> tuple[str, ...]:
    if cell == "rnn":
        if raw is not None:
            raise _fail(where, "an rnn cell has no gates: drop the gates setting (or use cell=custom)")
        return TORCH_GATES["rnn"]
    if raw is None:
        if cell == "custom":
            raise _fail(where, "a custom cell needs its gate names in stored order, e.g. gates=a,z")
        return TORCH_GATES[cell]
    names = _as_list(raw, "gates", where)
    for name in names:
        if not _IDENTIFIER.fullmatch(name):
            raise _fail(where, f"gate name {name!r} is not an identifier (letters, digits, _)")
    if cell == "custom":
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise _fail(where, f"gate {', '.join(duplicates)} is listed twice in gates={','.join(names)}")
        return tuple(names)
    aliases = GATE_ALIASES[cell]
    canonical = tuple(aliases.get(name, name) for name in names)
    expected = TORCH_GATES[cell]
    if sorted(canonical) != sorted(expected):
        accepted = ", ".join(f"{alias} for {gate}" for alias, gate in aliases.items())
        raise _fail(
            where,
            f"gates={','.join(names)} is not an order of the {cell} gates {','.join(expected)} "
            f"({accepted} accepted): list each of them once, in the order the tensors store them, "
            f"or use cell=custom for another gate set",
        )
    return canonical


def _compile(kind: str, text: Any, cell: str, where: str) -> UserPattern:
    if not isinstance(text, str) or not text:
        raise _fail(where, f"{kind} must be a regular expression matching tensor names (got {text!r})")
    pattern = compile_user_pattern(text, f"{where}: {kind}", LayoutDeclarationError)
    if GATE_GROUP in pattern.groupindex:
        if kind in GATELESS_KINDS:
            raise _fail(where, f"{kind}={text} has a (?P<gate>...) group, but {kind} has no gates")
        if cell == "rnn":
            raise _fail(where, f"{kind}={text} has a (?P<gate>...) group, but an rnn cell has no gates")
    return pattern


def _key_group_count(pattern: UserPattern) -> int:
    return pattern.groups - (1 if GATE_GROUP in pattern.groupindex else 0)


def _declaration(settings: Mapping[str, Any], name: str, where: str, source: str | None = None) -> Declaration:
    """Validate one declaration's settings (already split into keys and values); `where` prefixes messages,
    `source` (default `where`) is recorded as where it was declared."""
    unknown = [key for key in settings if key not in SETTINGS]
    if unknown:
        raise _fail(where, f"unknown setting {unknown[0]!r}: the settings are {', '.join(SETTINGS)}")
    cell = settings.get("cell", "lstm")
    if cell not in CELLS:
        raise _fail(where, f"cell={cell} is not a cell kind: use one of {', '.join(CELLS)}")
    gates = _gates(cell, settings.get("gates"), where)
    title = settings.get("title", TITLES[cell])
    if not isinstance(title, str) or not title.strip():
        raise _fail(where, f"title must be a non-empty name (got {title!r})")
    headed = any(key in settings for key in ("family", "radius", *AXES_SETTINGS))
    missing = [kind for kind in (("weight_ih",) if headed else REQUIRED_KINDS) if kind not in settings]
    if missing:
        raise _fail(
            where,
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing: a declaration names at least "
            r"weight_ih and weight_hh, e.g. weight_ih=(.*)\.i2h\.weight weight_hh=(.*)\.h2h\.weight",
        )
    patterns = {kind: _compile(kind, settings[kind], cell, where) for kind in KINDS if kind in settings}
    counts = {kind: _key_group_count(pattern) for kind, pattern in patterns.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{kind} has {count}" for kind, count in counts.items())
        raise _fail(
            where,
            f"the patterns capture different numbers of groups ({listed}, not counting (?P<gate>...)): tensors of "
            "one cell are paired by their groups, so every pattern needs the same groups, e.g. (.*) for the prefix",
        )
    transposed = frozenset(_as_list(settings["transposed"], "transposed", where)) if "transposed" in settings else (
        frozenset()
    )
    for kind in sorted(transposed):
        if kind not in WEIGHT_KINDS:
            raise _fail(where, f"transposed={kind}: only {', '.join(WEIGHT_KINDS)} can be stored transposed")
        if kind not in patterns:
            raise _fail(where, f"transposed names {kind}, which the declaration does not match: add {kind}=REGEX")
    return Declaration(
        name=name,
        cell=cell,
        title=title.strip(),
        gates=gates,
        patterns=patterns,
        transposed=transposed,
        source=where if source is None else source,
        **_headed_settings(settings, patterns, gates, transposed, where),
    )


def _headed_settings(settings: Mapping[str, Any], patterns: Mapping[str, UserPattern], gates: tuple[str, ...],
                     transposed: frozenset[str], where: str) -> dict[str, Any]:
    """The per-head settings: family, roles, partial, block and each kind's stored axes (see `heads`)."""
    family = settings.get("family", "")
    if not isinstance(family, str) or (family and not _BUILTIN_NAME.fullmatch(family)):
        raise _fail(where, f"family must be a name such as slstm (got {family!r})")
    roles = []
    for item in _as_list(settings["roles"], "roles", where) if "roles" in settings else []:
        text, colon, gate = item.partition(":")
        if not colon or not text or gate not in gates:
            raise _fail(where, f"roles entry {item!r} is not TEXT:GATE with GATE one of {','.join(gates)} "
                        "(e.g. roles=f:i,i:f when the tensor named f holds gate i)")
        roles.append((text, gate))
    partial = frozenset(_as_list(settings["partial"], "partial", where)) if "partial" in settings else frozenset()
    for kind in sorted(partial):
        if kind not in patterns or GATE_GROUP not in patterns[kind].groupindex:
            raise _fail(where, f"partial={kind}: only a kind stored one tensor per gate (its pattern has a "
                        "(?P<gate>...) group) can hold some of the gates")
    block = None
    if "block" in settings:
        block = _compile("block", settings["block"], "custom", where)
        if block.groups != 1:
            raise _fail(where, f"block={block.pattern} must have exactly one group, capturing the block's number")
    axes = []
    for kind in KINDS:
        text = settings.get(f"{kind}_axes")
        if text is None:
            continue
        if kind not in patterns:
            raise _fail(where, f"{kind}_axes is set, but the declaration does not match {kind}: add {kind}=REGEX")
        if kind in transposed:
            raise _fail(where, f"{kind} is both transposed and given axes: say the order in {kind}_axes alone")
        if not isinstance(text, str):
            raise _fail(where, f"{kind}_axes must be text such as head,gate*out,in (got {text!r})")
        forms = tuple(parse_axes(form, f"{where}: {kind}_axes") for form in text.split("|"))
        for form in forms:
            has_in = any("in" in axis for axis in form)
            if has_in != (kind in WEIGHT_KINDS):
                need = "a weight needs an in factor" if kind in WEIGHT_KINDS else "a vector has no in factor"
                raise _fail(where, f"{kind}_axes={text}: {need}")
        axes.append((kind, forms))
    counts = {len(forms) for _, forms in axes if len(forms) > 1}
    if len(counts) > 1:
        raise _fail(where, "the kinds give different numbers of forms (alternatives split by |): give each kind "
                    "one form, or the same number of forms in the same order")
    return {"family": family, "roles": tuple(roles), "partial": partial, "block": block, "axes": tuple(axes)}


def _builtin(name: str, **settings: Any) -> Declaration:
    return _declaration(settings, name, "built-in")


# Built-in layouts. Each states the library source it was checked against (names, shapes, gate order).
BUILTIN_LAYOUTS: dict[str, Declaration] = {
    layout.name: layout
    for layout in (
        # torchaudio's Emformer RNN-T predictor (`emformer_rnnt_base` / `emformer_rnnt_model`): `_Predictor.lstm_layers`
        # is an nn.ModuleList of `_CustomLSTM`, each with `x2g = Linear(input_dim, 4h, bias=not layer_norm)` and
        # `p2g = Linear(h, 4h, bias=False)`; gates are `gates.chunk(4, 1)` as input, forget, cell, output
        # (torch's i,f,g,o). With layer_norm (emformer_rnnt_base) `c_norm`/`g_norm` LayerNorms are added and x2g has
        # no bias. Checked against pytorch/audio torchaudio/models/rnnt.py at commits 1c44c6776062 and e211a839fa0b
        # (torchaudio 0.10 to 2.x; unchanged across them).
        _builtin(
            "torchaudio-rnnt",
            cell="lstm",
            gates="i,f,g,o",
            weight_ih=r"((?:.*[./])?lstm_layers\.\d+)\.x2g\.weight",
            bias_ih=r"((?:.*[./])?lstm_layers\.\d+)\.x2g\.bias",
            weight_hh=r"((?:.*[./])?lstm_layers\.\d+)\.p2g\.weight",
        ),
        # speechbrain's Light GRU (speechbrain.nnet.RNN.LiGRU, also SLiGRU): `LiGRU.rnn` is an nn.ModuleList of
        # `LiGRU_Layer`, each with `w = Linear(input_size, 2h, bias=False)` and `u = Linear(h, 2h, bias=False)`
        # (the bias lives in the following `norm`); the cell splits `w x + u h` with `at, zt = gates.chunk(2, 1)`:
        # the candidate `a` first, the update gate `z` second. A bidirectional LiGRU shares w and u between the
        # directions (it runs the flipped batch through the same layer). Checked against speechbrain/speechbrain
        # speechbrain/nnet/RNN.py at tags v1.0.0, v1.0.3, v1.1.0 (36c180c7bfad) and main 9c826ef3937b.
        _builtin(
            "speechbrain-ligru",
            cell="custom",
            title="LiGRU",
            gates="a,z",
            weight_ih=r"((?:.*[./])?rnn\.\d+)\.w\.weight",
            weight_hh=r"((?:.*[./])?rnn\.\d+)\.u\.weight",
        ),
    )
}

_PREFIX = r"((?:.*\.)?)"  # the module path up to the cell's own names, dot included; empty at the top level
_STACK_BLOCK = r"(?:^|\.)blocks\.(\d+)\.(?:[^.]*\.){0,2}\Z"  # xLSTM stacks: `….blocks.{i}.xlstm.(mlstm_cell.)`

# Per-head built-ins, found without --layout (their names cannot belong to another layer). Each was checked against
# the library source named, by building the model and recomputing its gates from the stored tensors (see
# ../shared/MODERN.md, and tests/modern_models.py for the fixtures built with the libraries themselves).
MODERN_LAYOUTS: dict[str, Declaration] = {
    layout.name: replace(layout, automatic=True)
    for layout in (
        # xlstm 2.x `xlstm/blocks/slstm/layer.py` sLSTMLayer and `cell.py`: per-head gate projections (NH, DH, DH)
        # [head, out, in]; the module named `fgate` is the INPUT gate's and `igate` the FORGET gate's (recomputing
        # the cell from the tensors proves it). The recurrent kernel and bias lie [head, gate·out, in] and
        # [gate][head][out] in the vanilla backend, [head, in, gate·out] and [head][gate][out] in the cuda one: the
        # kernel's shape tells which (the two forms below, tried in order).
        _builtin(
            "xlstm-slstm",
            cell="custom", family="slstm", title="sLSTM", gates="i,f,z,o", roles="f:i,i:f",
            weight_ih=_PREFIX + r"(?P<gate>[ifzo])gate\.weight", weight_ih_axes="head,out,in",
            weight_hh=_PREFIX + r"slstm_cell\._recurrent_kernel_",
            weight_hh_axes="head,gate*out,in|head,in,gate*out",
            bias_ih=_PREFIX + r"slstm_cell\._bias_", bias_ih_axes="gate*head*out|head*gate*out",
            block=_STACK_BLOCK,
        ),
        # xlstm 2.x `xlstm/blocks/mlstm/cell.py` mLSTMCell: `igate`/`fgate` = nn.Linear(3·inner, NH), one row per
        # head, named by their roles; no hidden-to-hidden matrix (the memory is C_t = f·C_{t−1} + i·v kᵀ).
        _builtin(
            "xlstm-mlstm",
            cell="custom", family="mlstm", title="mLSTM", gates="i,f",
            weight_ih=_PREFIX + r"mlstm_cell\.(?P<gate>[if])gate\.weight",
            bias_ih=_PREFIX + r"mlstm_cell\.(?P<gate>[if])gate\.bias",
            block=_STACK_BLOCK,
        ),
        # transformers `models/recurrent_gemma/modeling_recurrent_gemma.py` RecurrentGemmaRglru: input and recurrence
        # gate weights (NH, bw, bw) used as x @ W, i.e. [head, in, out]; their biases (NH, bw); `recurrent_param` (W,)
        # with a = σ(−p). Griffin: De et al. 2024.
        _builtin(
            "recurrentgemma-rglru",
            cell="custom", family="rglru", title="RG-LRU", gates="i,r", roles="input:i,recurrent:r",
            weight_ih=_PREFIX + r"rg_lru\.(?P<gate>input|recurrent)_gate_weight", weight_ih_axes="head,in,out",
            bias_ih=_PREFIX + r"rg_lru\.(?P<gate>input|recurrent)_gate_bias", bias_ih_axes="head,out",
            radius=_PREFIX + r"rg_lru\.recurrent_param", radius_axes="out",
            block=r"(?:^|\.)layers\.(\d+)\.(?:[^.]*\.){0,2}\Z",
        ),
        # transformers `models/xlstm/modeling_xlstm.py` (xLSTM-7B, weight_mode="single"): `igate_preact` and
        # `fgate_preact` = nn.Linear(H, NH) with biases, `ogate_preact` = nn.Linear(H, V) without one. The fused
        # `ifgate_preact` cannot be built in transformers 5.25 (a size error), so it is not declared.
        _builtin(
            "hf-xlstm",
            cell="custom", family="hf-mlstm", title="mLSTM", gates="i,f,o",
            weight_ih=_PREFIX + r"mlstm_layer\.(?P<gate>[ifo])gate_preact\.weight",
            bias_ih=_PREFIX + r"mlstm_layer\.(?P<gate>[ifo])gate_preact\.bias", partial="bias_ih",
            block=_STACK_BLOCK,
        ),
    )
}
BUILTIN_LAYOUTS.update(MODERN_LAYOUTS)
# a text every file holding such a cell has in some name: the built-ins are matched only then (cheap for big files)
MODERN_MARKERS = {"xlstm-slstm": "slstm_cell._recurrent_kernel_", "xlstm-mlstm": "mlstm_cell.",
                  "recurrentgemma-rglru": "rg_lru.", "hf-xlstm": "gate_preact."}


def _split_inline(text: str, where: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    for token in text.split():
        key, equals, value = token.partition("=")
        if not equals or not key:
            raise _fail(
                where,
                f"{token!r} is not a key=value setting: a layout is a built-in name "
                f"({', '.join(BUILTIN_LAYOUTS)}) or settings like cell=lstm weight_ih=REGEX weight_hh=REGEX",
            )
        if key in settings:
            raise _fail(where, f"{key} is set twice")
        settings[key] = value
    return settings


def parse_layout(text: str, where: str) -> list[Declaration]:
    """One `--layout` value: a built-in layout's name, or one inline declaration. `where` names it in messages."""
    stripped = text.strip()
    if not stripped:
        raise _fail(where, f"empty layout: give a built-in name ({', '.join(BUILTIN_LAYOUTS)}) or key=value settings")
    if "=" not in stripped and _BUILTIN_NAME.fullmatch(stripped):
        name = resolve_name(stripped, BUILTIN_LAYOUTS)
        if name is None:
            hint = suggestion(stripped, BUILTIN_LAYOUTS) or f": the built-in layouts are {', '.join(BUILTIN_LAYOUTS)}"
            raise _fail(where, f"no built-in layout named {stripped!r}{hint} (or declare one, e.g. cell=lstm "
                        "weight_ih=REGEX weight_hh=REGEX)")
        return [replace(BUILTIN_LAYOUTS[name], source=where, automatic=False)]  # asked for: shapes that misfit fail
    return [_declaration(_split_inline(stripped, where), where, where)]


LAYOUT_FILE_LIMIT = 1 << 22  # bytes; a layout file is a few declarations
LAYOUT_FILE_DECLARATIONS = 64  # each pattern may take RE2 up to patterns.MAX_MEM: bounds what a file can cost
LAYOUT_FILE_PATTERN_CHARS = 1 << 16  # in all: bounds the time spent compiling a file's patterns


def _read_small_file(path: Path, where: str) -> bytes:
    """A regular file's bytes, refusing FIFOs and devices without blocking on them, and files too large for
    a layout file (a device like /dev/zero never ends)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise _fail(where, "not a regular file (a folder, FIFO, socket or device); give a TOML file")
        os.set_blocking(descriptor, True)
        data = handle.read(LAYOUT_FILE_LIMIT + 1)
    if len(data) > LAYOUT_FILE_LIMIT:
        raise _fail(where, f"larger than {LAYOUT_FILE_LIMIT >> 20} MiB; a layout file holds a few declarations")
    return data


def load_layout_file(path: str | Path) -> list[Declaration]:
    """Every declaration of a TOML layout file: one `[layout.NAME]` table each."""
    where = str(path)
    try:
        data = _read_small_file(Path(path), where)
    except OSError as error:
        raise _fail(where, f"cannot read the layout file ({error.strerror or error})") from None
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise _fail(where, "not a text file (TOML must be UTF-8)") from None
    except tomllib.TOMLDecodeError as error:
        raise _fail(where, f"not valid TOML: {error}") from None
    others = [key for key in document if key != "layout"]
    if others:
        raise _fail(where, f"unknown top-level entry {others[0]!r}: declare each layout as a [layout.NAME] table")
    tables = document.get("layout")
    if not isinstance(tables, dict) or not tables:
        raise _fail(where, "declares no layout: write one [layout.NAME] table per layout, with weight_ih = '...' etc.")
    if len(tables) > LAYOUT_FILE_DECLARATIONS:
        raise _fail(where, f"declares {len(tables)} layouts; a layout file may declare at most "
                    f"{LAYOUT_FILE_DECLARATIONS}: keep the ones this checkpoint needs")
    size = sum(len(value) for settings in tables.values() if isinstance(settings, dict)
               for key, value in settings.items() if key in KINDS and isinstance(value, str))
    if size > LAYOUT_FILE_PATTERN_CHARS:
        raise _fail(where, f"its patterns have {size} characters in all; a layout file may have at most "
                    f"{LAYOUT_FILE_PATTERN_CHARS}: keep the layouts this checkpoint needs, with shorter patterns")
    declarations = []
    for name, settings in tables.items():
        table_where = f"{where}: {name}"
        if not isinstance(settings, dict):
            raise _fail(table_where, f"layout.{name} must be a table: write [layout.{name}] and its settings below")
        declarations.append(_declaration(settings, table_where, table_where, source=where))
    return declarations


def layouts_from_options(layouts: Sequence[str], files: Sequence[str], *, named: str = "--layout {}",
                         first: int = 1) -> list[Declaration]:
    """The declarations of `--layout` values (named in messages by `named` with their position, counted from
    `first`: the Python API says `layouts[0]`) then of `--layout-file`s, each distinct layout once (the same
    built-in given twice is one declaration)."""
    declarations = [d for index, text in enumerate(layouts, first) for d in parse_layout(text, named.format(index))]
    declarations += [d for path in files for d in load_layout_file(path)]
    distinct: list[Declaration] = []
    for declaration in declarations:
        if not any(declaration.same_layout(kept) for kept in distinct):
            distinct.append(declaration)
    return distinct


def inline_text(declaration: Declaration) -> str:
    """The one-line `--layout` form of a declaration (parse_layout reads it back to the same layout)."""
    parts = [f"cell={declaration.cell}"]
    if declaration.cell != "rnn":
        parts.append(f"gates={','.join(declaration.gates)}")
    if declaration.title != TITLES[declaration.cell]:
        parts.append(f"title={declaration.title}")
    parts += [f"{kind}={declaration.patterns[kind].pattern}" for kind in KINDS if kind in declaration.patterns]
    if declaration.transposed:
        parts.append(f"transposed={','.join(k for k in WEIGHT_KINDS if k in declaration.transposed)}")
    if declaration.family:
        parts.append(f"family={declaration.family}")
    if declaration.roles:
        parts.append("roles=" + ",".join(f"{text}:{gate}" for text, gate in declaration.roles))
    if declaration.partial:
        parts.append(f"partial={','.join(k for k in KINDS if k in declaration.partial)}")
    if declaration.block is not None:
        parts.append(f"block={declaration.block.pattern}")
    parts += [f"{kind}_axes={'|'.join(axes_text(form) for form in forms)}" for kind, forms in declaration.axes]
    return " ".join(parts)


@dataclass
class _Collected:
    """What one declaration's patterns matched for one key, before it becomes a cell."""

    first: int
    whole: dict[str, list[str]]
    per_gate: dict[str, dict[str, list[str]]]
    stray_gates: dict[str, list[str]]


def _collect(
    names: Sequence[str], declaration: Declaration
) -> tuple[dict[tuple[str, ...], _Collected], dict[str, int]]:
    aliases = declaration.aliases
    collected: dict[tuple[str, ...], _Collected] = {}
    matched_per_kind = dict.fromkeys(declaration.patterns, 0)
    for position, name in enumerate(names):
        for kind, pattern in declaration.patterns.items():
            match = pattern.fullmatch(name)
            if match is None:
                continue
            matched_per_kind[kind] += 1
            key = tuple(
                (match.group(index) or "")
                for index in range(1, pattern.groups + 1)
                if pattern.groupindex.get(GATE_GROUP) != index
            )
            entry = collected.setdefault(key, _Collected(position, {}, {}, {}))
            if GATE_GROUP not in pattern.groupindex:
                entry.whole.setdefault(kind, []).append(name)
                continue
            text = match.group(GATE_GROUP) or ""
            gate = aliases.get(text, text)
            if gate in declaration.gates:
                entry.per_gate.setdefault(kind, {}).setdefault(gate, []).append(name)
            else:
                entry.stray_gates.setdefault(kind, []).append(text)
    return collected, matched_per_kind


def _label(declaration: Declaration) -> str:
    """How messages name a declaration: `--layout 2`, `layouts.toml: my-lstm`, `torchaudio-rnnt (--layout 1)`."""
    if declaration.name.startswith(declaration.source):
        return declaration.name
    return f"{declaration.name} ({declaration.source})"


def _show_key(key: tuple[str, ...]) -> str:
    return "(" + ", ".join(repr(part) for part in key) + ")"


def _cell(declaration: Declaration, key: tuple[str, ...], entry: _Collected) -> DeclaredCell:
    where = _label(declaration)
    pieces: dict[str, tuple[tuple[str, str | None], ...]] = {}
    for kind in KINDS:
        if kind in entry.whole:
            found = entry.whole[kind]
            if len(found) > 1:
                raise _fail(
                    where,
                    f"{kind}={declaration.patterns[kind].pattern} matches {', '.join(found)} for the same groups "
                    f"{_show_key(key)}: capture what tells them apart (the whole prefix, e.g. (.*)) in the pattern",
                )
            pieces[kind] = ((found[0], None),)
        elif kind in entry.per_gate:
            by_gate = entry.per_gate[kind]
            for gate, found in by_gate.items():
                if len(found) > 1:
                    raise _fail(
                        where,
                        f"{kind}={declaration.patterns[kind].pattern} matches {', '.join(found)} for gate {gate} and "
                        f"the same groups {_show_key(key)}: capture the whole prefix in the pattern",
                    )
            absent = [gate for gate in declaration.gates if gate not in by_gate]
            if absent and kind in declaration.partial and len(absent) < len(declaration.gates):
                absent = []
            if absent:
                present = ", ".join(f"{gate}: {found[0]}" for gate, found in by_gate.items())
                stray = entry.stray_gates.get(kind)
                seen = f"; other gate texts seen: {', '.join(sorted(set(stray)))}" if stray else ""
                raise _fail(
                    where,
                    f"{kind} is declared one tensor per gate ({declaration.patterns[kind].pattern}), but for the "
                    f"groups {_show_key(key)} gate {', '.join(absent)} has no tensor (found {present}{seen}): "
                    f"the (?P<gate>...) group must capture each of {','.join(declaration.gates)}",
                )
            pieces[kind] = tuple((by_gate[gate][0], gate) for gate in declaration.gates if gate in by_gate)
    owners: dict[str, str] = {}
    for kind, entries in pieces.items():
        for name, _ in entries:
            other = owners.get(name)
            if other is not None and {other, kind} != {"bias_ih", "bias_hh"}:
                raise _fail(
                    where,
                    f"{name} is matched both as {other} and as {kind}: make the patterns exclusive "
                    "(only bias_ih and bias_hh may share one tensor, as rows of a (2, G·h) bias)",
                )
            owners.setdefault(name, kind)
    return DeclaredCell(declaration=declaration, key=key, pieces=pieces)


def _nothing_matched(declaration: Declaration, matched_per_kind: Mapping[str, int], names: Sequence[str]) -> str:
    where = _label(declaration)
    counts = ", ".join(f"{kind} {count}" for kind, count in matched_per_kind.items())
    hint = (
        "no pattern matched any tensor name (patterns must match whole names, e.g. (.*)\\.x2g\\.weight, "
        "not x2g\\.weight)"
        if not any(matched_per_kind.values())
        else "no groups had both a weight_ih and a weight_hh tensor (tensors of one cell must give the same groups)"
    )
    example = f"; names in the file look like {', '.join(list(names)[:3])}" if names else ""
    return (
        f"{where}: the layout matches no recurrent cell: {hint}. Tensors matched per kind: {counts}. "
        f"Patterns: {declaration.describe()}{example}"
    )


def match_declarations(names: Iterable[str], declarations: Sequence[Declaration]) -> list[DeclaredCell]:
    """The declared cells among tensor `names`, in order of their first tensor in `names`.

    Raises `LayoutDeclarationError` for a declaration that matches no cell, a kind that matches two tensors for
    the same groups (and gate), a per-gate kind missing a gate, and a tensor claimed by two kinds or declarations.
    """
    ordered = list(dict.fromkeys(names))
    found: list[tuple[int, int, DeclaredCell]] = []
    for order, declaration in enumerate(declarations):
        collected, matched_per_kind = _collect(ordered, declaration)
        cells = [
            (entry.first, order, _cell(declaration, key, entry))
            for key, entry in collected.items()
            if all(kind in entry.whole or kind in entry.per_gate for kind in declaration.required)
        ]
        if not cells and not declaration.automatic:
            raise LayoutDeclarationError(_nothing_matched(declaration, matched_per_kind, ordered))
        found += cells
    found.sort(key=lambda item: (item[0], item[1]))
    claimed: dict[str, tuple[int, str]] = {}
    for index, (_, _, cell) in enumerate(found):
        for kind, entries in cell.pieces.items():
            for name, _ in entries:
                owner_index, owner_kind = claimed.setdefault(name, (index, kind))
                if owner_index != index:
                    owner = found[owner_index][2]
                    raise LayoutDeclarationError(
                        f"{name} is matched twice: as {owner_kind} of {_label(owner.declaration)}, groups "
                        f"{_show_key(owner.key)}, and as {kind} of {_label(cell.declaration)}, groups "
                        f"{_show_key(cell.key)}: make the patterns exclusive"
                    )
    return [cell for _, _, cell in found]
