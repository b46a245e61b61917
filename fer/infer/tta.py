"""Test-time augmentation with numpy (no torch): a model's logits averaged over fixed views of each input.

``flip``: the input and its mirror image. ``flip_crops``: those two and, of each, four corner crops of 90% of
the side resized back to the full side (bilinear), 10 views in all. The views are of model inputs
(normalized ``(B, 3, S, S)`` arrays): resizing and mirroring commute with the per-channel normalization.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from fer.errors import FERError
from fer.infer.classifier import Classifier

TTA_MODES = ("none", "flip", "flip_crops")
CROP_FRACTION = 0.9


def _resize_matrix(source: int, target: int) -> np.ndarray:
    """``(target, source)`` weights of bilinear resizing along one axis (pixel centres aligned, as in
    ``torch.nn.functional.interpolate(align_corners=False)``)."""
    position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, source - 1)
    weight = position - low
    matrix = np.zeros((target, source))
    matrix[np.arange(target), low] += 1 - weight
    matrix[np.arange(target), high] += weight
    return matrix


def corner_crops(batch: np.ndarray, fraction: float = CROP_FRACTION) -> list[np.ndarray]:
    """The four corner crops of ``fraction`` of the side, each resized back to the full side."""
    height, width = batch.shape[-2:]
    crop_h, crop_w = round(height * fraction), round(width * fraction)
    rows, columns = _resize_matrix(crop_h, height), _resize_matrix(crop_w, width)
    crops = []
    for top in (0, height - crop_h):
        for left in (0, width - crop_w):
            part = batch[..., top : top + crop_h, left : left + crop_w]
            crops.append(np.einsum("ij,bcjk,lk->bcil", rows, part, columns).astype(batch.dtype))
    return crops


def tta_views(batch: np.ndarray, mode: str) -> list[np.ndarray]:
    """The views of a batch ``(B, 3, S, S)`` that ``mode`` averages over (the batch itself first)."""
    if mode not in TTA_MODES:
        raise FERError(f"tta={mode!r}: choose one of {', '.join(TTA_MODES)}")
    views = [batch]
    if mode in ("flip", "flip_crops"):
        views.append(np.ascontiguousarray(batch[..., ::-1]))
    if mode == "flip_crops":
        views += [crop for view in views[:2] for crop in corner_crops(view)]
    return views


def averaged_logits(
    logits: Callable[[np.ndarray], np.ndarray], mode: str
) -> Callable[[np.ndarray], np.ndarray]:
    """``logits`` averaged over the views of ``mode`` (all views of a batch in one call)."""
    if mode == "none":
        return logits

    def averaged(batch: np.ndarray) -> np.ndarray:
        views = tta_views(batch, mode)
        out = logits(np.concatenate(views))
        return out.reshape(len(views), len(batch), -1).mean(axis=0)

    return averaged


def with_tta(classifier: Classifier, mode: str) -> Classifier:
    """The classifier with its logits averaged over the views of ``mode``."""
    tta_views(np.zeros((0, 3, 1, 1), dtype=np.float32), mode)  # an unknown mode fails here
    return dataclasses.replace(classifier, logits=averaged_logits(classifier.logits, mode))
