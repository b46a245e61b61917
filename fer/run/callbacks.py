"""Callbacks that make runs survivable and repeatable: ``last.ckpt`` for resuming, atomic checkpoint writes,
per-step random seeds, and the data config recorded in every checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fer.data.loaders import derive_seed
from fer.files import atomic_save

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"


class LastCheckpoint(Checkpoint):
    """``<dirpath>/last.ckpt`` at the end of every epoch, whatever the validation metric did, and with
    ``every_n_train_steps=N`` also every N optimizer steps inside an epoch: a run killed at any moment loses
    at most N steps, and ``resume=<run folder>`` continues from it. (The best checkpoint is Lightning's
    ``ModelCheckpoint``, chosen at validation.)"""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None) -> None:
        if every_n_train_steps is not None and int(every_n_train_steps) < 0:
            raise ValueError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = int(every_n_train_steps or 0)
        self.saved_at_step: int | None = None

    @property
    def path(self) -> Path:
        return self.dirpath / LAST_CHECKPOINT

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.is_global_zero and self.dirpath.is_dir():
            # what a run killed in the middle of writing a checkpoint left (the checkpoint itself is intact)
            for leftover in self.dirpath.glob(".*.ckpt.*.tmp"):
                leftover.unlink(missing_ok=True)
                log.info("Removed %s, left by an interrupted checkpoint write", leftover)

    def _save(self, trainer: Trainer) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or trainer.state.fn != "fit":
            return
        if self.saved_at_step == trainer.global_step:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_at_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        every = self.every_n_train_steps
        if every < 1 or trainer.global_step % every:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the epoch's own checkpoint follows its end
        self._save(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # the last callback of the epoch's end (build_trainer puts it there): the best checkpoint and early
        # stopping have seen this epoch, so the state they resume with is the uninterrupted run's
        self._save(trainer)


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


class RecordDataConfig(Callback):
    """Every checkpoint names the data module it was trained with (``fer_data``: ``_target_`` plus its
    settings), so that ``fer.eval`` and the results notebook build the same data again, whatever source."""

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        datamodule = trainer.datamodule
        if datamodule is not None:
            target = f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"
            checkpoint["fer_data"] = {"_target_": target, **dict(datamodule.hparams)}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with every file written through :func:`fer.files.atomic_save`.

    (Lightning's default stages the bytes through fsspec, whose local temporary file may sit on another
    disk, so the final step is a copy that a kill or a full disk can cut short.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_save(checkpoint, path, "checkpoint")
        log.debug("Saved checkpoint %s", path)
