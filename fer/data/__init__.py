"""Data: the MMAFEDB folder layout, image preprocessing, the Lightning data module, synthetic faces."""

from fer.data.datamodule import FERDataModule
from fer.data.layout import CLASS_NAMES, SPLITS
from fer.data.transforms import Augmentation, Preprocessing

__all__ = ["CLASS_NAMES", "SPLITS", "Augmentation", "FERDataModule", "Preprocessing"]
