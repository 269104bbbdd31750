"""find_layers recovers the exact RNN/GRU/LSTM configuration from parameter names and shapes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rnninit_cli.errors import LayoutError, RnnInitError
from rnninit_cli.layouts.discovery import Block, Layer, find_layers

GATE_COUNT = {"rnn": 1, "gru": 3, "lstm": 4}
MODULE_CLASS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
CELL_CLASS = {"rnn": nn.RNNCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}

LayerFacts = tuple[str, str, bool, int, str, int, int, int, bool, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class Config:
    """What a test asks torch to build; the truth find_layers must recover."""

    cell: str
    is_cell: bool
    num_layers: int
    bidirectional: bool
    input_size: int
    hidden_size: int
    proj_size: int
    bias: bool

    def build(self) -> nn.Module:
        if self.is_cell:
            return CELL_CLASS[self.cell](self.input_size, self.hidden_size, bias=self.bias)
        extra = {"proj_size": self.proj_size} if self.cell == "lstm" else {}
        return MODULE_CLASS[self.cell](
            self.input_size,
            self.hidden_size,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            bias=self.bias,
            **extra,
        )

    def expected_layers(self, prefix: str) -> set[LayerFacts]:
        """Every (layer, direction) the module holds, computed from the PyTorch documentation."""
        kinds = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else [])
        if self.is_cell:
            params = frozenset((kind, prefix + kind) for kind in kinds)
            return {
                (
                    prefix,
                    self.cell,
                    True,
                    0,
                    "forward",
                    self.input_size,
                    self.hidden_size,
                    0,
                    self.bias,
                    params,
                )
            }
        if self.proj_size:
            kinds.append("weight_hr")
        directions = ["forward", "reverse"] if self.bidirectional else ["forward"]
        output_size = self.proj_size or self.hidden_size
        expected = set()
        for index in range(self.num_layers):
            for direction in directions:
                suffix = f"_l{index}" + ("_reverse" if direction == "reverse" else "")
                params = frozenset((kind, f"{prefix}{kind}{suffix}") for kind in kinds)
                input_size = self.input_size if index == 0 else len(directions) * output_size
                expected.add(
                    (
                        prefix,
                        self.cell,
                        False,
                        index,
                        direction,
                        input_size,
                        self.hidden_size,
                        self.proj_size,
                        self.bias,
                        params,
                    )
                )
        return expected


def facts(layer: Layer) -> LayerFacts:
    return (
        layer.prefix,
        layer.cell,
        layer.is_cell,
        layer.layer,
        layer.direction,
        layer.input_size,
        layer.hidden_size,
        layer.proj_size,
        layer.bias,
        frozenset(layer.params.items()),
    )


def found_facts(tensors: Mapping[str, Any]) -> list[LayerFacts]:
    return [facts(layer) for layer in find_layers(tensors)]


@st.composite
def configs(draw: st.DrawFn) -> Config:
    cell = draw(st.sampled_from(["rnn", "gru", "lstm"]))
    input_size = draw(st.integers(1, 5))
    hidden_size = draw(st.integers(1, 5))
    bias = draw(st.booleans())
    if draw(st.booleans()):
        return Config(cell, True, 1, False, input_size, hidden_size, 0, bias)
    proj_size = draw(st.integers(0, hidden_size - 1)) if cell == "lstm" else 0
    return Config(
        cell,
        False,
        draw(st.integers(1, 3)),
        draw(st.booleans()),
        input_size,
        hidden_size,
        proj_size,
        bias,
    )


def assemble(modules: list[nn.Module], wrapper: str) -> tuple[nn.Module, list[str]]:
    """Put the recurrent modules and a Linear in a container; return the recurrent prefixes."""
    if wrapper == "bare" and len(modules) == 1:
        return modules[0], [""]
    if wrapper == "sequential":
        return nn.Sequential(*modules, nn.Linear(2, 2)), [f"{i}." for i in range(len(modules))]
    if wrapper == "nested":
        inner = nn.Sequential(*modules)
        container = nn.ModuleDict({"head": nn.Linear(2, 2), "encoder": inner})
        return container, [f"encoder.{i}." for i in range(len(modules))]
    names = ["enc", "dec", "aux"][: len(modules)]
    container = nn.ModuleDict({"proj": nn.Linear(2, 2), **dict(zip(names, modules, strict=True))})
    return container, [f"{name}." for name in names]


@settings(max_examples=25, deadline=None)
@given(
    config_list=st.lists(configs(), min_size=1, max_size=3),
    wrapper=st.sampled_from(["bare", "sequential", "moduledict", "nested"]),
    key_prefix=st.sampled_from(["", "module.", "encoder.rnn."]),
    source=st.sampled_from(["state_dict", "named_parameters"]),
)
def test_find_layers_recovers_every_configuration(
    config_list: list[Config], wrapper: str, key_prefix: str, source: str
) -> None:
    modules = [config.build() for config in config_list]
    container, prefixes = assemble(modules, wrapper)
    raw = container.state_dict() if source == "state_dict" else dict(container.named_parameters())
    tensors: dict[str, Any] = {key_prefix + name: value for name, value in raw.items()}
    tensors["step"] = 12  # non-tensor values in a checkpoint dict are ignored
    tensors["notes.weight_ih_l0"] = "not a tensor"

    expected = set()
    for config, prefix in zip(config_list, prefixes, strict=True):
        expected |= config.expected_layers(key_prefix + prefix)
    found = found_facts(tensors)
    assert len(found) == len(set(found)), "a layer was reported twice"
    assert set(found) == expected


EXAMPLES = {
    "lstm-3layer-bi-proj": Config("lstm", False, 3, True, 7, 6, 2, True),
    "gru-2layer-nobias": Config("gru", False, 2, False, 3, 5, 0, False),
    "rnn-bi": Config("rnn", False, 1, True, 4, 4, 0, True),
    "lstmcell": Config("lstm", True, 1, False, 3, 5, 0, True),
    "grucell-nobias": Config("gru", True, 1, False, 2, 3, 0, False),
    "rnncell": Config("rnn", True, 1, False, 6, 2, 0, True),
}


@pytest.mark.parametrize("config", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_find_layers_examples(config: Config) -> None:
    found = found_facts(config.build().state_dict())
    assert set(found) == config.expected_layers("")
    assert len(found) == len(config.expected_layers(""))


def test_find_layers_lists_layers_in_order_of_first_appearance() -> None:
    model = nn.ModuleDict({"b": nn.GRU(3, 4, num_layers=2, bidirectional=True), "a": nn.RNN(3, 4)})
    tensors = model.state_dict()
    order = [(lay.prefix, lay.layer, lay.direction) for lay in find_layers(tensors)]
    assert order == [
        ("b.", 0, "forward"),
        ("b.", 0, "reverse"),
        ("b.", 1, "forward"),
        ("b.", 1, "reverse"),
        ("a.", 0, "forward"),
    ]
    backwards = dict(reversed(list(tensors.items())))
    order = [(lay.prefix, lay.layer, lay.direction) for lay in find_layers(backwards)]
    assert order == [
        ("a.", 0, "forward"),
        ("b.", 1, "reverse"),
        ("b.", 1, "forward"),
        ("b.", 0, "reverse"),
        ("b.", 0, "forward"),
    ]


def test_slash_separated_prefix() -> None:
    tensors = {f"model/encoder/{k}": v for k, v in nn.GRU(3, 4).state_dict().items()}
    (layer,) = find_layers(tensors)
    assert layer.prefix == "model/encoder/"
    assert (layer.cell, layer.input_size, layer.hidden_size) == ("gru", 3, 4)


def test_gate_blocks_in_storage_order() -> None:
    lstm = nn.LSTM(3, 5, proj_size=2)
    (layer,) = find_layers(lstm.state_dict())
    assert layer.gates == ("i", "f", "g", "o")
    assert layer.blocks("weight_ih") == [
        Block("weight_ih_l0", "weight_ih", "i", 0, 5),
        Block("weight_ih_l0", "weight_ih", "f", 5, 10),
        Block("weight_ih_l0", "weight_ih", "g", 10, 15),
        Block("weight_ih_l0", "weight_ih", "o", 15, 20),
    ]
    assert layer.blocks("weight_hr") == [Block("weight_hr_l0", "weight_hr", None, 0, 2)]
    blocks = list(layer.all_blocks())
    assert len(blocks) == 4 * 4 + 1
    assert {b.name for b in blocks} == set(lstm.state_dict())

    (gru,) = find_layers(nn.GRUCell(3, 4).state_dict())
    assert [(b.gate, b.start, b.stop) for b in gru.blocks("bias_hh")] == [
        ("r", 0, 4),
        ("z", 4, 8),
        ("n", 8, 12),
    ]
    (rnn,) = find_layers(nn.RNN(3, 4).state_dict())
    assert rnn.gates == (None,)
    assert rnn.blocks("weight_hh") == [Block("weight_hh_l0", "weight_hh", None, 0, 4)]


def test_layer_title_names_where_it_is() -> None:
    model = nn.ModuleDict(
        {"enc": nn.LSTM(3, 4, num_layers=2, bidirectional=True), "cell": nn.GRUCell(3, 4)}
    )
    layers = find_layers(model.state_dict())
    lstm_title = next(lay.title for lay in layers if lay.layer == 1 and lay.direction == "reverse")
    assert "enc." in lstm_title
    assert "lstm" in lstm_title.lower()
    assert "1" in lstm_title
    assert "reverse" in lstm_title
    cell_title = next(lay.title for lay in layers if lay.is_cell)
    assert "cell." in cell_title
    assert "gru" in cell_title.lower()
    (top,) = find_layers(nn.RNN(2, 2).state_dict())
    assert "top level" in top.title


def test_one_dimensional_lookalike_next_to_real_lstm_is_ignored() -> None:
    lstm = nn.LSTM(3, 4)
    tensors = {
        **lstm.state_dict(),
        "other.weight_hh": torch.zeros(5),
        "norm.bias_ih": torch.ones(3),
    }
    assert found_facts(tensors) == sorted(
        Config("lstm", False, 1, False, 3, 4, 0, True).expected_layers("")
    )


def test_non_tensor_values_are_ignored() -> None:
    tensors: dict[str, Any] = {f"rnn.{k}": v for k, v in nn.GRU(2, 3).state_dict().items()}
    tensors.update(
        {
            "weight_ih_l0": "text",
            "weight_hh_l0": [1, 2, 3],
            "bias_ih": None,
            "_metadata": {"version": 1},
            "epoch": 4,
        }
    )
    assert found_facts(tensors) == sorted(
        Config("gru", False, 1, False, 2, 3, 0, True).expected_layers("rnn.")
    )


def test_no_recurrent_parameters_gives_empty_list() -> None:
    assert find_layers(nn.Linear(3, 4).state_dict()) == []
    assert find_layers({}) == []


def lstm_state(prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in nn.LSTM(3, 4).state_dict().items()}


def assert_layout_error(tensors: Mapping[str, Any], *names: str) -> str:
    with pytest.raises(LayoutError) as caught:
        find_layers(tensors)
    message = str(caught.value)
    for name in names:
        assert name in message, f"{name!r} not named in: {message}"
    return message


def test_rows_not_a_multiple_of_hidden() -> None:
    tensors = {"weight_ih_l0": torch.zeros(10, 3), "weight_hh_l0": torch.zeros(10, 4)}
    assert_layout_error(tensors, "weight_hh_l0", "10")


def test_gate_count_other_than_1_3_4() -> None:
    tensors = {"weight_ih_l0": torch.zeros(8, 3), "weight_hh_l0": torch.zeros(8, 4)}
    assert_layout_error(tensors, "weight_hh_l0", "2 gates")


def test_bias_length_wrong() -> None:
    tensors = lstm_state("enc.")
    tensors["enc.bias_ih_l0"] = torch.zeros(15)
    assert_layout_error(tensors, "enc.bias_ih_l0", "16")


def test_weight_ih_rows_differ_from_weight_hh_rows() -> None:
    tensors = lstm_state()
    tensors["weight_ih_l0"] = torch.zeros(12, 3)
    assert_layout_error(tensors, "weight_ih_l0", "weight_hh_l0")


@pytest.mark.parametrize("hr_shape", [(4, 4), (4, 12)])
def test_weight_hr_on_a_gru(hr_shape: tuple[int, int]) -> None:
    tensors = {**nn.GRU(3, 4).state_dict(), "weight_hr_l0": torch.zeros(hr_shape)}
    assert_layout_error(tensors, "weight_hr_l0")


def test_weight_hr_with_wrong_rows() -> None:
    tensors = {**nn.LSTM(3, 4, proj_size=2).state_dict(), "weight_hr_l0": torch.zeros(3, 4)}
    assert_layout_error(tensors, "weight_hr_l0")


@pytest.mark.parametrize("missing", ["weight_hh", "weight_ih"])
def test_group_missing_a_weight(missing: str) -> None:
    tensors = lstm_state("encoder.rnn.")
    del tensors[f"encoder.rnn.{missing}_l0"]
    assert_layout_error(tensors, f"encoder.rnn.{missing}_l0")


def test_cell_missing_weight_hh() -> None:
    tensors = dict(nn.LSTMCell(3, 4).state_dict())
    del tensors["weight_hh"]
    assert_layout_error(tensors, "weight_hh")


@pytest.mark.parametrize(("present", "missing"), [("bias_ih", "bias_hh"), ("bias_hh", "bias_ih")])
def test_one_bias_without_the_other(present: str, missing: str) -> None:
    tensors = lstm_state()
    del tensors[f"{missing}_l0"]
    assert_layout_error(tensors, f"{present}_l0", f"{missing}_l0")


def test_weight_of_wrong_rank() -> None:
    tensors = lstm_state()
    tensors["weight_ih_l0"] = torch.zeros(16, 3, 1)
    assert_layout_error(tensors, "weight_ih_l0")


def test_layout_error_is_an_rnninit_error() -> None:
    assert issubclass(LayoutError, RnnInitError)


@pytest.mark.parametrize(("word", "expected"), [
    ("RNN", "an RNN"), ("LSTM", "an LSTM"), ("GRU", "a GRU"), ("8-row", "an 8-row"), ("11-row", "an 11-row"),
    ("18-row", "an 18-row"), ("80-row", "an 80-row"), ("96-row", "a 96-row"), ("110-row", "a 110-row"),
    ("11000-row", "an 11000-row"), ("orthogonal", "an orthogonal"), ("gate", "a gate"),
])
def test_article_follows_how_the_word_is_read(word: str, expected: str) -> None:
    from rnninit_cli.layouts.discovery import article

    assert article(word) == expected
