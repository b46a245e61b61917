"""The project's hand-written cross-entropy loss.

It exists to show how a custom loss is written correctly: in log space, so that it stays finite for logits of
any size (the seed's ``exp``-then-``log`` version overflows above ~88), with exactly the semantics of
:func:`torch.nn.functional.cross_entropy` for class weights, label smoothing, ``ignore_index`` and reduction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

REDUCTIONS = ("mean", "sum", "none")


def log_softmax(logits: Tensor, dim: int = 1) -> Tensor:
    """Log-probabilities by the log-sum-exp trick, finite for any finite ``x``.

    Shifting by the row maximum first makes every ``exp`` at most 1 (no overflow) and keeps the largest
    log-probability exact; the shift is a constant for autograd because the result does not depend on it.
    """
    shifted = logits - logits.amax(dim=dim, keepdim=True).detach()
    return shifted - shifted.exp().sum(dim=dim, keepdim=True).log()


class _ClassLoss(nn.Module):
    """What fer's losses share: per-class weights, a reduction, a target label to ignore."""

    def __init__(self, weight: Tensor | Sequence[float] | None, reduction: str, ignore_index: int) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.ignore_index = ignore_index
        weight_tensor = None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        # Not persistent: the weights are part of the model's hyper-parameters, not its learned state.
        self.register_buffer("weight", weight_tensor, persistent=False)


class CrossEntropyLoss(_ClassLoss):
    """Cross entropy over class logits ``(N, C)`` and integer targets ``(N,)`` or class probabilities
    ``(N, C)`` (soft targets, e.g. a distribution of annotators' votes).

    For sample ``i`` with target ``y``, ``log p = log_softmax(logits)`` and smoothing ``eps``::

        loss_i = (1 - eps) * -w[y] * log p[i, y]  +  eps / C * -sum_c w[c] * log p[i, c]

    ``mean`` divides the sum over samples by ``sum_i w[y_i]`` (the batch size when unweighted), as torch does.
    Targets equal to ``ignore_index`` contribute nothing and are not counted. With probabilities ``q``,
    ``loss_i = -sum_c w[c] * ((1 - eps) * q[i, c] + eps / C) * log p[i, c]`` and ``mean`` divides by N.
    """

    def __init__(
        self,
        weight: Tensor | Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__(weight, reduction, ignore_index)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.ndim != 2:
            raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
        num_classes = logits.shape[1]
        log_probs = log_softmax(logits, dim=1)
        if target.is_floating_point():
            return self._soft(log_probs, target)

        keep = target != self.ignore_index
        safe_target = torch.where(keep, target, torch.zeros_like(target))
        target_log_prob = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)

        if self.weight is None:
            sample_weight = keep.to(log_probs.dtype)
            smooth = -log_probs.sum(dim=1)
        else:
            weight = self.weight.to(log_probs.dtype)
            sample_weight = weight[safe_target] * keep
            smooth = -(log_probs * weight).sum(dim=1)

        nll = -target_log_prob * sample_weight
        smooth = smooth * keep
        eps = self.label_smoothing
        per_sample = (1.0 - eps) * nll + (eps / num_classes) * smooth if eps > 0 else nll

        if self.reduction == "none":
            return per_sample
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample.sum() / sample_weight.sum()

    def _soft(self, log_probs: Tensor, target: Tensor) -> Tensor:
        """Cross entropy against class probabilities ``(N, C)``, as ``F.cross_entropy`` computes it."""
        if target.shape != log_probs.shape:
            raise ValueError(
                f"probability targets must have the logits' shape {tuple(log_probs.shape)}, got {tuple(target.shape)}"
            )
        eps = self.label_smoothing
        q = target.to(log_probs.dtype)
        if eps > 0:
            q = (1.0 - eps) * q + eps / log_probs.shape[1]
        terms = -q * log_probs
        if self.weight is not None:
            terms = terms * self.weight.to(log_probs.dtype)
        per_sample = terms.sum(dim=1)
        if self.reduction == "none":
            return per_sample
        return per_sample.sum() if self.reduction == "sum" else per_sample.mean()

    def extra_repr(self) -> str:
        weighted = "weighted" if self.weight is not None else "unweighted"
        return f"{weighted}, label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"


class FocalLoss(_ClassLoss):
    """Focal loss (Lin et al., 2017) over class logits: cross entropy scaled by ``(1 - p_y) ** gamma``, so
    that the well-classified majority counts less than the hard examples. ``gamma=0`` is cross entropy.

    Same arguments and reductions as :class:`CrossEntropyLoss` (``weight``, ``ignore_index``, probability
    targets); ``mean`` divides by the sum of the samples' class weights.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        weight: Tensor | Sequence[float] | None = None,
        reduction: str = "mean",
        ignore_index: int = -100,
    ) -> None:
        super().__init__(weight, reduction, ignore_index)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        log_probs = log_softmax(logits, dim=1)
        focus = (1.0 - log_probs.exp()).clamp(min=0.0) ** self.gamma
        if target.is_floating_point():
            q, keep = target.to(log_probs.dtype), None
        else:
            keep = target != self.ignore_index
            safe = torch.where(keep, target, torch.zeros_like(target))
            q = torch.nn.functional.one_hot(safe, logits.shape[1]).to(log_probs.dtype) * keep.unsqueeze(1)
        terms = -q * focus * log_probs
        weight = self.weight.to(log_probs.dtype) if self.weight is not None else None
        if weight is not None:
            terms = terms * weight
        per_sample = terms.sum(dim=1)
        if self.reduction == "none":
            return per_sample
        if self.reduction == "sum":
            return per_sample.sum()
        counted = (q * weight).sum() if weight is not None else q.sum()
        return per_sample.sum() / counted.clamp(min=torch.finfo(log_probs.dtype).tiny)


def balanced_class_weights(class_counts: Sequence[int]) -> list[float]:
    """Inverse-frequency weights ``N / (C * n_c)`` (mean weight 1 over samples); empty classes get weight 0."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    total, num_classes = counts.sum(), len(counts)
    weights = torch.where(counts > 0, total / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return [float(w) for w in weights]
