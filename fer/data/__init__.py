"""Data: the MMAFEDB folder layout, image preprocessing, the Lightning data module, synthetic faces."""

from typing import Any

from fer.data.layout import CLASS_NAMES, SPLITS
from fer.data.transforms import Augmentation, Preprocessing

__all__ = ["CLASS_NAMES", "SPLITS", "Augmentation", "FERDataModule", "Preprocessing"]


def __getattr__(name: str) -> Any:
    # Lightning is imported only by what needs the data module: the audit and predict tools start fast
    if name == "FERDataModule":
        from fer.data.datamodule import FERDataModule

        return FERDataModule
    raise AttributeError(f"module 'fer.data' has no attribute {name!r}")
