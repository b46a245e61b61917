"""``FERModule``: a backbone + a loss from config + torchmetrics, as a LightningModule.

Its checkpoint is self-contained: backbone, class names, preprocessing and every hyper-parameter are saved
as plain data, so ``FERModule.load_from_checkpoint(path, weights_only=True)`` needs nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassRecall,
)

from fer.data.decode import as_8bit, load_image
from fer.data.preprocessing import Preprocessing
from fer.data.sources import EXPRESSIONS
from fer.data.transforms import build_eval_transform
from fer.errors import FERError
from fer.instantiate import build
from fer.models import schedules
from fer.models.backbones import build_backbone
from fer.models.calibration import PredictionRecord, ProbabilityScores, calibration_error
from fer.models.freeze import (
    FROZEN_FRONT_POLICIES,
    apply_freeze_policy,
    count_parameters,
    frozen_front,
    set_frozen_eval,
    trained_part,
)
from fer.stats import CI_SUFFIXES, bootstrap_intervals

log = logging.getLogger(__name__)

DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3, "weight_decay": 0.01}
DEFAULT_LOSS = {"_target_": "fer.losses.CrossEntropyLoss"}
STAGES = ("val", "test")


class GlobalAvgPool(nn.Module):
    """``AdaptiveAvgPool2d(1)`` as a mean over height and width: the same numbers, and a backward pass that
    CUDA computes deterministically (adaptive pooling's backward has no deterministic CUDA kernel, so
    ``torch.use_deterministic_algorithms`` refuses it)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(-2, -1), keepdim=True)


