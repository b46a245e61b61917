"""``python -m fer.train``: fit a MobileNetV3 expression classifier, then test its best checkpoint.

Everything is chosen by Hydra config (``conf/train.yaml``); ``--help`` lists the groups and options.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fer.atomic import atomic_write_text
from fer.callbacks import StepSeed
from fer.checkpoints import check_compatible, read_checkpoint
from fer.config import CONFIG_DIR, flatten, plain, register_resolvers
from fer.data import FERDataModule
from fer.models import FERModule
from fer.provenance import record_run
from fer.resume import compose_resumed, resumed_run
from fer.runtime import (
    build_trainer,
    check_checkpoint_path,
    log_hparams_with_metrics,
    print_metrics_table,
    quiet_known_warnings,
    report_user_errors,
    scalar_metrics,
    tune_cpu_allocator,
)

log = logging.getLogger("fer.train")
register_resolvers()
quiet_known_warnings()
tune_cpu_allocator()

HPARAM_METRICS = ["val/acc_best", "test/acc", "test/f1_macro"]
HPARAM_SECTIONS = ("model", "freeze", "loss", "optimizer", "scheduler")


def build_module(cfg: DictConfig, datamodule: FERDataModule) -> FERModule:
    """The LightningModule from ``cfg.model`` plus the freeze/loss/optimizer/scheduler groups."""
    freeze = {k: v for k, v in plain(cfg.freeze).items() if k != "callback"}
    return hydra.utils.instantiate(
        cfg.model,
        class_names=list(datamodule.class_names),
        preprocessing=datamodule.preprocessing.as_dict(),
        freeze=freeze,
        loss=plain(cfg.loss),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.scheduler),
        _recursive_=False,
    )


def run_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The hyper-parameters shown in TensorBoard's HPARAMS tab (flat, scalars only)."""
    chosen = {section: plain(cfg.get(section)) or {} for section in HPARAM_SECTIONS}
    data = plain(cfg.data)
    chosen["data"] = {k: data.get(k) for k in ("image_size", "grayscale", "batch_size", "sampler", "augment")}
    chosen["trainer"] = {k: plain(cfg.trainer).get(k) for k in ("max_epochs", "precision", "accelerator")}
    chosen["seed"] = cfg.get("seed")
    return flatten(chosen)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (resuming from ``ckpt_path`` if given) and test the best checkpoint; returns the final metrics."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    ckpt_path = check_checkpoint_path(cfg.get("ckpt_path"))
    checkpoint = read_checkpoint(ckpt_path) if ckpt_path else None  # weights_only=True

    datamodule: FERDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    model = build_module(cfg, datamodule)
    resume_step = None
    if checkpoint is not None:
        check_compatible(checkpoint, model, ckpt_path, "ckpt_path")  # same backbone and classes
        resume_step = int(checkpoint.get("global_step") or 0) if cfg.get("resume") else None
        del checkpoint
    callbacks = [hydra.utils.instantiate(cfg.freeze.callback)] if cfg.freeze.get("callback") else []
    if cfg.get("seed") is not None:
        callbacks.append(StepSeed(cfg.seed))
    trainer = build_trainer(cfg, callbacks, resume_step=resume_step)

    if cfg.get("train"):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = scalar_metrics(trainer.callback_metrics)

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("test"):
        if not best and cfg.get("train"):
            log.warning(
                "No best checkpoint was saved (fast_dev_run or no validation): testing the last weights."
            )
        test_ckpt = best or (ckpt_path if not cfg.get("train") else None)
        trainer.test(model=model, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False)
        metrics.update(scalar_metrics(trainer.callback_metrics))

    log_hparams_with_metrics(trainer, run_hparams(cfg), HPARAM_METRICS)
    notes = {"run folder": cfg.paths.output_dir}
    if best:
        notes["best checkpoint"] = best
    if trainer.is_global_zero:
        write_metrics_file(Path(cfg.paths.output_dir), metrics, best or None)
    print_metrics_table("final metrics", metrics, notes)
    return metrics


METRICS_FILE = "metrics.json"


def write_metrics_file(run_dir: Path, metrics: dict[str, float], best_checkpoint: str | None) -> Path:
    """The run's final metrics as JSON in its folder (what ``fer.report`` and scripts read)."""
    payload = {"metrics": metrics, "best_checkpoint": best_checkpoint}
    return atomic_write_text(
        run_dir / METRICS_FILE, json.dumps(payload, indent=2, sort_keys=True) + "\n", "metrics"
    )


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


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    with report_user_errors():
        run = resumed_run(cfg.get("resume"), cfg.get("ckpt_path"))
        overrides = None
        if run is not None:
            cfg, overrides = compose_resumed(run)
        log.debug("Config:\n%s", OmegaConf.to_yaml(cfg))
        record_this_start(cfg, overrides)
        metrics = train(cfg)
    return metric_for_sweeper(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
