"""``python -m fer.train``: fit an expression classifier, then test its best checkpoint.

Everything is chosen by Hydra config (``conf/train.yaml``); ``--help`` lists the groups and options. The
data flow: ``cfg.data`` -> data source -> ``FERDataModule`` -> ``FERModule`` (built with the data's class
names, preprocessing and class counts) -> Lightning ``Trainer`` -> run folder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fer.data import FERDataModule
from fer.losses import balanced_class_weights
from fer.models import FERModule
from fer.models.features import FeatureCache
from fer.run.callbacks import AtomicCheckpointIO, RecordDataConfig, StepSeed
from fer.run.checkpoints import check_checkpoint_path, check_compatible, read_checkpoint
from fer.run.cli import hydra_command, user_errors
from fer.run.config import CONFIG_DIR, flatten, plain, register_resolvers
from fer.run.process import prepare_process
from fer.run.record import record_run
from fer.run.resume import FINISHED, compose_resumed, earlier_sweep_start, resume_folder, resumed_run
from fer.run.trainer import (
    FIT_METRICS_FILE,
    build_trainer,
    finish_loggers,
    log_hparams_with_metrics,
    print_metrics_table,
    read_metrics_file,
    scalar_metrics,
    write_metrics_file,
)

log = logging.getLogger("fer.train")
HPARAM_METRICS = ["val/acc_best", "test/acc", "test/f1_macro"]
HPARAM_SECTIONS = ("model", "freeze", "loss", "optimizer", "scheduler")


def build_datamodule(cfg: DictConfig) -> FERDataModule:
    """The data module of ``cfg.data``; its ``source`` stays a config (the module builds and records it)."""
    return instantiate(cfg.data, _recursive_=False, _convert_="all")


def resolve_loss(loss: dict[str, Any], datamodule: FERDataModule) -> dict[str, Any]:
    """``loss.class_weights=balanced`` as numbers: inverse class frequencies of the training split."""
    if loss.get("class_weights") != "balanced":
        return loss
    counts = datamodule.train_class_counts
    weights = balanced_class_weights(counts)
    log.info("Balanced class weights from train counts %s: %s", counts, [round(w, 3) for w in weights])
    return {**loss, "class_weights": weights}


def build_module(cfg: DictConfig, datamodule: FERDataModule) -> FERModule:
    """The LightningModule from ``cfg.model`` plus the freeze/loss/optimizer/scheduler groups and what the
    data says: its class names, preprocessing and (for balanced class weights) class counts."""
    freeze = {k: v for k, v in plain(cfg.freeze).items() if k != "callback"}
    return hydra.utils.instantiate(
        cfg.model,
        class_names=list(datamodule.class_names),
        preprocessing=datamodule.preprocessing.as_dict(),
        freeze=freeze,
        loss=resolve_loss(plain(cfg.loss), datamodule),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")),
        _recursive_=False,
        _convert_="all",
    )


def run_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The hyper-parameters shown beside the final metrics (TensorBoard's HPARAMS tab; flat, scalars only)."""
    chosen = {section: plain(cfg.get(section)) or {} for section in HPARAM_SECTIONS}
    data = plain(cfg.data)
    chosen["data"] = {k: data.get(k) for k in ("image_size", "grayscale", "batch_size", "sampler", "augment")}
    chosen["data"]["source"] = (data.get("source") or {}).get("_target_")
    chosen["trainer"] = {k: plain(cfg.trainer).get(k) for k in ("max_epochs", "precision", "accelerator")}
    chosen["seed"] = cfg.get("seed")
    return flatten(chosen)


