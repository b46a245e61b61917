"""How sure a number is: bootstrap intervals of classification metrics, paired differences, McNemar's test.

Pure numpy on predicted and true class indices; seeded, so that the same predictions always give the same
intervals. Macro-F1 and balanced accuracy follow torchmetrics' definitions (classes absent from both the
labels and the predictions are left out of the macro mean), so the point estimates match the logged ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
METRICS = ("acc", "f1_macro", "acc_balanced")
CI_SUFFIXES = ("ci_low", "ci_high")  # logged as <stage>/<metric>_ci_low and _ci_high
_CHUNK = 100  # resamples per vectorized step: memory stays at CHUNK x N indices


def _counts(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> tuple[np.ndarray, ...]:
    """Per-class true positives, label counts and prediction counts of rows of samples: arrays ``(R, N)``
    give ``(R, C)`` each."""
    rows = labels.shape[0]
    offset = (np.arange(rows) * num_classes)[:, None]
    size = rows * num_classes

    def count(values: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        keys = (values + offset)[where] if where is not None else (values + offset).ravel()
        return np.bincount(keys.ravel(), minlength=size).reshape(rows, num_classes)

    return count(labels, labels == predicted), count(labels), count(predicted)


def _macro(per_class: np.ndarray, present: np.ndarray) -> np.ndarray:
    return (per_class * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _rows_metrics(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1 and balanced accuracy of each row of ``(R, N)`` labels and predictions."""
    tp, support, guessed = _counts(labels, predicted, num_classes)
    present = (support + guessed) > 0  # tp + fp + fn > 0
    f1 = np.divide(2 * tp, support + guessed, out=np.zeros(tp.shape), where=(support + guessed) > 0)
    recall = np.divide(tp, support, out=np.zeros(tp.shape), where=support > 0)
    return {
        "acc": tp.sum(axis=1) / labels.shape[1],
        "f1_macro": _macro(f1, present),
        "acc_balanced": _macro(recall, present),
    }


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, macro-F1 and balanced accuracy (macro recall) of one set of predictions."""
    values = _rows_metrics(np.asarray(labels)[None], np.asarray(predicted)[None], num_classes)
    return {name: float(value[0]) for name, value in values.items()}


def _resample(
    n: int, statistic: Callable[[np.ndarray], dict[str, np.ndarray]], resamples: int, seed: int
) -> dict[str, np.ndarray]:
    """``statistic`` of ``resamples`` bootstrap index rows ``(R, N)``, drawn from one seeded generator."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, resamples, _CHUNK):
        index = rng.integers(0, n, size=(min(_CHUNK, resamples - start), n))
        for name, values in statistic(index).items():
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(values) for name, values in parts.items()}


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_intervals(
    labels: np.ndarray,
    predicted: np.ndarray,
    num_classes: int,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals (test images drawn with replacement) of accuracy, macro-F1 and
    balanced accuracy: ``name -> (low, high)``."""
    labels, predicted = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if len(labels) == 0:
        return {}
    draws = _resample(
        len(labels), lambda i: _rows_metrics(labels[i], predicted[i], num_classes), resamples, seed
    )
    return {name: _interval(values, level) for name, values in draws.items()}


def paired_difference_intervals(
    labels: np.ndarray,
    predicted_a: np.ndarray,
    predicted_b: np.ndarray,
    num_classes: int,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, tuple[float, float]]:
    """Intervals of ``metric(B) - metric(A)``, both models scored on the same resampled images."""
    labels = np.asarray(labels, dtype=np.int64)
    a, b = np.asarray(predicted_a, dtype=np.int64), np.asarray(predicted_b, dtype=np.int64)

    def difference(index: np.ndarray) -> dict[str, np.ndarray]:
        first = _rows_metrics(labels[index], a[index], num_classes)
        second = _rows_metrics(labels[index], b[index], num_classes)
        return {name: second[name] - first[name] for name in first}

    draws = _resample(len(labels), difference, resamples, seed)
    return {name: _interval(values, level) for name, values in draws.items()}


def mcnemar_exact(
    labels: np.ndarray, predicted_a: np.ndarray, predicted_b: np.ndarray
) -> tuple[int, int, float]:
    """McNemar's exact test: ``(only A right, only B right, two-sided p-value)``. Under "both models are
    equally often right" the disagreements split like fair coin flips; p is the binomial probability of a
    split at least this uneven (1 when the models never disagree)."""
    labels = np.asarray(labels)
    right_a, right_b = np.asarray(predicted_a) == labels, np.asarray(predicted_b) == labels
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return only_a, only_b, min(1.0, float(Fraction(2 * tail, 2**n)))
