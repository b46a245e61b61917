"""Small data sets written in the published formats of FER2013, FER+, RAF-DB and AffectNet, with drawn faces
(``fer.data.synthetic``) inside: what the readers of ``fer.data.sources`` are tested and benchmarked on,
since the data sets themselves cannot be downloaded freely.

The ``write_*`` functions write one file exactly as the data set distributes it; the ``make_*`` functions
write a whole data set folder (the ``data.data_dir`` of its ``conf/data`` option)."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fer.data.sources.affectnet import COLUMNS as AFFECTNET_COLUMNS
from fer.data.sources.affectnet import EXPRESSION_CODES, IMAGES_DIR, LISTS_DIR
from fer.data.sources.base import CONTEMPT, EXPRESSIONS
from fer.data.sources.fer2013 import FER2013_CODES, FER2013_FILE, USAGE_SPLITS
from fer.data.sources.ferplus import FERPLUS_FILE, VOTE_CLASSES, VOTE_COLUMNS
from fer.data.sources.rafdb import IMAGE_DIR, LABEL_FILE, RAFDB_CODES, aligned_name
from fer.data.synthetic import draw_face
from fer.errors import FERError
from fer.files import building_folder
from fer.run.cli import command

SPLIT_USAGE = {split: usage for usage, split in USAGE_SPLITS.items()}
FER2013_CODE = {name: code for code, name in FER2013_CODES.items()}
RAFDB_CODE = {name: code for code, name in RAFDB_CODES.items()}
AFFECTNET_CODE = {name: code for code, name in EXPRESSION_CODES.items()}
# drawn faces have no contempt: a contempt sample shows a neutral face
DRAWN_AS = {CONTEMPT: "neutral"}


def drawn(name: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A gray drawn face showing the expression ``name``."""
    return draw_face(DRAWN_AS.get(name, name), rng, size)


def _per_class(count: int | Mapping[str, int], names: Sequence[str]) -> dict[str, int]:
    return {name: count.get(name, 0) if isinstance(count, Mapping) else count for name in names}


# ------------------------------------------------------------------------------------------- writers


def write_fer2013_csv(path: str | Path, rows: Iterable[tuple[int | str, np.ndarray | str, str]]) -> Path:
    """``fer2013.csv``: header ``emotion,pixels,Usage``; each row an emotion code, 2,304 space-separated gray
    values (a 48x48 array, or the text as is) and ``Training``/``PublicTest``/``PrivateTest``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        handle.write("emotion,pixels,Usage\n")
        for code, pixels, usage in rows:
            text = pixels if isinstance(pixels, str) else " ".join(map(str, np.asarray(pixels).ravel()))
            handle.write(f"{code},{text},{usage}\n")
    return path


def write_ferplus_csv(path: str | Path, rows: Iterable[tuple[str, str, Sequence[int]]]) -> Path:
    """``fer2013new.csv``: ``Usage,Image name,`` and the ten vote columns (neutral ... contempt, unknown, NF);
    an empty image name marks a row that is not a face."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["Usage", "Image name", *VOTE_COLUMNS])
        for usage, name, votes in rows:
            writer.writerow([usage, name, *(int(v) for v in votes)])
    return path


def write_rafdb_list(path: str | Path, rows: Iterable[tuple[str, int]]) -> Path:
    """``list_patition_label.txt``: ``<image name> <code>`` per line (codes 1-7)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name} {code}\n" for name, code in rows))
    return path


@dataclass(frozen=True)
class AffectNetRow:
    """One row of AffectNet's ``training.csv`` / ``validation.csv``."""

    file: str  # subDirectory_filePath, relative to Manually_Annotated_Images/
    box: tuple[int, int, int, int]  # face_x, face_y, face_width, face_height
    landmarks: tuple[float, ...]  # 68 (x, y) pairs, flattened
    expression: int
    valence: float
    arousal: float


