"""``FERDataModule``: a data source's train/valid/test splits as Lightning dataloaders.

The source (``fer.data.sources``) lists the samples; this module checks them, packs them (or decodes them
per image), augments them and serves batches. It never runs the model: cached features of a frozen
backbone are computed by model code (``fer.models.features``) and handed in with :meth:`use_features`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from fer.data.augment import BatchAugmentation
from fer.data.loaders import EpochSampler, PackedBatches, ResumableDataLoader, SampleDataset
from fer.data.packing import BadImage, PackedSplit, check_bad_image_mode, find_bad_images, pack_split
from fer.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Augmentation, Preprocessing
from fer.data.sources import DataSource, SplitIndex
from fer.data.transforms import build_eval_transform, build_train_transform, to_model_input
from fer.errors import DataLayoutError, FERError
from fer.files import atomic_write_text
from fer.instantiate import build

log = logging.getLogger(__name__)

SAMPLERS = ("random", "balanced")
PACKED_DEVICES = ("auto", "cpu")
# in the run folder (the Trainer's default_root_dir): the images left out with data.on_bad_image=skip
SKIPPED_IMAGES_FILE = "skipped_images.txt"
STAGE_SPLITS = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",), "predict": ("test",)}
SPLIT_STAGES = {"train": "fit", "valid": "validate", "test": "test"}
DEFAULT_SOURCE = {"_target_": "fer.data.sources.MMAFEDB"}


def build_source(source: Mapping[str, Any] | DataSource | None, data_dir: str | Path | None) -> DataSource:
    """A data source from its config (``_target_`` plus arguments; ``root`` defaults to ``data_dir``)."""
    if isinstance(source, DataSource):
        return source
    spec = dict(source or DEFAULT_SOURCE)
    if data_dir is not None:
        spec.setdefault("root", str(data_dir))
    built = build(spec, "data.source")
    if not isinstance(built, DataSource):
        raise FERError(
            f"data.source._target_={spec.get('_target_')} does not build a fer.data.sources.DataSource."
        )
    return built


class FERDataModule(LightningDataModule):
    """The splits of ``source`` (default: MMAFEDB's class folders under ``data_dir``) as dataloaders.

    ``synthetic`` (a mapping of :func:`fer.data.synthetic.ensure_synthetic_dataset` arguments) makes the
    module generate a drawn-faces data set into ``data_dir`` on first use, so everything runs offline.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        source: Mapping[str, Any] | DataSource | None = None,
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
        packed: bool = True,
        pack_size: int | None = None,
        cache_dir: str | Path | None = None,
        packed_device: str = "auto",
        feature_cache: bool = False,
        feature_cache_views: int = 1,
        seed: int = 0,
        drop_last: bool = False,
        on_bad_image: str = "skip",
        **source_options: Any,
    ) -> None:
        """``source_options``: a data set's own keys (FER+'s ``label_mode``, AffectNet's ``classes``, RAF-DB's
        ``val_fraction`` ...), set as ``data.<key>`` and handed to its source by its ``conf/data`` file."""
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
        self.source = build_source(source, data_dir)
        self.data_dir = self.source.root
        self.preprocessing = Preprocessing(int(image_size), bool(grayscale), tuple(mean), tuple(std))
        self.augmentation = Augmentation(**dict(augment or {}))
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.sampler = sampler
        self.synthetic = dict(synthetic) if synthetic else None
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
        self.datasets: dict[str, SampleDataset] = {}
        # split -> (views, N, D) features of a frozen backbone, handed in by fer.models.features
        self.features: dict[str, Tensor] = {}
        # plain data only, so checkpoints load with weights_only=True
        self.save_hyperparameters(
            {
                "data_dir": str(self.data_dir),
                "source": self.source.config(),
                "image_size": self.preprocessing.image_size,
                "grayscale": self.preprocessing.grayscale,
                "mean": list(self.preprocessing.mean),
                "std": list(self.preprocessing.std),
                "augment": {
                    k: list(v) if isinstance(v, tuple) else v for k, v in vars(self.augmentation).items()
                },
                "batch_size": self.batch_size,
                "eval_batch_size": self.eval_batch_size,
                "num_workers": self.num_workers,
                "pin_memory": self.pin_memory,
                "persistent_workers": bool(persistent_workers),
                "sampler": sampler,
                "synthetic": self.synthetic,
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

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.source.class_names

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
        for split in STAGE_SPLITS.get(stage or "", self.source.splits):
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
            self.datasets[split] = SampleDataset(index, transform, self.preprocessing.grayscale)
        if any(self.skipped.values()):
            self._write_skipped_list()

    def split_index(self, split: str) -> SplitIndex:
        """The readable samples of a split, indexed and decoded once on first use (packed: into the pack;
        otherwise a check whose result is cached); unreadable ones are left out or stop the run
        (``on_bad_image``)."""
        if split in self.indexes:
            return self.indexes[split]
        if self.synthetic is not None and not self.data_dir.is_dir():
            self.prepare_data()
        index = self.source.index(split)
        show = getattr(self.trainer, "is_global_zero", True)
        grayscale = self.preprocessing.grayscale
        options = {"progress": show, "on_bad_image": self.on_bad_image}
        if self.packed:
            pack = pack_split(index, self.cache_dir, self.pack_size, grayscale, **options)
            self.packs[split] = pack
            skipped = pack.skipped
        else:
            skipped = find_bad_images(index, self.cache_dir, grayscale, **options)
        if skipped:
            bad = {path for path, _ in skipped}
            index = index.select([i for i, path in enumerate(index.paths) if path not in bad])
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
        why = "all of them unreadable" if skipped else "no images"
        if index.split == "train":
            raise DataLayoutError(
                f"No readable training images of class(es) {empty} in {index.root} ({why}): every class needs "
                "training images. Add images of those classes."
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
        splits = self.source.splits
        lines = [f"{file}\t{reason}\n" for split in splits for file, reason in self.skipped.get(split, ())]
        atomic_write_text(path, "".join(lines), "the list of skipped images")

    @property
    def train_class_counts(self) -> list[int]:
        """Images per class in the train split, for class-weighted losses and the balanced sampler."""
        return self.split_index("train").class_counts()

    def _distributed(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def device(self) -> torch.device:
        """Where packed data lives: the GPU the model trains on (``packed_device=auto``), else the CPU."""
        trainer = self.trainer
        if self.packed_device == "auto" and trainer is not None:
            device = trainer.strategy.root_device
            if device.type == "cuda":
                return device
        return torch.device("cpu")

    def pack(self, split: str) -> PackedSplit:
        """The packed split on :meth:`device` (packed on first use)."""
        if split not in self.packs:
            self.setup(SPLIT_STAGES[split])
        device = self.device()
        if self.packs[split].images.device != device:
            self.packs[split] = self.packs[split].to(device)
        return self.packs[split]

    def _sampler_weights(self) -> Tensor | None:
        if self.sampler != "balanced":
            return None
        counts = torch.tensor(self.train_class_counts, dtype=torch.float64)
        labels = torch.tensor(self.split_index("train").labels)
        return (1.0 / counts.clamp(min=1))[labels]

    def batch_transform(self, split: str) -> Any:
        """What turns a packed uint8 batch of ``split`` into model input: the augmentation for ``train``,
        the evaluation preprocessing otherwise (both ``(batch, generator) -> tensor``)."""
        if split == "train":
            return BatchAugmentation(self.preprocessing, self.augmentation)
        return partial(_eval_batch, pre=self.preprocessing)

    def augments(self) -> bool:
        aug = self.augmentation
        return bool(aug.crop_scale or aug.hflip or aug.rotation or aug.erasing)

    def _packed_loader(self, split: str) -> PackedBatches:
        pack = self.pack(split)
        train = split == "train"
        rank, world_size = self._distributed()
        return PackedBatches(
            pack.images,
            pack.labels,
            self.batch_size_per_device if train else self.eval_batch_size,
            targets=pack.targets,
            transform=self.batch_transform(split),
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
            self.setup(SPLIT_STAGES[split])
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

    # --- features of a frozen backbone (data.feature_cache=true) ---------------------------------------
    def use_features(self, split: str, features: Tensor) -> None:
        """Serve ``features`` ``(views, N, D)`` (one row per packed image of ``split``, per augmented view)
        instead of the images: the frozen front ran once, the head trains on what it gave."""
        if features.dim() != 3 or features.shape[1] != len(self.pack(split)):
            raise ValueError(
                f"features for {split} must be (views, {len(self.pack(split))}, D), got {tuple(features.shape)}"
            )
        self.features[split] = features

    def feature_views(self, split: str) -> int:
        """Augmented views per image held in the feature cache: several for training (if it augments)."""
        return self.feature_cache_views if split == "train" and self.augments() else 1

    def _features_of(self, split: str) -> Tensor:
        if split not in self.features:
            raise FERError(
                "data.feature_cache=true: no features were handed to the data module (fer.train adds the "
                "fer.models.features.FeatureCache callback that computes them; add it when training by hand)."
            )
        features = self.features[split]
        return features if features.shape[0] > 1 else features[0]

    def _feature_loader(self, split: str) -> PackedBatches:
        """Batches of features; Lightning asks for the loader (to count its batches) before the features
        exist, so they are taken from :meth:`use_features` when the first batch is drawn."""
        pack = self.pack(split)
        train = split == "train"
        rank, world_size = self._distributed()
        device = self.device()
        return PackedBatches(
            partial(self._features_of, split),
            pack.labels.to(device),
            self.batch_size_per_device if train else self.eval_batch_size,
            targets=pack.targets.to(device) if pack.targets is not None else None,
            shuffle=train,
            seed=self.seed,
            weights=self._sampler_weights() if train else None,
            rank=rank,
            world_size=world_size,
            views=self.feature_views(split),
            drop_last=train and self.drop_last,
        )

    def train_dataloader(self) -> DataLoader | PackedBatches:
        return self._feature_loader("train") if self.feature_cache else self._loader("train")

    def val_dataloader(self) -> DataLoader | PackedBatches:
        return self._feature_loader("valid") if self.feature_cache else self._loader("valid")

    def test_dataloader(self) -> DataLoader | PackedBatches:
        return self._loader("test")

    def loader_for(self, split: str) -> DataLoader | PackedBatches:
        """An evaluation loader of images for ``valid`` or ``test`` (``fer.eval split=...``)."""
        return self._loader(split)


def _eval_batch(images: Tensor, generator: torch.Generator, pre: Preprocessing) -> Tensor:
    return to_model_input(images, pre)
