"""Packed splits: every image of a split decoded once into one uint8 array, memory-mapped afterwards.

MMAFEDB is 128K files of 48x48 pixels: decoding them with PIL on every epoch costs more than the model on
a small GPU. A pack is ``N x C x H x W`` uint8 (C = 1 for grayscale) plus int64 labels, stored in a cache
folder under a key made of the split's file list (names, sizes, modification times), the pack size and the
colour mode: a changed folder re-packs, an unchanged one is memory-mapped in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from fer.atomic import OutputWriteError, atomic_write_text
from fer.data.layout import SplitIndex
from fer.data.transforms import DECODE_ERRORS, BadImageError, load_image
from fer.errors import DataLayoutError, FERError
from fer.system import available_cores

log = logging.getLogger(__name__)

PACK_FORMAT = 1
SERIAL_LIMIT = 2000  # below this many images, decoding in this process beats starting workers
CHUNK = 512


ON_BAD_IMAGE = ("skip", "error")
SKIPPED_FILE = "skipped.json"  # in a pack folder: the files left out of it, by position in the split

# (path, reason) of a file that could not be decoded
BadImage = tuple[str, str]


@dataclass(frozen=True)
class PackedSplit:
    """A decoded split: ``images`` uint8 ``(N, C, H, W)`` and ``labels`` int64 ``(N,)``, CPU or device.

    ``skipped``: the split's files that could not be decoded, left out of ``images`` and ``labels``."""

    split: str
    images: torch.Tensor
    labels: torch.Tensor
    key: str
    skipped: tuple[BadImage, ...] = ()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> PackedSplit:
        return PackedSplit(self.split, self.images.to(device), self.labels.to(device), self.key, self.skipped)


def native_size(paths: Sequence[str | Path], sample: int = 256) -> int:
    """The most common image side among the first ``sample`` readable files (read from headers only)."""
    sizes: Counter[tuple[int, int]] = Counter()
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes[image.size] += 1
        except DECODE_ERRORS:
            continue
        if sizes.total() >= sample:
            break
    if not sizes:
        raise DataLayoutError(
            f"None of the {len(paths)} images under {Path(paths[0]).parent.parent} can be read: "
            "replace them with image files."
        )
    (width, height), _ = sizes.most_common(1)[0]
    return max(width, height)


