"""`inspect --plot`: value histograms and singular-value spectra of every gate block, one row per layer.

matplotlib is an optional extra (`pip install 'rnninit[plot]'`); without it the command says so. The file's
extension chooses its format (`.png`, `.svg`, `.pdf`); the same diagnosis gives the same bytes in each.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import OutputError, UsageError
from .formats.atomic import atomic_write
from .formats.outputs import output_kind
from .terminal import visible

if TYPE_CHECKING:
    import numpy as np

    from .diagnostics import Diagnosis


PLOT_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}  # what matplotlib writes, by extension


# matplotlib stamps the date (and, in SVG, random element ids) into these formats unless told not to
_NO_DATES = {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}}


def plot_format(output: str | Path) -> str:
    """The image format OUTPUT's extension names; a UsageError for any other name."""
    suffix = Path(str(output)).suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise UsageError(f"--plot {visible(str(output))}: name the file .png, .svg or .pdf (the format follows the "
                         "extension)")
    return PLOT_FORMATS[suffix]


def check_plot_output(output: str | Path, *, force: bool, source: str | Path) -> None:
    """Before any work: OUTPUT names a known image format, and is a new file, or with `force` a regular file
    that is not the checkpoint being read."""
    plot_format(output)
    out = Path(str(output))
    kind = output_kind(out)
    if kind not in ("absent", "a regular file"):
        raise OutputError(f"--plot {visible(str(out))} is {kind}; give a file name for the plot")
    if kind != "absent" and Path(str(source)).exists() and out.samefile(source):
        raise OutputError(f"--plot {visible(str(out))} is the checkpoint being inspected; choose another name")
    if kind != "absent" and not force:
        raise OutputError(f"{visible(str(out))} already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise OutputError(f"{visible(str(out.parent))} does not exist; create the folder first")


def plot_diagnosis(diagnosis: Diagnosis, tensors: Mapping[str, Any], output: str | Path) -> None:
    """Draw per layer: a histogram of each gate block's values and, for weights, its singular values, into OUTPUT
    in the format its extension names (see `plot_format`).
    `tensors`: numpy arrays (any float dtype, float8 through ml_dtypes), BFloat16Arrays or torch tensors."""
    image_format = plot_format(output)
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'rnninit[plot]' (or pip install matplotlib)") from None
    import numpy as np

    # columns: every 2-D gate block (values above, singular values below), then one for the biases;
    # one sub-figure per layer, so that its title sits above its two rows instead of beside them
    rows = [(layer, [b for b in layer.blocks if b.kind.startswith("weight")],
             [b for b in layer.blocks if b.kind.startswith("bias") or b.kind == "radius"])
            for layer in diagnosis.layers]
    columns = max(len(weights) + 1 for _, weights, _ in rows)
    figure = pyplot.figure(figsize=(2.4 * columns, 4.0 * len(rows)), layout="constrained")
    panels = figure.subfigures(len(rows), 1, squeeze=False)[:, 0]
    for panel, (layer, weights, biases) in zip(panels, rows, strict=True):
        panel.suptitle(visible(layer.title), fontsize=9, fontweight="bold", x=0.005, ha="left")
        axes = panel.subplots(2, columns, squeeze=False)
        for column in range(columns):
            top, bottom = axes[0][column], axes[1][column]
            for axis in (top, bottom):
                axis.tick_params(labelsize=6)
                axis.locator_params(axis="x", nbins=4)
            if column < len(weights):
                block = weights[column]
                values = _finite_float64(tensors[block.name][block.start:block.stop])
                _histogram(top, values.reshape(-1), bins=40, color="tab:blue")
                head = "" if block.head is None else f".h{block.head}"
                name = f"{block.name.removeprefix(layer.layer.prefix)} {block.gate or ''}{head}"
                top.set_title(f"{_wrap(visible(name))}\n{_wrap(block.family.label)}", fontsize=7)
                with np.errstate(all="ignore"):
                    try:
                        spectrum = np.linalg.svd(values, compute_uv=False)
                    except (np.linalg.LinAlgError, ValueError):  # values near float64's maximum
                        spectrum = np.zeros(0)
                if spectrum.size and np.isfinite(spectrum).all():
                    bottom.plot(spectrum, marker=".", color="tab:orange")
                    largest = float(spectrum.max())
                    # from 0: equal singular values draw a flat line, not a zoom on their last bits
                    bottom.set_ylim(0, 1.1 * largest if 0 < largest < 1e300 else None)
                bottom.set_title("singular values", fontsize=7)
            elif column == len(weights) and biases:
                # a per-head cell has one bias and may have a radius (RG-LRU) where torch layers have bias_hh
                second = "bias_hh" if any(b.kind == "bias_hh" for b in biases) else "radius"
                for axis, kind in ((top, "bias_ih"), (bottom, second)):
                    shown_blocks = [b for b in biases if b.kind == kind]
                    if not shown_blocks:
                        axis.axis("off")
                        continue
                    for block in shown_blocks:
                        values = _finite_float64(tensors[block.name][block.start:block.stop])
                        label = block.gate or kind if block.head is None else f"{block.gate}.h{block.head}"
                        _histogram(axis, values, bins=20, alpha=0.6, label=label)
                    axis.set_title(kind, fontsize=7)
                    axis.legend(fontsize=6)
            else:
                top.axis("off")
                bottom.axis("off")
    with matplotlib.rc_context({"svg.hashsalt": "rnninit"}):  # SVG element ids from a fixed salt, not random
        atomic_write(output, lambda sink: figure.savefig(sink, format=image_format, dpi=90,
                                                         metadata=_NO_DATES[image_format]))
    pyplot.close(figure)


def _histogram(axis: Any, values: np.ndarray, **options: Any) -> None:
    """A histogram, unless the values' range exceeds float64 (±1.7e308: no bin width exists), then a note."""
    import numpy as np

    with np.errstate(all="ignore"):
        span = float(values.max() - values.min()) if values.size else 0.0
    if np.isfinite(span):
        try:
            axis.hist(values, **options)
            return
        except ValueError:  # a range too narrow for the bins at this magnitude (1e16 + {0, 2, 4})
            pass
    axis.text(0.5, 0.5, "no histogram of\nthese values", ha="center", va="center", fontsize=6,
              transform=axis.transAxes)


def _finite_float64(values: Any) -> np.ndarray:
    """A float64 numpy copy of a block (a torch tensor's too; complex by its real part), NaN and ±Inf made finite as
    torch.nan_to_num does."""
    import numpy as np

    from .diagnostics.stats import as_float64

    with np.errstate(all="ignore"):
        return np.nan_to_num(as_float64(values))


def _wrap(text: str, width: int = 30) -> str:
    """Break a long block title into lines that fit above a plot column."""
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) or text



