"""What turns an image into the model's input, as data: saved in every checkpoint and exported file.

Needs neither torch nor torchvision: :func:`model_input` applies the evaluation preprocessing with PIL and
numpy alone (what a served ONNX model uses); ``fer.data.transforms`` is the torch version of the same steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from fer.data.decode import as_8bit

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


def model_input(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """A decoded 8-bit ``L`` or ``RGB`` image as the model's float32 input ``(3, S, S)``: resized to
    ``S x S`` (bilinear, antialiased, in floating point), gray replicated to 3 channels, scaled to [0, 1],
    normalized with the mean and std. The same numbers as ``fer.data.transforms.to_model_input``."""
    size = (pre.image_size, pre.image_size)
    planes = []
    for band in as_8bit(image, pre.grayscale).split():
        plane = band.convert("F")
        if plane.size != size:
            plane = plane.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
        planes.append(np.asarray(plane, dtype=np.float32) / np.float32(255.0))
    x = np.stack(planes * 3 if len(planes) == 1 else planes)
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(-1, 1, 1)
    return (x - mean) / std
