"""Features of a frozen backbone, computed once (``data.feature_cache=true``, freeze=backbone|last_layer).

Under those policies everything before the trained part runs in eval mode with frozen weights, so its
output for an image never changes during the run. :class:`FeatureCache` runs it once per packed image (once
per augmented view for training), stores the result in the data's cache folder, keyed by the front's
weights and the preprocessing, and hands it to the data module, which serves it as a tensor data set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from torch import Tensor
from tqdm import tqdm

from fer.data.loaders import PackedBatches, derive_seed
from fer.files import OutputWriteError, atomic_open

log = logging.getLogger(__name__)

SPLITS = ("train", "valid")


def weights_digest(module: torch.nn.Module) -> hashlib._Hash:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest


@torch.no_grad()
def extract_features(
    front: torch.nn.Module,
    batches: PackedBatches,
    device: torch.device,
    memory_format: torch.memory_format,
    desc: str,
    show: bool,
) -> Tensor:
    """``front``'s output, flattened to ``(N, D)``, for every batch of images, on the CPU in float32."""
    chunks: list[Tensor] = []
    for x, *_ in tqdm(batches, desc=desc, disable=not show, leave=False):
        chunks.append(front(x.to(device).contiguous(memory_format=memory_format)).flatten(1).float().cpu())
    return torch.cat(chunks)


class FeatureCache(Callback):
    """Compute (or read) the frozen front's features of ``train`` and ``valid`` at the start of fitting and
    hand them to the data module (``use_features``). ``stats``: images and seconds of each computed pass."""

    def __init__(self) -> None:
        self.stats: dict[str, dict[str, float]] = {}

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = trainer.datamodule
        for split in SPLITS:
            if split == "valid" and trainer.limit_val_batches == 0:
                continue
            views = datamodule.feature_views(split)
            datamodule.use_features(split, self.features(trainer, pl_module, datamodule, split, views))

    def features(
        self, trainer: Trainer, module: LightningModule, datamodule: Any, split: str, views: int
    ) -> Tensor:
        """``(views, N, D)`` features of ``split``, read from the cache folder or computed (and stored) once."""
        front = module.frozen_front()
        pack = datamodule.pack(split)
        train = split == "train"
        digest = weights_digest(front)
        recipe = [
            pack.key,
            datamodule.preprocessing.as_dict(),
            views,
            datamodule.seed,
            str(trainer.precision),
        ]
        if train:
            recipe.append(
                {k: list(v) if isinstance(v, tuple) else v for k, v in vars(datamodule.augmentation).items()}
            )
        digest.update(json.dumps(recipe, sort_keys=True, default=str).encode())
        path = datamodule.cache_dir / f"features-{split}-{digest.hexdigest()[:20]}.npy"
        if path.is_file():
            features = torch.from_numpy(np.load(path, mmap_mode="c"))
            log.info("%s: cached features %s from %s", split, tuple(features.shape), path)
            return features.to(datamodule.device())
        start = time.perf_counter()
        passes = []
        with trainer.precision_plugin.forward_context():
            for view in range(views):
                batches = PackedBatches(
                    pack.images, pack.labels, datamodule.eval_batch_size,
                    transform=datamodule.batch_transform(split), seed=derive_seed(datamodule.seed, view),
                )  # fmt: skip
                desc = f"caching {split} features" + (f" (view {view + 1}/{views})" if views > 1 else "")
                passes.append(
                    extract_features(
                        front, batches, module.device, module.memory_format, desc, trainer.is_global_zero
                    )
                )
        features = torch.stack(passes)
        seconds = time.perf_counter() - start
        self.stats[split] = {"images": views * len(pack), "seconds": seconds}
        log.info(
            "%s: computed features %s in %.1fs (%.0f images/s)",
            split, tuple(features.shape), seconds, views * len(pack) / max(seconds, 1e-9),
        )  # fmt: skip
        try:
            with atomic_open(path, "wb", "feature cache") as handle:
                np.save(handle, features.numpy())
        except OutputWriteError as error:
            log.warning("%s The features will be computed again next time.", error)
        return features.to(datamodule.device())
