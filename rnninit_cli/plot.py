"""`inspect --plot`: value histograms and singular-value spectra of every gate block, one row per layer.

matplotlib is an optional extra (`pip install 'rnninit[plot]'`); without it the command says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import atomic_write
from .errors import UsageError

if TYPE_CHECKING:
    import torch

    from .diagnostics import Diagnosis


def plot_diagnosis(diagnosis: Diagnosis, tensors: Mapping[str, torch.Tensor], output: str | Path) -> None:
    """Draw per layer: a histogram of each gate block's values and, for weights, its singular values."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'rnninit[plot]' (or pip install matplotlib)") from None
    import torch

    # columns: every 2-D gate block (values above, singular values below), then one for the biases
    rows = [(layer, [b for b in layer.blocks if b.kind.startswith("weight")],
             [b for b in layer.blocks if b.kind.startswith("bias")]) for layer in diagnosis.layers]
    columns = max(len(weights) + 1 for _, weights, _ in rows)
    figure, axes = pyplot.subplots(2 * len(rows), columns, figsize=(2.2 * columns, 3.2 * len(rows)), squeeze=False)
    for row, (layer, weights, biases) in enumerate(rows):
        for column in range(columns):
            top, bottom = axes[2 * row][column], axes[2 * row + 1][column]
            for axis in (top, bottom):
                axis.tick_params(labelsize=6)
            if column < len(weights):
                block = weights[column]
                values = torch.nan_to_num(tensors[block.name][block.start:block.stop].detach().double())
                top.hist(values.reshape(-1).tolist(), bins=40, color="tab:blue")
                top.set_title(f"{block.name.removeprefix(layer.layer.prefix)} {block.gate or ''}\n"
                              f"{block.family.label}", fontsize=7)
                bottom.plot(torch.linalg.svdvals(values).tolist(), marker=".", color="tab:orange")
                bottom.set_title("singular values", fontsize=7)
            elif column == len(weights) and biases:
                for axis, kind in ((top, "bias_ih"), (bottom, "bias_hh")):
                    for block in (b for b in biases if b.kind == kind):
                        values = torch.nan_to_num(tensors[block.name][block.start:block.stop].detach().double())
                        axis.hist(values.tolist(), bins=20, alpha=0.6, label=block.gate or kind)
                    axis.set_title(kind, fontsize=7)
                    axis.legend(fontsize=6)
            else:
                top.axis("off")
                bottom.axis("off")
        axes[2 * row][0].set_ylabel(layer.title, fontsize=7)
    figure.tight_layout()
    atomic_write(output, lambda sink: figure.savefig(sink, format="png", dpi=90))
    pyplot.close(figure)



