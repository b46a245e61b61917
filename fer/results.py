"""Looking at finished runs: learning curves, confusion matrix, per-class recall, the worst mistakes.

The functions behind ``notebooks/results.ipynb``; each takes a run folder (``outputs/train/runs/<time>``) or
a sweep folder (``outputs/train/multiruns/<time>``, one sub-folder per job).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fer.errors import FERError

LEARNING_CURVES = (("train/loss", "val/loss"), ("train/acc", "val/acc"))


def is_run(folder: Path) -> bool:
    return (folder / ".hydra").is_dir()


def find_runs(folder: str | Path) -> list[Path]:
    """The run itself, or every job of a sweep (sorted), or a clear error for anything else."""
    folder = Path(folder).expanduser()
    if is_run(folder):
        return [folder]
    jobs = sorted(p for p in folder.iterdir() if p.is_dir() and is_run(p)) if folder.is_dir() else []
    if not jobs:
        raise FERError(f"{folder} is neither a run folder (with .hydra/) nor a sweep folder holding runs.")
    return jobs


def final_metrics(run: Path) -> dict[str, float] | None:
    """The metrics a run ended with (``metrics.json``), or None for a run that did not finish."""
    try:
        return json.loads((run / "metrics.json").read_text())["metrics"]
    except (OSError, ValueError, KeyError):
        return None


def best_run(runs: list[Path], metric: str = "val/acc_best") -> Path:
    """The finished run with the highest ``metric`` (a single run is its own best, finished or not)."""
    if len(runs) == 1:
        return runs[0]
    scored = [(metrics.get(metric, float("-inf")), run) for run in runs if (metrics := final_metrics(run))]
    if not scored:
        raise FERError(f"No finished run (with metrics.json) among {len(runs)} folder(s).")
    return max(scored, key=lambda item: item[0])[1]


def scalars(run: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar TensorBoard series of a run: tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    series = {}
    for tag in accumulator.Tags()["scalars"]:
        events = accumulator.Scalars(tag)
        series[tag] = ([e.step for e in events], [e.value for e in events])
    return series


def learning_curves_figure(run: Path):
    """Loss and accuracy, train and validation, against the training step."""
    from matplotlib.figure import Figure

    series = scalars(run)
    figure = Figure(figsize=(10, 3.5), dpi=100)
    axes = figure.subplots(1, len(LEARNING_CURVES))
    for ax, tags in zip(axes, LEARNING_CURVES, strict=True):
        for tag in tags:
            if tag in series:
                ax.plot(*series[tag], marker="o", markersize=3, label=tag)
        ax.set_xlabel("step")
        ax.set_title(tags[0].split("/")[1])
        ax.legend()
        ax.grid(alpha=0.3)
    figure.suptitle(run.name)
    figure.tight_layout()
    return figure


def best_checkpoint(run: Path) -> Path:
    """The run's best checkpoint (as recorded in metrics.json), else its last one."""
    recorded = None
    if final_metrics(run) is not None:
        recorded = json.loads((run / "metrics.json").read_text()).get("best_checkpoint")
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    for candidate in [*sorted((run / "checkpoints").glob("epoch_*.ckpt")), run / "checkpoints" / "last.ckpt"]:
        if candidate.is_file():
            return candidate
    raise FERError(f"No checkpoint in {run / 'checkpoints'}.")


@dataclass
class Predictions:
    """A checkpoint's predictions on one split, and the model inputs of its most confident mistakes."""

    class_names: tuple[str, ...]
    labels: Tensor  # (N,)
    probs: Tensor  # (N, C)
    worst_inputs: Tensor  # (K, 3, S, S), the K wrong predictions with the highest confidence
    worst_index: Tensor  # (K,) their positions in the split
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def predicted(self) -> Tensor:
        return self.probs.argmax(dim=1)

    def confusion(self) -> Tensor:
        n = len(self.class_names)
        return torch.bincount(self.labels * n + self.predicted, minlength=n * n).view(n, n)

    def recall(self) -> Tensor:
        matrix = self.confusion().double()
        return matrix.diag() / matrix.sum(dim=1).clamp(min=1)

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.labels).double().mean())


