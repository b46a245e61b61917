"""Data: sources (one per data set format), decoding and preprocessing, packing, loaders, the DataModule."""

from typing import Any

from fer.data.preprocessing import Augmentation, Preprocessing
from fer.data.sources import CONTEMPT, EXPRESSIONS, MMAFEDB, SPLITS, DataSource, ImageFolders, SplitIndex

CLASS_NAMES = EXPRESSIONS

__all__ = [
    "CLASS_NAMES",
    "CONTEMPT",
    "EXPRESSIONS",
    "MMAFEDB",
    "SPLITS",
    "Augmentation",
    "DataSource",
    "FERDataModule",
    "ImageFolders",
    "Preprocessing",
    "SplitIndex",
]


def __getattr__(name: str) -> Any:
    # Lightning is imported only by what needs the data module: the audit and predict tools start fast
    if name == "FERDataModule":
        from fer.data.datamodule import FERDataModule

        return FERDataModule
    raise AttributeError(f"module 'fer.data' has no attribute {name!r}")
