"""Gate layout knowledge: which parameter names and shapes are recurrent, gate order, block slicing.

Works from names and shapes alone (no model code). PyTorch stores the G gates of a layer stacked on
dim 0: an LSTM's `weight_ih_l0` is (W_ii|W_if|W_ig|W_io), a GRU's is (W_ir|W_iz|W_in).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import LayoutError

GATES: dict[str, tuple[str, ...]] = {"rnn": ("",), "gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o")}
CELL_BY_GATE_COUNT = {1: "rnn", 3: "gru", 4: "lstm"}
ALL_GATES = ("i", "f", "g", "o", "r", "z", "n")
KINDS = ("weight_ih", "weight_hh", "weight_hr", "bias_ih", "bias_hh")
GATED_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

_NAME = re.compile(
    r"^(?P<prefix>(?:.*[./])?)(?P<kind>weight_ih|weight_hh|weight_hr|bias_ih|bias_hh)"
    r"(?:_l(?P<layer>\d+)(?P<reverse>_reverse)?)?$"
)


@dataclass(frozen=True)
class Block:
    """One gate block of a parameter: rows [start, stop) of dim 0."""

    name: str
    kind: str
    gate: str | None
    start: int
    stop: int


@dataclass(frozen=True)
class Layer:
    """One direction of one layer of an nn.RNN/GRU/LSTM, or one nn.*Cell."""

    prefix: str
    cell: str
    is_cell: bool
    layer: int
    direction: str
    input_size: int
    hidden_size: int
    proj_size: int
    bias: bool
    params: dict[str, str] = field(compare=False)

    @property
    def gates(self) -> tuple[str | None, ...]:
        """Gate names in storage order; (None,) for a plain RNN."""
        return (None,) if self.cell == "rnn" else GATES[self.cell]

    @property
    def title(self) -> str:
        """A short human name: `encoder.rnn.: LSTM layer 1, reverse`."""
        where = self.prefix or "(top level)"
        if self.is_cell:
            return f"{where}: {self.cell.upper()} cell"
        return f"{where}: {self.cell.upper()} layer {self.layer}, {self.direction}"

    def blocks(self, kind: str) -> list[Block]:
        """The gate blocks of parameter `kind` (views are taken by the caller with rows [start, stop))."""
        name = self.params[kind]
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
    elif word.isupper():
        vowel = word[0] in "AEFHILMNORSX"  # letters whose names start with a vowel sound
    else:
        vowel = word[:1].lower() in "aeiou"
    return f"{'an' if vowel else 'a'} {word}"


def _shape(value: Any) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    return None if shape is None else tuple(int(s) for s in shape)


def find_layers(tensors: Mapping[str, Any]) -> list[Layer]:
    """Every recurrent layer (one per direction) or cell in `tensors`, in order of first appearance.

    Groups that only share a suffix with recurrent names but hold no 2-D `weight_ih`/`weight_hh`
    are not recurrent and are skipped; real groups with inconsistent shapes raise `LayoutError`.
    """
    groups: dict[tuple[str, int | None, bool], dict[str, tuple[str, tuple[int, ...]]]] = {}
    for name, value in tensors.items():
        match = _NAME.match(name)
        shape = _shape(value)
        if match is None or shape is None:
            continue
        layer = match["layer"]
        if layer is None and match["kind"] == "weight_hr":
            continue
        key = (match["prefix"], None if layer is None else int(layer), bool(match["reverse"]))
        groups.setdefault(key, {})[match["kind"]] = (name, shape)

    layers = []
    for (prefix, index, reverse), members in groups.items():
        if not any(len(members.get(k, ("", ()))[1]) == 2 for k in ("weight_ih", "weight_hh")):
            continue
        layers.append(_build_layer(prefix, index, reverse, members))
    return layers


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
