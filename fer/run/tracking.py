"""Experiment trackers beside TensorBoard (``logger=mlflow``, ``logger=wandb``): where they store runs, and a
clear error naming the extra to install when one is missing."""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from fer.errors import FERError

# Lightning's logger class -> the package it needs (all in the 'tracking' extra)
LOGGER_PACKAGES = {"MLFlowLogger": "mlflow", "WandbLogger": "wandb"}


def check_logger_packages(loggers: Mapping[str, Any] | None) -> None:
    """Every configured logger's package is installed (Lightning's own message names no install command)."""
    for name, entry in (loggers or {}).items():
        target = str(entry.get("_target_", "")) if isinstance(entry, Mapping) else ""
        package = LOGGER_PACKAGES.get(target.rsplit(".", 1)[-1])
        if package and find_spec(package) is None:
            raise FERError(
                f"logger={name} needs the {package} package: pip install 'fer[tracking]' (or choose another "
                "logger, e.g. logger=tensorboard)."
            )


def mlflow_tracking_uri(local_folder: str) -> str:
    """``logger.mlflow.tracking_uri``: ``MLFLOW_TRACKING_URI`` when set (a server, a database), else a local
    SQLite store in ``local_folder`` (MLflow 3 keeps its plain-file store only in maintenance mode)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    folder = Path(local_folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def mlflow_artifact_location(local_folder: str) -> str | None:
    """Artifacts of the local store's experiments beside its database; a tracking server chooses its own."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (Path(local_folder).expanduser().resolve() / "artifacts").as_uri()
