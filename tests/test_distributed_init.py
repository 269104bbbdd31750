"""`init_` on sharded modules (FSDP2 `fully_shard`, DTensors placed with Shard(0) / Replicate()) and on meta-device
modules: 2 processes on CPU with the gloo backend, each sharded tensor assembled with `full_tensor()` and compared bit
for bit with single-process `init_` on an unsharded copy.

The two ranks are started once for the module (this file run as a script, `python test_distributed_init.py RANK
...`), run every sharding case, and rank 0 saves the assembled tensors; each test checks one case. Both processes run
under a deadline, so a hung gloo rendezvous fails the tests instead of hanging CI.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from ranks import wait_for_ranks
from torch import nn

import rnninit_cli
from rnninit_cli.errors import MetaDeviceError, PlacementError, RnnInitError

WORLD = 2
SEED = 20261202
SCHEMES = ("keras-gate", "keras")  # per=gate (orthogonal and Glorot per gate block), per=matrix (whole weights)
DEADLINE_S = 120  # both ranks, all cases: about 8 s on an idle 2-core machine
COLLECTIVE_TIMEOUT_S = 30
MEMORY_LIMIT = 4 << 30  # address space per rank: a runaway draw fails instead of swapping (1 GiB is enough)
REPO = Path(__file__).resolve().parents[1]


def make_model() -> nn.Module:
    """Odd sizes on purpose: the GRU's 15 rows split 8/7, so the shard boundary falls inside its z block; weight_hr
    (3 rows) splits 2/1; the RNNCell's one row leaves rank 1 with an empty shard."""
    torch.manual_seed(0)
    model = nn.Module()
    model.lstm = nn.LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3)
    model.gru = nn.GRU(6, 5)
    model.cell = nn.RNNCell(3, 1)
    return model


def reference(scheme: str) -> dict[str, torch.Tensor]:
    model = make_model()
    rnninit_cli.init_(model, scheme, seed=SEED)
    return {name: value.detach().clone() for name, value in model.named_parameters()}


# --- the ranks -----------------------------------------------------------------------------------------------------

def _gather(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.full_tensor().detach().clone() for name, value in model.named_parameters()}


def _count_draws() -> list[int]:
    """Count the scopes this rank draws (planning._draw_scope is looked up at each call)."""
    from rnninit_cli.init import planning

    counter = [0]
    original = planning._draw_scope

    def counted(*args: Any) -> torch.Tensor:
        counter[0] += 1
        return original(*args)

    planning._draw_scope = counted
    return counter


def _distribute(model: nn.Module, mesh: Any, placements: list[Any]) -> nn.Module:
    from torch.distributed.tensor import distribute_module, distribute_tensor

    def partition(_: str, module: nn.Module, device_mesh: Any) -> None:
        for name, parameter in list(module.named_parameters(recurse=False)):
            module.register_parameter(name, nn.Parameter(distribute_tensor(parameter, device_mesh, placements)))

    return distribute_module(model, mesh, partition)


def _run_case(case: str, mesh: Any, draws: list[int]) -> dict[str, Any]:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    result: dict[str, Any] = {}
    if case in ("fsdp2", "fsdp2_meta"):
        if case == "fsdp2_meta":
            with torch.device("meta"):
                model = make_model()
        else:
            model = make_model()
        for part in (model.lstm, model.gru, model.cell, model):
            fully_shard(part, mesh=mesh)
        if case == "fsdp2_meta":
            try:
                rnninit_cli.init_(model, "keras", seed=SEED)
            except MetaDeviceError as error:
                result["meta_error"] = str(error)
            model.to_empty(device="cpu")
    elif case in ("shard0", "replicate"):
        model = _distribute(make_model(), mesh, [Shard(0)] if case == "shard0" else [Replicate()])
    elif case == "refused":
        for placement in ("shard1", "partial"):
            tensor = torch.randn(28, 7, generator=torch.Generator().manual_seed(0))  # an LSTM with hidden size 7
            value = (distribute_tensor(tensor, mesh, [Shard(1)]) if placement == "shard1"
                     else DTensor.from_local(tensor.clone(), mesh, [Partial()]))
            before = value.to_local().clone()
            try:
                rnninit_cli.init_({"weight_ih": value.to_local().new_zeros(28, 4), "weight_hh": value}, "keras",
                                  seed=SEED)
            except RnnInitError as error:
                result[placement] = (type(error).__name__, str(error))
            result[f"{placement}_untouched"] = torch.equal(value.to_local(), before)
        sharded = _distribute(make_model(), mesh, [Shard(0)])
        before = {name: value.to_local().clone() for name, value in sharded.named_parameters()}
        try:  # no seed: each rank would draw its own, and the shards would not fit together
            rnninit_cli.init_(sharded, "keras")
        except RnnInitError as error:
            result["unseeded"] = (type(error).__name__, str(error))
        result["unseeded_untouched"] = all(torch.equal(value.to_local(), before[name])
                                           for name, value in sharded.named_parameters())
        return result
    for scheme in SCHEMES:
        before = draws[0]
        rnninit_cli.init_(model, scheme, seed=SEED)
        result[f"draws_{scheme}"] = draws[0] - before
        result[scheme] = _gather(model)
        if case == "fsdp2":  # what the model computes with: FSDP2's all-gather of its sharded storage
            parts = (model.lstm, model.gru, model.cell)
            for part in parts:
                part.unshard()
            result[f"unsharded_{scheme}"] = {name: value.detach().clone() for name, value in model.named_parameters()}
            for part in parts:
                part.reshard()
    return result


