"""``FERDataModule``: the MMAFEDB train/valid/test folders as Lightning dataloaders."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fer.atomic import OutputWriteError, atomic_open, atomic_write_text
from fer.config import plain
from fer.data.batch_transforms import BatchAugmentation
from fer.data.layout import CLASS_NAMES, SPLITS, SplitIndex, check_data_dir, index_split
from fer.data.packed import (
    BadImage,
    PackedBatches,
    PackedSplit,
    check_bad_image_mode,
    derive_seed,
    find_bad_images,
    pack_split,
)
from fer.data.sampling import EpochSampler, ResumableDataLoader
from fer.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augmentation,
    Preprocessing,
    build_eval_transform,
    build_train_transform,
    load_image,
    to_model_input,
)
from fer.errors import DataLayoutError, FERError

log = logging.getLogger(__name__)

SAMPLERS = ("random", "balanced")
PACKED_DEVICES = ("auto", "cpu")
# in the run folder (the Trainer's default_root_dir): the images left out with data.on_bad_image=skip
SKIPPED_IMAGES_FILE = "skipped_images.txt"
STAGE_SPLITS = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",), "predict": ("test",)}


class ImageFolderDataset(Dataset):
    """Images of one split, decoded with :func:`load_image` and passed through ``transform``."""

    def __init__(self, index: SplitIndex, transform: Callable, grayscale: bool = True) -> None:
        self.index = index
        self.transform = transform
        self.grayscale = grayscale

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """``key``: an index, or ``(index, seed)`` from :class:`EpochSampler`: the random augmentation then
        draws from that seed, whichever process or worker loads the image."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        image = load_image(self.index.paths[i], grayscale=self.grayscale)
        if seed is None:
            return self.transform(image), self.index.labels[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), self.index.labels[i]


