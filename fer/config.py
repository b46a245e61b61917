"""Config plumbing shared by the entry points: resolvers, plain containers, instantiation helpers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "conf"


def register_resolvers() -> None:
    """``${fer.project_root:}``: the folder holding ``conf/``, so paths do not depend on the working directory."""
    if not OmegaConf.has_resolver("fer.project_root"):
        OmegaConf.register_new_resolver("fer.project_root", lambda: str(PROJECT_ROOT))


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