def run_rank(rank: int, store: str, out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    # A rank that fails exits at once; the collective timeout then ends its partner instead of a hang.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    mesh = init_device_mesh("cpu", (WORLD,))
    draws = _count_draws()
    results = {case: _run_case(case, mesh, draws) for case in ("fsdp2", "fsdp2_meta", "shard0", "replicate", "refused")}
    torch.save(results, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


# --- the tests -----------------------------------------------------------------------------------------------------

def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([sys.executable, __file__, str(rank), str(folder / "store"), str(folder)],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  preexec_fn=_limit_memory)
                 for rank in range(WORLD)]
    wait_for_ranks(processes, DEADLINE_S)
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(WORLD)]


def _case(ranks: list[dict[str, Any]], case: str) -> list[dict[str, Any]]:
    return [rank[case] for rank in ranks]


def _assert_same_as_one_process(results: list[dict[str, Any]]) -> None:
    for scheme in SCHEMES:
        expected = reference(scheme)
        for result in results:  # every rank assembles the same full tensors
            assert result[scheme].keys() == expected.keys()
            different = [name for name, value in expected.items() if not torch.equal(result[scheme][name], value)]
            assert not different, f"{scheme}: these differ from single-process init_: {different}"


def _single_process_draws(scheme: str) -> int:
    from rnninit_cli.init import planning

    original = planning._draw_scope
    try:
        counter = _count_draws()
        rnninit_cli.init_(make_model(), scheme, seed=SEED)
    finally:
        planning._draw_scope = original
    return counter[0]


def _expected_draws(scheme: str, rank: int) -> int:
    """The scopes a rank holding torch.chunk's share of each parameter's rows needs: the gate blocks (or, per=matrix,
    whole parameters) that overlap its rows."""
    model = make_model()
    the_plan = rnninit_cli.plan(dict(model.named_parameters()), scheme)
    scopes = set()
    for entry in the_plan.writes:
        rows = torch.arange(model.get_parameter(entry.name).shape[0]).chunk(WORLD)
        mine = set(rows[rank].tolist()) if rank < len(rows) else set()
        if mine & set(range(entry.start, entry.stop)):
            scopes.add((entry.name, entry.rule) if entry.per == "matrix" else (entry.name, entry.start))
    return len(scopes)


def test_fsdp2_fully_shard(ranks: list[dict[str, Any]]) -> None:
    results = _case(ranks, "fsdp2")
    _assert_same_as_one_process(results)
    _assert_same_as_one_process([{scheme: result[f"unsharded_{scheme}"] for scheme in SCHEMES} for result in results])
    # Each rank drew only the scopes over its rows; together barely more than one process (blocks cut by the shard
    # boundary, and per=matrix parameters split over both ranks, are drawn on both).
    for scheme in SCHEMES:
        per_rank = [result[f"draws_{scheme}"] for result in results]
        assert per_rank == [_expected_draws(scheme, rank) for rank in range(WORLD)], scheme
    assert sum(result["draws_keras-gate"] for result in results) < 1.2 * _single_process_draws("keras-gate")


def test_fsdp2_on_meta_device_then_to_empty(ranks: list[dict[str, Any]]) -> None:
    results = _case(ranks, "fsdp2_meta")
    for result in results:
        assert "to_empty(device=" in result["meta_error"] and "\n" not in result["meta_error"]
    _assert_same_as_one_process(results)


def test_distribute_tensor_shard0(ranks: list[dict[str, Any]]) -> None:
    results = _case(ranks, "shard0")
    _assert_same_as_one_process(results)


def test_distribute_tensor_replicate(ranks: list[dict[str, Any]]) -> None:
    results = _case(ranks, "replicate")
    _assert_same_as_one_process(results)
    whole = _single_process_draws("keras-gate")
    assert [result["draws_keras-gate"] for result in results] == [whole] * WORLD  # every rank holds every row


def test_placements_that_cannot_be_written_exactly_are_refused(ranks: list[dict[str, Any]]) -> None:
    for result in _case(ranks, "refused"):
        for placement in ("shard1", "partial"):
            kind, message = result[placement]
            assert kind == PlacementError.__name__, message
            assert "Shard(0)" in message and "init_ before sharding" in message and "\n" not in message
            assert result[f"{placement}_untouched"]
        kind, message = result["unseeded"]
        assert kind == "UsageError" and "give init_ a seed" in message and result["unseeded_untouched"]


def test_meta_device_module_needs_to_empty() -> None:
    with torch.device("meta"):
        model = make_model()
    with pytest.raises(MetaDeviceError, match=r"to_empty\(device=\.\.\.\) first") as raised:
        rnninit_cli.init_(model, "keras", seed=SEED)
    assert "\n" not in str(raised.value) and isinstance(raised.value, RnnInitError)
    model.to_empty(device="cpu")
    rnninit_cli.init_(model, "keras", seed=SEED)
    expected = reference("keras")
    assert all(torch.equal(value, expected[name]) for name, value in model.named_parameters())


if __name__ == "__main__":
    run_rank(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
