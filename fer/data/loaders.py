"""Batches for training and evaluation, with replayable epochs.

The order of epoch ``e`` and the random numbers of its augmentation derive from ``(seed, e)`` (and the
batch or the image's position in the epoch), never from global random state, so a run resumed from a
checkpoint (a new process, new workers) sees exactly the data an uninterrupted run saw. Packed data
(:class:`PackedBatches`) is cut into batches straight from tensors; the per-image path
(``data.packed=false``) decodes files in DataLoader workers (:class:`SampleDataset`, :class:`EpochSampler`,
:class:`ResumableDataLoader`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from fer.data.sources.base import SplitIndex
from fer.errors import FERError


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
    length, as ``DistributedSampler``). ``data`` may be a callable that gives the tensor on first use.
    ``transform(batch, generator)`` turns a uint8 batch into model input.
    Batches are ``(inputs, labels)``, or ``(inputs, labels, targets)`` with soft ``targets`` ``(N, K)``.
    """

    def __init__(
        self,
        data: Tensor | Callable[[], Tensor],
        labels: Tensor,
        batch_size: int,
        *,
        targets: Tensor | None = None,
        transform=None,
        shuffle: bool = False,
        seed: int = 0,
        weights: Tensor | None = None,
        rank: int = 0,
        world_size: int = 1,
        views: int = 1,
        drop_last: bool = False,
    ) -> None:
        self._data, self.labels, self.targets = data, labels, targets
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

    @property
    def data(self) -> Tensor:
        """The items batched; a callable given as ``data`` is asked for them on first use (features computed
        after Lightning has already counted the batches)."""
        if callable(self._data):
            self._data = self._data()
        return self._data

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
            if self.targets is None:
                yield batch, labels
            else:
                yield batch, labels, self.targets[idx.to(self.targets.device)]


class SampleDataset(Dataset):
    """The samples of one split, decoded one by one and passed through ``transform`` (the per-image path).

    Items are ``(input, label)``, or ``(input, label, target)`` when the split has soft targets."""

    def __init__(self, index: SplitIndex, transform: Callable, grayscale: bool = True) -> None:
        self.index = index
        self.transform = transform
        self.grayscale = grayscale

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple:
        """``key``: an index, or ``(index, seed)`` from :class:`EpochSampler`: the random augmentation then
        draws from that seed, whichever process or worker loads the image."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        image = self.index.load(i, self.grayscale)
        if seed is None:
            x = self.transform(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                x = self.transform(image)
        label = self.index.labels[i]
        if self.index.targets is None:
            return x, label
        return x, label, torch.from_numpy(self.index.targets[i])


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

    @property
    def pending_resume(self) -> tuple[int, int] | None:
        """(epoch, items done) that the next pass over the data starts after, if a checkpoint set one."""
        return self._resume_at

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
        resume = sampler.pending_resume
        self._served = resume[1] // int(self.batch_size or 1) if resume and resume[0] == sampler.epoch else 0
        for batch in super().__iter__():
            self._served += 1
            yield batch