def use_mean_pooling(model: nn.Module) -> int:
    """Replace every ``AdaptiveAvgPool2d(1)`` (pooling and squeeze-excitation blocks) by
    :class:`GlobalAvgPool`; no weights change. Returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
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


def class_weight_tensor(class_weights: Any, num_classes: int) -> Tensor | None:
    """``loss.class_weights`` as a tensor: null, or one number per class (``balanced`` is resolved from the
    training data before the module is built, by ``fer.train``)."""
    if class_weights is None:
        return None
    if isinstance(class_weights, str):
        raise FERError(
            f"loss.class_weights={class_weights!r} must be resolved to numbers before building the model "
            "(fer.train does it for 'balanced'; in Python pass fer.losses.balanced_class_weights(counts))."
        )
    if len(class_weights) != num_classes:
        raise FERError(f"loss.class_weights has {len(class_weights)} values for {num_classes} classes.")
    return torch.tensor([float(w) for w in class_weights], dtype=torch.float32)


class FERModule(LightningModule):
    """An expression classifier on any torchvision backbone; its checkpoint carries classes and preprocessing."""

    def __init__(
        self,
        backbone: str = "mobilenet_v3_small",
        class_names: Sequence[str] = EXPRESSIONS,
        pretrained: bool = False,
        weights_path: str | None = None,
        dropout: float | None = 0.2,
        bn_momentum: float | None = None,
        freeze: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        channels_last: bool = True,
        compile: bool = False,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        freeze = dict(freeze or {"policy": "none"})
        freeze.pop("callback", None)
        self.save_hyperparameters(
            {
                "backbone": backbone,
                "class_names": list(class_names),
                "pretrained": bool(pretrained),
                "weights_path": None if weights_path is None else str(weights_path),
                "dropout": dropout,
                "bn_momentum": bn_momentum,
                "freeze": freeze,
                "loss": dict(loss or DEFAULT_LOSS),
                "optimizer": dict(optimizer or DEFAULT_OPTIMIZER),
                "scheduler": schedules.check_config(scheduler),
                "preprocessing": Preprocessing(**dict(preprocessing or {})).as_dict(),
                "channels_last": bool(channels_last),
                "compile": bool(compile),
                "temperature": float(temperature),
            }
        )
        self.class_names = tuple(class_names)
        self.preprocessing = Preprocessing(**self.hparams.preprocessing)
        num_classes = len(self.class_names)
        self.model, self.parts = build_backbone(
            backbone, num_classes, pretrained, weights_path, dropout=dropout, bn_momentum=bn_momentum
        )
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.policy = freeze.get("policy", "none")
        apply_freeze_policy(self.model, self.parts, self.policy, int(freeze.get("trainable_blocks", 0)))
        # Plain attributes, not submodules: the state dict keeps one copy of every weight under ``model.``.
        self.__dict__["compiled_model"] = torch.compile(self.model) if compile else None
        self.__dict__["front"] = None
        loss_spec = {k: v for k, v in self.hparams.loss.items() if k != "class_weights"}
        weight = class_weight_tensor(self.hparams.loss.get("class_weights"), num_classes)
        extra = {"weight": weight} if weight is not None else {}
        self.criterion = build(loss_spec, "loss", given=("weight",), **extra)

        self.train_loss = MeanMetric()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        for metric in (self.train_loss, self.train_acc):
            metric.persistent(True)
        # the epoch those running sums belong to (a restored checkpoint's epoch): whether a resumed run goes on
        self.train_metrics_epoch = -1
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_metrics = _eval_metrics(num_classes).clone(prefix="val/")
        self.test_metrics = _eval_metrics(num_classes).clone(prefix="test/")
        self.val_recall = MulticlassRecall(num_classes, average="none")
        self.test_recall = MulticlassRecall(num_classes, average="none")
        self.val_confmat = MulticlassConfusionMatrix(num_classes)
        self.test_confmat = MulticlassConfusionMatrix(num_classes)
        self.val_ece, self.test_ece = calibration_error(num_classes), calibration_error(num_classes)
        self.val_scores, self.test_scores = ProbabilityScores(), ProbabilityScores()
        self.val_record, self.test_record = PredictionRecord(), PredictionRecord()
        # the best validation accuracy so far (0 before the first validation epoch): a buffer, so that
        # checkpoints carry it and a resumed run goes on from it
        self.register_buffer("val_acc_best", torch.tensor(0.0))
        # stage -> the confusion matrix and reliability bins of its last epoch (figures are drawn by
        # fer.models.callbacks)
        self.confusion: dict[str, Tensor] = {}
        self.reliability: dict[str, dict[str, Tensor]] = {}
        self.schedule_length: int | None = None
        self.restored_schedule_length: int | None = None

    # --- the network --------------------------------------------------------------------------------
    @property
    def temperature(self) -> float:
        """What the logits are divided by before the softmax (1.0 until ``fer.calibrate`` fits one)."""
        return float(self.hparams.get("temperature", 1.0))

    def probabilities(self, logits: Tensor) -> Tensor:
        return (logits.float() / self.temperature).softmax(dim=1)

    def setup(self, stage: str) -> None:
        if torch.are_deterministic_algorithms_enabled() and use_mean_pooling(self.model):
            # trainer.deterministic=true: CUDA has no deterministic backward for adaptive average pooling
            self.__dict__["front"] = None
            log.info(
                "trainer.deterministic: global average pooling computed as a mean (deterministic backward)"
            )

    def train(self, mode: bool = True) -> FERModule:
        super().train(mode)
        set_frozen_eval(self.model, self.parts)
        return self

    def frozen_front(self) -> nn.Module:
        """The frozen front of the network under freeze=backbone|last_layer (eval mode, BatchNorm folded),
        built once and dropped whenever the weights or the device change; its output, flattened, is what
        :meth:`classify_features` takes."""
        if self.__dict__.get("front") is None:
            front = frozen_front(self.model, self.parts, self.policy).to(
                self.device, memory_format=self.memory_format
            )
            size = self.preprocessing.image_size
            with torch.no_grad():  # what the trained part receives: (D,) for most heads, (C, 1, 1) for some
                probe = front(torch.zeros(1, 3, size, size, device=self.device))
            self.__dict__["front"] = front
            self.__dict__["feature_shape"] = tuple(probe.shape[1:])
        return self.__dict__["front"]

    def trained_head(self) -> nn.Module:
        """What trains under freeze=backbone|last_layer: the head, or its final Linear."""
        return self.model.get_submodule(trained_part(self.parts, self.policy))

    def _apply(self, fn, *args, **kwargs):
        self.__dict__["front"] = None  # moved or cast: rebuilt from the module's own weights
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        self.__dict__["front"] = None
        return super().load_state_dict(*args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, C)`` for images ``(B, 3, S, S)``."""
        x = x.contiguous(memory_format=self.memory_format)
        if self.policy in FROZEN_FRONT_POLICIES and self.compiled_model is None:
            with torch.no_grad():
                features = self.frozen_front()(x)
            return self.trained_head()(features)
        model = self.compiled_model if self.compiled_model is not None else self.model
        return model(x)

    def classify_features(self, features: Tensor) -> Tensor:
        """Logits for flattened features of the frozen front ``(B, D)`` (``data.feature_cache``)."""
        self.frozen_front()
        return self.trained_head()(features.view(len(features), *self.__dict__["feature_shape"]))

    @property
    def backbone(self) -> nn.Module:
        """The network before its head, for Lightning's BackboneFinetuning (``freeze=gradual``)."""
        return nn.ModuleList(self.model.get_submodule(name) for name in self.parts.body)

    # --- steps -------------------------------------------------------------------------------------
    def model_step(self, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(loss, predicted classes, labels, logits) of a batch ``(inputs, labels[, soft targets])``; the
        inputs are images, or features of the frozen front (2-D)."""
        x, y = batch[0], batch[1]
        logits = self.classify_features(x) if x.dim() == 2 else self(x)
        target = batch[2] if len(batch) > 2 else y
        return self.criterion(logits, target), logits.argmax(dim=1), y, logits

    def on_fit_start(self) -> None:
        if self.policy != "none" and not self.hparams.pretrained and not self.hparams.weights_path:
            log.warning(
                "freeze=%s with model.pretrained=false: the frozen layers keep their random initial weights, "
                "so the trained part learns from random features and will score near chance. Use "
                "model.pretrained=true (or model.weights_path=<file>), or freeze=none to train every layer.",
                self.policy,
            )

    def on_train_start(self) -> None:
        trainable, total = count_parameters(self.model)
        log.info("Trainable parameters: %s of %s (freeze=%s)", f"{trainable:,}", f"{total:,}", self.policy)
        for logger in self.loggers:
            logger.log_metrics({"model/trainable_params": trainable, "model/total_params": total}, step=0)
        self._extend_schedule_if_longer()

    def on_train_epoch_start(self) -> None:
        # BackboneFinetuning may have unfrozen layers: BatchNorm modes follow requires_grad again.
        self.train(True)
        # the running train metrics are saved in checkpoints (persistent states) so that an epoch resumed
        # in its middle goes on counting; a new epoch starts from zero
        if self.train_metrics_epoch != self.current_epoch:
            self.train_loss.reset()
            self.train_acc.reset()
            self.train_metrics_epoch = self.current_epoch

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        loss, preds, y, _ = self.model_step(batch)
        # update() only: logged per epoch, so the per-batch value that calling the metric computes is waste
        self.train_loss.update(loss.detach(), weight=y.numel())
        self.train_acc.update(preds, y)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _stage_metrics(
        self, stage: str
    ) -> tuple[MeanMetric, MetricCollection, MulticlassRecall, MulticlassConfusionMatrix]:
        if stage == "val":
            return self.val_loss, self.val_metrics, self.val_recall, self.val_confmat
        return self.test_loss, self.test_metrics, self.test_recall, self.test_confmat

    def _eval_step(self, stage: str, batch: Sequence[Tensor]) -> Tensor:
        loss, preds, y, logits = self.model_step(batch)
        mean_loss, metrics, recall, confmat = self._stage_metrics(stage)
        mean_loss(loss, weight=y.numel())
        metrics.update(preds, y)
        recall.update(preds, y)
        confmat.update(preds, y)
        log_probs = (logits.float() / self.temperature).log_softmax(dim=1)
        getattr(self, f"{stage}_ece").update(log_probs.exp(), y)
        getattr(self, f"{stage}_scores").update(log_probs, y)
        getattr(self, f"{stage}_record").update(preds, y)
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True)
        return preds

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self._eval_step("val", batch)

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self._eval_step("test", batch)

    def _log_epoch_end(self, stage: str) -> Tensor:
        _, metrics, recall, confmat = self._stage_metrics(stage)
        values = metrics.compute()
        self.log_dict(values, prog_bar=stage == "val")
        per_class = recall.compute()
        self.log_dict({f"{stage}/recall/{name}": per_class[i] for i, name in enumerate(self.class_names)})
        self.confusion[stage] = confmat.compute().cpu()
        ece, scores, record = (getattr(self, f"{stage}_{kind}") for kind in ("ece", "scores", "record"))
        probability = scores.compute()
        self.log_dict(
            {f"{stage}/ece": ece.compute(), **{f"{stage}/{k}": probability[k] for k in ("nll", "brier")}}
        )
        self.reliability[stage] = {k: v.cpu() for k, v in probability.items() if k.startswith("bin_")}
        if stage == "test" or self.trainer.state.fn == TrainerFn.VALIDATING:
            self.log_dict(self._intervals(stage, *record.compute()))
        for metric in (metrics, recall, confmat, ece, scores, record):
            metric.reset()
        return values[f"{stage}/acc"]

    def _intervals(self, stage: str, target: Tensor, predicted: Tensor) -> dict[str, float]:
        """95% bootstrap intervals of accuracy, macro-F1 and balanced accuracy (a final test, not every
        validation epoch of a fit)."""
        intervals = bootstrap_intervals(target.numpy(), predicted.numpy(), len(self.class_names))
        return {
            f"{stage}/{name}_{side}": bound
            for name, bounds in intervals.items()
            for side, bound in zip(CI_SUFFIXES, bounds, strict=True)
        }

    def on_validation_epoch_end(self) -> None:
        acc = self._log_epoch_end("val")
        if self.trainer.sanity_checking:
            self.log("val/acc_best", acc)  # the sanity check's batches do not count
            return
        self.val_acc_best = torch.maximum(self.val_acc_best, acc.to(self.val_acc_best))
        self.log("val/acc_best", self.val_acc_best)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_end("test")

    # --- optimization -------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise FERError(
                "No parameter is trainable under this freeze policy: choose another freeze=... option."
            )
        optimizer = build(self.hparams.optimizer, "optimizer", given=("params",), _partial_=True)(params)
        spec = self.hparams.scheduler
        if spec is None:
            return optimizer
        if self.policy == "gradual" and spec.get("run_length_arg"):
            raise FERError(
                "freeze=gradual adds the backbone's parameters to the optimizer mid-run, which a schedule built "
                "for the run's length cannot schedule: use scheduler=plateau, step or none with it."
            )
        self.schedule_length = None
        if spec.get("run_length_arg"):
            # resuming: the restored run's length (its scheduler state replaces this one's; a longer run is
            # rebuilt in on_train_start). Counting the steps now would make Lightning build the training
            # loader before the checkpoint restores its position in the epoch.
            restored = self.restored_schedule_length
            self.schedule_length = restored if restored is not None else self._run_length(spec)
        scheduler = schedules.build_scheduler(spec, optimizer, self.schedule_length)
        return {"optimizer": optimizer, "lr_scheduler": schedules.lightning_config(spec, scheduler)}

    def _run_length(self, spec: Mapping[str, Any]) -> int:
        trainer = self.trainer
        interval = spec.get("interval", "epoch")
        steps = trainer.estimated_stepping_batches if interval == "step" else 0
        length = schedules.run_length(interval, trainer.max_epochs, steps)
        return max(length, int(spec.get("min_run_length") or 1))

    def _extend_schedule_if_longer(self) -> None:
        """A resumed run given more epochs: rebuild the schedule for the new length from the restored step."""
        spec = self.hparams.scheduler
        old = self.restored_schedule_length
        if old is None or not spec or not spec.get("run_length_arg") or not self.trainer.lr_scheduler_configs:
            return
        new = self.schedule_length = self._run_length(spec)
        config = self.trainer.lr_scheduler_configs[0]
        if new == old or config.scheduler.last_epoch >= new:
            return  # the same length, or the run is already as long as asked: nothing to rebuild
        config.scheduler = schedules.extend_schedule(
            spec, config.scheduler, self.trainer.optimizers[0], old, new
        )

    # --- checkpoints and inference ------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.restored_schedule_length = (checkpoint.get("fer") or {}).get("schedule_length")
        self.train_metrics_epoch = int(checkpoint.get("epoch", -1))
        if self.global_rank > 0:  # the saved train sums are every rank's: rank 0 goes on with them
            for name, metric in self._train_sums():
                metric.reset()
                checkpoint["state_dict"].update(metric.state_dict(prefix=f"{name}."))

    def _train_sums(self) -> tuple[tuple[str, Metric], ...]:
        return ("train_loss", self.train_loss), ("train_acc", self.train_acc)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # each DDP rank counts its own share of the epoch; the checkpoint (written by rank 0) holds them all
        for name, metric in self._train_sums():
            with metric.sync_context():
                checkpoint["state_dict"].update(metric.state_dict(prefix=f"{name}."))
        # The weights are in the state dict: loading must never try to download or read them again.
        hparams = dict(checkpoint.get("hyper_parameters", {}))
        checkpoint["fer"] = {
            "pretrained": hparams.get("pretrained"),
            "weights_path": hparams.get("weights_path"),
            "schedule_length": self.schedule_length,
        }
        hparams.update(pretrained=False, weights_path=None)
        checkpoint["hyper_parameters"] = hparams

    @property
    def transform(self):
        """The deterministic preprocessing this model was trained with (for PIL images)."""
        return build_eval_transform(self.preprocessing)

    def _as_image(self, image: Image.Image | str | Path) -> Image.Image:
        if isinstance(image, Image.Image):
            return as_8bit(image, self.preprocessing.grayscale)
        return load_image(image, self.preprocessing.grayscale)

    @torch.no_grad()
    def predict_images(self, images: Sequence[Image.Image | str | Path]) -> Tensor:
        """Class probabilities ``(N, C)`` for PIL images or file paths, preprocessed as in training."""
        transform = self.transform
        batch = torch.stack([transform(self._as_image(image)) for image in images]).to(self.device)
        was_training = self.training
        self.eval()
        probs = self.probabilities(self(batch))
        self.train(was_training)
        return probs

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self.probabilities(self(x))
