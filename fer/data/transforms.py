"""Image decoding and transforms: one preprocessing shared by training, evaluation and inference."""

from __future__ import annotations

import contextlib
import os
import struct
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


# what PIL raises on a file it cannot decode: missing, empty, not an image, truncated, corrupt, too large
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)
HIGH_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


class BadImageError(DataLayoutError):
    """An image file that cannot be decoded; ``path`` and a short ``reason`` (kept for skip lists)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"Cannot read image {path}: {reason}. Replace or delete the file and run again.")

    def __reduce__(self):  # rebuilt from (path, reason) when it crosses a process boundary
        return type(self), (self.path, self.reason)


def _unreadable_reason(path: str | Path, error: BaseException) -> str:
    """Why a file failed to decode, in words: broken links and empty files say so, else PIL's message."""
    if os.path.islink(path) and not os.path.exists(path):
        return f"broken symbolic link to {os.readlink(path)}"
    with contextlib.suppress(OSError):
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    if isinstance(error, UnidentifiedImageError):
        return "not an image file (PIL cannot identify its format)"
    return " ".join(str(error).split()) or type(error).__name__


def _to_8bit(image: Image.Image) -> Image.Image:
    """High-bit-depth gray (``I;16``, ``I``, ``F``) rescaled to 8 bits; PIL's own convert would clip at 255.

    ``I;16`` spans 0-65535; ``I`` and ``F`` span 0-255, 0-65535 or their own maximum, whichever is the
    smallest that holds the values (``F`` images within [0, 1] span 0-1)."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        top = 65535.0
    else:
        peak = float(array.max()) if array.size else 0.0
        if image.mode == "F" and peak <= 1.0:
            top = 1.0
        else:
            top = 255.0 if peak <= 255.0 else (65535.0 if peak <= 65535.0 else peak)
    return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


def _to_8bit_mode(image: Image.Image, grayscale: bool) -> Image.Image:
    if image.mode in HIGH_BIT_MODES:
        image = _to_8bit(image)
    elif image.mode == "LAB":  # PIL has no LAB -> RGB conversion: use the lightness channel as gray
        image = image.getchannel("L")
    if image.mode in ("P", "PA") or (image.mode == "LA" and not grayscale):
        image = image.convert("RGBA")
    return image.convert("L" if grayscale else "RGB")


def load_image(path: str | Path, grayscale: bool = True) -> Image.Image:
    """Decode any image mode into 8-bit ``L`` (grayscale) or ``RGB``; alpha is dropped (not composited).

    A file that cannot be decoded (missing, empty, not an image, truncated, an unsupported mode) raises
    :class:`BadImageError` naming it."""
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened
    except DECODE_ERRORS as error:
        raise BadImageError(path, _unreadable_reason(path, error)) from None
    try:
        return _to_8bit_mode(image, grayscale)
    except (ValueError, OSError) as error:
        raise BadImageError(path, f"unsupported image mode {image.mode} ({error})") from None


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
