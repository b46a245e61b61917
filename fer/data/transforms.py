"""Image transforms in torch: the evaluation preprocessing on tensors and the per-image training augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from fer.data.preprocessing import Augmentation, Preprocessing


def _to_model_input(pre: Preprocessing) -> list:
    """PIL image -> normalized float tensor (gray replicated to 3 channels); geometric steps run before it,
    on the PIL image, where they are about twice as fast as on tensors."""
    channels = [v2.Grayscale(num_output_channels=3)] if pre.grayscale else []
    return [v2.ToImage(), *channels, v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]


def normalize(x: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """Float ``(B, C, S, S)`` in [0, 1] -> ImageNet-normalized, gray replicated to 3 channels (one fused
    multiply-add that writes the 3 channels directly)."""
    std = torch.tensor(pre.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    mean = torch.tensor(pre.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return torch.addcmul(-mean / std, x, 1.0 / std)


def to_model_input(images: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> normalized float ``(B, 3, S, S)``: bilinear antialiased resize, gray to
    3 channels, mean/std. The evaluation transform of every path (packed batches, files, inference)."""
    x = images.float().div_(255.0)
    size = pre.image_size
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return normalize(x, pre)


class EvalTransform:
    """Deterministic preprocessing of one decoded image (PIL ``L``/``RGB``) into a ``(3, S, S)`` tensor."""

    def __init__(self, pre: Preprocessing) -> None:
        self.pre = pre

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return to_model_input(v2.functional.pil_to_tensor(image)[None], self.pre)[0]


def build_eval_transform(pre: Preprocessing) -> EvalTransform:
    """Resize to a square ``image_size``, gray to 3 channels, scale to [0, 1], normalize."""
    return EvalTransform(pre)


def build_train_transform(pre: Preprocessing, aug: Augmentation) -> v2.Compose:
    """Random crop/flip/rotation/erasing around the same resize and normalization as evaluation."""
    size = (pre.image_size, pre.image_size)
    steps: list = []
    if aug.crop_scale:
        steps.append(
            v2.RandomResizedCrop(
                size, scale=tuple(aug.crop_scale), ratio=tuple(aug.crop_ratio), antialias=True
            )
        )
    else:
        steps.append(v2.Resize(size, antialias=True))
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip(p=aug.hflip))
    if aug.rotation:
        steps.append(v2.RandomRotation(degrees=aug.rotation, interpolation=v2.InterpolationMode.BILINEAR))
    steps.extend(_to_model_input(pre))
    if aug.erasing:
        steps.append(v2.RandomErasing(p=aug.erasing, scale=tuple(aug.erasing_scale), value=0))
    return v2.Compose(steps)
