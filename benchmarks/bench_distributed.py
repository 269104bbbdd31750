"""What `init_` costs on an FSDP2-sharded model: per=gate (keras-gate) against per=matrix (keras), 2 ranks.

A rank draws only the scopes that overlap its rows: for per=gate rules the gate blocks over its rows (about 1/ranks
of the work), for per=matrix rules (keras's weight_ih and weight_hh) the whole parameter, on every rank that holds
part of it. This starts 2 ranks on CPU (gloo, a FileStore, one torch thread each), shards a 2-layer bidirectional
LSTM with `fully_shard`, and times `init_` on both ranks (the slower rank, median of --repeat rounds); the same model
unsharded in one process at one thread is the reference. Per rank it also counts what was drawn: elements in all,
and the largest single draw (the memory a rank needs on top of its shard). Run by hand:

    .venv/bin/python benchmarks/bench_distributed.py [--hidden 1024] [--layers 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn

import rnninit_cli
from rnninit_cli.init import planning

WORLD = 2
SEED = 0
SCHEMES = {"keras-gate": "per=gate", "keras": "per=matrix"}
MIB = 2**20


def make_model(hidden: int, layers: int) -> nn.Module:
    model = nn.Module()
    model.lstm = nn.LSTM(hidden, hidden, num_layers=layers, bidirectional=True)
    return model


def measure(model: nn.Module, scheme: str, repeat: int, barrier: Any = None) -> dict[str, float]:
    """Median wall and CPU seconds of `init_` (CPU time is what the rank's own work costs, whatever else runs on the
    machine), and the bytes drawn (all, and the largest draw) in the last round."""
    drawn: list[int] = []
    original = planning._draw_scope

    def counted(*args: Any) -> torch.Tensor:
        values = original(*args)
        drawn.append(values.numel() * values.element_size())
        return values

    planning._draw_scope = counted
    times, cpu_times = [], []
    try:
        for _ in range(repeat):
            drawn.clear()
            if barrier:
                barrier()
            start, cpu_start = time.perf_counter(), time.process_time()
            rnninit_cli.init_(model, scheme, seed=SEED)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    finally:
        planning._draw_scope = original
    return {"seconds": statistics.median(times), "cpu": statistics.median(cpu_times),
            "drawn_mib": sum(drawn) / MIB, "largest_mib": max(drawn) / MIB}


def rank_main(rank: int, store: str, hidden: int, layers: int, repeat: int, results: Any) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=600))
    mesh = init_device_mesh("cpu", (WORLD,))
    model = make_model(hidden, layers)
    fully_shard(model.lstm, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for scheme in SCHEMES:
        results[(rank, scheme)] = measure(model, scheme, repeat, dist.barrier)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()

    torch.set_num_threads(1)
    single = {scheme: measure(make_model(options.hidden, options.layers), scheme, options.repeat)
              for scheme in SCHEMES}
    with tempfile.TemporaryDirectory() as folder, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(rank_main, args=(str(Path(folder) / "store"), options.hidden, options.layers, options.repeat,
                                  results), nprocs=WORLD)
        ranks = dict(results)

    parameters = sum(p.numel() for p in make_model(options.hidden, options.layers).parameters())
    print(f"LSTM hidden {options.hidden}, {options.layers} layers, bidirectional: {parameters * 4 / MIB:.0f} MiB "
          f"of float32 parameters; FSDP2 on {WORLD} ranks (gloo, CPU, 1 thread each) vs 1 process (1 thread)")
    print(f"{'scheme':<11} {'rules':<10} | {'wall: 1 process':>15} {'2 ranks':>8} | {'CPU: 1 process':>14} "
          f"{'per rank':>15} | {'drawn MiB: 1 process':>20} {'per rank':>13} | {'largest draw MiB/rank':>21}")
    for scheme, per in SCHEMES.items():
        on_ranks = [ranks[(rank, scheme)] for rank in range(WORLD)]
        slowest = max(result["seconds"] for result in on_ranks)
        cpu = " / ".join(f"{result['cpu']:.2f}s" for result in on_ranks)
        drawn = " / ".join(f"{result['drawn_mib']:.1f}" for result in on_ranks)
        largest = " / ".join(f"{result['largest_mib']:.1f}" for result in on_ranks)
        print(f"{scheme:<11} {per:<10} | {single[scheme]['seconds']:>14.2f}s {slowest:>7.2f}s | "
              f"{single[scheme]['cpu']:>13.2f}s {cpu:>15} | {single[scheme]['drawn_mib']:>20.1f} {drawn:>13} | "
              f"{largest:>21}")


if __name__ == "__main__":
    sys.exit(main())
