"""Packed splits: every image of a split decoded once into one uint8 array, memory-mapped afterwards.

MMAFEDB is 128K files of 48x48 pixels: decoding them with PIL on every epoch costs more than the model on
a small GPU. A pack is ``N x C x H x W`` uint8 (C = 1 for grayscale) plus int64 labels (and, for sources
with soft labels, float32 targets), stored in a cache folder under a key made of the split's samples
(names, sizes, modification times, boxes, labels), the pack size and the colour mode: a changed data set
re-packs, an unchanged one is memory-mapped in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fer.data.decode import DECODE_ERRORS, BadImageError
from fer.data.sources.base import Box, SplitIndex, load_file_sample
from fer.errors import DataLayoutError, FERError
from fer.files import OutputWriteError, atomic_write_text, building_folder
from fer.workers import map_chunks

log = logging.getLogger(__name__)

PACK_FORMAT = 2
PACK_MARKER = "pack.json"
ON_BAD_IMAGE = ("skip", "error")
SKIPPED_FILE = "skipped.json"  # in a pack folder: the samples left out of it, by position in the split

# (path, reason) of a sample that could not be decoded
BadImage = tuple[str, str]


@dataclass(frozen=True)
class PackedSplit:
    """A decoded split: ``images`` uint8 ``(N, C, H, W)``, ``labels`` int64 ``(N,)`` and, for soft labels,
    ``targets`` float32 ``(N, K)``; on the CPU or a device.

    ``skipped``: the split's samples that could not be decoded, left out of ``images`` and ``labels``."""

    split: str
    images: torch.Tensor
    labels: torch.Tensor
    key: str
    skipped: tuple[BadImage, ...] = ()
    targets: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> PackedSplit:
        targets = self.targets.to(device) if self.targets is not None else None
        return PackedSplit(
            self.split, self.images.to(device), self.labels.to(device), self.key, self.skipped, targets
        )


def native_size(index: SplitIndex, sample: int = 256) -> int:
    """The most common image side among the first ``sample`` readable samples (file headers only)."""
    if index.pixels is not None:
        return int(max(index.pixels.shape[1:3]))
    sizes: Counter[int] = Counter()
    for path, box in index.file_samples()[: sample * 4]:
        if box is not None:
            sizes[max(box[2], box[3])] += 1
        else:
            try:
                with Image.open(path) as image:
                    sizes[max(image.size)] += 1
            except DECODE_ERRORS:
                continue
        if sizes.total() >= sample:
            break
    if not sizes:
        raise DataLayoutError(
            f"None of the first {sample * 4} images under {index.root} can be read: replace them with image files."
        )
    return sizes.most_common(1)[0][0]


def split_key(index: SplitIndex, recipe: list) -> str:
    """A digest of ``recipe`` and the split's samples: names, sizes, mtimes, boxes, labels, soft targets."""
    digest = hashlib.sha256(json.dumps(recipe).encode())
    digest.update("".join(index.key_lines()).encode())
    if index.targets is not None:
        digest.update(np.ascontiguousarray(index.targets, dtype=np.float32).tobytes())
    return digest.hexdigest()[:20]


def pack_key(index: SplitIndex, size: int, grayscale: bool) -> str:
    """A digest of everything the pack depends on: the samples, labels, size and colour mode."""
    return split_key(index, [PACK_FORMAT, size, grayscale, list(index.class_names)])


def check_bad_image_mode(on_bad_image: str) -> None:
    if on_bad_image not in ON_BAD_IMAGE:
        raise FERError(
            f"data.on_bad_image={on_bad_image!r} is not one of {list(ON_BAD_IMAGE)}: skip leaves unreadable "
            "images out (listed in the run folder), error stops at the first."
        )


def bad_images_error(index: SplitIndex, bad: Sequence[BadImage]) -> DataLayoutError:
    """One message naming the unreadable samples of a split (the first few) and the two ways on."""
    shown = "; ".join(f"{path} ({reason})" for path, reason in bad[:3])
    more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
    return DataLayoutError(
        f"Cannot read {len(bad)} image(s) in {index.root}: {shown}{more}. Replace or delete the file(s), or "
        "set data.on_bad_image=skip to leave them out (they are then listed in skipped_images.txt in the run "
        "folder)."
    )


