"""``FERDataModule``: the MMAFEDB train/valid/test folders as Lightning dataloaders."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from fer.config import plain
from fer.data.layout import CLASS_NAMES, SPLITS, SplitIndex, check_data_dir, index_split
from fer.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augmentation,
    Preprocessing,
    build_eval_transform,
    build_train_transform,
    load_image,
)
from fer.errors import FERError

log = logging.getLogger(__name__)

SAMPLERS = ("random", "balanced")
STAGE_SPLITS = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",), "predict": ("test",)}


class ImageFolderDataset(Dataset):
    """Images of one split, decoded with :func:`load_image` and passed through ``transform``."""

    def __init__(self, index: SplitIndex, transform: Callable, grayscale: bool = True) -> None:
        self.index = index
        self.transform = transform
        self.grayscale = grayscale

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = load_image(self.index.paths[i], grayscale=self.grayscale)
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
    ) -> None:
        super().__init__()
        if sampler not in SAMPLERS:
            raise FERError(f"data.sampler={sampler!r} is not one of {list(SAMPLERS)}.")
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
        self.batch_size_per_device = self.batch_size
        self.indexes: dict[str, SplitIndex] = {}
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
            if split in self.datasets:
                continue
            index = self.split_index(split)
            transform = (
                build_train_transform(self.preprocessing, self.augmentation)
                if split == "train"
                else build_eval_transform(self.preprocessing)
            )
            self.datasets[split] = ImageFolderDataset(index, transform, self.preprocessing.grayscale)
            log.info("%s: %d images in %s, per class %s", split, len(index), index.root, index.class_counts())

    def split_index(self, split: str) -> SplitIndex:
        """The file list of a split (indexed on first use)."""
        if split not in self.indexes:
            self.indexes[split] = index_split(self.data_dir, split, self.class_names)
        return self.indexes[split]

    @property
    def train_class_counts(self) -> list[int]:
        """Images per class in the train split, for class-weighted losses and the balanced sampler."""
        return self.split_index("train").class_counts()

    def _loader(
        self, split: str, shuffle: bool, sampler: torch.utils.data.Sampler | None = None
    ) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "valid": "validate", "test": "test"}[split])
        batch = self.batch_size_per_device if split == "train" else self.eval_batch_size
        return DataLoader(
            self.datasets[split],
            batch_size=batch,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        sampler = None
        if self.sampler == "balanced":
            counts = torch.tensor(self.train_class_counts, dtype=torch.float64)
            labels = torch.tensor(self.split_index("train").labels)
            weights = (1.0 / counts.clamp(min=1))[labels]
            sampler = WeightedRandomSampler(weights, num_samples=len(labels), replacement=True)
        return self._loader("train", shuffle=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def loader_for(self, split: str) -> DataLoader:
        """An evaluation loader for ``valid`` or ``test`` (used by ``fer.eval split=...``)."""
        return self._loader(split, shuffle=False)
