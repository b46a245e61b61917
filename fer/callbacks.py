"""Callbacks that make runs survivable and repeatable: checkpoints for resuming, per-step random seeds."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fer.atomic import atomic_save
from fer.data.packed import derive_seed

log = logging.getLogger(__name__)


class RunCheckpoint(ModelCheckpoint):
    """The best checkpoint by ``monitor`` plus ``last.ckpt``, what ``resume=<run folder>`` continues from.

    ``last.ckpt`` is rewritten after every epoch whether or not the monitored metric improved and, with
    ``every_n_train_steps=N``, also every N optimizer steps inside an epoch (long epochs on big data):
    a run killed at any moment loses at most N steps. The best checkpoint is chosen at validation only, as
    without ``every_n_train_steps`` (Lightning's own argument would move it to the step schedule and
    compare against a stale validation metric).
    """

    def __init__(self, *args: Any, every_n_train_steps: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("save_last", True)
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)
        if every_n_train_steps is not None and int(every_n_train_steps) < 0:
            raise ValueError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self.last_every_n_train_steps = int(every_n_train_steps or 0)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath and os.path.isdir(self.dirpath):
            # what a run killed in the middle of writing a checkpoint left (the checkpoint itself is intact)
            for leftover in Path(self.dirpath).glob(".*.ckpt.*.tmp"):
                leftover.unlink(missing_ok=True)
                log.info("Removed %s, left by an interrupted checkpoint write", leftover)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        every = self.last_every_n_train_steps
        if every < 1 or trainer.global_step % every or self._should_skip_saving_checkpoint(trainer):
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the epoch's own checkpoint follows its validation
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def _save_last_every_epoch(self, trainer: Trainer) -> None:
        # Lightning writes last.ckpt only when the best one changed; resuming needs it after every epoch
        if trainer.sanity_checking or trainer.fast_dev_run or trainer.state.fn != "fit":
            return
        # (when the best checkpoint was saved at this step, Lightning wrote last.ckpt with it)
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class StepSeed(Callback):
    """Seed the global random generators from ``(seed, global step, rank)`` before every training step.

    Dropout and anything else that draws from torch's global generator then depends on the step number,
    not on how many random numbers the process drew before it: a run resumed from a checkpoint (a new
    process) draws exactly what the uninterrupted run drew.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        torch.manual_seed(derive_seed(self.seed, trainer.global_step, trainer.global_rank))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with every file written through :func:`atomic_open` in its own folder.

    (Lightning's default stages the bytes through fsspec, whose local temporary file may sit on another
    disk, so the final step is a copy that a kill or a full disk can cut short.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_save(checkpoint, path, "checkpoint")
        log.debug("Saved checkpoint %s", path)
