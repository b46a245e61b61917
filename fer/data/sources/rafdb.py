"""RAF-DB "basic" as distributed: ``<root>/basic/EmoLabel/list_patition_label.txt`` (lines ``train_00001.jpg 5``)
and the aligned 100x100 faces ``<root>/basic/Image/aligned/<name>_aligned.jpg``. RAF-DB has no validation
split: a seeded, stratified ``val_fraction`` of train becomes ``valid``; ``test`` is the official test list."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from fer.data.sources.base import EXPRESSIONS, DataSource, SplitIndex
from fer.data.sources.tables import BadRows, carve_validation, code_of, require_file
from fer.errors import DataLayoutError

log = logging.getLogger(__name__)

LABEL_FILE = Path("basic", "EmoLabel", "list_patition_label.txt")  # sic: RAF-DB's own spelling
IMAGE_DIR = Path("basic", "Image", "aligned")
RAFDB_CODES: dict[int, str] = {
    1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "angry", 7: "neutral",
}  # fmt: skip
RAFDB_HELP = (
    "RAF-DB is given by its authors on request (whdeng.cn/RAF/model1.html); pass data.data_dir=<the folder "
    f"holding basic/>, with {LABEL_FILE.as_posix()} and {IMAGE_DIR.as_posix()}/<name>_aligned.jpg "
    "(default: data/RAF-DB in the project)."
)


def aligned_name(name: str) -> str:
    """``train_00001.jpg`` -> ``train_00001_aligned.jpg``, the aligned face's file."""
    stem, ext = os.path.splitext(name)
    return f"{stem}_aligned{ext}"


class RAFDB(DataSource):
    """RAF-DB basic: 7 expressions; ``valid`` is ``val_fraction`` of train per class, drawn with ``val_seed``.

    A list line that is not ``<train_|test_name> <code 1-7>``, or whose aligned image is missing, is named by
    its line: left out with a warning (``on_bad_image=skip``) or an error (``error``)."""

    help = RAFDB_HELP

    def __init__(
        self, root: str | Path, val_fraction: float = 0.1, val_seed: int = 0, on_bad_image: str = "skip"
    ) -> None:
        super().__init__(root)
        self.val_fraction = float(val_fraction)
        self.val_seed = int(val_seed)
        self.on_bad_image = on_bad_image
        self._splits: dict[str, SplitIndex] | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return EXPRESSIONS

    def _read_list(self) -> dict[str, list[tuple[str, int, tuple[int, int]]]]:
        """(image path, class index, fingerprint) per listed image, for the official train and test lists."""
        file = require_file(self.root / LABEL_FILE, self.help)
        images = self.root / IMAGE_DIR
        if not images.is_dir():
            raise DataLayoutError(f"Image folder not found: {images}. {self.help}")
        bad = BadRows(file, self.on_bad_image)
        listed: dict[str, list[tuple[str, int, tuple[int, int]]]] = {"train": [], "test": []}
        total = 0
        with file.open(encoding="utf-8", errors="replace") as handle:
            for line, text in enumerate(handle, start=1):
                fields = text.split()
                if not fields:
                    continue
                total += 1
                if len(fields) != 2:
                    bad.add(line, f"{text.strip()!r} is not '<image name> <label code>'")
                    continue
                name, code = fields[0], code_of(fields[1], RAFDB_CODES)
                split = name.split("_", 1)[0]
                if split not in listed:
                    bad.add(line, f"image name {name!r} starts with neither train_ nor test_")
                elif isinstance(code, str):
                    bad.add(line, code)
                else:
                    path = images / aligned_name(name)
                    try:
                        stat = os.stat(path)
                    except OSError:
                        bad.add(line, f"its image {path} is missing")
                        continue
                    label = EXPRESSIONS.index(RAFDB_CODES[code])
                    listed[split].append((str(path), label, (stat.st_size, stat.st_mtime_ns)))
        bad.finish(total)
        for split, items in listed.items():
            if not items:
                raise DataLayoutError(f"{file} lists no {split}_ images. {self.help}")
        return listed

    def _split_index(self, split: str, items: list[tuple[str, int, tuple[int, int]]]) -> SplitIndex:
        paths, labels, fingerprints = zip(*items, strict=True) if items else ((), (), ())
        return SplitIndex(split, self.root / IMAGE_DIR, paths, labels, self.class_names, fingerprints)

    def splits_by_name(self) -> dict[str, SplitIndex]:
        """The three splits, listed once (valid carved from the official train list)."""
        if self._splits is None:
            listed = self._read_list()
            train = listed["train"]
            key = "data.val_fraction"
            valid = carve_validation([label for _, label, _ in train], self.val_fraction, self.val_seed, key)
            self._splits = {
                "train": self._split_index(
                    "train", [item for item, v in zip(train, valid, strict=True) if not v]
                ),
                "valid": self._split_index(
                    "valid", [item for item, v in zip(train, valid, strict=True) if v]
                ),
                "test": self._split_index("test", listed["test"]),
            }
            log.info(
                "RAF-DB: valid is %d of the %d official train images (val_fraction=%s, val_seed=%d)",
                int(np.sum(valid)), len(train), self.val_fraction, self.val_seed,
            )  # fmt: skip
        return self._splits

    def index(self, split: str) -> SplitIndex:
        return self.splits_by_name()[split]
