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


def _forward_order(model: nn.Module) -> list[nn.Module]:
    """MobileNetV3's top-level steps in the order ``forward`` runs them."""
    return [*model.features, model.avgpool, *model.classifier]


def _has_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def set_frozen_eval(model: nn.Module) -> None:
    """Keep what is frozen fixed: the frozen front of the network (everything before the first trainable
    step, dropout included) in eval mode, and every BatchNorm whose parameters are frozen, wherever it is.

    The frozen front then gives the same output for the same image every time, which is also what lets
    ``data.feature_cache`` compute it once.
    """
    for step in _forward_order(model):
        if _has_trainable(step):
            break
        if step.training:
            step.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            frozen = bool(params) and not any(p.requires_grad for p in params)
            if frozen and module.training:
                module.eval()


def split_frozen(model: nn.Module, policy: str) -> tuple[nn.Module, nn.Module]:
    """(frozen extractor, trainable head) for the policies whose frozen part never changes during a run.

    ``backbone``: features + pooling | classifier. ``last_layer``: everything but the final Linear | it.
    """
    if policy not in ("backbone", "last_layer"):
        raise FERError(
            f"data.feature_cache=true needs freeze=backbone or freeze=last_layer (the frozen part must stay "
            f"fixed for the whole run); this run uses freeze={policy}. Set data.feature_cache=false."
        )
    front: list[nn.Module] = [model.features, model.avgpool, nn.Flatten(1)]
    head: nn.Module = model.classifier
    if policy == "last_layer":
        front.extend(model.classifier[:-1])
        head = model.classifier[-1]
    return nn.Sequential(*front), head


def fuse_conv_bn(module: nn.Module) -> nn.Module:
    """A copy of an eval-mode ``module`` with every BatchNorm folded into the convolution before it."""
    from torch.fx.experimental.optimization import fuse

    return fuse(module)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
