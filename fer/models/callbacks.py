"""Callbacks around the module: TensorBoard figures, and stopping on a non-finite loss before it does harm."""

from __future__ import annotations

from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from fer.errors import NonFiniteLossError
from fer.models.gradcam import grad_cam, overlays
from fer.models.plots import confusion_matrix_figure, image_grid_figure, reliability_figure


def _tensorboards(trainer: Trainer) -> list[TensorBoardLogger]:
    if not trainer.is_global_zero:
        return []
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


class ConfusionMatrixFigure(Callback):
    """The confusion matrix of every validation epoch and of the test, as a TensorBoard image."""

    def _log(self, trainer: Trainer, module: LightningModule, stage: str) -> None:
        matrix = getattr(module, "confusion", {}).get(stage)
        if matrix is None or trainer.sanity_checking:
            return
        for logger in _tensorboards(trainer):
            figure = confusion_matrix_figure(matrix, module.class_names)
            logger.experiment.add_figure(
                f"{stage}/confusion_matrix", figure, global_step=trainer.global_step, close=True
            )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, "test")


class ReliabilityDiagram(Callback):
    """The reliability diagram (accuracy against confidence) of every validation epoch and of the test."""

    def _log(self, trainer: Trainer, module: LightningModule, stage: str) -> None:
        bins = getattr(module, "reliability", {}).get(stage)
        if bins is None or trainer.sanity_checking:
            return
        for logger in _tensorboards(trainer):
            figure = reliability_figure(
                bins["bin_confidence"], bins["bin_accuracy"], bins["bin_count"], f"{stage} reliability"
            )
            logger.experiment.add_figure(
                f"{stage}/reliability", figure, global_step=trainer.global_step, close=True
            )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, "test")


class PredictionGrid(Callback):
    """The first ``images`` validation images of every epoch as the model saw them, titled true / predicted,
    and (``gradcam``) the same images with their Grad-CAM maps for the predicted class."""

    def __init__(self, images: int = 16, gradcam: bool = True) -> None:
        self.images = int(images)
        self.gradcam = bool(gradcam)
        self.examples: tuple[Tensor, Tensor, Tensor] | None = None

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        x, y = batch[0], batch[1]
        if batch_idx == 0 and x.dim() == 4 and not trainer.sanity_checking and isinstance(outputs, Tensor):
            keep = slice(0, self.images)
            self.examples = (x[keep].cpu(), y[keep].cpu(), outputs[keep].cpu())

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.examples is None:
            return
        images, true, predicted = self.examples
        self.examples = None
        pre = pl_module.preprocessing
        loggers = _tensorboards(trainer)
        for logger in loggers:
            figure = image_grid_figure(
                images, true.tolist(), predicted.tolist(), pl_module.class_names, pre.mean, pre.std
            )
            logger.experiment.add_figure(
                "val/predictions", figure, global_step=trainer.global_step, close=True
            )
        if not (self.gradcam and loggers):
            return
        maps, _ = grad_cam(pl_module, images.to(pl_module.device), predicted)
        drawn = overlays(images, maps, pre.mean, pre.std)
        for logger in loggers:
            figure = image_grid_figure(
                drawn, true.tolist(), predicted.tolist(), pl_module.class_names, (0.0,) * 3, (1.0,) * 3
            )
            logger.experiment.add_figure("val/gradcam", figure, global_step=trainer.global_step, close=True)


class StopOnNonFiniteLoss(Callback):
    """Stop when the training loss is NaN or infinite, before its backward pass: the weights and every
    checkpoint written so far stay finite, and the message names the step and the learning rate."""

    def __init__(self) -> None:
        self.batch_idx = 0

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batch_idx = batch_idx

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        if bool(loss.isfinite().all()):
            return
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        rates = sorted({group["lr"] for group in optimizer.param_groups}) if optimizer else []
        lr = ", ".join(f"{rate:.3g}" for rate in rates) or "unknown"
        configured = (getattr(pl_module, "hparams", {}).get("optimizer") or {}).get("lr")
        raise NonFiniteLossError(
            f"The training loss became {float(loss.detach())} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}, batch {self.batch_idx}); the learning rate was {lr} (optimizer.lr="
            f"{configured}). A learning rate too high for this model and batch size is the usual cause: lower "
            "optimizer.lr (e.g. by 10x), or set trainer.gradient_clip_val=1.0. Nothing was saved from this step; "
            "the checkpoints already written hold the last finite weights."
        )
