"""Backbones: any torchvision classification model by name, cut generically into blocks and a head.

``torchvision.models.get_model(name)`` builds the network; its final ``Linear`` (the ImageNet head) is
replaced by one for the data set's classes, and :func:`split_network` names its parts in forward order
(the feature blocks, the parameter-free steps such as pooling, the head), which is what the freeze policies,
the feature cache and the checks of weights files work on. Nothing here knows a model family by name.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models
from torchvision.models import WeightsEnum

from fer.errors import IncompatibleCheckpointError, WeightsUnavailableError

log = logging.getLogger(__name__)

# auxiliary classifiers only run in training mode and make forward return a tuple: built without them
AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")
SCRATCH_BN_MOMENTUM = (
    0.1  # PyTorch's default; torchvision's MobileNets use 0.01, tuned for long ImageNet runs
)


@dataclass(frozen=True)
class NetworkParts:
    """The parts of a classifier, as names of its submodules.

    ``steps``: the top-level steps in forward order (a ``Sequential`` before the head counts as its
    items); ``blocks``: those steps that have parameters and come before the head (the first is the stem);
    ``head``: the top-level child that holds the final ``Linear``; ``last_layer``: that ``Linear``.
    """

    steps: tuple[str, ...]
    blocks: tuple[str, ...]
    head: str
    last_layer: str

    @property
    def head_steps(self) -> tuple[str, ...]:
        return tuple(s for s in self.steps if s == self.head or s.startswith(f"{self.head}."))

    @property
    def body(self) -> tuple[str, ...]:
        """The top-level children before the head (what ``freeze=gradual`` unfreezes later)."""
        return tuple(dict.fromkeys(s.split(".")[0] for s in self.steps if s not in self.head_steps))


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def split_network(model: nn.Module) -> NetworkParts:
    """Name the parts of a torchvision classifier (whose top-level children run in registration order)."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise WeightsUnavailableError(
            f"{type(model).__name__} has no Linear classifier layer, which fer replaces for its classes: "
            "choose another model.backbone."
        )
    last_layer = linears[-1]
    head = last_layer.split(".")[0]
    steps: list[str] = []
    for name, child in model.named_children():
        if child is None or name.startswith(tuple(p.rstrip(".") for p in AUX_PREFIXES)):
            continue
        if name == head:
            if isinstance(child, nn.Sequential):
                steps.extend(f"{name}.{sub}" for sub, _ in child.named_children())
            else:
                steps.append(name)
            break
        if isinstance(child, nn.Sequential):
            steps.extend(f"{name}.{sub}" for sub, _ in child.named_children())
        else:
            steps.append(name)
    head_steps = {s for s in steps if s == head or s.startswith(f"{head}.")}
    blocks = tuple(s for s in steps if s not in head_steps and _has_parameters(model.get_submodule(s)))
    return NetworkParts(tuple(steps), blocks, head, last_layer)


def replace_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def backbone_names() -> list[str]:
    """Every classification model torchvision has (``model.backbone`` takes any of them)."""
    return sorted(models.list_models(module=models))


def imagenet_weights(name: str) -> WeightsEnum:
    return models.get_model_weights(name).DEFAULT


def _builder_arguments(name: str) -> dict[str, Any]:
    builder = models.get_model_builder(name)
    defaults = builder.__kwdefaults__ or {}
    extra = {}
    if "aux_logits" in defaults or name in ("googlenet", "inception_v3"):
        extra.update(aux_logits=False, init_weights=False)
    return extra


def _build(name: str) -> nn.Module:
    if name not in backbone_names():
        raise WeightsUnavailableError(
            f"model.backbone={name!r} is not a torchvision classification model: choose one of "
            f"torchvision.models.list_models(module=torchvision.models), e.g. mobilenet_v3_small, "
            "mobilenet_v3_large, resnet18, resnet50, efficientnet_b0, convnext_tiny, regnet_y_400mf, "
            "shufflenet_v2_x1_0."
        )
    return models.get_model(name, weights=None, **_builder_arguments(name))


@functools.cache
def _structure(name: str, cpu_fallback: bool = True) -> nn.Module | None:
    """Backbone ``name`` without weights, for its names and shapes: built on the meta device, or (for
    builders that compute with tensors, e.g. RegNet) on the CPU when ``cpu_fallback``; else None."""
    try:
        with torch.device("meta"):
            return _build(name)
    except (NotImplementedError, RuntimeError):
        return _build(name) if cpu_fallback else None


@functools.cache
def backbone_shapes(name: str, cpu_fallback: bool = True) -> tuple[str, dict[str, tuple[int, ...]]] | None:
    """The head's name and the shape of every weight outside it, of backbone ``name`` (None: not built)."""
    model = _structure(name, cpu_fallback)
    if model is None:
        return None
    head = split_network(model).head
    return head, {k: tuple(v.shape) for k, v in model.state_dict().items() if _compared(k, head)}


def _compared(key: str, head: str) -> bool:
    # BatchNorm's step counter is absent from some published state dicts and says nothing about the shape
    return not key.startswith((f"{head}.", *AUX_PREFIXES)) and not key.endswith("num_batches_tracked")


def identify_backbone(state: Mapping[str, Any], candidates: list[str] | None = None) -> str | None:
    """The torchvision backbone whose weights outside the head have exactly the names and shapes in ``state``.

    Without ``candidates`` every torchvision model that builds on the meta device is tried (a few seconds,
    for error messages); those that cannot (RegNet) only when named."""
    for name in candidates or backbone_names():
        try:
            known = backbone_shapes(name, cpu_fallback=candidates is not None)
        except Exception:  # a model torchvision cannot build here: not a candidate
            continue
        if known is None:
            continue
        head, expected = known
        shapes = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape") and _compared(k, head)}
        if shapes == expected:
            return name
    return None