@torch.no_grad()
def predict_split(
    checkpoint: str | Path, split: str = "test", data_dir: str | None = None, worst: int = 16
) -> Predictions:
    """Run a checkpoint over a split of the data it was trained on (or ``data_dir``), as ``fer.eval`` does."""
    from hydra.utils import instantiate

    from fer.run.checkpoints import load_module, recorded_data_config

    model, saved = load_module(checkpoint, key="checkpoint")
    model.eval()
    settings = recorded_data_config(saved)
    if not settings:
        raise FERError(f"{checkpoint} records no data settings: evaluate it with fer.eval data=<option>.")
    settings.update(model.preprocessing.as_dict(), feature_cache=False, synthetic=None)
    if data_dir:
        settings["data_dir"] = data_dir
        if isinstance(settings.get("source"), dict):
            settings["source"] = {**settings["source"], "root": str(data_dir)}
    datamodule = instantiate(settings, _recursive_=False, _convert_="all")
    labels, probs, wrong_x, wrong_conf, wrong_index = [], [], [], [], []
    offset = 0
    for x, y in datamodule.loader_for(split):
        p = model(x).softmax(dim=1)
        wrong = p.argmax(dim=1) != y
        labels.append(y)
        probs.append(p)
        wrong_x.append(x[wrong])
        wrong_conf.append(p.max(dim=1).values[wrong])
        wrong_index.append(wrong.nonzero().squeeze(1) + offset)
        offset += len(y)
    order = torch.cat(wrong_conf).argsort(descending=True)[:worst]
    pre = model.preprocessing
    return Predictions(
        model.class_names, torch.cat(labels), torch.cat(probs), torch.cat(wrong_x)[order],
        torch.cat(wrong_index)[order], pre.mean, pre.std,
    )  # fmt: skip


def confusion_figure(predictions: Predictions):
    from fer.models.plots import confusion_matrix_figure

    return confusion_matrix_figure(predictions.confusion(), predictions.class_names)


def recall_figure(predictions: Predictions):
    """Per-class recall as bars, with the overall accuracy for reference."""
    from matplotlib.figure import Figure

    recall = predictions.recall()
    figure = Figure(figsize=(7, 3), dpi=100)
    ax = figure.subplots()
    ax.bar(predictions.class_names, recall.numpy(), color="tab:blue")
    ax.axhline(
        predictions.accuracy, color="black", linestyle="--", label=f"accuracy {predictions.accuracy:.3f}"
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel("recall")
    ax.legend()
    figure.tight_layout()
    return figure


def worst_mistakes_figure(predictions: Predictions):
    """The most confident wrong predictions, as the model saw them."""
    from fer.models.plots import image_grid_figure

    index = predictions.worst_index
    if len(index) == 0:
        raise FERError("No mistakes on this split: nothing to show.")
    predicted = predictions.predicted[index]
    confidence = predictions.probs[index, predicted]
    return image_grid_figure(
        predictions.worst_inputs,
        predictions.labels[index].tolist(),
        predicted.tolist(),
        predictions.class_names,
        predictions.mean,
        predictions.std,
        captions=[f"p={c:.2f}" for c in confidence.tolist()],
    )


def reliability_figure(predictions: Predictions):
    """Accuracy against confidence in 15 bins: bars under the diagonal are overconfidence."""
    from fer.models.calibration import BINS
    from fer.models.plots import reliability_figure as draw

    confidence, predicted = predictions.probs.max(dim=1)
    index = (confidence * BINS).long().clamp(0, BINS - 1)
    count = torch.bincount(index, minlength=BINS).double()
    right = (predicted == predictions.labels).double()
    mean_confidence = torch.bincount(index, confidence.double(), minlength=BINS) / count.clamp(min=1)
    accuracy = torch.bincount(index, right, minlength=BINS) / count.clamp(min=1)
    return draw(mean_confidence, accuracy, count.long(), f"reliability ({len(predictions.labels)} images)")


def worst_mistakes_gradcam_figure(checkpoint: str | Path, predictions: Predictions):
    """The most confident mistakes with their Grad-CAM maps for the (wrongly) predicted class: what the
    model looked at when it was sure and wrong."""
    from fer.models.gradcam import grad_cam, overlays
    from fer.models.plots import image_grid_figure
    from fer.run.checkpoints import load_module

    index = predictions.worst_index
    if len(index) == 0:
        raise FERError("No mistakes on this split: nothing to show.")
    model, _ = load_module(checkpoint, key="checkpoint")
    predicted = predictions.predicted[index]
    maps, _ = grad_cam(model, predictions.worst_inputs, predicted)
    confidence = predictions.probs[index, predicted]
    return image_grid_figure(
        overlays(predictions.worst_inputs, maps, predictions.mean, predictions.std),
        predictions.labels[index].tolist(), predicted.tolist(), predictions.class_names, (0.0,) * 3,
        (1.0,) * 3, captions=[f"p={c:.2f}" for c in confidence.tolist()],
    )  # fmt: skip
