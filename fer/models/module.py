"""``FERModule``: MobileNetV3 + the custom cross-entropy + torchmetrics, as a LightningModule."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch import Tensor
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassRecall,
)

from fer.config import plain
from fer.data.layout import CLASS_NAMES
from fer.data.transforms import Preprocessing, build_eval_transform, load_image
from fer.errors import FERError, NonFiniteLossError
from fer.losses import balanced_class_weights
from fer.models.backbone import build_backbone
from fer.models.freeze import (
    apply_freeze_policy,
    count_parameters,
    fuse_conv_bn,
    set_frozen_eval,
    split_frozen,
)

log = logging.getLogger(__name__)

RESUMED_METRICS = ("train_loss", "train_acc", "val_acc_best")
GRID_IMAGES = 16  # validation images shown with their predictions in TensorBoard
FROZEN_FRONT_POLICIES = ("backbone", "last_layer")
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.01}
SCHEDULER_KEYS = ("interval", "frequency", "monitor")


class GlobalAvgPool(torch.nn.Module):
    """``AdaptiveAvgPool2d(1)`` as a mean over height and width: the same numbers, and a backward pass that
    CUDA computes deterministically (adaptive pooling's backward has no deterministic CUDA kernel, so
    ``torch.use_deterministic_algorithms`` refuses it)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(-2, -1), keepdim=True)


