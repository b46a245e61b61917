"""``python -m fer.compare A.ckpt B.ckpt``: is B better than A on the same test images, or is it luck?

Both checkpoints are scored on the same split (the data A was trained on, or ``--data-dir``). Printed: each
model's accuracy, macro-F1 and balanced accuracy with 95% bootstrap intervals; the difference B - A with a
paired bootstrap interval (the same resampled images score both models, so what the images have in common
cancels); and McNemar's exact test on the images where exactly one of the two is right.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fer.errors import CheckpointError
from fer.infer.tta import TTA_MODES
from fer.run.checkpoints import load_module, read_checkpoint
from fer.run.cli import command
from fer.scoring import check_same_classes, recorded_datamodule, split_logits
from fer.stats import (
    METRICS,
    bootstrap_intervals,
    classification_metrics,
    mcnemar_exact,
    paired_difference_intervals,
)

SPLITS = ("test", "valid")


def predictions(path: Path, data_from: Path, split: str, data_dir: str | None, tta: str):
    """(labels, predicted classes, class names) of one checkpoint on the split of ``data_from``'s data."""
    model, checkpoint = load_module(path, key="checkpoint")
    recorded = read_checkpoint(data_from, key="checkpoint") if data_from != path else checkpoint
    datamodule = recorded_datamodule(recorded, model, data_dir)
    check_same_classes(model, datamodule, str(path))
    logits = split_logits(model.eval(), datamodule, split, tta)
    return logits.labels, logits.logits.argmax(axis=1), model.class_names


def compare(a: Path, b: Path, split: str = "test", data_dir: str | None = None, tta: str = "none") -> dict:
    """Both models' metrics with intervals, the paired difference B - A and McNemar's test."""
    labels, predicted_a, classes = predictions(a, a, split, data_dir, tta)
    labels_b, predicted_b, classes_b = predictions(b, a, split, data_dir, tta)
    if tuple(classes) != tuple(classes_b) or not np.array_equal(labels, labels_b):
        raise CheckpointError(
            f"{a} and {b} do not classify the same {split} images into the same classes: compare models of "
            "the same data set (--data-dir points both at one copy)."
        )
    n = len(classes)
    only_a, only_b, p = mcnemar_exact(labels, predicted_a, predicted_b)
    return {
        "images": len(labels),
        "a": classification_metrics(labels, predicted_a, n),
        "b": classification_metrics(labels, predicted_b, n),
        "a_ci": bootstrap_intervals(labels, predicted_a, n),
        "b_ci": bootstrap_intervals(labels, predicted_b, n),
        "difference_ci": paired_difference_intervals(labels, predicted_a, predicted_b, n),
        "only_a_right": only_a,
        "only_b_right": only_b,
        "mcnemar_p": p,
    }


def render(found: dict, a: Path, b: Path, split: str) -> str:
    """A markdown table (A, B, B - A) and the test's counts and p-value."""

    def cell(value: float, interval: tuple[float, float], signed: bool = False) -> str:
        number = f"{value:+.4f}" if signed else f"{value:.4f}"
        low, high = interval
        return f"{number} [{low:+.4f}, {high:+.4f}]" if signed else f"{number} [{low:.4f}, {high:.4f}]"

    rows = [
        ["A", *(cell(found["a"][m], found["a_ci"][m]) for m in METRICS)],
        ["B", *(cell(found["b"][m], found["b_ci"][m]) for m in METRICS)],
        [
            "B - A",
            *(cell(found["b"][m] - found["a"][m], found["difference_ci"][m], signed=True) for m in METRICS),
        ],
    ]
    lines = [
        f"A: {a}",
        f"B: {b}",
        f"{split} split, {found['images']} images; [low, high]: 95% bootstrap intervals (1000 resamples, "
        "seeded; B - A paired: the same resampled images for both)",
        "",
        "| model | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        f"McNemar's exact test: only A right on {found['only_a_right']} images, only B right on "
        f"{found['only_b_right']}; p = {found['mcnemar_p']:.4g}",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fer.compare",
        description="Compare two checkpoints on the same split: both metrics with 95%% bootstrap intervals, "
        "the difference B - A with a paired interval, and McNemar's exact test.",
    )
    parser.add_argument("a", type=Path, metavar="A.ckpt", help="the reference checkpoint")
    parser.add_argument("b", type=Path, metavar="B.ckpt", help="the checkpoint compared with it")
    parser.add_argument("--split", choices=SPLITS, default="test", help="default: test")
    parser.add_argument("--data-dir", help="another copy of A's data set (default: the one A recorded)")
    parser.add_argument("--tta", choices=TTA_MODES, default="none", help="test-time augmentation of both")
    return parser.parse_args(argv)


@command
def main(argv: Sequence[str] | None = None) -> int:
    """Print the comparison; 2 with one ``fer: error:`` line for a user mistake."""
    args = parse_args(argv)
    found = compare(args.a, args.b, args.split, args.data_dir, args.tta)
    print(render(found, args.a, args.b, args.split), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
