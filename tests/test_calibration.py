"""Calibration: the metrics logged beside accuracy, and ``fer.calibrate``'s temperature."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from fer.models.calibration import ProbabilityScores, calibration_error


def _overconfident(n: int = 2000, classes: int = 7, scale: float = 4.0, seed: int = 0):
    """Logits of a predictor whose probabilities are right at scale 1, and ``scale`` times too sharp."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator) * 1.5
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)
    return logits * scale, labels


def test_nll_brier_and_reliability_bins_agree_with_their_definitions():
    logits, labels = _overconfident(500, scale=2.0)
    scores = ProbabilityScores()
    for part in range(0, 500, 128):  # in batches, as in an epoch
        scores.update(logits[part : part + 128].log_softmax(dim=1), labels[part : part + 128])
    found = scores.compute()
    probs = logits.softmax(dim=1)
    assert float(found["nll"]) == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    brier = ((probs - F.one_hot(labels, 7)) ** 2).sum(dim=1).mean()
    assert float(found["brier"]) == pytest.approx(float(brier), rel=1e-5)
    # the bins give torchmetrics' L1 calibration error back
    count = found["bin_count"].double()
    gaps = (found["bin_confidence"] - found["bin_accuracy"]).abs().double()
    ece = calibration_error(7)(probs, labels)
    assert float((gaps * count).sum() / count.sum()) == pytest.approx(float(ece), abs=1e-5)
    assert int(count.sum()) == 500