def training_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The callbacks that follow from the config groups (the callbacks group adds its own)."""
    callbacks: list[L.Callback] = [RecordDataConfig()]
    if cfg.freeze.get("callback"):
        callbacks.append(hydra.utils.instantiate(cfg.freeze.callback))
    if cfg.get("seed") is not None:
        callbacks.append(StepSeed(cfg.seed))
    if cfg.data.get("feature_cache"):
        callbacks.append(FeatureCache())
    return callbacks


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (resuming from ``ckpt_path`` if given) and test the best checkpoint; returns the final metrics
    (``run/seconds``: this start's wall time, data preparation, training and test included)."""
    start = time.perf_counter()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    log.info("CPU threads: %d", torch.get_num_threads())  # jobs side by side divide the cores among them
    ckpt_path = check_checkpoint_path(cfg.get("ckpt_path"))
    checkpoint = read_checkpoint(ckpt_path) if ckpt_path else None  # weights_only=True
    resuming = bool(cfg.get("resume"))

    datamodule = build_datamodule(cfg)
    model = build_module(cfg, datamodule)
    resume_step = None
    if checkpoint is not None:
        check_compatible(checkpoint, model, ckpt_path, "ckpt_path")  # same backbone and classes
        resume_step = int(checkpoint.get("global_step") or 0) if resuming else None
        del checkpoint
    trainer = build_trainer(
        cfg, training_callbacks(cfg), resume_step=resume_step, plugins=[AtomicCheckpointIO()]
    )

    log.info("World size %d (this process: rank %d)", trainer.world_size, trainer.global_rank)
    run_dir = Path(cfg.paths.output_dir)
    earlier_fit = resuming and (run_dir / FIT_METRICS_FILE).is_file()  # a start that finished its fit
    metrics = read_metrics_file(run_dir, FIT_METRICS_FILE) if earlier_fit else {}
    best = ""
    if cfg.get("train"):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics.update(scalar_metrics(trainer.callback_metrics))
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if trainer.is_global_zero:
            write_metrics_file(run_dir, metrics, best or None, name=FIT_METRICS_FILE)

    if cfg.get("test"):
        if not best and cfg.get("train"):
            log.warning(
                "No best checkpoint was saved (fast_dev_run or no validation): testing the last weights."
            )
        test_ckpt = best or (ckpt_path if not cfg.get("train") else None)
        trainer.test(
            model=model, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False, weights_only=True
        )
        metrics.update(scalar_metrics(trainer.callback_metrics))

    metrics["run/seconds"] = time.perf_counter() - start
    final = {name: metrics[name] for name in HPARAM_METRICS if name in metrics}
    log_hparams_with_metrics(trainer, run_hparams(cfg), final)
    finish_loggers(trainer)
    notes = {"run folder": cfg.paths.output_dir}
    if best:
        notes["best checkpoint"] = best
    if trainer.is_global_zero:
        write_metrics_file(run_dir, metrics, best or None)
    print_metrics_table("final metrics", metrics, notes)
    return metrics


def record_this_start(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """The resolved config and run record (code version, packages, machine) in this start's config folder."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.output_subdir is None:
        return
    folder = Path(hydra_cfg.runtime.output_dir) / str(hydra_cfg.output_subdir)
    overrides = list(hydra_cfg.overrides.task) if overrides is None else overrides
    record_run(folder, cfg, overrides, resumed_from=cfg.get("ckpt_path") if cfg.get("resume") else None)


def metric_for_sweeper(metrics: dict[str, float], name: str | None) -> float | None:
    """The value Hydra's sweepers optimize (None, with a warning, if that metric was not logged)."""
    if name and name not in metrics:
        log.warning("optimized_metric=%s was not logged (logged: %s)", name, ", ".join(sorted(metrics)))
    return metrics.get(name) if name else None


def run(cfg: DictConfig) -> float | None:
    """One training job: the composed config (or the resumed run's), recorded, then trained."""
    with user_errors():
        prepare_process()
        resumed = resumed_run(cfg.get("resume"), cfg.get("ckpt_path"))
        earlier = earlier_sweep_start() if resumed is None else None
        if earlier is not None and earlier[0] == FINISHED:
            log.info("%s finished in an earlier start of this sweep: not run again.", earlier[1])
            return metric_for_sweeper(read_metrics_file(earlier[1]), cfg.get("optimized_metric"))
        if earlier is not None:  # cut short in an earlier start of this sweep: continue from its last.ckpt
            resumed = resume_folder(earlier[1])
        overrides = None
        if resumed is not None:
            cfg, overrides = compose_resumed(resumed)
        log.debug("Config:\n%s", OmegaConf.to_yaml(cfg))
        record_this_start(cfg, overrides)
        metrics = train(cfg)
    return metric_for_sweeper(metrics, cfg.get("optimized_metric"))


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    return run(cfg)


def main() -> Any:
    """``python -m fer.train`` / ``fer-train``."""
    register_resolvers()
    return hydra_command(hydra_main)()


if __name__ == "__main__":
    # run the importable module's entry point, so that sweep jobs pickle by reference to fer.train
    from fer.train import main as importable_main

    importable_main()
