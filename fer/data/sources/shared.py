"""Another source restricted to some of its classes, relabelled in a given order: a model's classes on another
data set (``fer.eval data=<other>`` matches classes by name and evaluates on those both sides have)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fer.data.sources.base import DataSource, SplitIndex


class SharedClasses(DataSource):
    """The samples of ``source`` (a source config) whose class is one of ``class_names``, labelled by their
    position in ``class_names``; soft targets keep those columns, renormalized."""

    def __init__(
        self, source: Mapping[str, Any], class_names: Sequence[str], root: str | Path | None = None
    ) -> None:
        if isinstance(source, DataSource):  # built already (instantiating the outer config builds the inner)
            self.inner = source
        else:
            from fer.instantiate import build  # (Hydra: not for the torch-free serving path)

            spec = {**source, "root": source.get("root", None if root is None else str(root))}
            self.inner = build(spec, "data.source")
        super().__init__(self.inner.root)
        self.splits = self.inner.splits
        unknown = [name for name in class_names if name not in self.inner.class_names]
        if unknown:
            raise ValueError(f"{unknown} are not classes of {self.inner.describe()}")
        self._class_names = tuple(class_names)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    def index(self, split: str) -> SplitIndex:
        index = self.inner.index(split)
        names = self._class_names
        keep = [i for i, label in enumerate(index.labels) if index.class_names[label] in names]
        kept = index.select(keep)
        targets = kept.targets
        if targets is not None:
            targets = targets[:, [index.class_names.index(name) for name in names]]
            targets = targets / np.maximum(targets.sum(axis=1, keepdims=True), 1e-12)
        return replace(
            kept,
            labels=tuple(names.index(index.class_names[label]) for label in kept.labels),
            class_names=names,
            targets=targets,
            missing=tuple(name for name in names if name in index.missing),
        )

    def config(self) -> dict[str, Any]:
        return {**super().config(), "source": self.inner.config(), "class_names": list(self._class_names)}

    def describe(self) -> str:
        return f"{self.inner.describe()}, classes {list(self._class_names)}"
