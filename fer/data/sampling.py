"""Replayable epochs for the per-image path (``data.packed=false``), as :class:`PackedBatches` gives the
packed path: the order of epoch ``e`` and the random numbers of every image's augmentation derive from
``(seed, e)`` (and the image's position in the epoch), never from global random state, so a run resumed
from a checkpoint (a new process, new workers) sees exactly the data an uninterrupted run saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from fer.data.packed import check_data_state, derive_seed


class EpochSampler(Sampler):
    """Yields ``(index, seed)`` pairs: the image to load and the seed its random augmentation draws from."""

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, weights: Tensor | None = None) -> None:
        self.size = int(size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.weights = weights
        self.epoch = 0
        self._resume_at: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume(self, epoch: int, items_done: int) -> None:
        """The next pass over ``epoch`` starts after its first ``items_done`` items."""
        self._resume_at = (int(epoch), int(items_done))

    def __len__(self) -> int:
        return self.size

    def order(self) -> Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        if self.weights is not None:
            return torch.multinomial(self.weights.double(), self.size, replacement=True, generator=g)
        return torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order().tolist()
        first = 0
        if self._resume_at is not None:
            epoch, done = self._resume_at
            self._resume_at = None
            if epoch == self.epoch:
                first = min(done, self.size)
        for position in range(first, self.size):
            yield order[position], derive_seed(self.seed, self.epoch, position)


class ResumableDataLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` that Lightning can checkpoint mid-epoch: it counts the
    batches it handed out (``state_dict``) and, restored, skips them in the sampler, so no skipped image is
    even decoded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochSampler):
            raise TypeError("ResumableDataLoader needs an EpochSampler")
        self._served = 0

    def state_dict(self) -> dict[str, int]:
        sampler: EpochSampler = self.sampler
        return {"epoch": sampler.epoch, "batches": self._served, "seed": sampler.seed, "items": sampler.size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler: EpochSampler = self.sampler
        check_data_state(state, sampler.seed, sampler.size)
        self._served = int(state["batches"])
        sampler.resume(int(state["epoch"]), self._served * int(self.batch_size or 1))

    def __iter__(self):
        sampler: EpochSampler = self.sampler
        resume = sampler._resume_at
        self._served = resume[1] // int(self.batch_size or 1) if resume and resume[0] == sampler.epoch else 0
        for batch in super().__iter__():
            self._served += 1
            yield batch