def write_affectnet_csv(path: str | Path, rows: Iterable[AffectNetRow]) -> Path:
    """An AffectNet list file: the header ``subDirectory_filePath,face_x,...,valence,arousal`` and one row per
    image, landmarks as ``x;y;x;y...``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(AFFECTNET_COLUMNS)
        for row in rows:
            landmarks = ";".join(f"{v:.2f}" for v in row.landmarks)
            writer.writerow([row.file, *row.box, landmarks, row.expression, row.valence, row.arousal])
    return path


# ------------------------------------------------------------------------------------ whole data sets


def fer2013_rows(
    per_split: Mapping[str, int | Mapping[str, int]], seed: int = 0, names: Sequence[str] = EXPRESSIONS
) -> list[tuple[str, str, np.ndarray]]:
    """(split, class name, 48x48 face) for ``per_split[split]`` faces of each class, in a shuffled order."""
    rng = np.random.default_rng(seed)
    items = [
        (split, name)
        for split, count in per_split.items()
        for name, n in _per_class(count, names).items()
        for _ in range(n)
    ]
    order = rng.permutation(len(items))
    return [(*items[i], np.asarray(drawn(items[i][1], rng))) for i in order]


def make_fer2013(
    root: str | Path, per_split: Mapping[str, int | Mapping[str, int]] | None = None, seed: int = 0
) -> Path:
    """``<root>/fer2013.csv`` with drawn faces (default: 4 train, 2 valid, 2 test per class)."""
    rows = fer2013_rows(per_split or {"train": 4, "valid": 2, "test": 2}, seed)
    write_fer2013_csv(
        Path(root) / FER2013_FILE,
        [(FER2013_CODE[name], face, SPLIT_USAGE[split]) for split, name, face in rows],
    )
    return Path(root)


def ferplus_votes(name: str, rng: np.random.Generator) -> list[int]:
    """Ten votes whose single top class is ``name``: 6-8 for it, the rest spread over other expressions."""
    votes = [0] * len(VOTE_COLUMNS)
    column = next(c for c, n in VOTE_CLASSES.items() if n == name)
    top = int(rng.integers(6, 9))
    votes[VOTE_COLUMNS.index(column)] = top
    others = [i for i, c in enumerate(VOTE_COLUMNS) if c != column]
    for i in rng.choice(others, size=10 - top):
        votes[int(i)] += 1
    return votes


def make_ferplus(
    root: str | Path, per_split: Mapping[str, int] | None = None, seed: int = 0, contempt: int = 2
) -> Path:
    """``<root>/fer2013.csv`` and ``<root>/fer2013new.csv``: ``per_split`` faces of each of the 7 expressions
    plus ``contempt`` contempt faces per split (default: 4 train, 2 valid, 2 test), each with ten votes whose
    top class is its own, and per split three rows the majority vote leaves out: not a face (empty image
    name), top vote unknown, and a tie."""
    counts = per_split or {"train": 4, "valid": 2, "test": 2}
    per_class = {
        split: {**{name: n for name in EXPRESSIONS}, CONTEMPT: contempt} for split, n in counts.items()
    }
    rng = np.random.default_rng(seed + 1)
    rows = fer2013_rows(per_class, seed, (*EXPRESSIONS, CONTEMPT))
    pixels, votes = [], []
    for i, (split, name, face) in enumerate(rows):
        pixels.append((FER2013_CODE[DRAWN_AS.get(name, name)], face, SPLIT_USAGE[split]))
        votes.append((SPLIT_USAGE[split], f"fer{i:07d}.png", ferplus_votes(name, rng)))
    left_out = {
        "": [0] * 9 + [10],  # not a face
        "unknown": [1, 1, 0, 0, 0, 0, 0, 0, 8, 0],
        "tie": [4, 4, 1, 1, 0, 0, 0, 0, 0, 0],
    }
    for split in counts:
        for kind, vote in left_out.items():
            pixels.append((FER2013_CODE["neutral"], np.asarray(drawn("neutral", rng)), SPLIT_USAGE[split]))
            votes.append((SPLIT_USAGE[split], f"fer{len(votes):07d}.png" if kind else "", vote))
    write_fer2013_csv(Path(root) / FER2013_FILE, pixels)
    write_ferplus_csv(Path(root) / FERPLUS_FILE, votes)
    return Path(root)


def _rgb(face: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A gray face as an RGB image with a random tint (RAF-DB and AffectNet are colour photos)."""
    tint = rng.uniform(0.75, 1.0, size=3)
    rgb = np.asarray(face, dtype=np.float32)[..., None] * tint
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), mode="RGB")


