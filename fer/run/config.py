"""Hydra plumbing of the entry points: where ``conf/`` is, fer's resolvers, config values as plain data."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"


def register_resolvers() -> None:
    """``${fer.project_root:}``: the folder holding ``conf/``, so paths do not depend on the working directory;
    ``${fer.job_name:}``: a sweep job's folder name, from the values of the keys the sweep varies;
    ``${fer.run_dir:...}`` and ``${fer.config_subdir:...}``: where a run (or a resumed run) writes;
    ``${fer.slurm_tasks:...}``, ``${fer.slurm_gpus:...}``, ``${fer.parallel_jobs:}``: the launchers' sizes;
    ``${fer.mlflow_uri:...}``, ``${fer.mlflow_artifacts:...}``, ``${fer.run_name:...}``: the trackers' stores."""
    if not OmegaConf.has_resolver("fer.project_root"):
        OmegaConf.register_new_resolver("fer.project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("fer.job_name"):
        OmegaConf.register_new_resolver("fer.job_name", sweep_job_name)
    if not OmegaConf.has_resolver("fer.run_dir"):
        from fer.run import resume

        OmegaConf.register_new_resolver("fer.run_dir", resume.run_dir, use_cache=True)
        OmegaConf.register_new_resolver("fer.config_subdir", resume.config_subdir, use_cache=True)
    if not OmegaConf.has_resolver("fer.slurm_tasks"):
        from fer.run import launch

        OmegaConf.register_new_resolver("fer.slurm_tasks", launch.tasks_per_node)
        OmegaConf.register_new_resolver("fer.slurm_gpus", launch.gpus_per_node)
        OmegaConf.register_new_resolver("fer.parallel_jobs", launch.parallel_jobs)
    if not OmegaConf.has_resolver("fer.mlflow_uri"):
        from fer.run import tracking

        OmegaConf.register_new_resolver("fer.mlflow_uri", tracking.mlflow_tracking_uri)
        OmegaConf.register_new_resolver("fer.mlflow_artifacts", tracking.mlflow_artifact_location)
        OmegaConf.register_new_resolver("fer.run_name", lambda folder: Path(str(folder)).name)
    if not OmegaConf.has_resolver("fer.optuna_storage"):
        from fer.run import sweep

        OmegaConf.register_new_resolver("fer.optuna_storage", sweep.optuna_storage, use_cache=True)
        OmegaConf.register_new_resolver("fer.optuna_trials", sweep.optuna_trials_to_run, use_cache=True)
        OmegaConf.register_new_resolver("fer.optuna_seed", sweep.optuna_sampler_seed, use_cache=True)


def swept_keys(arguments: list[str]) -> set[str]:
    """Keys given sweep syntax on the command line (``a=1,2``, ``range(..)``, ``choice(..)``, ...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in arguments if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # not Hydra overrides: name jobs by number only
        return set()
    return {o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()}


def job_folder_name(number: int, overrides: list[str], varied: set[str]) -> str:
    """``<job number>_<key=value,...>`` of the overrides whose key the sweep varies."""
    parts = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in varied]
    name = ",".join(parts).replace("/", "_").replace(" ", "")
    return f"{number}_{name}"[:200] if name else str(number)


def sweep_varied_keys(hydra_cfg: Any) -> set[str]:
    """The keys a sweep varies: its command line's, as the launching process recorded them (a job may run in
    another process or on another machine, whose command line is not the sweep's), and the sweeper's."""
    from fer.run.sweep import read_sweep_record

    record = read_sweep_record(Path(str(hydra_cfg.sweep.dir)))
    varied = set(record["varied"]) if record else swept_keys(sys.argv[1:])
    return varied | set((hydra_cfg.sweeper.get("params") or {}).keys())


def sweep_job_name() -> str:
    """A sweep job's folder, named by what the sweep varies (grid or Optuna), e.g. ``3_freeze=none``."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    return job_folder_name(
        int(hydra_cfg.job.num), list(hydra_cfg.overrides.task), sweep_varied_keys(hydra_cfg)
    )


def plain(value: Any) -> Any:
    """Hydra/OmegaConf containers (and tuples) as plain dicts and lists: safe for ``weights_only`` checkpoints."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``; lists become strings (TensorBoard hparams take scalars only)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}/"))
        elif value is None or isinstance(value, bool | int | float | str):
            flat[name] = "null" if value is None else value
        else:
            flat[name] = str(value)
    return flat


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """A fer config composed as its command line would compose it, outside a Hydra run (tools, tests)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def compose_data_source(name: str, data_dir: str | Path) -> Any:
    """The data source of ``conf/data/<name>.yaml`` over ``data_dir``."""
    from fer.data.datamodule import build_source

    cfg = compose_config("train", [f"data={name}", f"data.data_dir={data_dir}"])
    return build_source(plain(cfg.data.source), None)
