"""The bench's data: an MMAFEDB-like tree of 48 px JPEG faces, generated once and reused."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fer.data.sources import EXPRESSIONS as CLASS_NAMES
from fer.data.sources import SPLITS
from fer.data.synthetic import draw_face
from fer.files import building_folder
from fer.run.config import PROJECT_ROOT


def display_path(path: Path) -> str:
    """A path relative to the project when inside it, so that output names no folder of this machine."""
    with contextlib.suppress(ValueError):
        return str(Path(path).absolute().relative_to(PROJECT_ROOT))
    return str(path)


def print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


SEED = 0

# The generated data: MMAFEDB-like 48 px JPEG files, about 31% of them RGB (gray faces saved as RGB).
DATA_FORMAT_VERSION = 1
DATA_KEY_FILE = "bench.json"
TRAIN_IMAGES = 4096
EVAL_PER_CLASS = 40
RGB_FRACTION = 0.31
JPEG_QUALITY = 90
IMAGE_SIZE = 48

# ---------------------------------------------------------------------------------------------- data


def default_data_dir() -> Path:
    """``data/bench`` in the project, or under ``$FER_DATA_DIR`` like the rest of fer's data."""
    return Path(os.environ.get("FER_DATA_DIR") or PROJECT_ROOT / "data") / "bench"


def default_out_file() -> Path:
    """``outputs/bench/bench-<date>_<time>-<microseconds>.json`` (or under ``$FER_OUTPUT_DIR``)."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    return (
        Path(os.environ.get("FER_OUTPUT_DIR") or PROJECT_ROOT / "outputs") / "bench" / f"bench-{stamp}.json"
    )


def _data_key(train_per_class: int, eval_per_class: int, seed: int) -> dict[str, Any]:
    return {
        "format_version": DATA_FORMAT_VERSION,
        "train_per_class": train_per_class,
        "eval_per_class": eval_per_class,
        "seed": seed,
        "image_size": IMAGE_SIZE,
        "rgb_fraction": RGB_FRACTION,
        "jpeg_quality": JPEG_QUALITY,
    }


def write_jpeg_tree(out_dir: str | Path, train_per_class: int, eval_per_class: int, seed: int = SEED) -> Path:
    """Write ``out_dir/{train,valid,test}/<class>/<i>.jpg`` with drawn faces, built aside and renamed into place;
    ``out_dir`` must be new, empty or an earlier tree of the bench (it holds ``bench.json``).

    JPEG and mixed gray/RGB like MMAFEDB, so the decode cost matches the real data; the tree appears only once
    complete (built in a temporary sibling, then renamed), so an interrupted run leaves nothing half-written.
    """
    if train_per_class < 1 or eval_per_class < 1:
        raise ValueError("train_per_class and eval_per_class must be >= 1")
    out = Path(out_dir).absolute()
    fix = "Pass --data <a folder of class folders> to measure on it, or point FER_DATA_DIR elsewhere."
    with building_folder(out, DATA_KEY_FILE, "the bench's generated faces", fix) as tmp:
        for split_idx, split in enumerate(SPLITS):
            count = train_per_class if split == "train" else eval_per_class
            for class_idx, name in enumerate(CLASS_NAMES):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for index in range(count):
                    rng = np.random.default_rng(np.random.SeedSequence([seed, split_idx, class_idx, index]))
                    as_rgb = rng.random() < RGB_FRACTION
                    image = draw_face(class_idx, rng, size=IMAGE_SIZE)
                    if as_rgb:
                        image = image.convert("RGB")
                    image.save(folder / f"{index}.jpg", quality=JPEG_QUALITY)
        key = _data_key(train_per_class, eval_per_class, seed)
        (tmp / DATA_KEY_FILE).write_text(json.dumps(key, indent=2) + "\n")
    return out


def ensure_jpeg_tree(
    out_dir: str | Path,
    train_images: int = TRAIN_IMAGES,
    eval_per_class: int = EVAL_PER_CLASS,
    seed: int = SEED,
) -> Path:
    """``out_dir``, generated only when its key file does not match this request (cached across runs)."""
    out = Path(out_dir)
    train_per_class = math.ceil(train_images / len(CLASS_NAMES))
    try:
        if json.loads((out / DATA_KEY_FILE).read_text()) == _data_key(train_per_class, eval_per_class, seed):
            return out
    except (OSError, ValueError):
        pass
    total = (train_per_class + 2 * eval_per_class) * len(CLASS_NAMES)
    print_progress(f"generating {total:,} JPEG faces in {display_path(out)} (once) ...")
    start = time.perf_counter()
    write_jpeg_tree(out, train_per_class, eval_per_class, seed)
    print_progress(f"  done in {time.perf_counter() - start:.1f} s")
    return out
