"""How far a model's confidence can be trusted: torchmetrics' expected calibration error, and the
negative log-likelihood, Brier score, reliability bins and per-image predictions beside it."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassCalibrationError
from torchmetrics.utilities import dim_zero_cat

BINS = 15


def calibration_error(num_classes: int) -> MulticlassCalibrationError:
    """ECE: the mean gap between confidence and accuracy over 15 equal-width confidence bins (L1)."""
    return MulticlassCalibrationError(num_classes, n_bins=BINS, norm="l1")


class ProbabilityScores(Metric):
    """Negative log-likelihood and Brier score (mean over images), and per confidence bin the images'
    mean confidence and accuracy (what a reliability diagram draws)."""

    full_state_update = False

    def __init__(self, bins: int = BINS) -> None:
        super().__init__()
        self.bins = bins
        for name, shape in (("nll", ()), ("brier", ()), ("total", ())):
            self.add_state(name, torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("bin_confidence", "bin_correct", "bin_count"):
            self.add_state(name, torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, log_probs: Tensor, target: Tensor) -> None:
        log_probs = log_probs.detach().double()
        probs = log_probs.exp()
        self.nll += -log_probs.gather(1, target[:, None]).sum()
        onehot = torch.nn.functional.one_hot(target, probs.shape[1]).double()
        self.brier += ((probs - onehot) ** 2).sum()
        self.total += len(target)
        confidence, predicted = probs.max(dim=1)
        # bins [k/B, (k+1)/B), as torchmetrics' calibration error counts them (1.0 in the last one)
        index = (confidence * self.bins).long().clamp(0, self.bins - 1)
        self.bin_confidence.index_add_(0, index, confidence)
        self.bin_correct.index_add_(0, index, (predicted == target).double())
        self.bin_count.index_add_(0, index, torch.ones_like(confidence))

    def compute(self) -> dict[str, Tensor]:
        count = self.bin_count.clamp(min=1)
        return {
            "nll": (self.nll / self.total.clamp(min=1)).float(),
            "brier": (self.brier / self.total.clamp(min=1)).float(),
            "bin_confidence": (self.bin_confidence / count).float(),
            "bin_accuracy": (self.bin_correct / count).float(),
            "bin_count": self.bin_count.long(),
        }


class PredictionRecord(Metric):
    """Every image's true and predicted class (gathered over processes), for bootstrap intervals."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("target", [], dist_reduce_fx="cat")
        self.add_state("predicted", [], dist_reduce_fx="cat")

    def update(self, predicted: Tensor, target: Tensor) -> None:
        self.predicted.append(predicted.detach().long())
        self.target.append(target.detach().long())

    def compute(self) -> tuple[Tensor, Tensor]:
        if isinstance(self.target, list) and not self.target:  # (after a sync across processes: a tensor)
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        return dim_zero_cat(self.target).cpu(), dim_zero_cat(self.predicted).cpu()
