"""Decoding image files of any mode into 8-bit gray or RGB, with a clear error for a file that cannot be read.

Needs only PIL and numpy (no torch), so that serving an exported model stays light.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fer.errors import DataLayoutError

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


def _high_bit_to_8bit(image: Image.Image) -> Image.Image:
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


def as_8bit(image: Image.Image, grayscale: bool) -> Image.Image:
    """Any PIL image as 8-bit ``L`` (grayscale) or ``RGB``; alpha is dropped (not composited)."""
    if image.mode in HIGH_BIT_MODES:
        image = _high_bit_to_8bit(image)
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
        return as_8bit(image, grayscale)
    except (ValueError, OSError) as error:
        raise BadImageError(path, f"unsupported image mode {image.mode} ({error})") from None