def _file_list_key(index: SplitIndex, recipe: list) -> str:
    """A digest of ``recipe`` and the split's files: names, sizes, mtimes and labels (not the folder)."""
    digest = hashlib.sha256(json.dumps(recipe).encode())
    fingerprints = index.fingerprints or [(os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in index.paths]
    names = index.class_names
    lines = [
        f"{names[label]}/{os.path.basename(path)}\0{nbytes}\0{mtime}\n"
        for path, label, (nbytes, mtime) in zip(index.paths, index.labels, fingerprints, strict=True)
    ]
    digest.update("".join(lines).encode())
    return digest.hexdigest()[:20]


def pack_key(index: SplitIndex, size: int, grayscale: bool) -> str:
    """A digest of everything the pack depends on: file names, sizes, mtimes, labels, size and colour mode."""
    return _file_list_key(index, [PACK_FORMAT, size, grayscale, index.class_names])


def check_bad_image_mode(on_bad_image: str) -> None:
    if on_bad_image not in ON_BAD_IMAGE:
        raise FERError(
            f"data.on_bad_image={on_bad_image!r} is not one of {list(ON_BAD_IMAGE)}: skip leaves unreadable "
            "images out (listed in the run folder), error stops at the first."
        )


def bad_images_error(index: SplitIndex, bad: Sequence[BadImage]) -> DataLayoutError:
    """One message naming the unreadable files of a split (the first few) and the two ways on."""
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


def _decode(path: str | Path, size: int, grayscale: bool) -> np.ndarray:
    image = load_image(path, grayscale)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if grayscale else array.transpose(2, 0, 1)


def _decode_chunk(
    paths: Sequence[str | Path], start: int, array_path: str, size: int, grayscale: bool
) -> list[tuple[int, str]]:
    """Decode ``paths`` into rows ``start...`` of the pack file (each worker writes its own rows); returns
    the (row, reason) of the files that cannot be decoded (their rows stay zero)."""
    images = np.load(array_path, mmap_mode="r+")
    bad: list[tuple[int, str]] = []
    for offset, path in enumerate(paths):
        try:
            images[start + offset] = _decode(path, size, grayscale)
        except BadImageError as error:
            bad.append((start + offset, error.reason))
    images.flush()
    return bad


def _check_chunk(paths: Sequence[str | Path], start: int, grayscale: bool) -> list[tuple[int, str]]:
    """Decode ``paths`` (and drop the pixels); the (position, reason) of the files that cannot be decoded."""
    bad: list[tuple[int, str]] = []
    for offset, path in enumerate(paths):
        try:
            load_image(path, grayscale)
        except BadImageError as error:
            bad.append((start + offset, error.reason))
    return bad


def _over_chunks(
    index: SplitIndex, task: Callable, args: tuple, workers: int, desc: str, progress: bool
) -> list[tuple[int, str]]:
    """``task(paths, start, *args)`` over the split in chunks (forked worker processes for big splits);
    the sorted (position, reason) of every file that could not be decoded."""
    chunks = [(start, index.paths[start : start + CHUNK]) for start in range(0, len(index), CHUNK)]
    bad: list[tuple[int, str]] = []
    bar = tqdm(total=len(index), desc=desc, unit="img", disable=not progress, leave=False)
    with bar:
        if workers < 2 or len(index) < SERIAL_LIMIT:
            for start, paths in chunks:
                bad += task(paths, start, *args)
                bar.update(len(paths))
        else:
            # fork: workers inherit the imported modules instead of re-importing torch and Lightning
            fork = "fork" in multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork") if fork else None
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = {pool.submit(task, paths, start, *args): len(paths) for start, paths in chunks}
                for future in as_completed(futures):
                    bad += future.result()
                    bar.update(futures[future])
    return sorted(bad)


def _write_pack(
    index: SplitIndex, folder: Path, size: int, grayscale: bool, workers: int, progress: bool
) -> None:
    """Decode the split into ``folder``; files that cannot be decoded are left out (and listed in it)."""
    channels = 1 if grayscale else 3
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        array_path = str(tmp / "images.npy")
        shape = (len(index), channels, size, size)
        np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8, shape=shape).flush()
        args = (array_path, size, grayscale)
        bad = _over_chunks(index, _decode_chunk, args, workers, f"packing {index.split}", progress)
        labels = np.asarray(index.labels, dtype=np.int64)
        if bad:
            if len(bad) == len(index):
                raise _no_readable_images(index, [(index.paths[i], reason) for i, reason in bad])
            keep = np.setdiff1d(np.arange(len(index)), [i for i, _ in bad])
            _keep_rows(array_path, keep)
            labels = labels[keep]
        np.save(tmp / "labels.npy", labels)
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
        (tmp / "pack.json").write_text(json.dumps(meta) + "\n")
        tmp.rename(folder)
    finally:
        if tmp.exists():
            for child in tmp.iterdir():
                child.unlink()
            tmp.rmdir()


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
    """The files a pack (or check) left out, as paths of this index (packs made before skipping: none)."""
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

    ``size`` is the side of the stored images; ``None`` keeps the native size of the files (48 for MMAFEDB).
    Images of another size are resized to it once, at packing time. Files that cannot be decoded are left
    out of the pack and listed in ``PackedSplit.skipped`` (``on_bad_image="skip"``), or raise a
    :class:`DataLayoutError` naming them (``"error"``, also when the pack was made before).
    """
    check_bad_image_mode(on_bad_image)
    if len(index) == 0:
        raise DataLayoutError(f"No images to pack in {index.root / index.split}.")
    size = int(size) if size else native_size(index.paths)
    key = pack_key(index, size, grayscale)
    folder = Path(cache_dir).expanduser() / f"{index.split}-{key}"
    if not (folder / "pack.json").is_file():
        start = time.perf_counter()
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            _write_pack(index, folder, size, grayscale, workers or available_cores(), progress)
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
    return PackedSplit(index.split, images, labels, key, skipped)


def find_bad_images(
    index: SplitIndex,
    cache_dir: str | Path | None = None,
    grayscale: bool = True,
    workers: int | None = None,
    progress: bool = True,
    on_bad_image: str = "skip",
) -> tuple[BadImage, ...]:
    """The split's files that cannot be decoded (each file decoded once; the result is kept in
    ``cache_dir``, keyed like a pack by the file list). ``on_bad_image="error"`` raises naming them."""
    check_bad_image_mode(on_bad_image)
    key = _file_list_key(index, ["checked", PACK_FORMAT, grayscale, index.class_names])
    record = Path(cache_dir).expanduser() / f"checked-{index.split}-{key}.json" if cache_dir else None
    if record is not None and record.is_file():
        bad = _read_skipped(record, index)
    else:
        args = (grayscale,)
        found = _over_chunks(
            index, _check_chunk, args, workers or available_cores(), f"checking {index.split}", progress
        )
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


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, batch ...): the same parts give the same stream anywhere."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def check_data_state(state: dict[str, int], seed: int, items: int) -> None:
    """A training loader's checkpointed position only means something over the same data and seed."""
    if int(state.get("seed", seed)) != seed or int(state.get("items", items)) != items:
        raise FERError(
            f"The checkpoint stopped inside an epoch whose data order came from seed {state.get('seed')} "
            f"over {state.get('items')} training images; this run has seed {seed} and {items} images. "
            "Resume with the run's own seed and data folder."
        )


