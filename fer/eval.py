"""``python -m fer.eval ckpt_path=PATH``: test a checkpoint on the test split (or ``split=valid``).

The checkpoint alone defines the model, class names and preprocessing. The data is rebuilt from the data
config the checkpoint records (its ``_target_`` and source), so a model trained on any source evaluates on
it; ``data.data_dir=DIR`` points it at another copy, ``data=<option>`` at another data set. Classes are
matched by name: on a data set with other classes, the metrics cover the classes both sides have, and the
others are listed as left out (``metrics.json`` records them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fer.data import FERDataModule
from fer.errors import CheckpointError
from fer.models import FERModule
from fer.models.subset import restrict_to_classes
from fer.run.checkpoints import check_checkpoint_path, load_module, recorded_data_config
from fer.run.cli import hydra_command, user_errors
from fer.run.config import CONFIG_DIR, plain, register_resolvers
from fer.run.process import prepare_process
from fer.run.trainer import build_trainer, print_metrics_table, scalar_metrics, write_metrics_file

log = logging.getLogger("fer.eval")

SPLIT_STAGES = {"test": "test", "valid": "validate"}
SHARED_CLASSES = "fer.data.sources.SharedClasses"


@dataclass(frozen=True)
class ClassMatch:
    """A model's classes against a data set's, by name: those both have (in the model's order) and the rest."""

    model_classes: list[str]
    shared: list[str]
    model_only: list[str]
    data_only: list[str]
    same: bool  # the same names in the same order: nothing to match

    @classmethod
    def of(cls, model: Sequence[str], data: Sequence[str]) -> ClassMatch:
        return cls(
            list(model),
            [n for n in model if n in data],
            [n for n in model if n not in data],
            [n for n in data if n not in model],
            tuple(model) == tuple(data),
        )

    def describe(self) -> str:
        left_out = [f"{n} (only the model has it)" for n in self.model_only]
        left_out += [f"{n} (only the data has it)" for n in self.data_only]
        return (
            f"metrics over the {len(self.shared)} shared classes {self.shared}; left out: "
            f"{', '.join(left_out) or 'none'}; images of a left-out class are not evaluated, and the model "
            "predicts among the shared classes"
        )

    def as_dict(self) -> dict[str, list[str]]:
        return {"evaluated": self.shared, "model_only": self.model_only, "data_only": self.data_only}


def data_config(cfg: DictConfig, checkpoint: dict[str, Any], model: FERModule) -> dict[str, Any]:
    """The data module's config for evaluation: the chosen ``data=<option>`` or the recorded one, the
    ``data.*`` keys given on top, and always the model's own preprocessing."""
    given = {k: v for k, v in (plain(cfg.get("data")) or {}).items() if v is not None}
    chosen = HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized() else None
    settings = given if chosen else {**recorded_data_config(checkpoint), **given}
    if not settings.get("_target_"):
        raise CheckpointError(
            f"ckpt_path={cfg.ckpt_path} records no data settings: choose the data with data=<option> (e.g. "
            "data=mmafedb data.data_dir=<folder>)."
        )
    if not chosen and "data_dir" in given:  # another copy of the same data set
        settings["synthetic"] = None
        if isinstance(settings.get("source"), dict):
            settings["source"] = {**settings["source"], "root": given["data_dir"]}
    settings.update(model.preprocessing.as_dict())
    settings["feature_cache"] = False  # evaluation always runs the whole network on the images
    return settings


def build_datamodule(settings: dict[str, Any]) -> FERDataModule:
    return instantiate(settings, _recursive_=False, _convert_="all")


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
    model, checkpoint = load_module(path, key="ckpt_path")
    settings = data_config(cfg, checkpoint, model)
    datamodule = build_datamodule(settings)
    match = ClassMatch.of(model.class_names, datamodule.class_names)
    if not match.shared:
        raise CheckpointError(
            f"ckpt_path={cfg.ckpt_path} classifies {list(model.class_names)}, but this data has "
            f"{list(datamodule.class_names)}: no class in common by name. Evaluate on data with some of the "
            "model's classes."
        )
    if not match.same:
        log.info("Classes matched by name: %s", match.describe())
        model = restrict_to_classes(model, match.shared)
        shared = {
            "_target_": SHARED_CLASSES,
            "source": datamodule.source.config(),
            "class_names": match.shared,
        }
        datamodule = build_datamodule({**settings, "source": shared})
    trainer = build_trainer(cfg)
    if cfg.split == "test":
        trainer.test(model=model, datamodule=datamodule, verbose=False)
    else:
        trainer.validate(model=model, datamodule=datamodule, verbose=False)
    metrics = {k: v for k, v in scalar_metrics(trainer.callback_metrics).items() if k != "val/acc_best"}
    notes = {"checkpoint": path, "data": str(datamodule.data_dir), "run folder": cfg.paths.output_dir}
    if not match.same:
        notes["classes"] = match.describe()
    print_metrics_table(f"{cfg.split} metrics", metrics, notes)
    if trainer.is_global_zero:
        trained_on = (recorded_data_config(checkpoint).get("source") or {}).get("_target_", "")
        model_record = {"classes": list(match.model_classes), "trained_on": trained_on.rsplit(".", 1)[-1]}
        write_metrics_file(
            Path(cfg.paths.output_dir), metrics, path, classes=match.as_dict(), model=model_record
        )
    return metrics


def run(cfg: DictConfig) -> dict[str, float]:
    with user_errors():
        prepare_process()
        return evaluate(cfg)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    run(cfg)


def main() -> Any:
    """``python -m fer.eval`` / ``fer-eval``."""
    register_resolvers()
    return hydra_command(hydra_main)()


if __name__ == "__main__":
    from fer.eval import main as importable_main

    importable_main()
