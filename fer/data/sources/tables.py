"""What the readers of data sets distributed as tables share: opening a CSV or list file with a clear
message, naming bad rows by file and line (left out or fatal, as ``data.on_bad_image`` says), mapping a
data set's label codes to fer's class names, and carving a seeded, stratified validation split."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from fer.data.sources.base import CONTEMPT, EXPRESSIONS
from fer.errors import DataLayoutError, FERError

log = logging.getLogger(__name__)

ON_BAD_ROW = ("skip", "error")
SHOWN_ROWS = 3  # bad rows named in a message; the rest are counted


def class_names_for(classes: int, key: str = "data.classes") -> tuple[str, ...]:
    """fer's 7 expression classes, or those 8 with contempt."""
    if classes == 7:
        return EXPRESSIONS
    if classes == 8:
        return (*EXPRESSIONS, CONTEMPT)
    raise FERError(f"{key}={classes!r}: choose 7 (without contempt) or 8 (with contempt).")


def check_on_bad_row(on_bad_image: str) -> str:
    if on_bad_image not in ON_BAD_ROW:
        raise FERError(f"data.on_bad_image={on_bad_image!r} is not one of {list(ON_BAD_ROW)}.")
    return on_bad_image


def require_file(path: Path, help_text: str) -> Path:
    """``path`` if it is a file, else an error naming it and how to get the data set."""
    if not path.is_file():
        where = path.parent if path.parent.is_dir() else "a folder that does not exist"
        raise DataLayoutError(f"File not found: {path} (looked in {where}). {help_text}")
    return path


class BadRows:
    """The rows of one file that cannot be used, each named by its line number and why.

    ``on_bad_image=skip`` leaves them out with one warning; ``error`` stops at the end of the file with one
    message naming the first few (so a user fixes them all in one go)."""

    def __init__(self, file: Path, on_bad_image: str) -> None:
        self.file = file
        self.on_bad_image = check_on_bad_row(on_bad_image)
        self.rows: list[tuple[int, str]] = []

    def add(self, line: int, reason: str) -> None:
        self.rows.append((line, reason))

    def __len__(self) -> int:
        return len(self.rows)

    def _listing(self) -> str:
        shown = "; ".join(f"line {line}: {reason}" for line, reason in self.rows[:SHOWN_ROWS])
        more = f"; and {len(self.rows) - SHOWN_ROWS} more" if len(self.rows) > SHOWN_ROWS else ""
        return shown + more

    def finish(self, total: int) -> None:
        """Report the bad rows among ``total``: raise (``error``), or warn that they are left out."""
        if not self.rows:
            return
        if self.on_bad_image == "error" or len(self.rows) == total:
            fix = "Fix or delete those rows" + (
                ", or set data.on_bad_image=skip to leave them out." if len(self.rows) < total else "."
            )
            raise DataLayoutError(f"{len(self.rows)} bad row(s) in {self.file}: {self._listing()}. {fix}")
        log.warning(
            "%s: %d of %d rows cannot be used and are left out (data.on_bad_image=skip): %s.",
            self.file, len(self.rows), total, self._listing(),
        )  # fmt: skip


def read_csv(path: Path, columns: Sequence[str], help_text: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for every data row of a CSV file with a header holding ``columns``.

    A missing file or column is a :class:`DataLayoutError` naming the file and what was expected; a row with
    another number of fields comes with ``None`` values (the caller names it as a bad row)."""
    require_file(path, help_text)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as error:
        raise DataLayoutError(f"Cannot read {path}: {error.strerror}. {help_text}") from None
    with handle:
        try:
            header = [name.strip() for name in _fields(handle.readline())]
        except (csv.Error, UnicodeDecodeError) as error:
            raise DataLayoutError(f"{path} line 1 is not a CSV header ({error}). {help_text}") from None
        missing = [name for name in columns if name not in header]
        if missing:
            raise DataLayoutError(
                f"{path} line 1: the header has no column(s) {missing} (found {header[:12]}); the file must "
                f"have the columns {list(columns)}. {help_text}"
            )
        positions = {name: header.index(name) for name in columns}
        line = 1
        while True:
            line += 1
            try:
                text = handle.readline()
            except UnicodeDecodeError as error:
                yield line, {"_error": f"not UTF-8 text ({error.reason})"}
                continue
            if not text:
                return
            try:
                fields = _fields(text)
            except csv.Error as error:
                yield line, {"_error": str(error)}
                continue
            if not fields:
                continue
            if len(fields) != len(header):
                yield line, {"_error": f"{len(fields)} fields, the header has {len(header)}"}
                continue
            yield line, {name: fields[i] for name, i in positions.items()}


def _fields(text: str) -> list[str]:
    """The fields of one CSV line: a plain split where nothing is quoted (FER2013's 300 MB read 3x faster),
    the csv module otherwise. An empty line has none."""
    text = text.rstrip("\r\n")
    if not text.strip():
        return []
    if '"' not in text:
        return text.split(",")
    return next(csv.reader([text]))


def code_of(text: str, codes: Mapping[int, str]) -> int | str:
    """The integer label code in ``text``, or why it is none of ``codes``."""
    try:
        code = int(text.strip())
    except ValueError:
        return f"label {text.strip()!r} is not an integer code"
    if code not in codes:
        return f"unknown label code {code} (the codes are {min(codes)}-{max(codes)})"
    return code


def carve_validation(labels: Sequence[int], fraction: float, seed: int, key: str) -> np.ndarray:
    """A boolean mask over ``labels``: the seeded, stratified ``fraction`` of each class that becomes the
    validation split (at least one image of a class with two or more; the same mask for the same seed)."""
    if not 0.0 < fraction < 1.0:
        raise FERError(f"{key}={fraction!r}: give the fraction of train that becomes valid, between 0 and 1.")
    labels = np.asarray(labels, dtype=np.int64)
    mask = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = round(len(members) * fraction)
        count = min(max(count, 1), len(members) - 1) if len(members) >= 2 else 0
        mask[rng.permutation(members)[:count]] = True
    return mask