def use_mean_pooling(model: torch.nn.Module) -> int:
    """Replace every ``AdaptiveAvgPool2d(1)`` (classifier and squeeze-excitation blocks) by
    :class:`GlobalAvgPool`; no weights change. Returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
                setattr(parent, name, GlobalAvgPool())
                replaced += 1
    return replaced


def _eval_metrics(num_classes: int) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            "acc_balanced": MulticlassRecall(num_classes, average="macro"),
        }
    )


class FERModule(LightningModule):
    """A MobileNetV3 expression classifier; its checkpoint carries class names and preprocessing."""

    def __init__(
        self,
        backbone: str = "mobilenet_v3_small",
        class_names: Sequence[str] = CLASS_NAMES,
        pretrained: bool = False,
        weights_path: str | None = None,
        dropout: float = 0.2,
        bn_momentum: float | None = None,
        freeze: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        freeze = plain(freeze) or {"policy": "none"}
        loss = plain(loss) or {}
        self.save_hyperparameters(
            {
                "backbone": backbone,
                "class_names": list(class_names),
                "pretrained": bool(pretrained),
                "weights_path": None if weights_path is None else str(weights_path),
                "dropout": float(dropout),
                "bn_momentum": bn_momentum,
                "freeze": freeze,
                "loss": loss,
                "optimizer": plain(optimizer) or dict(DEFAULT_OPTIMIZER),
                "scheduler": plain(scheduler),
                "preprocessing": Preprocessing(**(plain(preprocessing) or {})).as_dict(),
                "channels_last": bool(channels_last),
                "compile": bool(compile),
            }
        )
        self.class_names = tuple(class_names)
        self.preprocessing = Preprocessing(**self.hparams.preprocessing)
        num_classes = len(self.class_names)
        self.model = build_backbone(
            backbone, num_classes, pretrained, weights_path, dropout=dropout, bn_momentum=bn_momentum
        )
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        apply_freeze_policy(self.model, freeze.get("policy", "none"), int(freeze.get("trainable_blocks", 0)))
        # Plain attributes, not submodules: the state dict keeps one copy of every weight under ``model.``.
        self.__dict__["compiled_model"] = torch.compile(self.model) if compile else None
        self.__dict__["frozen_parts"] = None
        self.criterion = self._build_loss(loss.get("class_weights"))

        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_metrics = _eval_metrics(num_classes).clone(prefix="val/")
        self.test_metrics = _eval_metrics(num_classes).clone(prefix="test/")
        self.val_recall = MulticlassRecall(num_classes, average="none")
        self.test_recall = MulticlassRecall(num_classes, average="none")
        self.val_confmat = MulticlassConfusionMatrix(num_classes)
        self.test_confmat = MulticlassConfusionMatrix(num_classes)
        self.val_acc_best = MaxMetric()
        self.last_test_confusion: Tensor | None = None

    # --- construction -----------------------------------------------------------------------------
    def _build_loss(self, class_weights: Any) -> torch.nn.Module:
        """The loss from its config (``_target_``, default fer's CrossEntropyLoss) with resolved class weights."""
        spec = {k: v for k, v in self.hparams.loss.items() if k != "class_weights"}
        spec.setdefault("_target_", "fer.losses.CrossEntropyLoss")
        if isinstance(class_weights, str):
            if class_weights != "balanced":
                raise FERError(
                    f"loss.class_weights={class_weights!r}: use null, balanced or a list of numbers."
                )
            class_weights = None  # resolved from the train split in setup()
        elif class_weights is not None and len(class_weights) != len(self.class_names):
            raise FERError(
                f"loss.class_weights has {len(class_weights)} values for {len(self.class_names)} classes."
            )
        return instantiate(spec, weight=class_weights)

    def setup(self, stage: str) -> None:
        if torch.are_deterministic_algorithms_enabled() and use_mean_pooling(self.model):
            # trainer.deterministic=true: CUDA has no deterministic backward for adaptive average pooling
            self.__dict__["frozen_parts"] = None
            log.info(
                "trainer.deterministic: global average pooling computed as a mean (deterministic backward)"
            )
        if self.hparams.loss.get("class_weights") == "balanced":
            datamodule = getattr(self.trainer, "datamodule", None)
            counts = getattr(datamodule, "train_class_counts", None)
            if counts is None:
                raise FERError("loss.class_weights=balanced needs a data module with train_class_counts.")
            weights = balanced_class_weights(counts)
            self.hparams.loss["class_weights"] = weights  # saved in the checkpoint as numbers
            self.criterion = self._build_loss(weights).to(self.device)
            log.info(
                "Balanced class weights from train counts %s: %s", counts, [round(w, 3) for w in weights]
            )

    def train(self, mode: bool = True) -> FERModule:
        super().train(mode)
        set_frozen_eval(self.model)
        return self

    def frozen_extractor(self) -> torch.nn.Module:
        """The frozen front of the network (eval mode, BatchNorm folded into the convolutions), whose
        output ``data.feature_cache`` stores; the module then accepts those features, 2-D ``(B, D)``."""
        return self._frozen_parts(required=True)[0]

    def _frozen_parts(self, required: bool = False) -> tuple[torch.nn.Module, torch.nn.Module] | None:
        """(fused frozen front, head) for freeze=backbone|last_layer, built once and dropped whenever the
        weights or the device change. The front never changes during such a run, so folding each
        BatchNorm into its convolution (eval-mode arithmetic, no extra pass over the activations) is exact
        up to float rounding: about 1.4x faster on CPU at 224 px."""
        policy = self.hparams.freeze.get("policy", "none")
        if not required and (policy not in FROZEN_FRONT_POLICIES or self.compiled_model is not None):
            return None
        if self.__dict__.get("frozen_parts") is None:
            front, head = split_frozen(self.model, policy)
            fused = fuse_conv_bn(front.eval()).eval().requires_grad_(False)
            self.__dict__["frozen_parts"] = (fused.to(memory_format=self.memory_format), head)
        return self.__dict__["frozen_parts"]

    def _apply(self, fn, *args, **kwargs):
        self.__dict__["frozen_parts"] = None  # moved or cast: rebuild from the module's own weights
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        self.__dict__["frozen_parts"] = None
        return super().load_state_dict(*args, **kwargs)

    # --- forward and steps --------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Logits for images ``(B, 3, S, S)``, or for cached features ``(B, D)`` of the frozen front."""
        x = x if x.dim() == 2 else x.contiguous(memory_format=self.memory_format)
        parts = self._frozen_parts(required=x.dim() == 2)
        if parts is not None:
            front, head = parts
            if x.dim() == 2:
                return head(x)
            with torch.no_grad():
                features = front(x)
            return head(features)
        model = self.compiled_model if self.compiled_model is not None else self.model
        return model(x)

    def model_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch
        logits = self(x)
        return self.criterion(logits, y), logits.argmax(dim=1), y

    def on_train_start(self) -> None:
        # (val_acc_best is not reset here: the sanity check never updates it, and a resumed run restores it)
        trainable, total = count_parameters(self.model)
        log.info(
            "Trainable parameters: %s of %s (freeze=%s)",
            f"{trainable:,}",
            f"{total:,}",
            self.hparams.freeze.get("policy"),
        )
        for logger in self.loggers:
            logger.log_metrics({"model/trainable_params": trainable, "model/total_params": total}, step=0)

    def on_train_epoch_start(self) -> None:
        # BackboneFinetuning may have unfrozen layers: BatchNorm modes follow requires_grad again.
        self.train(True)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, preds, y = self.model_step(batch)
        if not torch.isfinite(loss):
            self._stop_on_non_finite_loss(loss, batch_idx)
        # update() only: logged per epoch, so the per-batch value that calling the metric computes is waste
        self.train_loss.update(loss.detach(), weight=y.numel())
        self.train_acc.update(preds, y)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _stop_on_non_finite_loss(self, loss: Tensor, batch_idx: int) -> None:
        """Stop before the optimizer step: the weights and every checkpoint written so far stay finite."""
        optimizer = self.trainer.optimizers[0] if self.trainer.optimizers else None
        rates = sorted({group["lr"] for group in optimizer.param_groups}) if optimizer else []
        lr = ", ".join(f"{rate:.3g}" for rate in rates) or "unknown"
        configured = self.hparams.optimizer.get("lr")
        raise NonFiniteLossError(
            f"The training loss became {float(loss.detach())} at step {self.global_step} (epoch {self.current_epoch}, "
            f"batch {batch_idx}); the learning rate was {lr} (optimizer.lr={configured}). A learning rate "
            "too high for this model and batch size is the usual cause: lower optimizer.lr (e.g. by 10x), "
            "or set trainer.gradient_clip_val=1.0. Nothing was saved from this step; the checkpoints "
            "already written hold the last finite weights."
        )

    def _eval_step(self, stage: str, batch: tuple[Tensor, Tensor]) -> Tensor:
        loss, preds, y = self.model_step(batch)
        mean_loss, metrics = (
            (self.val_loss, self.val_metrics) if stage == "val" else (self.test_loss, self.test_metrics)
        )
        recall, confmat = (
            (self.val_recall, self.val_confmat) if stage == "val" else (self.test_recall, self.test_confmat)
        )
        mean_loss(loss, weight=y.numel())
        metrics.update(preds, y)
        recall.update(preds, y)
        confmat.update(preds, y)
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True)
        return preds

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        preds = self._eval_step("val", batch)
        x, y = batch
        if batch_idx == 0 and x.dim() == 4 and not self.trainer.sanity_checking:
            # the first images of the epoch, shown with their predictions at its end (TensorBoard)
            keep = slice(0, GRID_IMAGES)
            self.__dict__["val_examples"] = (x[keep].cpu(), y[keep].cpu(), preds[keep].cpu())

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _log_epoch_end(self, stage: str) -> Tensor:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        recall = self.val_recall if stage == "val" else self.test_recall
        confmat = self.val_confmat if stage == "val" else self.test_confmat
        values = metrics.compute()
        self.log_dict(values, prog_bar=stage == "val")
        per_class = recall.compute()
        self.log_dict({f"{stage}/recall/{name}": per_class[i] for i, name in enumerate(self.class_names)})
        matrix = confmat.compute()
        for metric in (metrics, recall, confmat):
            metric.reset()
        if not self.trainer.sanity_checking:
            self._log_confusion_image(f"{stage}/confusion_matrix", matrix)
        return values[f"{stage}/acc"], matrix

    def on_validation_epoch_end(self) -> None:
        acc, _ = self._log_epoch_end("val")
        examples = self.__dict__.pop("val_examples", None)
        if examples is not None:
            self._log_prediction_grid("val/predictions", *examples)
        if not self.trainer.sanity_checking:
            self.val_acc_best(acc)
        self.log("val/acc_best", self.val_acc_best.compute() if self.val_acc_best.update_count else acc)

    def on_test_epoch_end(self) -> None:
        _, matrix = self._log_epoch_end("test")
        self.last_test_confusion = matrix.cpu()

    def _log_prediction_grid(self, tag: str, images: Tensor, true: Tensor, predicted: Tensor) -> None:
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger) and self.trainer.is_global_zero:
                from fer.models.plots import image_grid_figure

                pre = self.preprocessing
                figure = image_grid_figure(
                    images, true.tolist(), predicted.tolist(), self.class_names, pre.mean, pre.std
                )
                logger.experiment.add_figure(tag, figure, global_step=self.global_step, close=True)

    def _log_confusion_image(self, tag: str, matrix: Tensor) -> None:
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger) and self.trainer.is_global_zero:
                from fer.models.plots import confusion_matrix_figure

                figure = confusion_matrix_figure(matrix.cpu(), self.class_names)
                logger.experiment.add_figure(tag, figure, global_step=self.global_step, close=True)

    # --- optimization -------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise FERError(
                "No parameter is trainable under this freeze policy: choose another freeze=... option."
            )
        optimizer = instantiate(self.hparams.optimizer, params=params)
        spec = dict(self.hparams.scheduler or {})
        if not spec.get("_target_"):
            return optimizer
        if self.hparams.freeze.get("policy") == "gradual" and spec["_target_"].endswith("OneCycleLR"):
            raise FERError(
                "freeze=gradual adds the backbone's parameters to the optimizer mid-run, which OneCycleLR cannot "
                "schedule: use scheduler=cosine, plateau or none with it."
            )
        extra = {k: spec.pop(k) for k in SCHEDULER_KEYS if k in spec}
        if "total_steps" in spec and spec["total_steps"] is None:
            # at least 10: one-cycle's phases need a few steps each (tiny debug runs just stop early)
            spec["total_steps"] = max(int(self.trainer.estimated_stepping_batches), 10)
        if spec.get("T_max", 0) is None:
            spec["T_max"] = int(
                self.trainer.max_epochs
                if extra.get("interval", "epoch") == "epoch"
                else self.trainer.estimated_stepping_batches
            )
        scheduler = instantiate(spec, optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **extra}}

    @property
    def backbone(self) -> torch.nn.Module:
        """The feature extractor, for Lightning's BackboneFinetuning (freeze=gradual); a property, not a
        second registered name, so the checkpoint holds each weight once."""
        return self.model.features

    # --- checkpoints and inference ------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # checkpoints written before ``backbone`` became a property held the features twice
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("backbone.")]:
            del state[key]
        for name, values in (checkpoint.get("fer_metric_states") or {}).items():
            metric = getattr(self, name, None)
            if name in RESUMED_METRICS and metric is not None:
                for state_name, value in values.items():
                    setattr(metric, state_name, value.to(self.device))
                metric._update_count = max(metric._update_count, 1)
                metric._computed = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The weights are in the state dict: loading must never try to download or read them again.
        hparams = dict(checkpoint.get("hyper_parameters", {}))
        checkpoint["fer"] = {
            "pretrained": hparams.get("pretrained"),
            "weights_path": hparams.get("weights_path"),
        }
        hparams.update(pretrained=False, weights_path=None)
        checkpoint["hyper_parameters"] = hparams
        # what a resumed run needs to report the same numbers: the running means of the current epoch
        # (a checkpoint can be written mid-epoch) and the best validation accuracy so far
        names = ["val_acc_best"]
        if self._inside_training_epoch():
            names += ["train_loss", "train_acc"]
        checkpoint["fer_metric_states"] = {
            name: {k: v.detach().clone() for k, v in getattr(self, name).metric_state.items()}
            for name in names
        }

    def _inside_training_epoch(self) -> bool:
        """Whether a checkpoint written now falls between two batches of an epoch (Lightning counts the
        batch whose end hook is running as processed, not yet completed)."""
        trainer = self._trainer
        if trainer is None or not trainer.training:
            return False
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return progress.completed < progress.processed

    @property
    def transform(self):
        """The deterministic preprocessing this model was trained with (for PIL images)."""
        return build_eval_transform(self.preprocessing)

    def _as_image(self, image: Image.Image | str | Path) -> Image.Image:
        if isinstance(image, Image.Image):
            return image.convert("L" if self.preprocessing.grayscale else "RGB")
        return load_image(image, self.preprocessing.grayscale)

    @torch.no_grad()
    def predict_images(self, images: Sequence[Image.Image | str | Path]) -> Tensor:
        """Class probabilities ``(N, C)`` for PIL images or file paths, preprocessed as in training."""
        transform = self.transform
        batch = torch.stack([transform(self._as_image(image)) for image in images]).to(self.device)
        was_training = self.training
        self.eval()
        probs = self(batch).softmax(dim=1)
        self.train(was_training)
        return probs

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self(x).softmax(dim=1)
