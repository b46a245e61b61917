"""Data sources: one small class per data set format, listing each split's samples, labels and class names."""

from fer.data.sources.base import CONTEMPT, EXPRESSIONS, SPLITS, DataSource, SplitIndex
from fer.data.sources.folders import MMAFEDB, ImageFolders

__all__ = ["CONTEMPT", "EXPRESSIONS", "MMAFEDB", "SPLITS", "DataSource", "ImageFolders", "SplitIndex"]