def head_classes(state: Mapping[str, Any], name: str) -> int | None:
    """The number of classes of the final Linear in ``state``, a state dict of backbone ``name``."""
    head = split_network(_structure(name)).head
    weights = [v for k, v in state.items() if k.startswith(f"{head}.") and getattr(v, "ndim", 0) == 2]
    return int(weights[-1].shape[0]) if weights else None


def _weights_cache_file(weights: WeightsEnum) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def _download_imagenet_weights(name: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights (from torch hub's cache when present); a clear error when offline."""
    weights = imagenet_weights(name)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError, ValueError) as error:  # URLError is an OSError
        raise WeightsUnavailableError(
            f"Could not load the ImageNet weights of {name} ({type(error).__name__}: {error}). "
            f"Without network access, download {weights.url} elsewhere and either put it at "
            f"{_weights_cache_file(weights)} or pass model.weights_path=<file>; "
            "or train from scratch with model.pretrained=false."
        ) from None


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A torchvision-style state dict from a local file (plain, or under a 'state_dict'/'model' key, or a
    fer checkpoint, whose network weights are under ``model.``)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsUnavailableError(
            f"model.weights_path={file} does not exist: point it at a torchvision state dict (.pth) or a fer "
            "checkpoint, or unset it (model.weights_path=null)."
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
    if state and any(str(k).startswith("model.") for k in state):  # a fer checkpoint's network
        state = {k.removeprefix("model."): v for k, v in state.items() if str(k).startswith("model.")}
    return state


def _check_architecture(state: Mapping[str, Any], name: str, weights_path: str | Path) -> None:
    """Refuse weights of another backbone with a message that names both (not a list of size mismatches);
    the head may have any number of classes: it is replaced."""
    if identify_backbone(state, [name]) == name:
        return
    found = identify_backbone(state)
    if found is None:
        return  # unknown: the load below reports what does not fit
    raise IncompatibleCheckpointError(
        f"model.weights_path={weights_path} holds {found} weights, but this run builds {name}: pass "
        f"model.backbone={found}, or point model.weights_path at {name} weights (torchvision's "
        f"{Path(imagenet_weights(name).url).name}, or a fer checkpoint of {name})."
    )


def _load(model: nn.Module, state: Mapping[str, Any], name: str, source: str) -> None:
    """Load ``state`` into ``model``; the final Linear is left out (it is replaced for fer's classes)."""
    parts = split_network(model)
    head = f"{parts.head}."
    own = model.state_dict()
    # weights under the head that this model does not have in that shape are another head's (replaced)
    state = {
        k: v
        for k, v in state.items()
        if not k.startswith(head) or getattr(own.get(k), "shape", None) == v.shape
    }
    fix = f"point it at a torchvision {name} state dict (.pth) or a fer checkpoint of {name}"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        mismatches = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        raise IncompatibleCheckpointError(
            f"{source} does not fit {name} ({'; '.join(mismatches[:3]) or error}): {fix}."
        ) from None
    missing = [k for k in missing if not k.startswith(f"{parts.last_layer}.")]
    unexpected = [k for k in unexpected if not k.startswith(AUX_PREFIXES)]
    if missing or unexpected:
        raise IncompatibleCheckpointError(
            f"{source} does not fit {name} (missing {missing[:5]}, unexpected {unexpected[:5]}): {fix}."
        )


def reset_classifier(model: nn.Module, num_classes: int, dropout: float | None = None) -> NetworkParts:
    """Replace the final Linear by a new one for ``num_classes``; ``dropout`` sets the head's dropout
    (a head without one gets a Dropout before the new Linear when ``dropout`` > 0)."""
    parts = split_network(model)
    last: nn.Linear = model.get_submodule(parts.last_layer)
    new: nn.Module = nn.Linear(last.in_features, num_classes)
    head = model.get_submodule(parts.head)
    dropouts = [m for m in head.modules() if isinstance(m, nn.Dropout)]
    if dropout is not None:
        for module in dropouts:
            module.p = float(dropout)
        if not dropouts and dropout > 0:
            new = nn.Sequential(nn.Dropout(float(dropout)), new)
    replace_submodule(model, parts.last_layer, new)
    return split_network(model)


def build_backbone(
    name: str = "mobilenet_v3_small",
    num_classes: int = 7,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    dropout: float | None = 0.2,
    bn_momentum: float | None = None,
) -> tuple[nn.Module, NetworkParts]:
    """A torchvision classifier with a head for ``num_classes`` classes, and its parts.

    ``weights_path`` (a local state dict or fer checkpoint) wins over ``pretrained`` (torchvision's ImageNet
    weights). ``bn_momentum=None`` keeps the architecture's BatchNorm momentum when weights are loaded and
    uses 0.1 from scratch (torchvision's MobileNets set 0.01, which leaves the running statistics far behind
    the weights in a short run from scratch).
    """
    model = _build(name)
    state = None
    if weights_path:
        state = read_weights_file(weights_path)
        _check_architecture(state, name, weights_path)
        source = f"model.weights_path={weights_path}"
    elif pretrained:
        state = _download_imagenet_weights(name)
        source = f"The ImageNet weights of {name}"
    if state is not None:
        _load(model, state, name, source)
    parts = reset_classifier(model, num_classes, dropout)
    momentum = (
        bn_momentum if bn_momentum is not None else (None if state is not None else SCRATCH_BN_MOMENTUM)
    )
    if momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = momentum
    return model, parts
