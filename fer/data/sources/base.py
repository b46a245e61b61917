"""What a data source is: the samples of each split, their labels and the class names of one data set format.

A source knows its files and its label codes, nothing else. Checking, packing, caching, augmentation,
loaders and the audit are shared (``fer.data``), so a new data set format is one small subclass of
:class:`DataSource` and one ``conf/data/<name>.yaml``.
"""

from __future__ import annotations

import inspect
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fer.data.decode import BadImageError, as_8bit, load_image

# fer's canonical class names: every source maps its own codes to these (contempt where a data set has it)
EXPRESSIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
CONTEMPT = "contempt"
SPLITS: tuple[str, ...] = ("train", "valid", "test")

Box = tuple[int, int, int, int]  # x, y, width, height in pixels


@dataclass(frozen=True, eq=False)
class SplitIndex:
    """The samples of one split with their class indices, in a stable order.

    A sample is an image file (``paths``, optionally cropped to ``boxes``) or a row of ``pixels`` (data
    sets distributed as tables, e.g. FER2013's CSV; ``paths`` then names the file and line).
    """

    split: str
    root: Path  # the folder or file this split comes from (named in messages)
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    # (size in bytes, modification time in ns) per sample, read while listing: what packs are keyed by
    fingerprints: tuple[tuple[int, int], ...] = ()
    # classes without a folder in this split (allowed in valid and test only)
    missing: tuple[str, ...] = ()
    boxes: tuple[Box | None, ...] | None = None
    pixels: np.ndarray | None = None  # (N, H, W) or (N, H, W, 3) uint8
    # (N, C) float32 label distributions (e.g. FER+'s votes) for soft-target training; None: hard labels
    targets: np.ndarray | None = None
    # per-sample values kept for later use (e.g. AffectNet's valence and arousal), each a tuple of N
    records: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int, grayscale: bool = True) -> Image.Image:
        """Sample ``i`` decoded as 8-bit ``L`` or ``RGB`` (:class:`BadImageError` when it cannot be)."""
        if self.pixels is not None:
            return as_8bit(Image.fromarray(self.pixels[i]), grayscale)
        return load_file_sample(self.paths[i], self.boxes[i] if self.boxes is not None else None, grayscale)

    def file_samples(self) -> list[tuple[str, Box | None]]:
        """(path, box) per sample, what worker processes decode (file-based splits only)."""
        return list(zip(self.paths, self.boxes or [None] * len(self), strict=True))

    def select(self, keep: Sequence[int]) -> SplitIndex:
        """The same split reduced to the samples at positions ``keep`` (e.g. without unreadable files)."""
        keep = list(keep)

        def pick(values):
            return tuple(values[i] for i in keep) if values else values

        return replace(
            self,
            paths=pick(self.paths),
            labels=pick(self.labels),
            fingerprints=pick(self.fingerprints),
            boxes=pick(self.boxes) if self.boxes is not None else None,
            pixels=self.pixels[keep] if self.pixels is not None else None,
            targets=self.targets[keep] if self.targets is not None else None,
            records={name: pick(values) for name, values in self.records.items()},
        )

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.class_names)
        for label in self.labels:
            counts[label] += 1
        return counts

    def key_lines(self) -> list[str]:
        """One line per sample (class, name, size, mtime, box): what a pack of this split is keyed by."""
        fingerprints = self.fingerprints or [file_fingerprint(p) for p in self.paths]
        boxes = self.boxes or [None] * len(self)
        names = self.class_names
        return [
            f"{names[label]}/{os.path.basename(path)}\0{nbytes}\0{mtime}\0{box}\n"
            for path, label, (nbytes, mtime), box in zip(
                self.paths, self.labels, fingerprints, boxes, strict=True
            )
        ]


def load_file_sample(path: str, box: Box | None, grayscale: bool = True) -> Image.Image:
    """An image file decoded as 8-bit ``L`` or ``RGB``, cropped to ``box`` (clipped to the image) if given."""
    image = load_image(path, grayscale)
    if box is None:
        return image
    x, y, w, h = box
    if w < 1 or h < 1:
        raise BadImageError(path, f"empty face box {box}")
    return image.crop((max(0, x), max(0, y), min(image.width, x + w), min(image.height, y + h)))


def file_fingerprint(path: str | Path) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of a file."""
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


class DataSource(ABC):
    """One data set format under ``root``: its class names and, per split, the samples and their labels.

    The arguments a source was built with are recorded (:meth:`config`), so a checkpoint can name the
    source it was trained on and ``fer.eval`` can build it again.
    """

    splits: tuple[str, ...] = SPLITS

    def __new__(cls, *args: Any, **kwargs: Any) -> DataSource:
        self = super().__new__(cls)
        bound = inspect.signature(cls.__init__).bind(self, *args, **kwargs)
        bound.apply_defaults()
        self._arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
        return self

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    @property
    @abstractmethod
    def class_names(self) -> tuple[str, ...]:
        """The class of label ``i`` is ``class_names[i]``."""

    @abstractmethod
    def index(self, split: str) -> SplitIndex:
        """The samples of ``split``, or a :class:`fer.errors.DataLayoutError` naming what is missing."""

    def config(self) -> dict[str, Any]:
        """``_target_`` and the arguments of this source, as plain data."""
        target = f"{type(self).__module__}.{type(self).__qualname__}"
        arguments = {k: _plain(v) for k, v in self._arguments.items()}
        return {"_target_": target, **arguments}

    def describe(self) -> str:
        return f"{type(self).__name__} at {self.root}"


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
