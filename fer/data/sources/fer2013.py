"""FER2013 as distributed: ``<root>/fer2013.csv`` with columns ``emotion,pixels,Usage``, one 48x48 gray face
per row (2,304 space-separated values); ``Usage`` Training / PublicTest / PrivateTest is train / valid /
test. Samples are rows of pixels, named ``fer2013.csv:<line>``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer.data.sources.base import EXPRESSIONS, DataSource, SplitIndex
from fer.data.sources.tables import BadRows, code_of, read_csv
from fer.errors import DataLayoutError

log = logging.getLogger(__name__)

FER2013_FILE = "fer2013.csv"
SIDE = 48
PIXEL_COUNT = SIDE * SIDE
# FER2013's emotion codes as fer's class names
FER2013_CODES: dict[int, str] = {
    0: "angry", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise", 6: "neutral",
}  # fmt: skip
USAGE_SPLITS: dict[str, str] = {"Training": "train", "PublicTest": "valid", "PrivateTest": "test"}
FER2013_HELP = (
    "FER2013 (35,887 48x48 gray faces) is published on Kaggle in the 'Challenges in Representation "
    "Learning: Facial Expression Recognition Challenge' as fer2013.csv (columns emotion,pixels,Usage); pass "
    "data.data_dir=<the folder holding fer2013.csv> (default: data/FER2013 in the project)."
)


@dataclass(frozen=True)
class PixelTable:
    """Every data row of ``fer2013.csv`` in file order (position ``i`` is row ``i``, what FER+ labels).

    ``problems[i]`` says why row ``i`` has no usable face or split (None: it has both); its pixels are then
    zero. ``emotions`` keeps the ``emotion`` column as written."""

    file: Path
    fingerprint: tuple[int, int]
    lines: np.ndarray  # (N,) line numbers in the file
    splits: tuple[str | None, ...]
    emotions: tuple[str, ...]
    pixels: np.ndarray  # (N, 48, 48) uint8
    problems: tuple[str | None, ...]

    def __len__(self) -> int:
        return len(self.lines)

    def sample_name(self, i: int) -> str:
        return f"{self.file}:{int(self.lines[i])}"


def parse_pixels(text: str) -> np.ndarray | str:
    """A 48x48 uint8 face from FER2013's pixel text, or why the text is none."""
    try:
        values = np.fromstring(text, dtype=np.int32, sep=" ")
    except ValueError:
        return "pixels holds something other than space-separated integers"
    if values.size != PIXEL_COUNT:
        return f"{values.size} pixel values, expected {PIXEL_COUNT} (48x48)"
    if values.min() < 0 or values.max() > 255:
        return f"pixel values {values.min()}..{values.max()} outside 0..255"
    return values.astype(np.uint8).reshape(SIDE, SIDE)


def read_pixel_table(file: Path, help_text: str = FER2013_HELP) -> PixelTable:
    """``fer2013.csv`` read once: every row's pixels and split, and the problems of the bad rows."""
    lines: list[int] = []
    splits: list[str | None] = []
    emotions: list[str] = []
    faces: list[np.ndarray] = []
    problems: list[str | None] = []
    blank = np.zeros((SIDE, SIDE), dtype=np.uint8)
    for line, row in read_csv(file, ("emotion", "pixels", "Usage"), help_text):
        split, emotion, face = None, "", blank
        if "_error" in row:
            problem = row["_error"]
        else:
            split, emotion, parsed = (
                USAGE_SPLITS.get(row["Usage"].strip()),
                row["emotion"],
                parse_pixels(row["pixels"]),
            )
            problem = parsed if isinstance(parsed, str) else None
            face = blank if problem else parsed
            if split is None:
                problem = f"Usage {row['Usage']!r} is none of {list(USAGE_SPLITS)}"
        lines.append(line)
        splits.append(split)
        emotions.append(emotion)
        faces.append(face)
        problems.append(problem)
    if not lines:
        raise DataLayoutError(f"{file} has a header but no rows. {help_text}")
    stat = os.stat(file)
    return PixelTable(
        file,
        (stat.st_size, stat.st_mtime_ns),
        np.asarray(lines, dtype=np.int64),
        tuple(splits),
        tuple(emotions),
        np.stack(faces),
        tuple(problems),
    )


def pixel_split(
    table: PixelTable, split: str, rows: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]
) -> SplitIndex:
    """The rows ``rows`` of ``table`` (with their ``labels``) as one split of pixel samples."""
    if len(rows) == 0:
        raise DataLayoutError(
            f"{table.file} has no usable rows of split {split!r}: the Usage column must name "
            f"{[usage for usage, name in USAGE_SPLITS.items() if name == split]} for some rows."
        )
    return SplitIndex(
        split,
        table.file,
        tuple(table.sample_name(i) for i in rows),
        tuple(int(label) for label in labels),
        class_names,
        (table.fingerprint,) * len(rows),
        pixels=table.pixels[rows],
    )


class FER2013(DataSource):
    """``<root>/fer2013.csv``: the 7 expressions, Training / PublicTest / PrivateTest as train / valid / test.

    A row whose pixels are not 2,304 values in 0..255, or whose emotion or Usage is unknown, is named by its
    line: left out with a warning (``on_bad_image=skip``) or an error (``error``)."""

    help = FER2013_HELP

    def __init__(self, root: str | Path, on_bad_image: str = "skip") -> None:
        super().__init__(root)
        self.on_bad_image = on_bad_image
        self._rows: tuple[PixelTable, np.ndarray] | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return EXPRESSIONS

    def table(self) -> tuple[PixelTable, np.ndarray]:
        """The table and every row's class index (-1 for a bad row), read and checked once."""
        if self._rows is None:
            table = read_pixel_table(self.root / FER2013_FILE, self.help)
            bad = BadRows(table.file, self.on_bad_image)
            labels = np.full(len(table), -1, dtype=np.int64)
            for i, (problem, emotion) in enumerate(zip(table.problems, table.emotions, strict=True)):
                code = code_of(emotion, FER2013_CODES) if problem is None else problem
                if isinstance(code, str):
                    bad.add(int(table.lines[i]), code)
                else:
                    labels[i] = EXPRESSIONS.index(FER2013_CODES[code])
            bad.finish(len(table))
            self._rows = table, labels
        return self._rows

    def index(self, split: str) -> SplitIndex:
        table, labels = self.table()
        rows = np.flatnonzero((labels >= 0) & np.array([s == split for s in table.splits]))
        return pixel_split(table, split, rows, labels[rows], self.class_names)
