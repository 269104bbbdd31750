"""plain.plain_text writes exactly what Rich prints without colour, for every report table and for random tables;
where it cannot, it says so (None) and Rich draws."""

from __future__ import annotations

import io
import random

import pytest
import torch
from rich import box
from rich.console import Console, Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from rnninit_cli import init_, plan
from rnninit_cli.diagnostics import diagnose, diff, verify
from rnninit_cli.init.schemes import SCHEMES
from rnninit_cli.layouts.discovery import find_layers
from rnninit_cli.plain import plain_text
from rnninit_cli.report import apply_table, diff_table, inspect_table, schemes_table, verify_table

WIDTH = 100_000  # the CLI's width off a terminal


def pipe_console(**options: object) -> Console:
    return Console(file=io.StringIO(), width=WIDTH, highlight=False, emoji=False, **options)  # type: ignore[arg-type]


def rich_prints(renderable: object, console: Console) -> str:
    console.file = io.StringIO()
    console.print(renderable)
    return console.file.getvalue()


def assert_same(renderable: object, console: Console | None = None) -> None:
    console = console or pipe_console()
    fast = plain_text(renderable, console)
    assert fast is not None, "a report table fell back to Rich"
    assert fast == rich_prints(renderable, console)


def models() -> dict[str, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    made = {
        "lstm": torch.nn.LSTM(6, 5, num_layers=2, bidirectional=True),
        "proj": torch.nn.LSTM(4, 6, proj_size=3),
        "gru": torch.nn.GRU(3, 4, bias=False),
        "rnn": torch.nn.RNN(3, 3, nonlinearity="relu"),
        "cells": torch.nn.ModuleDict({"a": torch.nn.LSTMCell(8, 16), "b[odd]\tname": torch.nn.GRUCell(2, 2)}),
    }
    states = {key: {k: v.detach().clone() for k, v in module.state_dict().items()} for key, module in made.items()}
    states["nan"] = {k: v.clone() for k, v in states["gru"].items()}
    states["nan"]["weight_hh_l0"][0, 0] = float("nan")
    states["nan"]["weight_ih_l0"][1, 1] = float("inf")
    return states


@pytest.mark.parametrize("name", sorted(models()))
@pytest.mark.parametrize("wide", [False, True])
def test_inspect_tables_are_written_as_rich_writes_them(name: str, wide: bool) -> None:
    tensors = models()[name]
    layers = find_layers(tensors)
    diagnosis = diagnose(tensors, layers=layers, geometry=wide)
    by_layer = {d.layer: d for d in diagnosis.layers}
    for layer in layers:
        assert_same(inspect_table(layer, tensors, list(layer.params), by_layer[layer], wide=wide))
        assert_same(inspect_table(layer, tensors, list(layer.params), None, wide=wide))


@pytest.mark.parametrize("name", sorted(models()))
def test_apply_verify_and_diff_tables_are_written_as_rich_writes_them(name: str) -> None:
    before = models()[name]
    after = {k: v.clone() for k, v in before.items()}
    layers = find_layers(before)
    planned = plan(after, "keras", rules=["bias_hh=normal(std=0.5)"] if "bias_hh_l0" in after else ())
    stats = {(e.name, e.start): {"mean": 0.25, "std": 1.5} for e in planned.entries}
    init_(after, "keras", seed=0)
    for layer in layers:
        assert_same(apply_table(layer, planned.entries_for(layer), after, stats))
        assert_same(apply_table(layer, planned.entries_for(layer), None, None))
    report = verify(before, "keras")
    assert report.failures or name == "nan"
    assert_same(verify_table(report))
    assert_same(diff_table(diff(before, after)))


def test_the_schemes_table_is_written_as_rich_writes_it() -> None:
    assert_same(schemes_table(SCHEMES.values()))


def random_table(rng: random.Random) -> Table:
    words = ["", "a", "wide word", "σ min–max", "▁▂▃█", "x [bold]y[/]", "two\nlines", "  pad  ", "日本", "-0.001",
             "a\nb\nc", "trailing  "]
    table = Table(show_edge=rng.random() < 0.5, pad_edge=rng.random() < 0.5, show_header=rng.random() < 0.8,
                  show_lines=rng.random() < 0.3, padding=rng.choice([(0, 0), (0, 1), (0, 2, 0, 1)]),
                  box=rng.choice([box.HEAVY_HEAD, box.SIMPLE, box.ROUNDED, box.ASCII, None]))
    columns = rng.randint(1, 5)
    for index in range(columns):
        table.add_column(rng.choice(words) or f"c{index}", justify=rng.choice(["left", "right", "center"]),
                         no_wrap=rng.random() < 0.5)
    for _ in range(rng.randint(0, 6)):
        cells = []
        for _ in range(columns):
            word = rng.choice(words)
            cells.append(Text(word) if rng.random() < 0.3 else word)
        table.add_row(*cells)
    return table


def test_random_tables_are_written_as_rich_writes_them_or_left_to_rich() -> None:
    rng = random.Random(20261206)
    console = pipe_console()
    drawn = 0
    for _ in range(400):
        renderable = Group(Text("heading"), random_table(rng), Padding(Text("indented"), (0, 0, 0, 2), expand=False))
        fast = plain_text(renderable, console)
        if fast is not None:
            drawn += 1
            assert fast == rich_prints(renderable, console)
    assert drawn > 300  # the fast path is taken for most of them


def test_what_it_cannot_draw_is_left_to_rich() -> None:
    console = pipe_console()
    assert plain_text(Table("a", title="a title"), console) is None
    narrow = Console(file=io.StringIO(), width=10, highlight=False)
    table = Table("a" * 30)
    assert plain_text(table, narrow) is None  # Rich would fold it
    coloured = Console(file=io.StringIO(), width=WIDTH, force_terminal=True, color_system="truecolor")
    assert plain_text(Text("x"), coloured) is None
    assert plain_text(object(), console) is None
