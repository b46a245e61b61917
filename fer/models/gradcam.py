"""Grad-CAM for any backbone: where in the face the evidence for a class was.

The map is taken at the network's last feature map that is at least 4 x 4 at the model's input size (the
last of its blocks with such an output, found by one probe forward pass, so it works for every torchvision
backbone of the registry): at 224 px that is the last convolutional block, as in the Grad-CAM paper; at the
48-64 px of FER models the last block's 2 x 2 map would say nothing about where, and a stride-16 block
answers instead. The gradient
of the class logit with respect to that map, averaged over its positions, weighs its channels; the weighted
sum, with negative values cut, is upsampled to the input size and scaled to [0, 1] per image. Written with
hooks over the torchvision network (the ``grad-cam`` package needs ``opencv-python``, which clashes with the
``opencv-python-headless`` fer depends on).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

OVERLAY_ALPHA = 0.45
MIN_MAP_SIDE = 4


def feature_layer(model: nn.Module, block_names: Sequence[str], image_size: int) -> str:
    """The name of the last block whose output is a feature map ``(B, K, h, w)`` with h, w >= 4 (the
    last block with a 4-D output when none is that large)."""
    outputs: dict[str, tuple[int, ...]] = {}

    def shape(name: str):
        return lambda _m, _i, out: outputs.__setitem__(name, tuple(getattr(out, "shape", ())))

    hooks = [model.get_submodule(name).register_forward_hook(shape(name)) for name in block_names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    spatial = [name for name in block_names if len(outputs.get(name, ())) == 4]
    if not spatial:
        raise ValueError("the network has no block with a 4-D feature map: Grad-CAM needs one")
    large = [name for name in spatial if min(outputs[name][2:]) >= MIN_MAP_SIDE]
    return (large or spatial)[-1]


def grad_cam(module, images: Tensor, classes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Grad-CAM maps ``(B, S, S)`` in [0, 1] of a :class:`~fer.models.FERModule` for normalized model inputs
    ``(B, 3, S, S)``, for ``classes`` (default: the predicted ones), and the logits ``(B, C)``. Works inside
    Lightning's validation (which runs in inference mode) and under any freeze policy; no weight gets a
    gradient."""
    network = module.model
    name = module.__dict__.get("gradcam_layer")
    if name is None:
        name = feature_layer(network, module.parts.blocks, module.preprocessing.image_size)
        module.__dict__["gradcam_layer"] = name
    captured: dict[str, Tensor] = {}

    def keep(_module: nn.Module, _inputs: object, output: Tensor) -> Tensor:
        # the rest of the network runs on a leaf copy of the map: its gradient, not the weights'
        captured["map"] = output.detach().requires_grad_(True)
        return captured["map"].clone()  # not the leaf itself: the next layer may work in place

    was_training = network.training
    hook = network.get_submodule(name).register_forward_hook(keep)
    try:
        network.eval()
        with torch.inference_mode(False), torch.enable_grad():
            x = images.detach().clone().to(next(network.parameters()).device)
            logits = network(x)
            chosen = logits.argmax(dim=1) if classes is None else classes.to(logits.device)
            (gradient,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), captured["map"])
            feature_map = captured["map"].detach()
            weights = gradient.mean(dim=(2, 3), keepdim=True)
            cam = F.relu((weights * feature_map).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            peak = cam.flatten(1).max(dim=1).values.clamp(min=1e-12)
            cam = cam / peak[:, None, None]
    finally:
        hook.remove()
        network.train(was_training)
    return cam.cpu(), logits.detach().cpu()


def overlays(images: Tensor, maps: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """The model inputs as the model saw them (normalization undone) with their maps blended on top in the
    ``jet`` colours: ``(B, 3, S, S)`` in [0, 1]."""
    from matplotlib import colormaps

    pictures = (images.detach().float().cpu() * torch.tensor(std).view(-1, 1, 1)) + torch.tensor(mean).view(
        -1, 1, 1
    )
    heat = torch.from_numpy(colormaps["jet"](maps.numpy())[..., :3]).permute(0, 3, 1, 2).float()
    return ((1 - OVERLAY_ALPHA) * pictures.clamp(0, 1) + OVERLAY_ALPHA * heat).clamp(0, 1)


def overlay_image(overlay: Tensor, scale: int = 4):
    """One overlay ``(3, S, S)`` as a PIL image, enlarged ``scale`` times (nearest: the pixels stay visible)."""
    from PIL import Image

    array = (overlay.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(array)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