def _no_readable_images(index: SplitIndex, bad: Sequence[BadImage]) -> DataLayoutError:
    path, reason = bad[0]
    return DataLayoutError(
        f"None of the {len(index)} images in {index.root} can be read (the first: {path}: {reason}). "
        "Replace them with image files."
    )


def _as_array(image: Image.Image, size: int, grayscale: bool) -> np.ndarray:
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if grayscale else array.transpose(2, 0, 1)


def _decode_chunk(
    samples: Sequence[tuple[str, Box | None]], start: int, array_path: str, size: int, grayscale: bool
) -> list[tuple[int, str]]:
    """Decode ``samples`` into rows ``start...`` of the pack file (each worker writes its own rows); returns
    the (row, reason) of the samples that cannot be decoded (their rows stay zero)."""
    images = np.load(array_path, mmap_mode="r+")
    bad: list[tuple[int, str]] = []
    for offset, (path, box) in enumerate(samples):
        try:
            images[start + offset] = _as_array(load_file_sample(path, box, grayscale), size, grayscale)
        except BadImageError as error:
            bad.append((start + offset, error.reason))
    images.flush()
    return bad


def _check_chunk(
    samples: Sequence[tuple[str, Box | None]], start: int, grayscale: bool
) -> list[tuple[int, str]]:
    """Decode ``samples`` (and drop the pixels); the (position, reason) of those that cannot be decoded."""
    bad: list[tuple[int, str]] = []
    for offset, (path, box) in enumerate(samples):
        try:
            load_file_sample(path, box, grayscale)
        except BadImageError as error:
            bad.append((start + offset, error.reason))
    return bad


def _bad_positions(results: list[tuple[int, list[tuple[int, str]]]]) -> list[tuple[int, str]]:
    return sorted(item for _, bad in results for item in bad)


def _write_pack(
    index: SplitIndex, folder: Path, size: int, grayscale: bool, workers: int | None, progress: bool
) -> None:
    """Decode the split into ``folder``; samples that cannot be decoded are left out (and listed in it)."""
    channels = 1 if grayscale else 3
    fix = "Set data.cache_dir to a folder of fer's own (data/cache by default)."
    with building_folder(folder, PACK_MARKER, "packed data", fix, replace=False) as tmp:
        array_path = str(tmp / "images.npy")
        shape = (len(index), channels, size, size)
        images = np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8, shape=shape)
        if index.pixels is not None:
            for i in range(len(index)):
                images[i] = _as_array(index.load(i, grayscale), size, grayscale)
            bad: list[tuple[int, str]] = []
        else:
            images.flush()
            args = (array_path, size, grayscale)
            results = map_chunks(
                _decode_chunk, index.file_samples(), args, workers=workers, desc=f"packing {index.split}",
                progress=progress,
            )  # fmt: skip
            bad = _bad_positions(results)
        del images
        labels = np.asarray(index.labels, dtype=np.int64)
        targets = index.targets
        if bad:
            if len(bad) == len(index):
                raise _no_readable_images(index, [(index.paths[i], reason) for i, reason in bad])
            keep = np.setdiff1d(np.arange(len(index)), [i for i, _ in bad])
            _keep_rows(array_path, keep)
            labels = labels[keep]
            targets = targets[keep] if targets is not None else None
        np.save(tmp / "labels.npy", labels)
        if targets is not None:
            np.save(tmp / "targets.npy", np.asarray(targets, dtype=np.float32))
        names = index.class_names
        skipped = [
            {
                "position": i,
                "file": f"{names[index.labels[i]]}/{os.path.basename(index.paths[i])}",
                "reason": r,
            }
            for i, r in bad
        ]
        (tmp / SKIPPED_FILE).write_text(json.dumps(skipped, indent=1) + "\n")
        meta = {"format": PACK_FORMAT, "split": index.split, "root": str(index.root), "count": len(labels)}
        meta.update(skipped=len(bad), size=size, grayscale=grayscale)
        (tmp / PACK_MARKER).write_text(json.dumps(meta) + "\n")


def _keep_rows(array_path: str, keep: np.ndarray) -> None:
    """Rewrite the ``.npy`` file at ``array_path`` with only the rows ``keep`` (in blocks: no full copy in RAM)."""
    full = np.load(array_path, mmap_mode="r")
    kept_path = f"{array_path}.kept.npy"
    kept = np.lib.format.open_memmap(
        kept_path, mode="w+", dtype=full.dtype, shape=(len(keep), *full.shape[1:])
    )
    for start in range(0, len(keep), 8192):
        kept[start : start + 8192] = full[keep[start : start + 8192]]
    kept.flush()
    del kept, full
    os.replace(kept_path, array_path)


