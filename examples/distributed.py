"""rnninit inside a distributed job: an FSDP2-sharded model initialized on 2 CPU processes (gloo), then saved as a
torch.distributed.checkpoint folder for the CLI.

    .venv/bin/python examples/distributed.py examples/out/dcp

Every rank calls `init_` with the same seed and writes only its own shard; rank 0 then checks that the assembled
tensors are bit for bit what `init_` writes into an unsharded copy, and the model is saved with `dcp.save`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.fsdp import fully_shard

import rnninit_cli

SEED = 0
WORLD = 2


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.LSTM(16, 24, num_layers=2, bidirectional=True)
        self.decoder = nn.GRU(48, 20)
        self.head = nn.Linear(20, 5)


def _rank(rank: int, store: str, output: str) -> None:
    dist.init_process_group("gloo", store=dist.FileStore(store, WORLD), rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(1)
        model = Tagger()
        for module in (model.encoder, model.decoder, model):
            fully_shard(module)
        plan = rnninit_cli.init_(model, "keras", seed=SEED)  # each rank: only the blocks its rows need
        full = {name: value.full_tensor() for name, value in model.state_dict().items()}
        if rank == 0:
            torch.manual_seed(1)
            reference = Tagger()
            rnninit_cli.init_(reference, "keras", seed=SEED)
            same = all(torch.equal(full[name], value) for name, value in reference.state_dict().items())
            print(f"{len(plan.layers)} recurrent layers sharded over {WORLD} ranks, scheme keras, seed {plan.seed}: "
                  f"the assembled tensors equal a single-process init_: {same}")
        dcp.save(model.state_dict(), checkpoint_id=output)
        dist.barrier()  # neither rank closes its gloo connections while the other still reads from them
    finally:
        dist.destroy_process_group()


def main(output: str) -> None:
    target = Path(output)
    if target.exists():
        shutil.rmtree(target)  # a generated example: start from scratch on every run
    with tempfile.TemporaryDirectory() as work:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        mp.start_processes(_rank, args=(str(Path(work) / "store"), str(target)), nprocs=WORLD, start_method="spawn")
    print(f"saved {target} ({', '.join(sorted(path.name for path in target.iterdir()))})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "examples/out/dcp")
