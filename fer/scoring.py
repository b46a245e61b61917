"""Scoring checkpoints outside the Trainer: their logits over a split (optionally averaged over test-time
views), and every metric of those logits, for ``fer.calibrate``, ``fer.compare`` and ``fer.eval``'s TTA and
ensembles. The numbers are those the Trainer logs: the same data, preprocessing and metric definitions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from fer.errors import CheckpointError
from fer.infer.classifier import softmax
from fer.infer.tta import averaged_logits
from fer.models import FERModule
from fer.models.calibration import BINS
from fer.stats import bootstrap_intervals, classification_metrics

SCORE_NAMES = ("acc", "f1_macro", "acc_balanced", "ece", "nll", "brier")


def recorded_datamodule(checkpoint: Mapping[str, Any], model: FERModule, data_dir: str | None = None):
    """The data module a checkpoint was trained on (or the same source at ``data_dir``), with the model's
    preprocessing and no feature cache."""
    from hydra.utils import instantiate

    from fer.run.checkpoints import recorded_data_config

    settings = recorded_data_config(checkpoint)
    if not settings:
        raise CheckpointError(
            "the checkpoint records no data settings: evaluate it with fer.eval data=<option>."
        )
    settings.update(model.preprocessing.as_dict(), feature_cache=False, synthetic=None)
    if data_dir:
        settings["data_dir"] = str(data_dir)
        if isinstance(settings.get("source"), dict):
            settings["source"] = {**settings["source"], "root": str(data_dir)}
    return instantiate(settings, _recursive_=False, _convert_="all")


def check_same_classes(model: FERModule, datamodule: Any, name: str) -> None:
    if tuple(datamodule.class_names) != tuple(model.class_names):
        raise CheckpointError(
            f"{name} classifies {list(model.class_names)}, but this data has {list(datamodule.class_names)}: "
            "evaluate on data with the model's classes."
        )


@dataclass
class SplitLogits:
    """Raw logits ``(N, C)`` of a model over a split, its labels ``(N,)`` and the model's temperature."""

    logits: np.ndarray
    labels: np.ndarray
    temperature: float = 1.0

    @property
    def probabilities(self) -> np.ndarray:
        return softmax(self.logits, self.temperature)


def network_logits(model: FERModule):
    """The model's plain network as a numpy function: normalized inputs in, logits out (eval mode)."""
    network = model.model.eval()
    device = next(network.parameters()).device

    @torch.inference_mode()
    def logits(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
        return network(x.contiguous(memory_format=model.memory_format)).float().cpu().numpy()

    return logits


def split_logits(model: FERModule, datamodule: Any, split: str, tta: str = "none") -> SplitLogits:
    """The model's logits over ``split`` (``valid`` or ``test``), averaged over the views of ``tta``."""
    logits = averaged_logits(network_logits(model), tta)
    outputs, labels = [], []
    for batch in datamodule.loader_for(split):
        outputs.append(logits(batch[0].numpy()))
        labels.append(batch[1].numpy())
    return SplitLogits(np.concatenate(outputs), np.concatenate(labels).astype(np.int64), model.temperature)


def score(probabilities: np.ndarray, labels: np.ndarray, intervals: bool = True) -> dict[str, float]:
    """Accuracy, macro-F1, balanced accuracy (with their 95% bootstrap intervals), ECE (15 bins), NLL and
    Brier score of class probabilities ``(N, C)``."""
    classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    found = classification_metrics(labels, predicted, classes)
    probs = torch.from_numpy(probabilities)
    found["ece"] = float(
        multiclass_calibration_error(probs, torch.from_numpy(labels), classes, n_bins=BINS, norm="l1")
    )
    picked = probabilities[np.arange(len(labels)), labels]
    found["nll"] = float(-np.log(np.maximum(picked, np.finfo(np.float64).tiny)).mean())
    onehot = np.eye(classes)[labels]
    found["brier"] = float(((probabilities - onehot) ** 2).sum(axis=1).mean())
    if intervals:
        for name, (low, high) in bootstrap_intervals(labels, predicted, classes).items():
            found[f"{name}_ci_low"], found[f"{name}_ci_high"] = low, high
    return found


def ensemble_probabilities(members: Sequence[SplitLogits]) -> np.ndarray:
    """The mean of the members' probabilities (each with its own temperature)."""
    return np.mean([member.probabilities for member in members], axis=0)


def print_score_table(title: str, rows: Mapping[str, Mapping[str, float]], notes: Mapping[str, str]) -> None:
    """One row per model (or view), a column per score; intervals beside the metrics that have them."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")
    table.add_column("model")
    for name in SCORE_NAMES:
        table.add_column(name, justify="right")
    for label, found in rows.items():
        cells = []
        for name in SCORE_NAMES:
            cell = f"{found[name]:.4f}"
            if f"{name}_ci_low" in found:
                cell += f" [{found[f'{name}_ci_low']:.3f}, {found[f'{name}_ci_high']:.3f}]"
            cells.append(cell)
        table.add_row(escape(label), *map(escape, cells))
    console = Console(width=200)
    console.print(table)
    for key, value in notes.items():
        console.print(escape(f"{key}: {value}"), soft_wrap=True)