def _read_skipped(path: Path, index: SplitIndex) -> tuple[BadImage, ...]:
    """The samples a pack (or check) left out, as paths of this index."""
    if not path.is_file():
        return ()
    return tuple((index.paths[row["position"]], row["reason"]) for row in json.loads(path.read_text()))


def pack_split(
    index: SplitIndex,
    cache_dir: str | Path,
    size: int | None = None,
    grayscale: bool = True,
    workers: int | None = None,
    progress: bool = True,
    on_bad_image: str = "skip",
) -> PackedSplit:
    """The split decoded into a uint8 pack (made on first use, memory-mapped afterwards).

    ``size`` is the side of the stored images; ``None`` keeps the native size of the samples (48 for
    MMAFEDB). Images of another size are resized to it once, at packing time. Samples that cannot be
    decoded are left out of the pack and listed in ``PackedSplit.skipped`` (``on_bad_image="skip"``), or
    raise a :class:`DataLayoutError` naming them (``"error"``, also when the pack was made before).
    """
    check_bad_image_mode(on_bad_image)
    if len(index) == 0:
        raise DataLayoutError(f"No images to pack in {index.root}.")
    size = int(size) if size else native_size(index)
    key = pack_key(index, size, grayscale)
    folder = Path(cache_dir).expanduser() / f"{index.split}-{key}"
    if not (folder / PACK_MARKER).is_file():
        start = time.perf_counter()
        try:
            _write_pack(index, folder, size, grayscale, workers, progress)
        except FileExistsError:
            pass  # another process (a DDP rank) packed it first
        except OSError as error:
            raise DataLayoutError(
                f"Cannot write the packed data to {folder.parent}: {error}. Set data.cache_dir to a writable "
                "folder, or data.packed=false to decode the image files on every epoch."
            ) from None
        seconds = time.perf_counter() - start
        log.info(
            "Packed %s: %d images at %dx%d in %.1fs (%.0f images/s) into %s",
            index.split, len(index), size, size, seconds, len(index) / max(seconds, 1e-9), folder,
        )  # fmt: skip
    skipped = _read_skipped(folder / SKIPPED_FILE, index)
    if skipped and on_bad_image == "error":
        raise bad_images_error(index, skipped)
    # copy-on-write mapping: pages are read lazily and the tensors are writable without touching the file
    images = torch.from_numpy(np.load(folder / "images.npy", mmap_mode="c"))
    labels = torch.from_numpy(np.load(folder / "labels.npy"))
    targets_file = folder / "targets.npy"
    targets = torch.from_numpy(np.load(targets_file)) if targets_file.is_file() else None
    return PackedSplit(index.split, images, labels, key, skipped, targets)


def find_bad_images(
    index: SplitIndex,
    cache_dir: str | Path | None = None,
    grayscale: bool = True,
    workers: int | None = None,
    progress: bool = True,
    on_bad_image: str = "skip",
) -> tuple[BadImage, ...]:
    """The split's samples that cannot be decoded (each decoded once; the result is kept in ``cache_dir``,
    keyed like a pack by the samples). ``on_bad_image="error"`` raises naming them."""
    check_bad_image_mode(on_bad_image)
    if index.pixels is not None:
        return ()  # rows of a table were checked when it was read
    key = split_key(index, ["checked", PACK_FORMAT, grayscale, list(index.class_names)])
    record = Path(cache_dir).expanduser() / f"checked-{index.split}-{key}.json" if cache_dir else None
    if record is not None and record.is_file():
        bad = _read_skipped(record, index)
    else:
        results = map_chunks(
            _check_chunk, index.file_samples(), (grayscale,), workers=workers, desc=f"checking {index.split}",
            progress=progress,
        )  # fmt: skip
        found = _bad_positions(results)
        bad = tuple((index.paths[i], reason) for i, reason in found)
        if len(bad) == len(index):
            raise _no_readable_images(index, bad)
        if record is not None:
            rows = [{"position": i, "reason": reason} for i, reason in found]
            try:
                atomic_write_text(record, json.dumps(rows, indent=1) + "\n", "image check record")
            except OutputWriteError as error:
                log.debug("Could not record the image check: %s", error)
    if bad and on_bad_image == "error":
        raise bad_images_error(index, bad)
    return bad
