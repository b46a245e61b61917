"""FER+ as distributed: FER2013's ``fer2013.csv`` for the pixels and FER+'s ``fer2013new.csv`` for the labels
(same row order; ten annotators' votes per face over 8 expressions, ``unknown`` and ``NF`` = not a face).

``label_mode=majority`` is the FER+ paper's majority vote (rows whose top vote is unknown or NF, or that have
no single top class, are left out); ``probability`` trains on the vote distribution over the kept classes as
a soft target, and the metrics use the majority label. ``classes=7`` leaves contempt out."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from fer.data.sources.base import DataSource, SplitIndex
from fer.data.sources.fer2013 import (
    FER2013_FILE,
    FER2013_HELP,
    USAGE_SPLITS,
    PixelTable,
    pixel_split,
    read_pixel_table,
)
from fer.data.sources.tables import BadRows, class_names_for, read_csv
from fer.errors import DataLayoutError, FERError

log = logging.getLogger(__name__)

FERPLUS_FILE = "fer2013new.csv"
# FER+'s vote columns as fer's class names; the last two are not expressions
VOTE_CLASSES: dict[str, str] = {
    "neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad", "anger": "angry",
    "disgust": "disgust", "fear": "fear", "contempt": "contempt",
}  # fmt: skip
NOT_EXPRESSIONS = ("unknown", "NF")
VOTE_COLUMNS = (*VOTE_CLASSES, *NOT_EXPRESSIONS)
LABEL_MODES = ("majority", "probability")
FERPLUS_HELP = (
    "FER+ relabels FER2013: put FER+'s fer2013new.csv (github.com/microsoft/FERPlus, columns "
    f"{','.join(('Usage', 'Image name', *VOTE_COLUMNS))}) beside FER2013's fer2013.csv and pass "
    "data.data_dir=<that folder> (default: data/FERPlus in the project). " + FER2013_HELP
)


def majority(votes: np.ndarray, kept: tuple[str, ...]) -> int | str:
    """The index in ``kept`` of the single top-voted column, or why the row has none."""
    top = votes.max()
    if top <= 0:
        return "no votes"
    winners = np.flatnonzero(votes == top)
    if len(winners) > 1:
        return "no single top class"
    column = VOTE_COLUMNS[winners[0]]
    if column in NOT_EXPRESSIONS:
        return f"top vote {column}"
    name = VOTE_CLASSES[column]
    return kept.index(name) if name in kept else f"top vote {name} (7 classes)"


class FERPlus(DataSource):
    """``<root>/fer2013.csv`` + ``<root>/fer2013new.csv``: FER2013's faces with FER+'s labels (7 or 8 classes)."""

    help = FERPLUS_HELP

    def __init__(
        self, root: str | Path, label_mode: str = "majority", classes: int = 8, on_bad_image: str = "skip"
    ) -> None:
        super().__init__(root)
        if label_mode not in LABEL_MODES:
            raise FERError(f"data.label_mode={label_mode!r}: choose one of {list(LABEL_MODES)}.")
        self.label_mode = label_mode
        self._class_names = class_names_for(classes)
        self.on_bad_image = on_bad_image
        self._rows: tuple[PixelTable, list[str | None], np.ndarray, np.ndarray] | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    def _votes(self, table: PixelTable) -> tuple[list[str | None], np.ndarray, int]:
        """Each FER+ row's split (None: left out) and its votes over :data:`VOTE_COLUMNS`, and how many rows
        are not faces."""
        file = self.root / FERPLUS_FILE
        bad = BadRows(file, self.on_bad_image)
        splits: list[str | None] = []
        votes: list[np.ndarray] = []
        not_faces = 0
        for line, row in read_csv(file, ("Usage", "Image name", *VOTE_COLUMNS), self.help):
            if len(splits) == len(table):
                raise DataLayoutError(
                    f"{file} line {line}: more rows than the {len(table)} of {table.file}; FER+ labels "
                    "fer2013.csv row by row: use the two files as distributed."
                )
            counts = np.zeros(len(VOTE_COLUMNS), dtype=np.float32)
            split = None
            if "_error" in row:
                bad.add(line, row["_error"])
            elif not row["Image name"].strip():  # an empty name marks a row that is not a face
                not_faces += 1
            else:
                problem = None
                split = USAGE_SPLITS.get(row["Usage"].strip())
                try:
                    counts[:] = [float(row[column]) for column in VOTE_COLUMNS]
                except ValueError:
                    problem = "a vote count is not a number"
                if split is None:
                    problem = f"Usage {row['Usage']!r} is none of {list(USAGE_SPLITS)}"
                elif problem is None and counts.min() < 0:
                    problem = "a negative vote count"
                if problem is not None:
                    bad.add(line, problem)
                    split = None
            splits.append(split)
            votes.append(counts)
        if len(splits) != len(table):
            raise DataLayoutError(
                f"{file} has {len(splits)} rows, {table.file} {len(table)}: FER+ labels fer2013.csv row by "
                "row, so both must have every row: use the two files as distributed."
            )
        bad.finish(len(splits))
        return splits, np.stack(votes), not_faces

    def rows(self) -> tuple[PixelTable, list[str | None], np.ndarray, np.ndarray]:
        """The pixel table, each row's split (None: left out), class index and soft target (read once)."""
        if self._rows is None:
            table = read_pixel_table(self.root / FER2013_FILE, self.help)
            splits, votes, not_faces = self._votes(table)
            pixel_bad = BadRows(table.file, self.on_bad_image)
            kept = self._class_names
            columns = [VOTE_COLUMNS.index(c) for c, name in VOTE_CLASSES.items() if name in kept]
            order = [kept.index(VOTE_CLASSES[VOTE_COLUMNS[c]]) for c in columns]
            labels = np.full(len(table), -1, dtype=np.int64)
            targets = np.zeros((len(table), len(kept)), dtype=np.float32)
            left_out: Counter[str] = Counter(
                {"not a face (empty Image name)": not_faces} if not_faces else {}
            )
            for i, split in enumerate(splits):
                if split is None:
                    continue
                if table.problems[i] is not None:
                    pixel_bad.add(int(table.lines[i]), table.problems[i])
                    continue
                label = majority(votes[i], kept)
                if isinstance(label, str):
                    left_out[label] += 1
                    continue
                labels[i] = label
                targets[i, order] = votes[i, columns] / votes[i, columns].sum()
            pixel_bad.finish(len(table))
            splits = [s if labels[i] >= 0 else None for i, s in enumerate(splits)]
            log.info(
                "FER+ (%s, %d classes): %d of %d rows kept; left out: %s",
                self.label_mode, len(kept), int((labels >= 0).sum()), len(table),
                ", ".join(f"{count} {why}" for why, count in sorted(left_out.items())) or "none",
            )  # fmt: skip
            self._rows = table, splits, labels, targets
        return self._rows

    def index(self, split: str) -> SplitIndex:
        table, splits, labels, targets = self.rows()
        rows = np.flatnonzero(np.array([s == split for s in splits]))
        index = pixel_split(table, split, rows, labels[rows], self.class_names)
        if self.label_mode == "probability":
            return replace(index, targets=targets[rows])
        return index
