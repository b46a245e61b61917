"""AffectNet (manually annotated part) as distributed: ``<root>/Manually_Annotated_file_lists/training.csv`` and
``validation.csv`` (one image per row: path, face box, landmarks, expression code, valence, arousal) and the
images under ``<root>/Manually_Annotated_Images/``.

As in the papers, ``validation.csv`` is the test split and ``valid`` is a seeded, stratified ``val_fraction``
of training. Codes 8-10 (None, Uncertain, No-Face), and 7 (Contempt) with ``classes=7``, are left out and
counted in the log. The face box crops the image (``crop_faces``); valence and arousal are kept in the
split's ``records``."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from fer.data.sources.base import DataSource, SplitIndex
from fer.data.sources.tables import BadRows, carve_validation, class_names_for, code_of, read_csv
from fer.errors import DataLayoutError

log = logging.getLogger(__name__)

LISTS_DIR = "Manually_Annotated_file_lists"
IMAGES_DIR = "Manually_Annotated_Images"
LIST_FILES = {"training": "training.csv", "validation": "validation.csv"}
COLUMNS = (
    "subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
    "expression", "valence", "arousal",
)  # fmt: skip
EXPRESSION_CODES: dict[int, str] = {
    0: "neutral", 1: "happy", 2: "sad", 3: "surprise", 4: "fear", 5: "disgust", 6: "angry", 7: "contempt",
    8: "None", 9: "Uncertain", 10: "No-Face",
}  # fmt: skip
NOT_EXPRESSIONS = (8, 9, 10)
AFFECTNET_HELP = (
    "AffectNet is given by its authors on request (mohammadmahoor.com/affectnet); pass data.data_dir=<the "
    f"folder holding {LISTS_DIR}/ (training.csv, validation.csv) and {IMAGES_DIR}/> (default: "
    "data/AffectNet in the project)."
)

Row = tuple[str, int, tuple[int, int], tuple[int, int, int, int], float, float]


class AffectNet(DataSource):
    """AffectNet-7 or -8: ``train`` and ``valid`` from ``training.csv``, ``test`` from ``validation.csv``.

    A row with a bad number, an unknown code or a missing image is named by its line: left out with a warning
    (``on_bad_image=skip``) or an error (``error``)."""

    help = AFFECTNET_HELP

    def __init__(
        self,
        root: str | Path,
        classes: int = 8,
        crop_faces: bool = True,
        val_fraction: float = 0.1,
        val_seed: int = 0,
        on_bad_image: str = "skip",
    ) -> None:
        super().__init__(root)
        self._class_names = class_names_for(classes)
        self.crop_faces = bool(crop_faces)
        self.val_fraction = float(val_fraction)
        self.val_seed = int(val_seed)
        self.on_bad_image = on_bad_image
        self._splits: dict[str, SplitIndex] | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    def _read(self, name: str) -> list[Row]:
        """The usable rows of one list file; bad ones named, left-out codes counted in the log."""
        file = self.root / LISTS_DIR / LIST_FILES[name]
        images = self.root / IMAGES_DIR
        if file.is_file() and not images.is_dir():
            raise DataLayoutError(f"Image folder not found: {images}. {self.help}")
        bad = BadRows(file, self.on_bad_image)
        rows: list[Row] = []
        left_out: Counter[int] = Counter()
        total = 0
        for line, row in read_csv(file, COLUMNS, self.help):
            total += 1
            if "_error" in row:
                bad.add(line, row["_error"])
                continue
            code = code_of(row["expression"], EXPRESSION_CODES)
            if isinstance(code, str):
                bad.add(line, code)
                continue
            name_of_code = EXPRESSION_CODES[code]
            if name_of_code not in self._class_names:
                left_out[code] += 1
                continue
            try:
                box = tuple(int(float(row[k])) for k in ("face_x", "face_y", "face_width", "face_height"))
                valence, arousal = float(row["valence"]), float(row["arousal"])
            except ValueError:
                bad.add(line, "a face box, valence or arousal value is not a number")
                continue
            if box[2] < 1 or box[3] < 1:
                bad.add(line, f"empty face box {box}")
                continue
            path = images / row["subDirectory_filePath"].strip()
            try:
                stat = os.stat(path)
            except OSError:
                bad.add(line, f"its image {path} is missing")
                continue
            label = self._class_names.index(name_of_code)
            rows.append((str(path), label, (stat.st_size, stat.st_mtime_ns), box, valence, arousal))
        bad.finish(total)
        log.info(
            "AffectNet %s: %d of %d rows used; codes left out (%d classes): %s",
            file.name, len(rows), total, len(self._class_names),
            ", ".join(f"{n} of code {c} ({EXPRESSION_CODES[c]})" for c, n in sorted(left_out.items())) or "none",
        )  # fmt: skip
        if not rows:
            raise DataLayoutError(f"{file} has no usable rows of the classes {list(self._class_names)}.")
        return rows

    def _split_index(self, split: str, rows: list[Row]) -> SplitIndex:
        paths, labels, fingerprints, boxes, valence, arousal = zip(*rows, strict=True) if rows else [()] * 6
        records: dict[str, tuple[Any, ...]] = {"valence": valence, "arousal": arousal}
        return SplitIndex(
            split,
            self.root / IMAGES_DIR,
            paths,
            labels,
            self._class_names,
            fingerprints,
            boxes=boxes if self.crop_faces else None,
            records=records,
        )

    def splits_by_name(self) -> dict[str, SplitIndex]:
        """The three splits, listed once (valid carved from training.csv)."""
        if self._splits is None:
            training = self._read("training")
            key = "data.val_fraction"
            valid = carve_validation([row[1] for row in training], self.val_fraction, self.val_seed, key)
            test = self._read("validation")
            self._splits = {
                "train": self._split_index(
                    "train", [r for r, v in zip(training, valid, strict=True) if not v]
                ),
                "valid": self._split_index("valid", [r for r, v in zip(training, valid, strict=True) if v]),
                "test": self._split_index("test", test),
            }
            log.info(
                "AffectNet: valid is %d of the %d training.csv rows (val_fraction=%s, val_seed=%d); test is "
                "validation.csv",
                int(np.sum(valid)), len(training), self.val_fraction, self.val_seed,
            )  # fmt: skip
        return self._splits

    def index(self, split: str) -> SplitIndex:
        return self.splits_by_name()[split]
