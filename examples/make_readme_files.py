"""(Re)create examples/out/ with the checkpoints README.md's commands read.

    python examples/make_readme_files.py

- model.pt: examples/make_checkpoint.py's tagger (embedding, 2-layer bidirectional LSTM, GRU, linear head),
  as PyTorch initialized it.
- double.pt: a 2-layer LSTM initialized with the Keras scheme, where the forget bias was also written into
  bias_hh (`--rule bias_hh.f=ones`): the effective forget bias is 2, the mistake `inspect` warns about.
- per-gate.pt: an LSTM and a GRU initialized per gate (`keras-gate`), which `verify --scheme keras` rejects.
- rnnt-predictor.pt: the recurrent part of an RNN-T predictor written like torchaudio's `_CustomLSTM`
  (torchaudio/models/rnnt.py): per layer `x2g = Linear(in, 4h)` and `p2g = Linear(h, 4h, bias=False)`, gates
  i, f, g, o; no torch.nn recurrent names, so rnninit needs `--layout torchaudio-rnnt`.
- keras-gru.pt: a GRU ported from Keras as it stores it: `kernel` (in, 3h), `recurrent_kernel` (h, 3h), gate
  order z, r, h, and one bias (2, 3h), declared by examples/layouts.toml.
- weight-norm.pt: a 2-layer LSTM with `torch.nn.utils.parametrizations.weight_norm` on both recurrent weights.
- xlstm.pt: a 3-block xLSTM stack (mLSTM, sLSTM, mLSTM; 2 heads) built by the `xlstm` package itself, whose
  sLSTM forget bias was then rewritten as if its layer stood alone (the power law of block 0 of 1, not 1 of 3).

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


class CustomLSTM(torch.nn.Module):
    """One LSTM layer written by hand as torchaudio's RNN-T predictor writes it (`_CustomLSTM`)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.x2g = torch.nn.Linear(input_size, 4 * hidden_size)
        self.p2g = torch.nn.Linear(hidden_size, 4 * hidden_size, bias=False)


class Predictor(torch.nn.Module):
    """An embedding and two hand-written LSTM layers, named like torchaudio's `_Predictor`."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(50, 16)
        self.lstm_layers = torch.nn.ModuleList([CustomLSTM(16, 32), CustomLSTM(32, 32)])


def _xlstm_stack() -> dict[str, torch.Tensor]:
    """xlstm's own 3-block stack, with block 1's sLSTM forget bias made by a standalone sLSTM cell."""
    import warnings

    warnings.filterwarnings("ignore")  # xlstm reports which kernels it can build
    from xlstm import (
        mLSTMBlockConfig,
        mLSTMLayerConfig,
        sLSTMBlockConfig,
        sLSTMLayerConfig,
        xLSTMBlockStack,
        xLSTMBlockStackConfig,
    )
    from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

    torch.manual_seed(0)
    config = xLSTMBlockStackConfig(
        mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(conv1d_kernel_size=4, qkv_proj_blocksize=4, num_heads=2)),
        slstm_block=sLSTMBlockConfig(slstm=sLSTMLayerConfig(backend="vanilla", num_heads=2, conv1d_kernel_size=4)),
        context_length=16, num_blocks=3, embedding_dim=16, slstm_at=[1])
    state = xLSTMBlockStack(config).state_dict()
    alone = sLSTMCell(sLSTMCellConfig(hidden_size=16, num_heads=2, backend="vanilla"))  # block 0 of 1
    state["blocks.1.xlstm.slstm_cell._bias_"] = alone._bias_.detach().clone()
    return state


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

    torch.manual_seed(0)
    torch.save(Predictor().state_dict(), out / "rnnt-predictor.pt")

    generator = torch.Generator().manual_seed(0)
    keras_gru = {"encoder.gru.kernel": torch.empty(16, 96).uniform_(-0.2, 0.2, generator=generator),
                 "encoder.gru.recurrent_kernel": torch.empty(32, 96).uniform_(-0.2, 0.2, generator=generator),
                 "encoder.gru.bias": torch.zeros(2, 96)}
    torch.save(keras_gru, out / "keras-gru.pt")

    torch.manual_seed(0)
    weight_norm = torch.nn.LSTM(16, 32, num_layers=2)
    for name in ("weight_hh_l0", "weight_hh_l1"):
        torch.nn.utils.parametrizations.weight_norm(weight_norm, name)
    torch.save(weight_norm.state_dict(), out / "weight-norm.pt")

    torch.save(_xlstm_stack(), out / "xlstm.pt")

    print(f"wrote {', '.join(sorted(path.name for path in out.iterdir()))} to {os.path.relpath(out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
