"""The MMAFEDB folder layout: ``<data_dir>/{train,valid,test}/<class>/<image>``, checked with clear errors."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from fer.errors import DataLayoutError

log = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
SPLITS: tuple[str, ...] = ("train", "valid", "test")
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

MMAFEDB_HELP = (
    "MMAFEDB (MMA Facial Expression, about 128K 48x48 faces) is published on Kaggle as "
    "'mahmoudima/mma-facial-expression'; unpack it so that the folder holds train/, valid/ and test/, "
    "each with the 7 class folders (angry, disgust, fear, happy, neutral, sad, surprise), and pass "
    "data.data_dir=<that folder> (default: data/MMAFEDB in the project). "
    "To try fer offline, use data=synthetic, which generates a small data set of drawn faces."
)


@dataclass(frozen=True)
class SplitIndex:
    """The image files of one split with their class indices, in a stable (sorted) order."""

    split: str
    root: Path
    # file paths as str: building 128K Path objects would cost more than listing the folders
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    # (size in bytes, modification time in ns) per file, read while listing: what packs are keyed by
    fingerprints: tuple[tuple[int, int], ...] = ()
    # classes without a folder in this split (allowed in valid and test only)
    missing: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    def without(self, paths: set[str] | frozenset[str]) -> SplitIndex:
        """The same split less the given files (the images that could not be decoded)."""
        keep = [i for i, path in enumerate(self.paths) if path not in paths]
        fingerprints = tuple(self.fingerprints[i] for i in keep) if self.fingerprints else ()
        return replace(
            self,
            paths=tuple(self.paths[i] for i in keep),
            labels=tuple(self.labels[i] for i in keep),
            fingerprints=fingerprints,
        )

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.class_names)
        for label in self.labels:
            counts[label] += 1
        return counts


def _is_image_name(name: str) -> bool:
    """A visible file name with an image extension (any case); skips ``.DS_Store``, ``._x.jpg`` etc."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def check_data_dir(data_dir: str | Path) -> Path:
    """The data folder as an absolute path, or a clear error saying how to get MMAFEDB."""
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise DataLayoutError(f"Data folder not found: {root}. {MMAFEDB_HELP}")
    return root


def _class_folders(split_dir: Path, class_names: tuple[str, ...]) -> dict[str, Path]:
    """Class name -> its folder; a folder whose name matches a class only up to case (``Happy``) counts as
    that class, two folders of one class (``Happy`` and ``happy``) are an error. Symlinks are followed."""
    by_lower = {name.lower(): name for name in class_names}
    folders: dict[str, Path] = {}
    unknown: list[str] = []
    for path in sorted(split_dir.iterdir()):
        if path.name.startswith(".") or not path.is_dir():
            continue
        name = path.name if path.name in class_names else by_lower.get(path.name.lower())
        if name is None:
            unknown.append(path.name)
        elif name in folders:
            raise DataLayoutError(
                f"Class folders {folders[name].name!r} and {path.name!r} in {split_dir} differ only in case, so "
                f"both would be class {name!r}: merge their images into one folder named {name!r}."
            )
        else:
            folders[name] = path
    if unknown:
        raise DataLayoutError(
            f"Unknown class folder(s) {unknown} in {split_dir}: the classes are {list(class_names)}. "
            "Rename or remove those folders."
        )
    renamed = {path.name: name for name, path in folders.items() if path.name != name}
    if renamed:
        log.info("%s: class folders taken case-insensitively: %s", split_dir, renamed)
    return folders


def _list_images(folder: Path) -> list[tuple[str, tuple[int, int]]]:
    """(path, (size, mtime)) of the image files in a class folder, sorted by name. Symlinked files count as
    the file they point to; a broken symlink is listed too (its decoding fails: a bad image, not a silent gap)."""
    found: list[tuple[str, str, tuple[int, int]]] = []
    # os.scandir: one directory read, file types without a syscall each (128K files in well under 1 s)
    with os.scandir(folder) as entries:
        for entry in entries:
            if not _is_image_name(entry.name):
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


def index_split(
    data_dir: str | Path,
    split: str,
    class_names: tuple[str, ...] = CLASS_NAMES,
    require_all_classes: bool | None = None,
) -> SplitIndex:
    """List one split's images; the class index is the position of the folder name in ``class_names``.

    Every class needs a folder in train (``require_all_classes=None``: only there); valid or test may miss
    one, with a warning: the model and its metrics still cover every class.
    """
    root = check_data_dir(data_dir)
    split_dir = root / split
    if not split_dir.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataLayoutError(
            f"Split folder missing: {split_dir} (found folders: {present or 'none'}). "
            f"The data folder must hold {', '.join(f'{s}/' for s in SPLITS)}. {MMAFEDB_HELP}"
        )
    class_names = tuple(class_names)
    folders = _class_folders(split_dir, class_names)
    missing = [name for name in class_names if name not in folders]
    if missing and (split == "train" if require_all_classes is None else require_all_classes):
        raise DataLayoutError(
            f"Class folder(s) {missing} missing in {split_dir}: every split needs one folder per class "
            f"{list(class_names)} (valid and test may miss one; train may not)."
        )
    if missing:
        log.warning(
            "Class folder(s) %s missing in %s: this split has no images of them; the metrics still cover all "
            "%d classes (per-class recall 0 for them, macro averages leave them out).",
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
