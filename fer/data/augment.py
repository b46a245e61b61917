"""Transforms on whole uint8 batches, on the device the model runs on, with random parameters per image.

torchvision's ``transforms.v2`` samples one set of parameters per call, so a batch would share one crop.
kornia samples per image, but draws from the global RNG (a restart cannot reproduce an epoch) and chains
one resampling per step (about 450 images/s at 224 px on 2 CPU cores). Here crop, flip and rotation are
folded into one affine map per image and applied with a single ``grid_sample``; every random number comes
from a ``torch.Generator`` seeded per batch. The parameters follow torchvision's definitions
(RandomResizedCrop, RandomHorizontalFlip, RandomRotation, RandomErasing).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fer.data.preprocessing import Augmentation, Preprocessing
from fer.data.transforms import normalize

TRIES = 10  # as torchvision: attempts at a crop or an erased box before the fallback


def _uniform(shape: tuple[int, ...], low: float, high: float, g: torch.Generator, device) -> Tensor:
    return torch.rand(shape, generator=g, device=device) * (high - low) + low


def _first_valid(valid: Tensor, values: Tensor, fallback: Tensor) -> Tensor:
    """Per row, the value at the first valid try (as torchvision's retry loops), else ``fallback``."""
    first = valid.float().argmax(dim=1, keepdim=True)
    chosen = values.gather(1, first).squeeze(1)
    return torch.where(valid.any(dim=1), chosen, fallback)


def _crop_boxes(
    batch: int, height: int, width: int, aug: Augmentation, g: torch.Generator, device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RandomResizedCrop's box per image: (top, left, crop height, crop width) in pixels."""
    full_h = torch.full((batch,), float(height), device=device)
    full_w = torch.full((batch,), float(width), device=device)
    zeros = torch.zeros(batch, device=device)
    if not aug.crop_scale:
        return zeros, zeros, full_h, full_w
    area = height * width
    low, high = (float(v) for v in aug.crop_scale)
    log_r = (math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1]))
    target = _uniform((batch, TRIES), low, high, g, device) * area
    ratio = torch.exp(_uniform((batch, TRIES), *log_r, g, device))
    crop_w = torch.sqrt(target * ratio).round()
    crop_h = torch.sqrt(target / ratio).round()
    valid = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    # torchvision's fallback: a centred crop at the allowed ratio closest to the image's (whole image here)
    in_ratio = width / height
    if in_ratio < min(aug.crop_ratio):
        fb_w, fb_h = float(width), float(round(width / min(aug.crop_ratio)))
    elif in_ratio > max(aug.crop_ratio):
        fb_h, fb_w = float(height), float(round(height * max(aug.crop_ratio)))
    else:
        fb_w, fb_h = float(width), float(height)
    crop_w = _first_valid(valid, crop_w, torch.full_like(full_w, fb_w))
    crop_h = _first_valid(valid, crop_h, torch.full_like(full_h, fb_h))
    top = torch.floor(torch.rand(batch, generator=g, device=device) * (height - crop_h + 1))
    left = torch.floor(torch.rand(batch, generator=g, device=device) * (width - crop_w + 1))
    fallback = ~valid.any(dim=1)
    top = torch.where(fallback, torch.round((height - crop_h) / 2), top)
    left = torch.where(fallback, torch.round((width - crop_w) / 2), left)
    return top, left, crop_h, crop_w


def _erase(x: Tensor, aug: Augmentation, g: torch.Generator) -> Tensor:
    """RandomErasing (value 0 after normalization) with its own box per image."""
    batch, _, height, width = x.shape
    device = x.device
    apply = torch.rand(batch, generator=g, device=device) < aug.erasing
    area = height * width
    target = _uniform((batch, TRIES), *(float(v) for v in aug.erasing_scale), g, device) * area
    ratio = torch.exp(_uniform((batch, TRIES), math.log(0.3), math.log(3.3), g, device))
    box_h = torch.sqrt(target * ratio).round()
    box_w = torch.sqrt(target / ratio).round()
    valid = (box_h < height) & (box_w < width)
    apply &= valid.any(dim=1)
    box_h = _first_valid(valid, box_h, torch.zeros(batch, device=device))
    box_w = _first_valid(valid, box_w, torch.zeros(batch, device=device))
    top = torch.floor(torch.rand(batch, generator=g, device=device) * (height - box_h + 1))
    left = torch.floor(torch.rand(batch, generator=g, device=device) * (width - box_w + 1))
    rows = torch.arange(height, device=device).view(1, -1, 1)
    cols = torch.arange(width, device=device).view(1, 1, -1)
    inside = (
        (rows >= top.view(-1, 1, 1))
        & (rows < (top + box_h).view(-1, 1, 1))
        & (cols >= left.view(-1, 1, 1))
        & (cols < (left + box_w).view(-1, 1, 1))
        & apply.view(-1, 1, 1)
    )
    return x.masked_fill(inside.unsqueeze(1), 0.0)


class BatchAugmentation:
    """Train-time transform of a uint8 batch: the same options as the per-image path, sampled per image."""

    def __init__(self, pre: Preprocessing, aug: Augmentation) -> None:
        self.pre = pre
        self.aug = aug

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        batch, _, height, width = images.shape
        device = images.device
        size = self.pre.image_size
        aug = self.aug
        top, left, crop_h, crop_w = _crop_boxes(batch, height, width, aug, generator, device)
        flip = torch.rand(batch, generator=generator, device=device) < float(aug.hflip or 0.0)
        angle = _uniform((batch,), -float(aug.rotation or 0), float(aug.rotation or 0), generator, device)
        angle = angle * (math.pi / 180.0)

        # one affine map per image, output -> source, in normalized coordinates: rotate, flip, then place
        # the unit square on the crop box (output pixel centres follow align_corners=False). Built by
        # broadcasting: F.affine_grid's batched matmul is several times slower on CPU for this shape.
        cos, sin = torch.cos(angle), torch.sin(angle)
        sign = 1.0 - 2.0 * flip.float()
        coords = (torch.arange(size, device=device, dtype=torch.float32) * 2 + 1) / size - 1
        out_x, out_y = coords.view(1, 1, size), coords.view(1, size, 1)

        def plane(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
            """a * x + b * y + c for every output pixel of every image: (B, S, S)."""
            return torch.addcmul(
                torch.addcmul(c.view(-1, 1, 1), b.view(-1, 1, 1), out_y), a.view(-1, 1, 1), out_x
            )

        scale_x, scale_y = crop_w / width, crop_h / height
        shift_x = (2 * left + crop_w) / width - 1
        shift_y = (2 * top + crop_h) / height - 1
        src_x = plane(scale_x * sign * cos, scale_x * sign * sin, shift_x)
        src_y = plane(-scale_y * sin, scale_y * cos, shift_y)
        x = images.float().div_(255.0)
        x = F.grid_sample(x, torch.stack((src_x, src_y), dim=-1), padding_mode="border", align_corners=False)
        if aug.rotation:
            # rotation leaves black corners, as torchvision's: points outside the rotated crop
            zero = torch.zeros_like(cos)
            u, v = plane(cos, sin, zero), plane(-sin, cos, zero)
            x = x.masked_fill(((u.abs() > 1) | (v.abs() > 1)).unsqueeze(1), 0.0)
        x = normalize(x, self.pre)
        if aug.erasing:
            x = _erase(x, aug, generator)
        return x
