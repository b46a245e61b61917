"""``python -m fer.eval ckpt_path=PATH``: test a checkpoint on the test split (or ``split=valid``).

The checkpoint alone defines the model, class names and preprocessing; the data folder defaults to the one
recorded at training time (``data_dir=DIR`` or ``data=<option>`` choose another).
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from fer.checkpoints import load_module
from fer.config import CONFIG_DIR, plain, register_resolvers
from fer.data import FERDataModule
from fer.errors import CheckpointError
from fer.models import FERModule
from fer.runtime import (
    build_trainer,
    check_checkpoint_path,
    print_metrics_table,
    quiet_known_warnings,
    report_user_errors,
    scalar_metrics,
    tune_cpu_allocator,
)

log = logging.getLogger("fer.eval")
register_resolvers()
quiet_known_warnings()
tune_cpu_allocator()

SPLIT_STAGES = {"test": "test", "valid": "validate"}


def load_checkpoint(path: str) -> tuple[FERModule, dict[str, Any]]:
    """The model and the data settings saved with it (weights only: a checkpoint cannot run code)."""
    model, checkpoint = load_module(path, key="ckpt_path")
    return model, dict(checkpoint.get("datamodule_hyper_parameters") or {})


def build_datamodule(cfg: DictConfig, model: FERModule, recorded: dict[str, Any]) -> FERDataModule:
    """The data module for evaluation, with the model's own preprocessing and class names."""
    settings = plain(cfg.data) if cfg.get("data") else dict(recorded)
    settings.pop("_target_", None)
    if not settings:
        raise CheckpointError(
            f"ckpt_path={cfg.ckpt_path} records no data settings: pass data=mmafedb (or data=synthetic) "
            "and data.data_dir=<folder>."
        )
    settings.update(model.preprocessing.as_dict())
    settings.update(
        class_names=list(model.class_names), num_workers=cfg.num_workers, eval_batch_size=cfg.batch_size
    )
    settings["feature_cache"] = False  # evaluation always runs the whole network on the images
    if cfg.get("data_dir"):
        settings.update(data_dir=cfg.data_dir, synthetic=None)
    return FERDataModule(**settings)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Run the checkpoint over one split and report the same metrics as training does."""
    if cfg.split not in SPLIT_STAGES:
        raise CheckpointError(f"split={cfg.split!r}: choose one of {list(SPLIT_STAGES)}.")
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise CheckpointError(
            "ckpt_path is required: python -m fer.eval ckpt_path=<run folder>/checkpoints/<file>.ckpt"
        )
    path = check_checkpoint_path(cfg.ckpt_path)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    model, recorded = load_checkpoint(path)
    datamodule = build_datamodule(cfg, model, recorded)
    trainer = build_trainer(cfg)
    if cfg.split == "test":
        trainer.test(model=model, datamodule=datamodule, verbose=False)
    else:
        trainer.validate(model=model, datamodule=datamodule, verbose=False)
    metrics = {k: v for k, v in scalar_metrics(trainer.callback_metrics).items() if k != "val/acc_best"}
    print_metrics_table(
        f"{cfg.split} metrics",
        metrics,
        {"checkpoint": path, "data": str(datamodule.data_dir), "run folder": cfg.paths.output_dir},
    )
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        evaluate(cfg)


if __name__ == "__main__":
    main()
