"""Data sources: one small class per data set format, listing each split's samples, labels and class names."""

from fer.data.sources.affectnet import AffectNet
from fer.data.sources.base import CONTEMPT, EXPRESSIONS, SPLITS, DataSource, SplitIndex
from fer.data.sources.fer2013 import FER2013
from fer.data.sources.ferplus import FERPlus
from fer.data.sources.folders import MMAFEDB, ImageFolders
from fer.data.sources.rafdb import RAFDB
from fer.data.sources.shared import SharedClasses

__all__ = [
    "CONTEMPT", "EXPRESSIONS", "FER2013", "MMAFEDB", "RAFDB", "SPLITS", "AffectNet", "DataSource", "FERPlus",
    "ImageFolders", "SharedClasses", "SplitIndex",
]  # fmt: skip
