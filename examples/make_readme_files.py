"""(Re)create examples/out/ with the checkpoints README.md's commands read.

    python examples/make_readme_files.py

- model.pt: examples/make_checkpoint.py's tagger (embedding, 2-layer bidirectional LSTM, GRU, linear head),
  as PyTorch initialized it.
- double.pt: a 2-layer LSTM initialized with the Keras scheme, where the forget bias was also written into
  bias_hh (`--rule bias_hh.f=ones`): the effective forget bias is 2, the mistake `inspect` warns about.
- per-gate.pt: an LSTM and a GRU initialized per gate (`keras-gate`), which `verify --scheme keras` rejects.

examples/out/ is emptied first, so that the README's commands can be followed again from the start
(they write their outputs there too, and refuse to replace an existing file without --force).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch
from make_checkpoint import Tagger

import rnninit_cli

OUT = Path(__file__).resolve().parent / "out"


def main(out: Path = OUT) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    torch.manual_seed(0)
    torch.save(Tagger().state_dict(), out / "model.pt")

    double = torch.nn.ModuleDict({"lstm": torch.nn.LSTM(32, 32, num_layers=2)})
    rnninit_cli.init_(double, "keras", seed=0, rules=["bias_hh.f=ones"])
    torch.save(double.state_dict(), out / "double.pt")

    per_gate = torch.nn.ModuleDict({"lstm": torch.nn.LSTM(32, 32), "gru": torch.nn.GRU(32, 32)})
    rnninit_cli.init_(per_gate, "keras-gate", seed=0)
    torch.save(per_gate.state_dict(), out / "per-gate.pt")

    print(f"wrote {', '.join(sorted(path.name for path in out.iterdir()))} to {os.path.relpath(out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
