"""Write a small real checkpoint: an embedding, a 2-layer bidirectional LSTM, a GRU and a linear head.

    python examples/make_checkpoint.py examples/out/model.pt          # torch.save state_dict
    python examples/make_checkpoint.py examples/out/model.safetensors # safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


class Tagger(torch.nn.Module):
    """A sequence tagger with every kind of recurrent parameter rnninit knows."""

    def __init__(self, vocab: int = 100, embed: int = 16, hidden: int = 32, tags: int = 5) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, embed)
        self.encoder = torch.nn.LSTM(embed, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.decoder = torch.nn.GRU(2 * hidden, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, tags)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        encoded, _ = self.encoder(self.embed(tokens))
        decoded, _ = self.decoder(encoded)
        return self.head(decoded)


def main(path: str = "examples/out/model.pt") -> None:
    torch.manual_seed(0)
    state = Tagger().state_dict()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".safetensors":
        save_file(dict(state), target, metadata={"made_by": "examples/make_checkpoint.py"})
    else:
        torch.save(state, target)
    print(f"wrote {target} ({len(state)} tensors)", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:2])
