"""Building the Lightning Trainer from config, and reporting what a run ended with."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from fer.errors import FERError
from fer.files import atomic_write_text
from fer.run.callbacks import LastCheckpoint
from fer.run.launch import check_slurm_allocation
from fer.run.tracking import check_logger_packages
from fer.stats import CI_SUFFIXES

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
FIT_METRICS_FILE = "fit_metrics.json"
ACCELERATOR_HINT = "use trainer=default (a GPU when there is one, else the CPU) or trainer=cpu"


def instantiate_all(
    config: DictConfig | None, kind: str, extra: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Any]:
    """Instantiate every entry of a callbacks/logger config group that has a ``_target_``; ``extra`` maps a
    class name (``TensorBoardLogger``) to more keyword arguments for the entries of that class."""
    objects = []
    for name, entry in (config or {}).items():
        if isinstance(entry, Mapping) and entry.get("_target_"):
            log.debug("Instantiating %s %s <%s>", kind, name, entry["_target_"])
            more = (extra or {}).get(str(entry["_target_"]).rsplit(".", 1)[-1], {})
            objects.append(instantiate(entry, **more))
    return objects


def check_accelerator(trainer_cfg: Mapping[str, Any]) -> None:
    """A device the machine does not have is the user's choice to fix, not a library traceback."""
    import torch

    accelerator = str(trainer_cfg.get("accelerator") or "auto")
    devices = trainer_cfg.get("devices")
    if accelerator in ("gpu", "cuda"):
        found = torch.cuda.device_count()
        if found == 0:
            raise FERError(
                f"trainer.accelerator={accelerator}: this machine has no CUDA GPU that torch can use; {ACCELERATOR_HINT}."
            )
        if isinstance(devices, int) and devices > found:
            raise FERError(
                f"trainer.devices={devices}, but this machine has {found} GPU(s): set trainer.devices={found} or fewer."
            )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise FERError(
            f"trainer.accelerator=mps: Apple's MPS is not available on this machine; {ACCELERATOR_HINT}."
        )


def check_checkpoint_folders(callbacks: list[Callback], resuming: bool) -> None:
    """A new run writes its checkpoints into a folder of its own: one that already holds checkpoints (and is
    not the run being resumed) would see them replaced or deleted by checkpoint rotation."""
    if resuming:
        return
    for callback in callbacks:
        folder = (
            Path(callback.dirpath) if isinstance(callback, ModelCheckpoint) and callback.dirpath else None
        )
        if folder is not None and folder.is_dir():
            found = sorted(p.name for p in folder.glob("*.ckpt"))
            if found:
                raise FERError(
                    f"The checkpoint folder {folder} already holds {found[:3]}: a new run would replace or delete "
                    "them. Resume that run with resume=<its run folder>, or let the run write into its own folder "
                    "(leave callbacks.*.dirpath and hydra.run.dir at their defaults)."
                )


def build_trainer(
    cfg: DictConfig,
    extra_callbacks: list[Callback] | None = None,
    resume_step: int | None = None,
    plugins: list[Any] | None = None,
) -> Trainer:
    """The Trainer from ``cfg.trainer`` with the run's callbacks, loggers and plugins.

    ``trainer.enable_progress_bar=false`` drops the configured progress bar instead of failing on it.
    ``resume_step``: the global step of the checkpoint a run resumes from; TensorBoard then drops what the
    interrupted run logged after it (``purge_step``), so the resumed curves carry no doubled steps.
    """
    check_accelerator(cfg.trainer)
    check_slurm_allocation(cfg.trainer)
    callbacks = instantiate_all(cfg.get("callbacks"), "callback") + list(extra_callbacks or [])
    if cfg.trainer.get("enable_progress_bar") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    # last.ckpt records what every other callback did at an epoch's end: LastCheckpoint runs after them
    callbacks.sort(key=lambda callback: isinstance(callback, LastCheckpoint))
    check_checkpoint_folders(callbacks, resuming=resume_step is not None)
    purge = {"TensorBoardLogger": {"purge_step": resume_step}} if resume_step else None
    check_logger_packages(cfg.get("logger"))
    loggers = instantiate_all(cfg.get("logger"), "logger", purge)
    extra: dict[str, Any] = {}
    if plugins:
        extra["plugins"] = [instantiate(p) for p in cfg.trainer.get("plugins") or []] + list(plugins)
    if cfg.trainer.get("deterministic") and cfg.trainer.get("benchmark"):
        # cuDNN's benchmark mode picks algorithms by timing them, which deterministic mode must not do
        log.info("trainer.deterministic: cuDNN benchmark mode off")
        extra["benchmark"] = False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, **extra)
    check_launches_no_sweep(trainer)
    return trainer