class FERDataModule(LightningDataModule):
    """Reads ``data_dir/{train,valid,test}/<class>/<image>``; class index = alphabetical class order.

    ``synthetic`` (a mapping of :func:`fer.data.synthetic.ensure_synthetic_dataset` arguments) makes the
    module generate a drawn-faces data set into ``data_dir`` on first use, so everything runs offline.
    """

    def __init__(
        self,
        data_dir: str | Path,
        image_size: int = 112,
        grayscale: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: Mapping[str, Any] | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        sampler: str = "random",
        synthetic: Mapping[str, Any] | None = None,
        class_names: Sequence[str] = CLASS_NAMES,
        packed: bool = True,
        pack_size: int | None = None,
        cache_dir: str | Path | None = None,
        packed_device: str = "auto",
        feature_cache: bool = False,
        feature_cache_views: int = 1,
        seed: int = 0,
        drop_last: bool = False,
        on_bad_image: str = "skip",
    ) -> None:
        super().__init__()
        check_bad_image_mode(on_bad_image)
        if sampler not in SAMPLERS:
            raise FERError(f"data.sampler={sampler!r} is not one of {list(SAMPLERS)}.")
        if packed_device not in PACKED_DEVICES:
            raise FERError(f"data.packed_device={packed_device!r} is not one of {list(PACKED_DEVICES)}.")
        if feature_cache and not packed:
            raise FERError("data.feature_cache=true works on packed data: set data.packed=true as well.")
        if feature_cache_views < 1:
            raise FERError(f"data.feature_cache_views must be at least 1, got {feature_cache_views}.")
        if batch_size < 1:
            raise FERError(f"data.batch_size must be at least 1, got {batch_size}.")
        self.data_dir = Path(data_dir).expanduser()
        self.preprocessing = Preprocessing(int(image_size), bool(grayscale), tuple(mean), tuple(std))
        self.augmentation = Augmentation(**(plain(augment) or {}))
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.sampler = sampler
        self.synthetic = plain(synthetic) if synthetic else None
        self.class_names = tuple(class_names)
        self.packed = bool(packed)
        self.pack_size = int(pack_size) if pack_size else None
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else self.data_dir / ".fer-cache"
        self.packed_device = packed_device
        self.feature_cache = bool(feature_cache)
        self.feature_cache_views = int(feature_cache_views)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.on_bad_image = on_bad_image
        # split -> (path, reason) of the files that could not be decoded and were left out
        self.skipped: dict[str, tuple[BadImage, ...]] = {}
        self.batch_size_per_device = self.batch_size
        self.indexes: dict[str, SplitIndex] = {}
        self.packs: dict[str, PackedSplit] = {}
        # split -> {"images", "seconds"} of feature-cache passes computed in this process
        self.feature_cache_stats: dict[str, dict[str, float]] = {}
        # plain data only, so checkpoints load with weights_only=True
        self.save_hyperparameters(
            {
                "data_dir": str(self.data_dir),
                "image_size": self.preprocessing.image_size,
                "grayscale": self.preprocessing.grayscale,
                "mean": list(self.preprocessing.mean),
                "std": list(self.preprocessing.std),
                "augment": plain(vars(self.augmentation)),
                "batch_size": self.batch_size,
                "eval_batch_size": self.eval_batch_size,
                "num_workers": self.num_workers,
                "pin_memory": self.pin_memory,
                "persistent_workers": bool(persistent_workers),
                "sampler": sampler,
                "synthetic": self.synthetic,
                "class_names": list(self.class_names),
                "packed": self.packed,
                "pack_size": self.pack_size,
                "cache_dir": str(self.cache_dir),
                "packed_device": packed_device,
                "feature_cache": self.feature_cache,
                "feature_cache_views": self.feature_cache_views,
                "seed": self.seed,
                "drop_last": self.drop_last,
                "on_bad_image": self.on_bad_image,
            }
        )
        self.datasets: dict[str, ImageFolderDataset] = {}

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            from fer.data.synthetic import ensure_synthetic_dataset

            ensure_synthetic_dataset(self.data_dir, **self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world_size:
            raise FERError(
                f"data.batch_size={self.batch_size} (the global batch) is not divisible by the "
                f"{world_size} devices of this run: choose a multiple of {world_size}."
            )
        self.batch_size_per_device = self.batch_size // world_size
        check_data_dir(self.data_dir)
        for split in STAGE_SPLITS.get(stage or "", SPLITS):
            if split in self.datasets or split in self.packs:
                continue
            index = self.split_index(split)
            if self.packed:
                continue
            transform = (
                build_train_transform(self.preprocessing, self.augmentation)
                if split == "train"
                else build_eval_transform(self.preprocessing)
            )
            self.datasets[split] = ImageFolderDataset(index, transform, self.preprocessing.grayscale)
        if any(self.skipped.values()):
            self._write_skipped_list()

    def split_index(self, split: str) -> SplitIndex:
        """The readable files of a split, indexed and decoded once on first use (packed: into the pack;
        otherwise a check whose result is cached); unreadable ones are left out or stop the run
        (``on_bad_image``)."""
        if split in self.indexes:
            return self.indexes[split]
        index = index_split(self.data_dir, split, self.class_names)
        show = getattr(self.trainer, "is_global_zero", True)
        grayscale = self.preprocessing.grayscale
        if self.packed:
            pack = pack_split(
                index,
                self.cache_dir,
                self.pack_size,
                grayscale,
                progress=show,
                on_bad_image=self.on_bad_image,
            )
            self.packs[split] = pack
            skipped = pack.skipped
        else:
            skipped = find_bad_images(
                index, self.cache_dir, grayscale, progress=show, on_bad_image=self.on_bad_image
            )
        if skipped:
            index = index.without({path for path, _ in skipped})
            self.skipped[split] = skipped
            if show:
                self._warn_skipped(split, skipped, len(index) + len(skipped))
        self._check_class_counts(index, skipped)
        log.info(
            "%s: %d images in %s, per class %s%s",
            split, len(index), index.root, index.class_counts(),
            f" ({len(skipped)} unreadable left out)" if skipped else "",
        )  # fmt: skip
        self.indexes[split] = index
        return index

    def _check_class_counts(self, index: SplitIndex, skipped: Sequence[BadImage]) -> None:
        """Train needs images of every class; valid/test without any of a class (not missing) warn."""
        empty = [
            name
            for name, count in zip(self.class_names, index.class_counts(), strict=True)
            if count == 0 and name not in index.missing
        ]
        if not empty:
            return
        why = "all of them unreadable" if skipped else "empty folder"
        if index.split == "train":
            raise DataLayoutError(
                f"No readable training images of class(es) {empty} in {index.root} ({why}): every class needs "
                "training images. Add images to those class folders."
            )
        log.warning(
            "%s: no readable images of class(es) %s in %s (%s); the metrics still cover all %d classes.",
            index.split, empty, index.root, why, len(self.class_names),
        )  # fmt: skip

    def _warn_skipped(self, split: str, skipped: Sequence[BadImage], total: int) -> None:
        shown = "; ".join(f"{path} ({reason})" for path, reason in skipped[:3])
        more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        where = self._skipped_list_path()
        log.warning(
            "%s: %d of %d images cannot be read and are left out (data.on_bad_image=skip): %s%s. %s",
            split, len(skipped), total, shown, more,
            f"The full list is in {where}." if where else "",
        )  # fmt: skip

    def _skipped_list_path(self) -> Path | None:
        """``skipped_images.txt`` in the run folder (the Trainer's ``default_root_dir``); none without one."""
        root = getattr(self.trainer, "default_root_dir", None)
        return Path(root) / SKIPPED_IMAGES_FILE if root else None

    def _write_skipped_list(self) -> None:
        """Every image left out so far, one per line: ``<path><TAB><reason>``, by split."""
        path = self._skipped_list_path()
        if path is None or not getattr(self.trainer, "is_global_zero", True):
            return
        lines = [f"{file}\t{reason}\n" for split in SPLITS for file, reason in self.skipped.get(split, ())]
        atomic_write_text(path, "".join(lines), "the list of skipped images")

    @property
    def train_class_counts(self) -> list[int]:
        """Images per class in the train split, for class-weighted losses and the balanced sampler."""
        return self.split_index("train").class_counts()

    def _distributed(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _device(self) -> torch.device:
        """Where packed data lives: the GPU the model trains on (``packed_device=auto``), else the CPU."""
        trainer = self.trainer
        if self.packed_device == "auto" and trainer is not None:
            device = trainer.strategy.root_device
            if device.type == "cuda":
                return device
        return torch.device("cpu")

    def _pack(self, split: str) -> PackedSplit:
        if split not in self.packs:
            self.setup({"train": "fit", "valid": "validate", "test": "test"}[split])
        device = self._device()
        if self.packs[split].images.device != device:
            self.packs[split] = self.packs[split].to(device)
        return self.packs[split]

    def _sampler_weights(self) -> Tensor | None:
        if self.sampler != "balanced":
            return None
        counts = torch.tensor(self.train_class_counts, dtype=torch.float64)
        labels = torch.tensor(self.split_index("train").labels)
        return (1.0 / counts.clamp(min=1))[labels]

    def _packed_loader(self, split: str) -> PackedBatches:
        pack = self._pack(split)
        train = split == "train"
        rank, world_size = self._distributed()
        pre = self.preprocessing
        return PackedBatches(
            pack.images,
            pack.labels,
            self.batch_size_per_device if train else self.eval_batch_size,
            transform=BatchAugmentation(pre, self.augmentation) if train else partial(_eval_batch, pre=pre),
            shuffle=train,
            seed=self.seed,
            weights=self._sampler_weights() if train else None,
            rank=rank,
            world_size=world_size,
            drop_last=train and self.drop_last,
        )

    def _loader(self, split: str) -> DataLoader | PackedBatches:
        if self.packed:
            return self._packed_loader(split)
        if split not in self.datasets:
            self.setup({"train": "fit", "valid": "validate", "test": "test"}[split])
        train = split == "train"
        dataset = self.datasets[split]
        kind, sampler = DataLoader, None
        if train:
            # the order and augmentation of epoch e from (seed, e): replayable, resumable mid-epoch
            kind = ResumableDataLoader
            sampler = EpochSampler(
                len(dataset), shuffle=True, seed=self.seed, weights=self._sampler_weights()
            )
        return kind(
            dataset,
            batch_size=self.batch_size_per_device if train else self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=split == "train" and self.drop_last,
        )

    def train_dataloader(self) -> DataLoader | PackedBatches:
        if self.feature_cache:
            return self._feature_loader("train")
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | PackedBatches:
        if self.feature_cache:
            return self._feature_loader("valid")
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader | PackedBatches:
        return self._loader("test")

    def loader_for(self, split: str) -> DataLoader | PackedBatches:
        """An evaluation loader of images for ``valid`` or ``test`` (used by ``fer.eval split=...``)."""
        return self._loader(split)

    # --- cached features of a frozen front (freeze=backbone|last_layer) ------------------------------
    def _feature_loader(self, split: str) -> PackedBatches:
        """Batches of stored features: the frozen front ran once per image (per view), the head trains."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None or not hasattr(module, "frozen_extractor"):
            raise FERError("data.feature_cache=true needs a fer.models.FERModule attached to the Trainer.")
        extractor = module.frozen_extractor()
        train = split == "train"
        views = self.feature_cache_views if train and self._augments() else 1
        features = self._features(split, extractor, views, module)
        rank, world_size = self._distributed()
        pack = self._pack(split)
        return PackedBatches(
            features if views > 1 else features[0],
            pack.labels.to(features.device),
            self.batch_size_per_device if train else self.eval_batch_size,
            shuffle=train,
            seed=self.seed,
            weights=self._sampler_weights() if train else None,
            rank=rank,
            world_size=world_size,
            views=views,
            drop_last=train and self.drop_last,
        )

    def _augments(self) -> bool:
        aug = self.augmentation
        return bool(aug.crop_scale or aug.hflip or aug.rotation or aug.erasing)

    def _features(self, split: str, extractor: torch.nn.Module, views: int, module: Any) -> Tensor:
        """``(views, N, D)`` features, read from the cache folder or computed (and stored) once."""
        pack = self._pack(split)
        device = module.device
        digest = hashlib.sha256()
        for name, tensor in extractor.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        train = split == "train"
        recipe = [pack.key, self.preprocessing.as_dict(), views, self.seed, str(self.trainer.precision)]
        if train:
            recipe.append(plain(vars(self.augmentation)))
        digest.update(json.dumps(recipe, sort_keys=True, default=str).encode())
        path = self.cache_dir / f"features-{split}-{digest.hexdigest()[:20]}.npy"
        if path.is_file():
            features = torch.from_numpy(np.load(path, mmap_mode="c"))
            log.info("%s: cached features %s from %s", split, tuple(features.shape), path)
            return features.to(self._device())
        start = time.perf_counter()
        transform = BatchAugmentation(self.preprocessing, self.augmentation) if train else None
        chunks: list[Tensor] = []
        show = self.trainer.is_global_zero
        with torch.no_grad(), self.trainer.precision_plugin.forward_context():
            for view in range(views):
                loader = PackedBatches(
                    pack.images,
                    pack.labels,
                    self.eval_batch_size,
                    transform=transform or partial(_eval_batch, pre=self.preprocessing),
                    seed=derive_seed(self.seed, view),
                )
                desc = f"caching {split} features" + (f" (view {view + 1}/{views})" if views > 1 else "")
                for x, _ in tqdm(loader, desc=desc, disable=not show, leave=False):
                    x = x.to(device).contiguous(memory_format=module.memory_format)
                    chunks.append(extractor(x).float().cpu())
        features = torch.cat(chunks).view(views, len(pack), -1)
        seconds = time.perf_counter() - start
        self.feature_cache_stats[split] = {"images": views * len(pack), "seconds": seconds}
        log.info(
            "%s: computed features %s in %.1fs (%.0f images/s)",
            split, tuple(features.shape), seconds, views * len(pack) / max(seconds, 1e-9),
        )  # fmt: skip
        try:
            with atomic_open(path, "wb", "feature cache") as handle:
                np.save(handle, features.numpy())
        except OutputWriteError as error:
            log.warning("%s The features will be computed again next time.", error)
        return features.to(self._device())


def _eval_batch(images: Tensor, generator: torch.Generator, pre: Preprocessing) -> Tensor:
    return to_model_input(images, pre)