def make_rafdb(
    root: str | Path, train_per_class: int = 6, test_per_class: int = 2, seed: int = 0, size: int = 100
) -> Path:
    """RAF-DB basic under ``root``: the label list and ``size`` px RGB aligned faces (JPEG), names numbered
    in a shuffled class order as in the real list."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    images = root / IMAGE_DIR
    images.mkdir(parents=True, exist_ok=True)
    lines: list[tuple[str, int]] = []
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        names = [name for name in EXPRESSIONS for _ in range(count)]
        digits = 5 if split == "train" else 4
        for number, i in enumerate(rng.permutation(len(names)), start=1):
            file = f"{split}_{number:0{digits}d}.jpg"
            _rgb(drawn(names[i], rng, size), rng).save(images / aligned_name(file), quality=90)
            lines.append((file, RAFDB_CODE[names[i]]))
    write_rafdb_list(root / LABEL_FILE, lines)
    return root


def _affectnet_rows(
    folder: Path, names: Sequence[str], rng: np.random.Generator, start: int, face_size: int
) -> list[AffectNetRow]:
    """Faces of ``names`` pasted into larger noisy photos under ``folder``, with their boxes and landmarks."""
    rows = []
    for k, name in enumerate(names):
        index = start + k
        code = AFFECTNET_CODE[name] if name in AFFECTNET_CODE else int(name)
        shown = name if name in AFFECTNET_CODE and code < 8 else "neutral"
        width, height = face_size + int(rng.integers(16, 48)), face_size + int(rng.integers(16, 48))
        canvas = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        x, y = int(rng.integers(0, width - face_size)), int(rng.integers(0, height - face_size))
        canvas[y : y + face_size, x : x + face_size] = np.asarray(_rgb(drawn(shown, rng, face_size), rng))
        relative = f"{index % 3 + 1}/{hashlib.sha1(str(index).encode()).hexdigest()}.jpg"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(canvas).save(folder / relative, quality=90)
        landmarks = tuple(
            float(v) for v in (rng.uniform(0, face_size, size=136) + np.tile([x, y], 68)).round(2)
        )
        valence, arousal = (round(float(v), 6) for v in rng.uniform(-1, 1, size=2))
        rows.append(AffectNetRow(relative, (x, y, face_size, face_size), landmarks, code, valence, arousal))
    return rows


def make_affectnet(
    root: str | Path,
    train_per_class: int = 6,
    test_per_class: int = 2,
    seed: int = 0,
    face_size: int = 48,
    left_out: Sequence[int] = (8, 9, 10),
) -> Path:
    """AffectNet under ``root``: ``training.csv`` (``train_per_class`` rows of each of the 8 expressions) and
    ``validation.csv`` (``test_per_class``), plus one row of each code in ``left_out`` in both, the images
    (drawn faces in larger noisy photos) under ``Manually_Annotated_Images/<n>/<hash>.jpg``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    images = root / IMAGES_DIR
    eight = (*EXPRESSIONS, CONTEMPT)
    start = 0
    for file, count in (("training.csv", train_per_class), ("validation.csv", test_per_class)):
        names = [name for name in eight for _ in range(count)] + [str(code) for code in left_out]
        names = [names[i] for i in rng.permutation(len(names))]
        rows = _affectnet_rows(images, names, rng, start, face_size)
        start += len(rows)
        write_affectnet_csv(root / LISTS_DIR / file, rows)
    return root