class PackedBatches:
    """Batches straight from packed tensors: no DataLoader workers, nothing decoded.

    The order of epoch ``e`` and the random parameters of its batches derive from ``(seed, e)`` only, so a
    restarted run sees the same data as an uninterrupted one. ``data`` is ``(N, ...)``, or ``(V, N, ...)``
    with ``views`` > 1 (cached features of V augmented views: each image shows one view at random per
    epoch). Under DDP each rank takes every ``world_size``-th item of the shared order (padded to equal
    length, as ``DistributedSampler``). ``transform(batch, generator)`` turns a uint8 batch into model input.
    """

    def __init__(
        self,
        data: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        transform=None,
        shuffle: bool = False,
        seed: int = 0,
        weights: Tensor | None = None,
        rank: int = 0,
        world_size: int = 1,
        views: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.data, self.labels = data, labels
        self.batch_size = int(batch_size)
        self.transform = transform
        self.shuffle = shuffle
        self.seed = int(seed)
        self.weights = weights
        self.rank, self.world_size = int(rank), int(world_size)
        self.views = int(views)
        self.drop_last = bool(drop_last) and self.num_items >= batch_size
        self.epoch = 0
        # batches handed out in the current epoch, and where a restored run starts (see load_state_dict)
        self._served = 0
        self._resume_at: tuple[int, int] | None = None
        # Lightning calls ``loader.sampler.set_epoch(epoch)`` at every epoch start, and reads batch_sampler
        self.sampler = self
        self.batch_sampler = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # Lightning saves these in every checkpoint (``loops.fit_loop.state_dict.combined_loader``) and restores
    # them before the first batch of a resumed run. Lightning asks for one batch at a time from loaders that
    # have a length (no prefetching), so the batches handed out are the batches trained on.
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self._served, "seed": self.seed, "items": len(self.labels)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue a mid-epoch checkpoint: the next pass over epoch ``state['epoch']`` skips the batches
        already trained on, with the same order and the same random numbers for the rest."""
        check_data_state(state, self.seed, len(self.labels))
        self._resume_at = (int(state["epoch"]), int(state["batches"]))

    @property
    def num_items(self) -> int:
        """Items this rank sees per epoch."""
        return math.ceil(len(self.labels) / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_items // self.batch_size
        return math.ceil(self.num_items / self.batch_size)

    def _order(self, g: torch.Generator) -> Tensor:
        n = len(self.labels)
        if self.weights is not None:
            order = torch.multinomial(self.weights.double().cpu(), n, replacement=True, generator=g)
        elif self.shuffle:
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        total = self.num_items * self.world_size
        if total > n:
            order = torch.cat([order, order[: total - n]])
        return order[self.rank :: self.world_size]

    def __iter__(self):
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        # the epoch's order is drawn on the CPU (the same numbers on any device), then moved once
        order = self._order(g).to(self.data.device)
        view_of = None
        if self.views > 1:
            view_of = torch.randint(self.views, (len(order),), generator=g).to(self.data.device)
        first = 0
        if self._resume_at is not None:
            epoch, done = self._resume_at
            self._resume_at = None
            if epoch == self.epoch:
                first = min(done, len(self))
        self._served = first
        for number in range(first, len(self)):
            start = number * self.batch_size
            idx = order[start : start + self.batch_size]
            batch = (
                self.data[idx]
                if view_of is None
                else self.data[view_of[start : start + self.batch_size], idx]
            )
            labels = self.labels[idx.to(self.labels.device)]
            if self.transform is not None:
                batch_g = torch.Generator(device=batch.device)
                batch_g.manual_seed(derive_seed(self.seed, self.epoch, number, self.rank))
                batch = self.transform(batch, batch_g)
            self._served = number + 1
            yield batch, labels
