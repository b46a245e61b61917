"""MobileNetV3 backbones from torchvision, with ImageNet or local weights and a 7-class head."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models
from torchvision.models import WeightsEnum

from fer.errors import IncompatibleCheckpointError, WeightsUnavailableError

log = logging.getLogger(__name__)

BACKBONES: dict[str, tuple[Callable[..., nn.Module], WeightsEnum]] = {
    "mobilenet_v3_small": (models.mobilenet_v3_small, models.MobileNet_V3_Small_Weights.IMAGENET1K_V1),
    "mobilenet_v3_large": (models.mobilenet_v3_large, models.MobileNet_V3_Large_Weights.IMAGENET1K_V2),
}
HEAD_KEYS = ("classifier.3.weight", "classifier.3.bias")  # the class layer, replaced for fer's classes


@functools.cache
def backbone_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """The shape of every weight of backbone ``name`` except its class layer (built on the meta device)."""
    factory, _ = BACKBONES[name]
    with torch.device("meta"):
        model = factory(weights=None)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if _compared(k)}


def _compared(key: str) -> bool:
    # BatchNorm's step counter is absent from some published state dicts and says nothing about the shape
    return key not in HEAD_KEYS and not key.endswith("num_batches_tracked")


def identify_backbone(state: Mapping[str, Any]) -> str | None:
    """The backbone whose weights (class layer excluded) have exactly the names and shapes in ``state``."""
    shapes = {k: tuple(v.shape) for k, v in state.items() if _compared(k) and hasattr(v, "shape")}
    return next((name for name in BACKBONES if backbone_shapes(name) == shapes), None)


def head_classes(state: Mapping[str, Any]) -> int | None:
    """The number of classes of the class layer in ``state`` (None if it has none)."""
    weight = state.get(HEAD_KEYS[0])
    return int(weight.shape[0]) if getattr(weight, "ndim", 0) == 2 else None


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
    if state and all(str(k).startswith("model.") for k in state):  # a fer checkpoint's network
        state = {k.removeprefix("model."): v for k, v in state.items()}
    return state


def _check_architecture(state: Mapping[str, Any], name: str, weights_path: str | Path) -> None:
    """Refuse weights of the other backbone with a message that names both (not a list of size mismatches);
    the class layer may have any number of classes: it is replaced."""
    found = identify_backbone(state)
    if found is None or found == name:
        return
    raise IncompatibleCheckpointError(
        f"model.weights_path={weights_path} holds {found} weights, but this run builds {name}: pass "
        f"model={found}, or point model.weights_path at {name} weights (torchvision's "
        f"{Path(BACKBONES[name][1].url).name}, or a fer checkpoint of {name})."
    )


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
        _check_architecture(state, name, weights_path)
    elif pretrained:
        state = _download_imagenet_weights(name, weights)
    if state is not None:
        head_keys = [k for k in HEAD_KEYS if k in state]
        if any(state[k].shape != model.state_dict()[k].shape for k in head_keys):
            state = {k: v for k, v in state.items() if k not in head_keys}
        source = f"model.weights_path={weights_path}" if weights_path else f"The ImageNet weights of {name}"
        fix = f"point it at a torchvision {name} state dict (.pth) or a fer checkpoint of {name}"
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as error:
            mismatches = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
            raise IncompatibleCheckpointError(
                f"{source} does not fit {name} ({'; '.join(mismatches[:3]) or error}): {fix}."
            ) from None
        missing = [k for k in missing if not k.startswith("classifier.3.")]
        if missing or unexpected:
            raise IncompatibleCheckpointError(
                f"{source} does not fit {name} (missing {missing[:5]}, unexpected {unexpected[:5]}): {fix}."
            )
    head: nn.Linear = model.classifier[-1]
    model.classifier[-1] = nn.Linear(head.in_features, num_classes)
    if bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum
    return model
