"""Declared layouts (rnninit_cli.layouts.declared): parsing `--layout` / `--layout-file`, built-ins, name matching."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import wild_models

from rnninit_cli.errors import LayoutDeclarationError, UsageError
from rnninit_cli.layouts.declared import (
    BUILTIN_LAYOUTS,
    Declaration,
    DeclaredCell,
    inline_text,
    layouts_from_options,
    load_layout_file,
    match_declarations,
    parse_layout,
)

I2H = r"weight_ih=(.*)\.i2h\.weight weight_hh=(.*)\.h2h\.weight"


def one(text: str, where: str = "--layout 1") -> Declaration:
    [declaration] = parse_layout(text, where)
    return declaration


def refused(text: str) -> str:
    with pytest.raises(LayoutDeclarationError) as caught:
        parse_layout(text, "--layout 3")
    message = str(caught.value)
    assert message.startswith("--layout 3: "), message
    return message


# ---------------------------------------------------------------------------------------------------------------
# inline declarations


def test_inline_lstm_defaults() -> None:
    declaration = one(I2H)
    assert declaration.name == declaration.source == "--layout 1"
    assert (declaration.cell, declaration.title, declaration.gates) == ("lstm", "LSTM", ("i", "f", "g", "o"))
    assert list(declaration.patterns) == ["weight_ih", "weight_hh"]
    assert declaration.patterns["weight_ih"].fullmatch("enc.0.i2h.weight")
    assert declaration.transposed == frozenset()


@pytest.mark.parametrize(
    ("text", "cell", "gates", "title"),
    [
        ("cell=lstm gates=i,f,c,o", "lstm", ("i", "f", "g", "o"), "LSTM"),  # Keras's c is torch's g
        ("cell=lstm gates=i,o,f,c", "lstm", ("i", "o", "f", "g"), "LSTM"),  # ONNX order
        ("cell=gru gates=z,r,h", "gru", ("z", "r", "n"), "GRU"),  # Keras's h is torch's n
        ("cell=gru", "gru", ("r", "z", "n"), "GRU"),
        ("cell=rnn", "rnn", ("",), "RNN"),
        ("cell=custom title=LiGRU gates=a,z", "custom", ("a", "z"), "LiGRU"),
        ("cell=custom gates=c", "custom", ("c",), "custom"),  # no aliasing for custom cells
        ("cell=lstm title=MyLSTM", "lstm", ("i", "f", "g", "o"), "MyLSTM"),
    ],
)
def test_inline_cells_and_gate_aliases(text: str, cell: str, gates: tuple[str, ...], title: str) -> None:
    declaration = one(f"{text} {I2H}")
    assert (declaration.cell, declaration.gates, declaration.title) == (cell, gates, title)


def test_inline_all_kinds_and_transposed() -> None:
    declaration = one(
        r"cell=lstm transposed=weight_ih,weight_hh weight_hh=(.*)\.rk weight_ih=(.*)\.k weight_hr=(.*)\.p "
        r"bias_hh=(.*)\.bh bias_ih=(.*)\.bi"
    )
    assert list(declaration.patterns) == ["weight_ih", "weight_hh", "weight_hr", "bias_ih", "bias_hh"]
    assert declaration.transposed == frozenset({"weight_ih", "weight_hh"})


def test_values_may_contain_equals_signs() -> None:
    declaration = one(r"weight_ih=(.*)\.i2h(?:=old)?\.weight weight_hh=(.*)\.h2h\.weight")
    assert declaration.patterns["weight_ih"].pattern == r"(.*)\.i2h(?:=old)?\.weight"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"cel=lstm {I2H}", "unknown setting 'cel'"),
        (f"cell=lsmt {I2H}", "cell=lsmt is not a cell kind"),
        (r"weight_ih=(.*\.i2h\.weight weight_hh=(.*)\.h", "weight_ih=(.*\\.i2h\\.weight is not a valid regular"),
        (f"gates=i,f,o {I2H}", "not an order of the lstm gates i,f,g,o"),
        (f"gates=i,f,g,o,o {I2H}", "not an order of the lstm gates"),
        (f"cell=gru gates=r,z,c {I2H}", "not an order of the gru gates r,z,n"),
        (r"weight_ih=(.*)\.i2h\.weight", "weight_hh is missing"),
        (r"bias_ih=(.*)\.b", "weight_ih and weight_hh are missing"),
        (f"cell=custom {I2H}", "a custom cell needs its gate names"),
        (f"cell=custom gates=a,a {I2H}", "gate a is listed twice"),
        (f"cell=custom gates=a,2b {I2H}", "gate name '2b' is not an identifier"),
        (f"cell=custom gates=a,,b {I2H}", "gates has an empty name"),
        (f"cell=rnn gates=h {I2H}", "an rnn cell has no gates"),
        (f"transposed=bias_ih {I2H} bias_ih=(.*)\\.b", "only weight_ih, weight_hh, weight_hr can be stored transposed"),
        (f"transposed=weight_hr {I2H}", "transposed names weight_hr, which the declaration does not match"),
        (r"weight_ih=(.*)\.(i2h)\.weight weight_hh=(.*)\.h2h\.weight", "capture different numbers of groups"),
        (f"{I2H} weight_hr=(.*)\\.(?P<gate>\\w)", "weight_hr has no gates"),
        (r"cell=rnn weight_ih=(.*)\.(?P<gate>\w)\.weight weight_hh=(.*)\.h", "an rnn cell has no gates"),
        (f"{I2H} lstm", "'lstm' is not a key=value setting"),
        (f"{I2H} =x", "'=x' is not a key=value setting"),
        (f"cell=lstm cell=gru {I2H}", "cell is set twice"),
        (f"title= {I2H}", "title must be a non-empty name"),
        (r"weight_ih= weight_hh=(.*)\.h2h\.weight", "weight_ih must be a regular expression"),
        ("   ", "empty layout"),
    ],
)
def test_inline_errors_say_what_to_fix(text: str, expected: str) -> None:
    assert expected in refused(text)


def test_errors_are_usage_errors() -> None:
    assert issubclass(LayoutDeclarationError, UsageError)
    with pytest.raises(UsageError):
        parse_layout("cell=nope", "--layout 1")


# ---------------------------------------------------------------------------------------------------------------
# built-ins


def test_builtin_by_name_keeps_name_and_records_where() -> None:
    declaration = one("torchaudio-rnnt", "--layout 2")
    assert declaration.name == "torchaudio-rnnt"
    assert declaration.source == "--layout 2"
    assert declaration.same_layout(BUILTIN_LAYOUTS["torchaudio-rnnt"])
    assert BUILTIN_LAYOUTS["torchaudio-rnnt"].source == "built-in"


def test_unknown_builtin_lists_the_builtins() -> None:
    message = refused("keras-lstm")  # far from every built-in name: they are listed
    assert "no built-in layout named 'keras-lstm'" in message
    for name in BUILTIN_LAYOUTS:
        assert name in message
    assert "did you mean 'torchaudio-rnnt'?" in refused("torchaudio-rnn")  # close to one: that one


def test_builtins_exist_with_the_checked_gate_orders() -> None:
    torchaudio = BUILTIN_LAYOUTS["torchaudio-rnnt"]
    assert (torchaudio.cell, torchaudio.gates, torchaudio.transposed) == ("lstm", ("i", "f", "g", "o"), frozenset())
    assert set(torchaudio.patterns) == {"weight_ih", "weight_hh", "bias_ih"}
    ligru = BUILTIN_LAYOUTS["speechbrain-ligru"]
    assert (ligru.cell, ligru.title, ligru.gates) == ("custom", "LiGRU", ("a", "z"))
    assert set(ligru.patterns) == {"weight_ih", "weight_hh"}


@pytest.mark.parametrize("layer_norm", [False, True])
def test_torchaudio_builtin_on_the_real_names(layer_norm: bool) -> None:
    _, state = wild_models.torchaudio_rnnt_predictor(layer_norm=layer_norm, layers=3)
    cells = match_declarations(state, [BUILTIN_LAYOUTS["torchaudio-rnnt"]])
    assert [cell.key for cell in cells] == [(f"predictor.lstm_layers.{k}",) for k in range(3)]
    for k, cell in enumerate(cells):
        prefix = f"predictor.lstm_layers.{k}."
        expected = {"weight_ih": ((prefix + "x2g.weight", None),), "weight_hh": ((prefix + "p2g.weight", None),)}
        if not layer_norm:  # emformer_rnnt_base's layer-normed x2g has no bias
            expected["bias_ih"] = ((prefix + "x2g.bias", None),)
        assert cell.pieces == expected
        assert state[prefix + "x2g.weight"].shape[0] == 4 * state[prefix + "p2g.weight"].shape[1]


def test_speechbrain_builtin_on_the_real_names() -> None:
    _, state = wild_models.speechbrain_ligru(layers=2, bidirectional=True)
    cells = match_declarations(state, [BUILTIN_LAYOUTS["speechbrain-ligru"]])
    assert [cell.pieces for cell in cells] == [
        {"weight_ih": ((f"rnn.{k}.w.weight", None),), "weight_hh": ((f"rnn.{k}.u.weight", None),)} for k in (0, 1)
    ]
    # inside a bigger model (CRDNN keeps it under `RNN.`): the prefix is part of the key
    nested = match_declarations([f"enc.RNN.{name}" for name in state], [BUILTIN_LAYOUTS["speechbrain-ligru"]])
    assert [cell.key for cell in nested] == [("enc.RNN.rnn.0",), ("enc.RNN.rnn.1",)]


def test_builtins_do_not_claim_look_alikes() -> None:
    names = ["my_rnn.0.w.weight", "my_rnn.0.u.weight", "rnn.x.w.weight", "rnn.x.u.weight"]
    with pytest.raises(LayoutDeclarationError, match="matches no recurrent cell"):
        match_declarations(names, [BUILTIN_LAYOUTS["speechbrain-ligru"]])


# ---------------------------------------------------------------------------------------------------------------
# TOML files

TOML = r"""
# two layouts
[layout.keras-lstm]
cell = "lstm"
gates = ["i", "f", "c", "o"]
weight_ih = '(.*lstm_cell)\.kernel'
weight_hh = '(.*lstm_cell)\.recurrent_kernel'
bias_ih = '(.*lstm_cell)\.bias'
transposed = ["weight_ih", "weight_hh"]

