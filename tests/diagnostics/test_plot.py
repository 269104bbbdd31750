"""`inspect --plot`: no title of the figure overlaps another (layer titles, block titles)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from rnninit_cli.diagnostics import diagnose


def test_plot_titles_do_not_overlap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib import pyplot

    from rnninit_cli.plot import plot_diagnosis

    torch.manual_seed(0)
    # input 64 = 2 * hidden: PyTorch's bound equals Glorot's per matrix, the longest family label there is
    tensors = {f"encoder.{name}": value for name, value in torch.nn.LSTM(64, 32, num_layers=2).state_dict().items()}
    boxes: list[tuple[str, Any]] = []
    real_close = pyplot.close

    def measure_then_close(figure: Any) -> None:
        boxes.extend(_title_boxes(figure))
        real_close(figure)

    monkeypatch.setattr(pyplot, "close", measure_then_close)
    image = tmp_path / "gates.png"
    plot_diagnosis(diagnose(tensors), tensors, image)
    assert image.stat().st_size > 0
    assert any("LSTM layer 1" in text for text, _ in boxes), "every layer has a visible title"
    overlapping = [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:] if box_a.overlaps(box_b)]
    assert not overlapping, overlapping[:5]


def _title_boxes(figure: Any) -> list[tuple[str, Any]]:
    """Every title and axis label of a drawn figure, with where it was drawn."""
    renderer = figure.canvas.get_renderer()
    texts = [getattr(panel, "_suptitle", None) for panel in (figure, *getattr(figure, "subfigs", ()))]
    for axes in figure.get_axes():
        texts += [axes.title, axes.xaxis.label, axes.yaxis.label]
    return [(text.get_text(), text.get_window_extent(renderer)) for text in texts
            if text is not None and text.get_visible() and text.get_text().strip()]
