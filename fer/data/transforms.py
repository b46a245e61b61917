"""Image decoding and transforms: one preprocessing shared by training, evaluation and inference."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2

from fer.errors import DataLayoutError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """What turns any image file into the model's input; saved in every checkpoint."""

    image_size: int = 112
    grayscale: bool = True
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def as_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class Augmentation:
    """Train-time augmentation; each part is off when set to ``None`` or 0."""

    crop_scale: Sequence[float] | None = (0.8, 1.0)
    crop_ratio: Sequence[float] = (0.9, 1.1)
    hflip: float = 0.5
    rotation: float = 10.0
    erasing: float = 0.0
    erasing_scale: Sequence[float] = field(default=(0.02, 0.15))


def _to_8bit(image: Image.Image) -> Image.Image:
    """High-bit-depth gray (``I;16``, ``I``, ``F``) rescaled to 8 bits; PIL's own convert would clip at 255."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        top = 65535.0
    else:
        top = max(float(array.max()), 1.0)
        top = 255.0 if top <= 255.0 else (65535.0 if top <= 65535.0 else top)
    return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


def load_image(path: str | Path, grayscale: bool = True) -> Image.Image:
    """Decode any image mode into 8-bit ``L`` (grayscale) or ``RGB``; a clear error names a broken file."""
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataLayoutError(
            f"Cannot read image {path}: {error}. Replace or delete the file and run again."
        ) from None
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _to_8bit(image)
    if image.mode in ("P", "PA") or (image.mode == "LA" and not grayscale):
        image = image.convert("RGBA")
    return image.convert("L" if grayscale else "RGB")


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
