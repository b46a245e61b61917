"""MobileNetV3 backbones from torchvision, with ImageNet or local weights and a 7-class head."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision import models
from torchvision.models import WeightsEnum

from fer.errors import WeightsUnavailableError

log = logging.getLogger(__name__)

BACKBONES: dict[str, tuple[Callable[..., nn.Module], WeightsEnum]] = {
    "mobilenet_v3_small": (models.mobilenet_v3_small, models.MobileNet_V3_Small_Weights.IMAGENET1K_V1),
    "mobilenet_v3_large": (models.mobilenet_v3_large, models.MobileNet_V3_Large_Weights.IMAGENET1K_V2),
}


def _weights_cache_file(weights: WeightsEnum) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def _download_imagenet_weights(name: str, weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights (from torch hub's cache when present); a clear error when offline."""
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError, ValueError) as error:  # URLError is an OSError
        raise WeightsUnavailableError(
            f"Could not load the ImageNet weights of {name} ({type(error).__name__}: {error}). "
            f"Without network access, download {weights.url} elsewhere and either put it at "
            f"{_weights_cache_file(weights)} or pass model.weights_path=<file>; "
            "or train from scratch with model.pretrained=false."
        ) from None


def _read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A torchvision-style state dict from a local file (plain, or under a 'state_dict'/'model' key)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsUnavailableError(
            f"model.weights_path={file} does not exist: point it at a torchvision MobileNetV3 state dict "
            "(.pth), or unset it (model.weights_path=null)."
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsUnavailableError(
            f"model.weights_path={file} is not a readable PyTorch weights file ({error})."
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"model.weights_path={file} holds no state dict.")
    return state


def build_backbone(
    name: str = "mobilenet_v3_small",
    num_classes: int = 7,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    dropout: float = 0.2,
    bn_momentum: float | None = None,
) -> nn.Module:
    """A torchvision MobileNetV3 whose last classifier Linear is replaced by a ``num_classes`` one.

    ``weights_path`` (a local state dict) wins over ``pretrained`` (torchvision's ImageNet download).
    ``bn_momentum`` overrides torchvision's 0.01, which lags far behind in short runs from scratch.
    """
    if name not in BACKBONES:
        raise WeightsUnavailableError(f"Unknown backbone {name!r}: choose one of {sorted(BACKBONES)}.")
    factory, weights = BACKBONES[name]
    model = factory(weights=None, dropout=dropout)
    state = None
    if weights_path:
        state = _read_weights_file(weights_path)
    elif pretrained:
        state = _download_imagenet_weights(name, weights)
    if state is not None:
        head_keys = [k for k in ("classifier.3.weight", "classifier.3.bias") if k in state]
        if any(state[k].shape != model.state_dict()[k].shape for k in head_keys):
            state = {k: v for k, v in state.items() if k not in head_keys}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as error:
            raise WeightsUnavailableError(f"The weights do not fit {name}: {error}") from None
        missing = [k for k in missing if not k.startswith("classifier.3.")]
        if missing or unexpected:
            raise WeightsUnavailableError(
                f"The weights do not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}."
            )
    head: nn.Linear = model.classifier[-1]
    model.classifier[-1] = nn.Linear(head.in_features, num_classes)
    if bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum
    return model
