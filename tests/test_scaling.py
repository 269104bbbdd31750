"""Many layers: every per-file step must stay O(n log n) in the number of tensors (issue 9, item 11).

No test here times anything. The quadratic steps of the past (the tied-weights check comparing every pair of
tensors, a scan of the whole plan per layer) are caught by counting comparisons of parameter names, which is
exact and does not depend on the machine's load; the tied-weights check is also compared with the brute-force
definition on random spans. `benchmarks/bench_many_layers.py` measures the times.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from rnninit_cli.documents import apply_document, capture_stats
from rnninit_cli.init.planning import plan
from rnninit_cli.stale import SpanIndex, shared_storage_warnings

MODULE = [sys.executable, "-m", "rnninit_cli"]


class CountingName(str):
    """A parameter name that counts how often it is compared (== or !=) or hashed (a set or dict lookup): a
    lookup costs one hash, a scan of every name costs one comparison or hash per name."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountingName.comparisons += 1
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        CountingName.comparisons += 1
        return str.__ne__(self, other)

    def __hash__(self) -> int:
        CountingName.comparisons += 1
        return str.__hash__(self)


class Spans:
    """A source whose storage_spans() are given (what shared_storage_warnings reads)."""

    def __init__(self, spans: dict[str, tuple[Any, int, int]]) -> None:
        self.spans = spans

    def storage_spans(self) -> dict[str, tuple[Any, int, int]]:
        return self.spans


def brute_force_shared(spans: dict[str, tuple[Any, int, int]], written: list[str]) -> list[str]:
    """The definition: every other span of the same storage whose bytes [a, b) meet [start, stop)."""
    messages = []
    for name in written:
        storage, start, stop = spans[name]
        others = [other for other, (s, a, b) in spans.items()
                  if other != name and s == storage and a < stop and start < b]
        if others:
            messages.append(f"{name} shares its storage with {', '.join(others)} (tied weights): "
                            "rewriting it changed those too")
    return messages


def random_spans(rng: random.Random) -> dict[str, tuple[Any, int, int]]:
    spans: dict[str, tuple[Any, int, int]] = {}
    storages = rng.choice([1, 2, 5])
    for index in range(rng.randrange(1, 60)):
        start = rng.randrange(0, 40)
        length = rng.choice([0, 0, 1, 4, rng.randrange(0, 40)])
        spans[f"t{rng.randrange(10**6)}.{index}"] = (rng.choice(["a", "b", 7, 8, ("s", 1)][:storages]),
                                                     start, start + length)
    return spans


@pytest.mark.parametrize("seed", range(300))
def test_span_index_equals_brute_force_on_random_spans(seed: int) -> None:
    """Every span's overlapping spans, from the index, are the definition's, in the same (the file's) order."""
    rng = random.Random(seed)
    spans = random_spans(rng)
    index = SpanIndex(spans)
    for name, (storage, start, stop) in spans.items():
        expected = [other for other, (s, a, b) in spans.items() if s == storage and a < stop and start < b]
        assert index.overlapping(storage, start, stop) == expected, name


@pytest.mark.parametrize("seed", range(100))
def test_shared_warnings_equal_brute_force_when_rewritten_tensors_do_not_overlap(seed: int) -> None:
    rng = random.Random(seed)
    spans = random_spans(rng)
    written: list[str] = []
    for name in rng.sample(list(spans), len(spans)):  # rewritten tensors overlapping each other are refused
        storage, start, stop = spans[name]
        if not any(spans[other][0] == storage and spans[other][1] < stop and start < spans[other][2]
                   for other in written):
            written.append(name)
    assert shared_storage_warnings(Spans(spans), written) == brute_force_shared(spans, written)


def test_shared_warnings_flat_buffer_and_ties() -> None:
    """All parameters views of one flat buffer (FSDP's flat_param), the buffer itself saved too, one tie."""
    spans: dict[str, tuple[Any, int, int]] = {"flat": ("s", 0, 4000)}
    for index in range(100):
        spans[f"p{index}"] = ("s", 40 * index, 40 * index + 40)
    spans["tied"] = ("s", 80, 120)
    spans["empty"] = ("s", 100, 100)
    spans["elsewhere"] = ("t", 0, 4000)
    written = [f"p{index}" for index in range(100)]
    found = shared_storage_warnings(Spans(spans), written)
    assert found == brute_force_shared(spans, written)
    assert found[2] == ("p2 shares its storage with flat, tied, empty (tied weights): rewriting it changed "
                        "those too")


