"""Bootstrap intervals, paired differences and McNemar's test (``fer.stats``) on synthetic predictors whose
true accuracy is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score, multiclass_recall

from fer.stats import bootstrap_intervals, classification_metrics, mcnemar_exact, paired_difference_intervals


def test_point_estimates_match_torchmetrics_with_a_class_never_seen():
    rng = np.random.default_rng(1)
    labels, predicted = rng.integers(0, 6, 300), rng.integers(0, 6, 300)  # class 6 of 7: never present
    ours = classification_metrics(labels, predicted, 7)
    y, p = torch.from_numpy(labels), torch.from_numpy(predicted)
    assert ours["acc"] == pytest.approx(float(multiclass_accuracy(p, y, 7, average="micro")))
    assert ours["f1_macro"] == pytest.approx(float(multiclass_f1_score(p, y, 7, average="macro")))
    assert ours["acc_balanced"] == pytest.approx(float(multiclass_recall(p, y, 7, average="macro")))


def test_intervals_are_seeded_and_contain_the_estimate():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 7, 500)
    predicted = np.where(rng.random(500) < 0.6, labels, rng.integers(0, 7, 500))
    first = bootstrap_intervals(labels, predicted, 7)
    assert first == bootstrap_intervals(labels, predicted, 7)
    estimate = classification_metrics(labels, predicted, 7)
    for name, (low, high) in first.items():
        assert low < estimate[name] < high
        assert 0.03 < high - low < 0.15  # about 2 x 1.96 x sqrt(0.6 x 0.4 / 500) = 0.086 for accuracy


def test_the_95_percent_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    """A predictor right with probability 0.7 on each of 200 test images, drawn anew 300 times: its
    interval should hold 0.7 in about 95% of the draws."""
    true_accuracy, n, trials = 0.7, 200, 300
    covered = 0
    for seed in range(trials):
        rng = np.random.default_rng(1000 + seed)
        labels = rng.integers(0, 7, n)
        right = rng.random(n) < true_accuracy
        predicted = np.where(right, labels, (labels + rng.integers(1, 7, n)) % 7)
        low, high = bootstrap_intervals(labels, predicted, 7, resamples=400, seed=seed)["acc"]
        covered += low <= true_accuracy <= high
    assert 0.90 <= covered / trials <= 0.985, covered / trials


def test_mcnemar_on_two_identical_models_gives_p_1():
    rng = np.random.default_rng(3)
    labels, predicted = rng.integers(0, 7, 400), rng.integers(0, 7, 400)
    assert mcnemar_exact(labels, predicted, predicted) == (0, 0, 1.0)
    low, high = paired_difference_intervals(labels, predicted, predicted, 7)["acc"]
    assert low == high == 0.0


def test_mcnemar_exact_p_values_are_the_binomial_ones():
    labels = np.zeros(30, dtype=int)
    a = np.array([0] * 10 + [1] * 20)  # right on images 0-9
    b = np.array([1] * 8 + [0] * 22)  # right on images 8-29
    only_a, only_b, p = mcnemar_exact(labels, a, b)
    assert (only_a, only_b) == (8, 20)
    from math import comb

    assert p == pytest.approx(2 * sum(comb(28, k) for k in range(9)) / 2**28)
    assert mcnemar_exact(labels, a, b)[2] < 0.05 < mcnemar_exact(labels[:20], a[:20], b[:20])[2]
