"""Figures for TensorBoard and reports (plain matplotlib Figures: no pyplot state, no backend switch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor


def confusion_matrix_figure(matrix: Tensor, class_names: Sequence[str]) -> Figure:
    """Rows = true class, columns = predicted; cells show counts, colour shows the row-normalized rate."""
    counts = matrix.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(class_names)
    figure = Figure(figsize=(1.0 + 0.75 * n, 0.8 + 0.7 * n), dpi=100)
    axes = figure.subplots()
    axes.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    axes.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    axes.set_yticks(range(n), labels=list(class_names))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            colour = "white" if rates[i, j] > 0.5 else "black"
            axes.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", color=colour, fontsize=8)
    # fixed margins for the rotated class names (tight_layout measures every tick label: slow)
    figure.subplots_adjust(left=0.2, right=0.98, bottom=0.22, top=0.97)
    return figure


def image_grid_figure(
    images: Tensor,
    true: Sequence[int],
    predicted: Sequence[int],
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    captions: Sequence[str] | None = None,
    columns: int = 8,
) -> Figure:
    """Model inputs ``(N, 3, S, S)`` shown as the model saw them (normalization undone), each titled
    ``true / predicted`` in green when right and red when wrong; ``captions`` add a second line.

    One mosaic image in one axes, the titles as text: a grid of subplots costs about ten times as much to
    lay out, and this is drawn at the end of every validation epoch."""
    count = len(images)
    rows = max(1, -(-count // columns))
    size = int(images.shape[-1]) if count else 1
    mean_t = torch.tensor(mean).view(-1, 1, 1)
    std_t = torch.tensor(std).view(-1, 1, 1)
    gap = max(1, size // 16)
    band = size // 2 if captions is not None else size // 3  # room for the title above each image
    cell_w, cell_h = size + gap, size + band
    mosaic = torch.ones(3, rows * cell_h, columns * cell_w)
    for k in range(count):
        row, column = divmod(k, columns)
        picture = (images[k].detach().float().cpu() * std_t + mean_t).clamp(0, 1)
        top, left = row * cell_h + band, column * cell_w
        mosaic[:, top : top + size, left : left + size] = picture
    figure = Figure(figsize=(1.4 * columns, 1.9 * rows), dpi=100)
    axes = figure.add_axes((0.0, 0.0, 1.0, 0.93))
    axes.imshow(mosaic.permute(1, 2, 0).numpy(), interpolation="nearest")
    axes.axis("off")
    for k in range(count):
        row, column = divmod(k, columns)
        right = int(true[k]) == int(predicted[k])
        title = f"{class_names[int(true[k])]} / {class_names[int(predicted[k])]}"
        if captions is not None:
            title += f"\n{captions[k]}"
        axes.text(
            column * cell_w + size / 2, row * cell_h + band - 1, title, ha="center", va="bottom", fontsize=7,
            color="green" if right else "red",
        )  # fmt: skip
    figure.suptitle("true / predicted", fontsize=8)
    return figure


def reliability_figure(
    bin_confidence: Tensor, bin_accuracy: Tensor, bin_count: Tensor, title: str = ""
) -> Figure:
    """A reliability diagram: accuracy against confidence per confidence bin (bars), the diagonal of a
    perfectly calibrated model, and how many images each bin holds (the lower panel)."""
    confidence, accuracy, count = (t.double().numpy() for t in (bin_confidence, bin_accuracy, bin_count))
    bins = len(count)
    edges = np.linspace(0, 1, bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, 1.0 / bins
    filled = count > 0
    figure = Figure(figsize=(4, 4.6), dpi=100)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.bar(centres[filled], accuracy[filled], width=width, edgecolor="black", label="accuracy")
    gaps = confidence[filled] - accuracy[filled]
    top.bar(
        centres[filled], gaps, bottom=accuracy[filled], width=width, color="tab:red", alpha=0.3,
        label="gap to confidence",
    )  # fmt: skip
    top.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1)
    top.set(ylim=(0, 1), ylabel="accuracy", title=title)
    top.legend(loc="upper left", fontsize=7)
    bottom.bar(centres, count / max(count.sum(), 1), width=width, color="tab:gray")
    bottom.set(xlim=(0, 1), xlabel="confidence", ylabel="images")
    figure.subplots_adjust(left=0.16, right=0.97, bottom=0.11, top=0.93, hspace=0.08)
    return figure