def lstm_names(layers: int) -> dict[str, torch.Tensor]:
    """The state dict of an nn.LSTM(2, 2, num_layers=layers), as meta tensors named by CountingName."""
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(layers):
        for kind, shape in (("weight_ih", (8, 2)), ("weight_hh", (8, 2)), ("bias_ih", (8,)), ("bias_hh", (8,))):
            tensors[CountingName(f"rnn.{kind}_l{layer}")] = torch.empty(shape, device="meta")
    return tensors


def name_comparisons(layers: int) -> int:
    """Name comparisons and hashes of the per-file steps whose cost grows with the layer count: planning, the per-layer
    plan listing, the apply JSON document and the tied-weights check."""
    tensors = lstm_names(layers)
    spans = {name: (name, 0, tensor.numel() * 4) for name, tensor in tensors.items()}  # nothing shared
    CountingName.comparisons = 0
    the_plan = plan(tensors, "keras")
    listed = [the_plan.entries_for(layer) for layer in the_plan.layers]
    real = {name: torch.zeros(tensor.shape) for name, tensor in tensors.items()}
    apply_document(the_plan, real, capture_stats(the_plan, real), source="x", fmt="pt", output=None)
    written = list(dict.fromkeys(entry.name for entry in the_plan.writes))
    assert shared_storage_warnings(Spans(spans), written) == []
    assert [len(entries) for entries in listed] == [16] * layers
    return CountingName.comparisons


def test_per_layer_steps_compare_names_a_linear_number_of_times() -> None:
    """Quadrupling the layers may quadruple the comparisons, not multiply them by 16."""
    small, large = name_comparisons(50), name_comparisons(200)
    assert large <= 5 * max(small, 50), (small, large)
    assert large <= 100 * 200 * 4, large  # a bounded number per tensor (about 48 today)


def test_entries_for_keeps_plan_order() -> None:
    the_plan = plan(torch.nn.LSTM(3, 2, num_layers=3, bidirectional=True).state_dict(), "keras",
                    rules=["bias_hh.f=ones"])
    for layer in the_plan.layers:
        names = set(layer.params.values())
        assert the_plan.entries_for(layer) == [entry for entry in the_plan.entries if entry.name in names]
    assert sum(len(the_plan.entries_for(layer)) for layer in the_plan.layers) == len(the_plan.entries)


def run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MODULE, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def many_layers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("many")
    state = {key: value.detach().clone() for key, value in torch.nn.LSTM(2, 2, num_layers=2000).state_dict().items()}
    save_file(state, folder / "many.safetensors")
    torch.save(state, folder / "many.pt")
    yield folder


@pytest.mark.parametrize("suffix", ["safetensors", pytest.param("pt", marks=pytest.mark.slow)])
def test_2000_layers_apply_and_inspect_complete(many_layers: Path, suffix: str) -> None:
    """apply (quiet: no per-layer tables) and inspect (diagnosing one layer) of an 8,000-tensor checkpoint."""
    source, output = many_layers / f"many.{suffix}", many_layers / f"out.{suffix}"
    applied = run(["apply", str(source), "--scheme", "keras", "--seed", "4", "--quiet", "--force", "-o", str(output)])
    assert applied.returncode == 0, applied.stderr
    inspected = run(["inspect", str(output), "--only", "_l1999$", "--json"])
    assert inspected.returncode == 0, inspected.stderr
    document = json.loads(inspected.stdout)
    assert document["metadata"]["rnninit.seed"] == "4"
    [layer] = document["layers"]
    assert layer["layer"] == 1999
    assert "keras" in layer["scheme"]["matches"] + layer["scheme"]["undetermined"]  # 2x2 blocks: too small
    assert not document["warnings"]


@pytest.mark.slow
def test_2000_layers_every_command_with_human_output(many_layers: Path) -> None:
    source, output = many_layers / "many.pt", many_layers / "slow-out.safetensors"
    applied = run(["apply", str(source), "--scheme", "keras", "--seed", "4", "--force", "-o", str(output)])
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("LSTM layer") == 2000
    inspected = run(["inspect", str(output)], timeout=1800)  # about 0.15 s per layer on 2 cores
    assert inspected.returncode == 0, inspected.stderr
    assert "2000 recurrent layer(s)" in inspected.stdout
    verified = run(["verify", str(output), "--scheme", "keras"])
    assert verified.returncode == 0, verified.stderr
    differ = run(["diff", str(source), str(output)])
    assert differ.returncode == 1, differ.stderr
