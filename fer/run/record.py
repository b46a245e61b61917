"""What a run folder records about how its result was made, so that any number can be traced and rerun.

Each start of a run writes, next to Hydra's own ``config.yaml`` / ``overrides.yaml`` / ``hydra.yaml``:

- ``config_resolved.yaml``: the configuration with every interpolation resolved (paths, seeds, sizes);
- ``run_info.json``: the command line and its overrides, the git commit of the code and whether the
  working tree had uncommitted changes, the versions of Python and of every package that shapes the
  result, the machine (platform, CPU threads, GPU) and the start time.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fer.files import atomic_write_text
from fer.run.config import PROJECT_ROOT

log = logging.getLogger(__name__)

RUN_INFO = "run_info.json"
RESOLVED_CONFIG = "config_resolved.yaml"
PACKAGES = (
    "fer",
    "torch",
    "torchvision",
    "lightning",
    "torchmetrics",
    "hydra-core",
    "omegaconf",
    "hydra-optuna-sweeper",
    "optuna",
    "numpy",
    "pillow",
    "opencv-python-headless",
    "onnxruntime",
    "tensorboard",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(*args: str, cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The commit of the code that ran and whether the tree differed from it (None outside a checkout)."""
    commit = _git("rev-parse", "HEAD", cwd=root)
    if commit is None:
        return {"commit": None, "dirty": None, "changed_files": None}
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=root)
    changed = [line[3:] for line in (status or "").splitlines() if line.strip()]
    return {
        "commit": commit,
        "branch": _git("rev-parse", "--abbrev-ref", "HEAD", cwd=root),
        "dirty": bool(changed) if status is not None else None,
        "changed_files": changed[:50],
    }


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def run_info(cfg: DictConfig, overrides: list[str], resumed_from: str | None = None) -> dict[str, Any]:
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "overrides": list(overrides),
        "resumed_from": resumed_from,
        "seed": cfg.get("seed"),
        "git": git_state(),
        "packages": package_versions(),
        "machine": machine(),
        "environment": {k: v for k, v in os.environ.items() if k.startswith("FER_")},
    }


def record_run(
    folder: str | Path, cfg: DictConfig, overrides: list[str], resumed_from: str | None = None
) -> Path:
    """Write ``config_resolved.yaml`` and ``run_info.json`` into ``folder`` (this start's config folder)."""
    folder = Path(folder)
    info = run_info(cfg, overrides, resumed_from)
    atomic_write_text(folder / RESOLVED_CONFIG, OmegaConf.to_yaml(cfg, resolve=True), "resolved config")
    atomic_write_text(folder / RUN_INFO, json.dumps(info, indent=2, default=str) + "\n", "run record")
    git = info["git"]
    if git["commit"] is None:
        log.info("Code version: fer %s (not a git checkout)", info["packages"].get("fer"))
    else:
        dirty = " with uncommitted changes" if git["dirty"] else ""
        log.info("Code version: git %s%s", git["commit"][:12], dirty)
    return folder / RUN_INFO