# FER2013 as published: 35,887 rows; Training / PublicTest / PrivateTest and the class frequencies of train
FER2013_USAGE_ROWS = {"Training": 28_709, "PublicTest": 3_589, "PrivateTest": 3_589}
FER2013_CLASS_SHARE = {
    "angry": 0.138, "disgust": 0.015, "fear": 0.143, "happy": 0.251, "sad": 0.169, "surprise": 0.112,
    "neutral": 0.172,
}  # fmt: skip


def make_fer2013_full_size(
    root: str | Path, seed: int = 0, distinct: int = 1024, usage_rows: Mapping[str, int] = FER2013_USAGE_ROWS
) -> Path:
    """``<root>/fer2013.csv`` with FER2013's 35,887 rows (``usage_rows``), split sizes and class frequencies:
    ``distinct`` drawn faces, each row one of them with its own pixel noise (what packing is timed on)."""
    rng = np.random.default_rng(seed)
    names = list(FER2013_CLASS_SHARE)
    shares = np.array(list(FER2013_CLASS_SHARE.values()))
    faces = {
        name: [np.asarray(drawn(name, rng), dtype=np.int16) for _ in range(distinct // 7 + 1)]
        for name in names
    }
    rows = []
    for usage, count in usage_rows.items():
        for label in rng.choice(len(names), size=count, p=shares / shares.sum()):
            name = names[label]
            base = faces[name][int(rng.integers(len(faces[name])))]
            noisy = np.clip(base + rng.integers(-3, 4, size=base.shape), 0, 255).astype(np.uint8)
            rows.append((FER2013_CODE[name], noisy, usage))
    return write_fer2013_csv(Path(root) / FER2013_FILE, rows).parent


# ------------------------------------------------------------------------------------------------ CLI

MARKER = "formats.json"  # in each written folder: what wrote it (fer replaces only folders holding it)
MAKERS = {"fer2013": make_fer2013, "ferplus": make_ferplus, "rafdb": make_rafdb, "affectnet": make_affectnet}
# each data set's default folder under the data folder (as in conf/data/<name>.yaml)
FOLDERS = {"fer2013": "FER2013", "ferplus": "FERPlus", "rafdb": "RAF-DB", "affectnet": "AffectNet"}


def write_samples(out: str | Path, names: Sequence[str] = tuple(MAKERS), seed: int = 0) -> list[Path]:
    """Small copies of the data sets ``names`` in their published formats, each in its default folder under
    ``out`` (``FER_DATA_DIR=<out>`` then finds them); a folder fer did not write is never replaced."""
    written = []
    for name in names:
        target = Path(out) / FOLDERS[name]
        fix = f"Choose another folder for the samples than {Path(out)}."
        with building_folder(target, MARKER, f"sample {name} files", fix) as tmp:
            MAKERS[name](tmp, seed=seed)
            (tmp / MARKER).write_text(json.dumps({"written_by": "fer.data.formats", "data": name}) + "\n")
        written.append(target)
    return written


@command
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fer.data.formats OUT``: tiny FER2013, FER+, RAF-DB and AffectNet folders with drawn faces."""
    parser = argparse.ArgumentParser(
        prog="python -m fer.data.formats",
        description="Write tiny copies of FER2013, FER+, RAF-DB and AffectNet in their published formats "
        "(drawn faces) under OUT, to try data=<name> offline with FER_DATA_DIR=OUT.",
    )
    parser.add_argument(
        "out", type=Path, help="the data folder that receives FER2013/, FERPlus/, RAF-DB/, AffectNet/"
    )
    parser.add_argument(
        "--data", default=",".join(MAKERS), help="comma-separated data sets (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.data.split(",") if n.strip()]
    unknown = [n for n in names if n not in MAKERS]
    if unknown or not names:
        raise FERError(f"--data {args.data!r}: choose among {', '.join(MAKERS)}")
    for folder in write_samples(args.out, names, args.seed):
        print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
