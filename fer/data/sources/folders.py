"""Data sets laid out as class folders: ``<root>/{train,valid,test}/<class>/<image>``.

:class:`ImageFolders` takes any class names (by default those of the folders in ``train/``);
:class:`MMAFEDB` is the same layout with fer's 7 expression classes and MMAFEDB's download instructions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from fer.data.sources.base import EXPRESSIONS, SPLITS, DataSource, SplitIndex
from fer.errors import DataLayoutError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

MMAFEDB_HELP = (
    "MMAFEDB (MMA Facial Expression, about 128K 48x48 faces) is published on Kaggle as "
    "'mahmoudima/mma-facial-expression'; unpack it so that the folder holds train/, valid/ and test/, "
    "each with the 7 class folders (angry, disgust, fear, happy, neutral, sad, surprise), and pass "
    "data.data_dir=<that folder> (default: data/MMAFEDB in the project). "
    "To try fer offline, use data=synthetic, which generates a small data set of drawn faces."
)
FOLDER_HELP = (
    "data=folder reads <data.data_dir>/{train,valid,test}/<class>/<image>, with one folder per class in "
    "each split (the classes are the folders of train/)."
)


def is_image_name(name: str) -> bool:
    """A visible file name with an image extension (any case); skips ``.DS_Store``, ``._x.jpg`` etc."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _list_images(folder: Path) -> list[tuple[str, tuple[int, int]]]:
    """(path, (size, mtime)) of the image files in a class folder, sorted by name. Symlinked files count as
    the file they point to; a broken symlink is listed too (its decoding fails: a bad image, not a silent gap)."""
    found: list[tuple[str, str, tuple[int, int]]] = []
    # os.scandir: one directory read, file types without a syscall each (128K files in well under 1 s)
    with os.scandir(folder) as entries:
        for entry in entries:
            if not is_image_name(entry.name):
                continue
            if entry.is_file():
                stat = entry.stat()
            elif entry.is_symlink() and not entry.is_dir():
                stat = entry.stat(follow_symlinks=False)
            else:
                continue
            found.append((entry.name, entry.path, (stat.st_size, stat.st_mtime_ns)))
    found.sort()
    return [(path, fingerprint) for _, path, fingerprint in found]


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir())


class ImageFolders(DataSource):
    """``root/{train,valid,test}/<class>/<image>`` with any class names.

    ``class_names=None`` reads them from the folders of ``train/`` (sorted; class index = position). Given
    names are matched case-insensitively (``Happy`` is ``happy``); a folder that is no class is an error.
    Every class needs a folder in ``train``; ``valid`` and ``test`` may miss one (a warning).
    """

    help = FOLDER_HELP

    def __init__(
        self, root: str | Path, class_names: Sequence[str] | None = None, splits: Sequence[str] = SPLITS
    ) -> None:
        super().__init__(root)
        self.splits = tuple(splits)
        self._class_names = tuple(class_names) if class_names else None

    @property
    def class_names(self) -> tuple[str, ...]:
        if self._class_names is None:
            train = self.split_dir(self.splits[0])
            names = tuple(p.name for p in _subfolders(train))
            if not names:
                raise DataLayoutError(f"No class folders in {train}: {self.help}")
            self._class_names = names
        return self._class_names

    def check_root(self) -> Path:
        """The data folder as an absolute path, or a clear error saying how to get the data set."""
        root = self.root.resolve()
        if not root.is_dir():
            raise DataLayoutError(f"Data folder not found: {root}. {self.help}")
        return root

    def split_dir(self, split: str) -> Path:
        root = self.check_root()
        split_dir = root / split
        if not split_dir.is_dir():
            present = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise DataLayoutError(
                f"Split folder missing: {split_dir} (found folders: {present or 'none'}). "
                f"The data folder must hold {', '.join(f'{s}/' for s in self.splits)}. {self.help}"
            )
        return split_dir

    def _unknown_folders_error(self, split_dir: Path, unknown: list[str]) -> DataLayoutError:
        return DataLayoutError(
            f"Unknown class folder(s) {unknown} in {split_dir}: the classes are {list(self.class_names)}. "
            "Rename or remove those folders."
        )

    def _class_folders(self, split_dir: Path) -> dict[str, Path]:
        """Class name -> its folder; a folder whose name matches a class only up to case (``Happy``) counts
        as that class, two folders of one class (``Happy`` and ``happy``) are an error."""
        class_names = self.class_names
        by_lower = {name.lower(): name for name in class_names}
        folders: dict[str, Path] = {}
        unknown: list[str] = []
        for path in _subfolders(split_dir):
            name = path.name if path.name in class_names else by_lower.get(path.name.lower())
            if name is None:
                unknown.append(path.name)
            elif name in folders:
                raise DataLayoutError(
                    f"Class folders {folders[name].name!r} and {path.name!r} in {split_dir} differ only in case, "
                    f"so both would be class {name!r}: merge their images into one folder named {name!r}."
                )
            else:
                folders[name] = path
        if unknown:
            raise self._unknown_folders_error(split_dir, unknown)
        renamed = {path.name: name for name, path in folders.items() if path.name != name}
        if renamed:
            log.info("%s: class folders taken case-insensitively: %s", split_dir, renamed)
        return folders

    def index(self, split: str) -> SplitIndex:
        split_dir = self.split_dir(split)
        class_names = self.class_names
        folders = self._class_folders(split_dir)
        missing = [name for name in class_names if name not in folders]
        if missing and split == self.splits[0]:
            raise DataLayoutError(
                f"Class folder(s) {missing} missing in {split_dir}: every split needs one folder per class "
                f"{list(class_names)} (valid and test may miss one; train may not)."
            )
        if missing:
            log.warning(
                "Class folder(s) %s missing in %s: this split has no images of them; the metrics still cover "
                "all %d classes (per-class recall 0 for them, macro averages leave them out).",
                [str(split_dir / name) for name in missing], split_dir, len(class_names),
            )  # fmt: skip
        paths: list[str] = []
        labels: list[int] = []
        fingerprints: list[tuple[int, int]] = []
        for label, name in enumerate(class_names):
            if name not in folders:
                continue
            files = _list_images(folders[name])
            paths.extend(path for path, _ in files)
            fingerprints.extend(fingerprint for _, fingerprint in files)
            labels.extend([label] * len(files))
        if not paths:
            raise DataLayoutError(
                f"No images in {split_dir}: expected files ending in "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))} (any case) inside its class folders."
            )
        return SplitIndex(
            split, split_dir, tuple(paths), tuple(labels), class_names, tuple(fingerprints), tuple(missing)
        )


class MMAFEDB(ImageFolders):
    """MMAFEDB as published: the class-folder layout with fer's 7 expression classes."""

    help = MMAFEDB_HELP

    def __init__(self, root: str | Path) -> None:
        super().__init__(root, EXPRESSIONS)

    def _unknown_folders_error(self, split_dir: Path, unknown: list[str]) -> DataLayoutError:
        return DataLayoutError(
            f"Unknown class folder(s) {unknown} in {split_dir}: data=mmafedb has the 7 expression classes "
            f"{list(EXPRESSIONS)}. To train on other classes, use data=folder data.data_dir={self.root} (the "
            "classes are then the folders of train/); else rename or remove those folders."
        )