[layout.ligru]
cell = "custom"
title = "LiGRU"
gates = "a, z"
weight_ih = "(.*)\\.w\\.weight"
weight_hh = "(.*)\\.u\\.weight"
"""


def write(tmp_path: Path, text: str, name: str = "layouts.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_toml_file(tmp_path: Path) -> None:
    path = write(tmp_path, TOML)
    keras, ligru = load_layout_file(path)
    assert (keras.name, keras.source) == (f"{path}: keras-lstm", str(path))
    assert keras.gates == ("i", "f", "g", "o")
    assert keras.transposed == frozenset({"weight_ih", "weight_hh"})
    assert keras.patterns["weight_hh"].pattern == r"(.*lstm_cell)\.recurrent_kernel"
    assert (ligru.cell, ligru.title, ligru.gates) == ("custom", "LiGRU", ("a", "z"))
    assert ligru.patterns["weight_ih"].pattern == r"(.*)\.w\.weight"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[layout.x]\ncell = "lstm"\nweight_ih = "(.*)\\.a"\nweight_hh = (\n', "not valid TOML: "),
        ("", "declares no layout"),
        ("[layouts.x]\nweight_ih = 'a'\n", "unknown top-level entry 'layouts'"),
        ("layout = 3\n", "declares no layout"),
        ("[layout]\nx = 1\n", "layout.x must be a table"),
        ("[layout.x]\ncell = 'lstm'\nweight_ih = '(.*)a'\n", "x: weight_hh is missing"),
        ("[layout.x]\ngates = 4\nweight_ih = '(.*)a'\nweight_hh = '(.*)b'\n", "gates must be a list of names"),
        ("[layout.x]\ncell = 4\nweight_ih = '(.*)a'\nweight_hh = '(.*)b'\n", "cell=4 is not a cell kind"),
        ("[layout.x]\nweight_ih = 1\nweight_hh = '(.*)b'\n", "weight_ih must be a regular expression"),
        ("[layout.x]\nname = 'y'\nweight_ih = '(.*)a'\nweight_hh = '(.*)b'\n", "unknown setting 'name'"),
    ],
)
def test_toml_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(LayoutDeclarationError) as caught:
        load_layout_file(path)
    assert str(caught.value).startswith(str(path)), caught.value
    assert expected in str(caught.value)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[layout.x]\ncell = "lstm"\nweight_ih = "(.*)a\n')
    with pytest.raises(LayoutDeclarationError, match=r"not valid TOML: .*line 3"):
        load_layout_file(path)


def test_unreadable_layout_files(tmp_path: Path) -> None:
    with pytest.raises(LayoutDeclarationError, match="cannot read the layout file"):
        load_layout_file(tmp_path / "missing.toml")
    with pytest.raises(LayoutDeclarationError, match="cannot read the layout file"):
        load_layout_file(tmp_path)
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe[layout.x]")
    with pytest.raises(LayoutDeclarationError, match="not a text file"):
        load_layout_file(path)


def test_layouts_from_options_numbers_and_deduplicates(tmp_path: Path) -> None:
    path = write(tmp_path, TOML)
    declarations = layouts_from_options(
        ["torchaudio-rnnt", I2H, "torchaudio-rnnt", f"  {I2H}  "], [str(path), str(path)]
    )
    assert [(d.name, d.source) for d in declarations] == [
        ("torchaudio-rnnt", "--layout 1"),
        ("--layout 2", "--layout 2"),
        (f"{path}: keras-lstm", str(path)),
        (f"{path}: ligru", str(path)),
    ]
    assert layouts_from_options([], []) == []
    with pytest.raises(LayoutDeclarationError, match=r"^--layout 2: "):
        layouts_from_options([I2H, "cell=x"], [])


def test_inline_text_round_trips() -> None:
    for declaration in [
        *BUILTIN_LAYOUTS.values(),
        one(wild_models.KERAS_GRU_LAYOUT),
        one(wild_models.PER_GATE_LAYOUT),
        one(f"cell=rnn {I2H}"),
    ]:
        again = one(inline_text(declaration))
        assert again.same_layout(declaration), inline_text(declaration)


def test_same_layout_compares_every_setting() -> None:
    base = one(I2H)
    assert base.same_layout(one(I2H, "--layout 9"))
    for other in [f"cell=gru {I2H}", f"gates=f,i,g,o {I2H}", f"title=X {I2H}", f"transposed=weight_ih {I2H}",
                  I2H.replace("i2h", "x2h"), f"{I2H} bias_ih=(.*)\\.b"]:
        assert not base.same_layout(one(other)), other


# ---------------------------------------------------------------------------------------------------------------
# matching names


def test_match_pairs_tensors_by_their_groups_in_name_order() -> None:
    _, state = wild_models.i2h_lstm()
    names = ["head.weight", *reversed(list(state))]  # layer 1 appears first
    [declaration] = parse_layout(wild_models.I2H_LAYOUT, "--layout 1")
    cells = match_declarations(names, [declaration])
    assert [cell.key for cell in cells] == [("layers.1",), ("layers.0",)]
    assert cells[1] == DeclaredCell(
        declaration,
        ("layers.0",),
        {
            "weight_ih": (("layers.0.i2h.weight", None),),
            "weight_hh": (("layers.0.h2h.weight", None),),
            "bias_ih": (("layers.0.i2h.bias", None),),
            "bias_hh": (("layers.0.h2h.bias", None),),
        },
    )
    assert cells[1].names == ("layers.0.i2h.weight", "layers.0.h2h.weight", "layers.0.i2h.bias", "layers.0.h2h.bias")


def test_several_groups_form_the_key() -> None:
    declaration = one(r"weight_ih=(.*)\.l(\d+)\.wi weight_hh=(.*)\.l(\d+)\.wh")
    cells = match_declarations(["a.l0.wi", "a.l0.wh", "a.l1.wi", "a.l1.wh", "b.l0.wi"], [declaration])
    assert [cell.key for cell in cells] == [("a", "0"), ("a", "1")]


def test_per_gate_tensors_are_listed_in_declared_order_with_canonical_gates() -> None:
    _, state = wild_models.per_gate_lstm()
    [cell] = match_declarations(list(state), [one(wild_models.PER_GATE_LAYOUT)])
    assert cell.key == ("cell",)
    assert cell.pieces["weight_ih"] == tuple((f"cell.input_{g}.weight", c) for g, c in zip("ifco", "ifgo", strict=True))
    assert cell.pieces["bias_ih"] == tuple((f"cell.input_{g}.bias", c) for g, c in zip("ifco", "ifgo", strict=True))
    assert [gate for _, gate in cell.pieces["weight_hh"]] == ["i", "f", "g", "o"]
    assert "bias_hh" not in cell.pieces


def test_per_gate_stray_gate_text_is_not_part_of_the_cell() -> None:
    declaration = one(r"gates=i,f,g,o weight_ih=(.*)\.x_(?P<gate>\w+) weight_hh=(.*)\.h_(?P<gate>\w+)")
    names = [f"m.x_{g}" for g in "ifgo"] + [f"m.h_{g}" for g in "ifgo"] + ["m.x_proj", "m.h_norm"]
    [cell] = match_declarations(names, [declaration])
    assert "m.x_proj" not in cell.names and "m.h_norm" not in cell.names
    assert len(cell.names) == 8


def test_per_gate_missing_gate_is_an_error_listing_what_was_seen() -> None:
    declaration = one(r"gates=i,f,g,o weight_ih=(.*)\.x_(?P<gate>\w+) weight_hh=(.*)\.h")
    names = ["m.x_i", "m.x_f", "m.x_cell", "m.x_o", "m.h"]
    with pytest.raises(LayoutDeclarationError) as caught:
        match_declarations(names, [declaration])
    message = str(caught.value)
    assert message.startswith("--layout 1: weight_ih is declared one tensor per gate")
    assert "gate g has no tensor" in message and "other gate texts seen: cell" in message


def test_one_kind_matching_two_tensors_for_one_key_is_an_error() -> None:
    declaration = one(r"weight_ih=.*\.(l\d)\.wi weight_hh=.*\.(l\d)\.wh")
    with pytest.raises(LayoutDeclarationError) as caught:
        match_declarations(["a.l0.wi", "b.l0.wi", "a.l0.wh"], [declaration])
    assert "weight_ih=.*\\.(l\\d)\\.wi matches a.l0.wi, b.l0.wi for the same groups ('l0')" in str(caught.value)
    per_gate = one(r"gates=i,f,g,o weight_ih=.*\.x_(?P<gate>\w) weight_hh=.*\.h")
    with pytest.raises(LayoutDeclarationError, match=r"matches a\.x_i, b\.x_i for gate i and the same groups \(\)"):
        match_declarations(["a.x_i", "b.x_i", "a.x_f", "a.x_g", "a.x_o", "a.h"], [per_gate])


def test_a_declaration_that_matches_nothing_names_itself_and_its_patterns() -> None:
    declaration = one(r"weight_ih=x2g\.weight weight_hh=p2g\.weight", "--layout 4")
    with pytest.raises(LayoutDeclarationError) as caught:
        match_declarations(["dec.x2g.weight", "dec.p2g.weight"], [declaration])
    message = str(caught.value)
    assert message.startswith("--layout 4: the layout matches no recurrent cell")
    assert r"weight_ih=x2g\.weight weight_hh=p2g\.weight" in message
    assert "patterns must match whole names" in message and "dec.x2g.weight" in message


def test_a_declaration_with_unpaired_tensors_says_so() -> None:
    declaration = one(r"weight_ih=(.*)\.kernel weight_hh=(.*)\.recurrent_kernel")
    with pytest.raises(LayoutDeclarationError) as caught:
        match_declarations(["dense.kernel", "rnn.cell.recurrent_kernel"], [declaration])
    assert "no groups had both a weight_ih and a weight_hh tensor" in str(caught.value)
    assert "weight_ih 1, weight_hh 1" in str(caught.value)


def test_partial_groups_are_ignored_beside_real_cells() -> None:
    _, state = wild_models.keras_ported()
    declaration = one(wild_models.KERAS_LSTM_LAYOUT)
    [cell] = match_declarations(["dense.kernel", "dense.bias", *state], [declaration])
    assert cell.key == ("encoder.lstm_cell",)
    assert cell.declaration.transposed == frozenset({"weight_ih", "weight_hh"})


def test_keras_gru_bias_may_serve_as_both_biases() -> None:
    _, state = wild_models.keras_ported()
    [cell] = match_declarations(list(state), [one(wild_models.KERAS_GRU_LAYOUT)])
    assert cell.pieces["bias_ih"] == cell.pieces["bias_hh"] == (("decoder.gru_cell.bias", None),)
    assert cell.declaration.gates == ("z", "r", "n")
    assert cell.names.count("decoder.gru_cell.bias") == 1


def test_a_tensor_claimed_by_two_kinds_is_an_error() -> None:
    declaration = one(r"weight_ih=(.*)\.w weight_hh=(.*)\.w")
    with pytest.raises(LayoutDeclarationError, match=r"a\.w is matched both as weight_ih and as weight_hh"):
        match_declarations(["a.w"], [declaration])
    across_keys = one(r"weight_ih=(.*)\.weight weight_hh=(.*)\.h2h\.weight")
    with pytest.raises(LayoutDeclarationError, match=r"a\.h2h\.weight is matched twice: as weight_hh of --layout 1"):
        match_declarations(["a.weight", "a.h2h.weight", "a.h2h.h2h.weight"], [across_keys])


def test_a_tensor_claimed_by_two_declarations_is_an_error() -> None:
    first = one(I2H, "--layout 1")
    second = one(r"cell=gru weight_ih=(.*)\.i2h\.weight weight_hh=(.*)\.h2h\.weight", "--layout 2")
    with pytest.raises(LayoutDeclarationError) as caught:
        match_declarations(["m.i2h.weight", "m.h2h.weight"], [first, second])
    assert "m.i2h.weight is matched twice" in str(caught.value)
    assert "--layout 1" in str(caught.value) and "--layout 2" in str(caught.value)


def test_declarations_keep_their_own_cells() -> None:
    _, state = wild_models.keras_ported()
    cells = match_declarations(list(state), [one(wild_models.KERAS_GRU_LAYOUT), one(wild_models.KERAS_LSTM_LAYOUT)])
    assert [(cell.declaration.cell, cell.key) for cell in cells] == [
        ("lstm", ("encoder.lstm_cell",)),
        ("gru", ("decoder.gru_cell",)),
    ]


def test_optional_groups_that_did_not_take_part_read_as_empty() -> None:
    declaration = one(r"weight_ih=(?:(.*)\.)?wi weight_hh=(?:(.*)\.)?wh")
    assert [cell.key for cell in match_declarations(["wi", "wh", "a.wi", "a.wh"], [declaration])] == [("",), ("a",)]


def test_declared_is_torch_free() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from rnninit_cli.layouts.declared import layouts_from_options, match_declarations\n"
        "cells = match_declarations(['p.lstm_layers.0.x2g.weight', 'p.lstm_layers.0.p2g.weight'],"
        " layouts_from_options(['torchaudio-rnnt'], []))\n"
        "assert len(cells) == 1 and 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
