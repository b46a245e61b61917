"""Freezing policies: which parts of a MobileNetV3 train, and frozen BatchNorm kept in eval mode."""

from __future__ import annotations

from torch import nn

from fer.errors import FERError

FREEZE_POLICIES = ("none", "backbone", "last_layer", "partial", "gradual")


def apply_freeze_policy(model: nn.Module, policy: str, trainable_blocks: int = 0) -> None:
    """Set ``requires_grad`` for ``model`` (a torchvision MobileNetV3) according to ``policy``.

    - ``none``: everything trains; ``backbone`` and ``gradual``: ``features`` frozen, the classifier trains
      (``gradual`` is unfrozen later by Lightning's ``BackboneFinetuning``); ``last_layer``: only the final
      Linear trains; ``partial``: the last ``trainable_blocks`` feature blocks and the classifier train.
    """
    if policy not in FREEZE_POLICIES:
        raise FERError(f"Unknown freeze policy {policy!r}: choose one of {list(FREEZE_POLICIES)}.")
    features: nn.Sequential = model.features
    model.requires_grad_(policy == "none")
    if policy in ("backbone", "gradual", "partial"):
        model.classifier.requires_grad_(True)
    if policy == "last_layer":
        model.classifier[-1].requires_grad_(True)
    if policy == "partial":
        if not 0 <= trainable_blocks <= len(features):
            raise FERError(
                f"freeze.trainable_blocks={trainable_blocks} is out of range: the backbone has "
                f"{len(features)} feature blocks."
            )
        for block in list(features)[len(features) - trainable_blocks :]:
            block.requires_grad_(True)


def set_frozen_batchnorm_eval(model: nn.Module) -> None:
    """Put every BatchNorm whose parameters are all frozen in eval mode, so its statistics stay fixed."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            frozen = bool(params) and not any(p.requires_grad for p in params)
            if frozen and module.training:
                module.eval()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