def check_launches_no_sweep(trainer: Trainer) -> None:
    """Lightning starts the other ranks of a local multi-device run by running the command line again: in a
    sweep job that would run the whole sweep again inside the job. Sweep multi-device runs on SLURM, whose
    tasks are the ranks."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    starts_ranks = (
        isinstance(launcher, _SubprocessScriptLauncher)
        and launcher.num_processes > 1
        and not launcher.cluster_environment.creates_processes_externally
    )
    if in_sweep and starts_ranks:
        raise FERError(
            f"trainer.devices={trainer.num_devices} with strategy={type(trainer.strategy).__name__} in a job of "
            "a sweep: Lightning would start the other ranks by running this command line again, i.e. the whole "
            "sweep inside this job. Sweep multi-device runs on SLURM (-m hydra/launcher=slurm trainer=slurm, "
            "where the SLURM tasks are the ranks), or sweep one device per job (hydra/launcher=parallel runs "
            "jobs side by side)."
        )


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Lightning's callback metrics as plain floats, without the learning rate monitor's ``lr-*`` values:
    a setting, not a result, and a run resumed in its last epoch never logs them again."""
    return {name: float(value) for name, value in metrics.items() if not name.startswith("lr-")}


@rank_zero_only
def log_hparams_with_metrics(
    trainer: Trainer, params: Mapping[str, Any], metrics: Mapping[str, float]
) -> None:
    """Each logger's record of the run's hyper-parameters with its final metrics (TensorBoard's HPARAMS
    tab, MLflow's parameters, W&B's config), through the loggers' own ``log_hyperparams``."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(dict(params), metrics=metrics or None)
        else:
            # None as itself (TensorBoard's "null"): these loggers already hold the module's own
            # hyper-parameters, None among them, and MLflow refuses to change a logged value
            logger.log_hyperparams({k: None if v == "null" else v for k, v in params.items()})
            if metrics:
                logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()


@rank_zero_only
def finish_loggers(trainer: Trainer) -> None:
    """End each tracker's run with the job: a W&B run stays open in its process until finished, and the next
    job of a sweep in the same process would log into it."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


def write_metrics_file(
    run_dir: Path,
    metrics: Mapping[str, float],
    best_checkpoint: str | None,
    name: str = METRICS_FILE,
    **extra: Any,
) -> Path:
    """The run's final metrics as JSON in its folder (what ``fer.report`` and scripts read), and ``extra``
    entries (``fer.eval``: which classes were evaluated). ``name=FIT_METRICS_FILE``: what the fit ended
    with, for a later start of the run that has nothing left to train (killed during its test)."""
    payload = {"metrics": dict(metrics), "best_checkpoint": best_checkpoint, **extra}
    return atomic_write_text(run_dir / name, json.dumps(payload, indent=2, sort_keys=True) + "\n", "metrics")


def read_metrics_file(run_dir: Path, name: str = METRICS_FILE) -> dict[str, float]:
    """The metrics a run wrote (``name=FIT_METRICS_FILE``: those its fit ended with)."""
    return json.loads((run_dir / name).read_text())["metrics"]


@rank_zero_only
def print_metrics_table(
    title: str, metrics: Mapping[str, float], notes: Mapping[str, str] | None = None
) -> None:
    """A readable table of the final metrics on stdout."""
    from rich.console import Console
    from rich.table import Table

    bounds = {f"{name}_{side}" for name in metrics for side in CI_SUFFIXES}
    intervals = {
        name: (metrics[f"{name}_{CI_SUFFIXES[0]}"], metrics[f"{name}_{CI_SUFFIXES[1]}"])
        for name in metrics
        if all(f"{name}_{side}" in metrics for side in CI_SUFFIXES)
    }
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if intervals:
        table.add_column("95% CI (bootstrap)", justify="right")
    for name in sorted(set(metrics) - bounds):
        value = metrics[name]
        shown = (
            f"{value:,.0f}"
            if name.startswith("model/")
            else (f"{value:.4f}" if math.isfinite(value) else str(value))
        )
        low_high = intervals.get(name)
        extra = [f"[{low_high[0]:.4f}, {low_high[1]:.4f}]" if low_high else ""] if intervals else []
        table.add_row(name, shown, *extra)
    console = Console(width=100)
    console.print(table)
    for key, value in (notes or {}).items():
        console.print(f"{key}: {value}", soft_wrap=True)
