"""A recurrent layer as rnninit sees it: its parameters by kind and their gate blocks (and, for per-head cells, head
blocks), rows of each effective parameter."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

GATES: dict[str, tuple[str, ...]] = {"rnn": ("",), "gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o")}
CELL_BY_GATE_COUNT = {1: "rnn", 3: "gru", 4: "lstm"}
# radius: a vector setting each channel's recurrence, a = σ(−p) (RecurrentGemma's RG-LRU `recurrent_param`)
KINDS = ("weight_ih", "weight_hh", "weight_hr", "bias_ih", "bias_hh", "radius")
RowBlock = tuple[str, "str | None", "int | None", int, int]  # kind, gate, head, start, stop


@dataclass(frozen=True)
class Block:
    """One gate block of a parameter: rows [start, stop) of dim 0 (one head's rows of a gate for per-head cells)."""

    name: str
    kind: str
    gate: str | None
    start: int
    stop: int
    head: int | None = None

    @property
    def label(self) -> str:
        """The gate as tables show it: `f`, `f.h1` (head 1), `-` (no gates)."""
        gate = self.gate or "-"
        return gate if self.head is None else f"{gate}.h{self.head}"


@dataclass(frozen=True)
class Layer:
    """One direction of one layer of an nn.RNN/GRU/LSTM, one nn.*Cell, or one declared cell (per-head cells such as
    xLSTM's sLSTM included)."""

    prefix: str
    cell: str
    is_cell: bool
    layer: int
    direction: str
    input_size: int
    hidden_size: int
    proj_size: int
    bias: bool
    params: dict[str, str] = field(compare=False)  # kind → the effective parameter's name
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)  # kind → stored tensors
    gate_names: tuple[str, ...] | None = None  # a declared cell's own gates (cell "custom")
    label: str = ""  # a declared cell's name for people, e.g. LiGRU
    declared: str = ""  # the declaration (layout) it was found by
    family: str = ""  # what schemes know the cell as (slstm, mlstm, rglru, hf-mlstm); "" for torch-style gates
    heads: int = 1
    head_size: int = 0
    block_index: int = 0  # its position in a residual stack of blocks (xLSTM's power-law forget bias needs it)
    num_blocks: int = 1
    row_blocks: tuple[RowBlock, ...] = ()  # explicit blocks (per-head cells); empty: G gates of hidden_size rows

    @property
    def gates(self) -> tuple[str | None, ...]:
        """Gate names in storage order; (None,) for a plain RNN."""
        if self.gate_names is not None:
            return self.gate_names
        return (None,) if self.cell == "rnn" else GATES[self.cell]

    @property
    def title(self) -> str:
        """A short human name: `encoder.rnn.: LSTM layer 1, reverse`."""
        where = self.prefix or "(top level)"
        if self.row_blocks:
            heads = f", {self.heads} heads of {self.head_size}" if self.heads > 1 else ""
            stack = f", block {self.block_index} of {self.num_blocks}" if self.num_blocks > 1 else ""
            return f"{where}: {self.label}{heads}{stack} (layout {self.declared})"
        if self.declared:
            return f"{where}: {self.label or self.cell.upper()} cell (layout {self.declared})"
        if self.is_cell:
            return f"{where}: {self.cell.upper()} cell"
        return f"{where}: {self.cell.upper()} layer {self.layer}, {self.direction}"

    def shape_key(self) -> tuple[Any, ...]:
        """Everything but the names: layers with equal keys have the same blocks, and a scheme plans them alike."""
        return (self.cell, self.is_cell, self.layer, self.direction, self.input_size, self.hidden_size,
                self.proj_size, self.bias, self.gate_names, self.label, self.declared, tuple(self.params),
                self.family, self.heads, self.head_size, self.block_index, self.num_blocks, self.row_blocks)

    def stored(self, kind: str) -> tuple[str, ...]:
        """The stored tensors behind parameter `kind` (its own name when it is stored as it is)."""
        return self.sources.get(kind, (self.params[kind],))

    def all_stored(self) -> list[str]:
        return list(dict.fromkeys(name for kind in self.params for name in self.stored(kind)))

    def blocks(self, kind: str) -> list[Block]:
        """The gate blocks of parameter `kind` (views are taken by the caller with rows [start, stop))."""
        name = self.params[kind]
        if self.row_blocks:
            return [Block(name, kind, gate, start, stop, head)
                    for own, gate, head, start, stop in self.row_blocks if own == kind]
        if kind == "weight_hr":
            return [Block(name, kind, None, 0, self.proj_size)]
        h = self.hidden_size
        return [Block(name, kind, gate, k * h, (k + 1) * h) for k, gate in enumerate(self.gates)]

    def all_blocks(self) -> Iterator[Block]:
        for kind in KINDS:
            if kind in self.params:
                yield from self.blocks(kind)


def article(word: str) -> str:
    """`word` with "a" or "an" by how it is read: an RNN, an LSTM, a GRU, an 8-row, an 11-row, a 96-row."""
    digits = re.match(r"\d+", word)
    if digits:
        number = digits.group()
        vowel = number.startswith("8") or (number[:2] in ("11", "18") and len(number) % 3 == 2)
    elif word.isupper() or (len(word) > 1 and word[0].islower() and word[1].isupper()):  # LSTM, mLSTM: spelled
        vowel = word[0].upper() in "AEFHILMNORSX"  # letters whose names start with a vowel sound
    else:
        vowel = word[:1].lower() in "aeiou"
    return f"{'an' if vowel else 'a'} {word}"


def brace_name(names: Sequence[str]) -> str:
    """One readable name for several tensors: `cell.W_{i,f,g,o}.weight`, `rg_lru.{input,recurrent}_gate_weight` (the
    shared tail starts at a word where the differing parts are longer than a letter)."""
    head = common_prefix(names)
    stems = [name[len(head):] for name in names]
    tail = stems[0]
    for stem in stems[1:]:
        while not stem.endswith(tail):
            tail = tail[1:]
    middles = [stem[:len(stem) - len(tail)] for stem in stems]
    if any(len(middle) > 1 for middle in middles) and tail[:1] not in ("_", ".", ""):
        cut = min((tail.find(mark) for mark in "_." if mark in tail), default=len(tail))
        middles, tail = [middle + tail[:cut] for middle in middles], tail[cut:]
    return f"{head}{{{','.join(middles)}}}{tail}"


def common_prefix(names: Sequence[str]) -> str:
    """The module path the names share, up to its last dot: `predictor.lstm_layers.0.`."""
    shared = names[0]
    for name in names[1:]:
        while not name.startswith(shared):
            shared = shared[:-1]
    return shared[:shared.rfind(".") + 1]
