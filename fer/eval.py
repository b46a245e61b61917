"""``python -m fer.eval ckpt_path=PATH``: test a checkpoint on the test split (or ``split=valid``).

``tta=flip|flip_crops`` adds the scores of the logits averaged over test-time views beside the plain ones;
``ckpt_path=[A,B,C]`` (or a sweep folder: its jobs' best checkpoints) scores the ensemble (the mean of the
members' probabilities) beside each member.

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

import lightning as L
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from fer.data import FERDataModule
from fer.errors import CheckpointError
from fer.infer.tta import TTA_MODES
from fer.models import FERModule
from fer.models.subset import restrict_to_classes
from fer.results import best_checkpoint, find_runs
from fer.run.checkpoints import check_checkpoint_path, load_module, recorded_data_config
from fer.run.cli import hydra_entry_point
from fer.run.config import plain
from fer.run.trainer import build_trainer, print_metrics_table, scalar_metrics, write_metrics_file
from fer.scoring import check_same_classes, ensemble_probabilities, print_score_table, score, split_logits

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


def checkpoint_paths(given: Any) -> list[str]:
    """``ckpt_path`` as checkpoint files: a file, a list of them, or a run or sweep folder (the best
    checkpoint of each of its runs)."""
    if isinstance(given, ListConfig | list | tuple):
        paths = [str(p) for p in given]
        if not paths:
            raise CheckpointError("ckpt_path=[]: give at least one checkpoint.")
        return [check_checkpoint_path(p) for p in paths]
    folder = Path(str(given)).expanduser()
    if folder.is_dir():
        runs = find_runs(folder)
        return [check_checkpoint_path(str(best_checkpoint(run))) for run in runs]
    return [check_checkpoint_path(str(given))]


def member_name(path: str) -> str:
    """``<run folder>/checkpoints/epoch_009.ckpt`` as ``<run folder name>/epoch_009.ckpt``."""
    file = Path(path)
    return f"{file.parent.parent.name}/{file.name}" if file.parent.name == "checkpoints" else file.name


def evaluate_views(cfg: DictConfig, paths: list[str]) -> dict[str, float]:
    """TTA and ensembles: each member's scores, plain and with ``tta``, and the ensemble's."""
    stage = "test" if cfg.split == "test" else "val"
    members, rows, labels = [], {}, None
    for index, path in enumerate(paths):
        model, checkpoint = load_module(path, key="ckpt_path")
        if index == 0:
            recorded = checkpoint
        elif tuple(model.class_names) != tuple(members[0][0].class_names):
            raise CheckpointError(
                f"ckpt_path: {path} classifies {list(model.class_names)}, {paths[0]} "
                f"{list(members[0][0].class_names)}: an ensemble's members need the same classes."
            )
        datamodule = build_datamodule(data_config(cfg, recorded, model))
        check_same_classes(model, datamodule, f"ckpt_path={path}")
        views = {"none": split_logits(model.eval(), datamodule, cfg.split)}
        if cfg.tta != "none":
            views[cfg.tta] = split_logits(model, datamodule, cfg.split, cfg.tta)
        if labels is not None and not np.array_equal(labels, views["none"].labels):
            raise CheckpointError(f"ckpt_path: {path} was given other {cfg.split} images than {paths[0]}.")
        labels = views["none"].labels
        members.append((model, views))
        for mode, logits in views.items():
            rows[_row(member_name(path), mode)] = score(logits.probabilities, labels)
    if len(members) > 1:
        for mode in members[0][1]:
            probabilities = ensemble_probabilities([views[mode] for _, views in members])
            rows[_row(f"ensemble of {len(members)} (mean of probabilities)", mode)] = score(
                probabilities, labels
            )
    print_score_table(
        f"{cfg.split} scores, {len(labels)} images; [low, high]: 95% bootstrap intervals",
        rows,
        {"data": str(datamodule.data_dir), "run folder": cfg.paths.output_dir},
    )
    final = rows[list(rows)[-1]]
    metrics = {f"{stage}/{name}": value for name, value in final.items()}
    for row, found in rows.items():
        metrics.update({f"{stage}/{row}/{name}": value for name, value in found.items()})
    return metrics


def _row(name: str, mode: str) -> str:
    return name if mode == "none" else f"{name} + tta={mode}"


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Run the checkpoint over one split and report the same metrics as training does."""
    if cfg.split not in SPLIT_STAGES:
        raise CheckpointError(f"split={cfg.split!r}: choose one of {list(SPLIT_STAGES)}.")
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise CheckpointError(
            "ckpt_path is required: python -m fer.eval ckpt_path=<run folder>/checkpoints/<file>.ckpt"
        )
    if cfg.get("tta", "none") not in TTA_MODES:
        raise CheckpointError(f"tta={cfg.tta!r}: choose one of {', '.join(TTA_MODES)}.")
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    paths = checkpoint_paths(cfg.ckpt_path)
    if len(paths) > 1 or cfg.get("tta", "none") != "none":
        metrics = evaluate_views(cfg, paths)
        write_metrics_file(Path(cfg.paths.output_dir), metrics, None)
        return metrics
    path = paths[0]
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


main = hydra_entry_point("eval", evaluate)


if __name__ == "__main__":
    from fer.eval import main as importable_main

    importable_main()
