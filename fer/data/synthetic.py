"""Synthetic cartoon faces with the 7 MMAFEDB expressions, written in the MMAFEDB folder layout.

Lets the project train and test offline: ``<out>/{train,valid,test}/<class>/<index>.png``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fer.data.sources.base import EXPRESSIONS as CLASS_NAMES
from fer.data.sources.base import SPLITS
from fer.files import building_folder
from fer.run.cli import command
from fer.workers import map_chunks

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
# how far a face moves from neutral towards its expression (1 = fully); weaker faces are ambiguous
MIN_INTENSITY = 0.6
METADATA_FILE = "synthetic.json"

_SUPERSAMPLE = 4
_SERIAL_LIMIT = 500


# Expression cues in units of the face half-width ``a`` / half-height ``b`` (+ dy is downwards). Each face
# moves from neutral towards its row by a random intensity, plus a little per-face jitter.
_PARAMS = (
    "brow_in_dy", "brow_out_dy", "brow_in_dx", "brow_arch", "brow_lower_one",
    "eye_open", "mouth_w", "mouth_curve", "mouth_open", "mouth_skew", "wrinkle",
)  # fmt: skip
_CUES = np.array([
    # in_dy  out_dy  in_dx  arch  lower  eye   m_w   curve  open  skew  wrinkle
    [0.13,  -0.05,  0.06,  0.0,  0.0,   0.28, 0.28, -0.04, 0.0,  0.0,  0.0],  # angry
    [0.04,   0.0,   0.0,   0.0,  0.10,  0.36, 0.34,  0.0,  0.0,  0.13, 1.0],  # disgust
    [-0.15, -0.05,  0.05,  0.0,  0.0,   0.90, 0.46,  0.0,  0.12, 0.0,  0.0],  # fear
    [-0.02, -0.02,  0.0,   0.0,  0.0,   0.45, 0.46,  0.13, 0.0,  0.0,  0.0],  # happy
    [0.0,    0.0,   0.0,   0.0,  0.0,   0.55, 0.36,  0.0,  0.0,  0.0,  0.0],  # neutral
    [-0.11,  0.06,  0.0,   0.0,  0.0,   0.48, 0.34, -0.11, 0.0,  0.0,  0.0],  # sad
    [-0.15, -0.13,  0.0,   0.06, 0.0,   1.00, 0.20,  0.0,  0.18, 0.0,  0.0],  # surprise
])  # fmt: skip
_JITTER = np.array([0.02, 0.02, 0.015, 0.01, 0.0, 0.06, 0.03, 0.015, 0.01, 0.01, 0.0])
_NEUTRAL_IDX = 4

_UNIT_CIRCLES = {
    n: np.stack([np.cos(u), np.sin(u)], axis=1)
    for n in (16, 24, 48)
    for u in [np.linspace(0.0, 2 * math.pi, n, endpoint=False)]
}
_PARABOLA_U = np.linspace(-1.0, 1.0, 9)


@functools.cache
def _ramp(size: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, size, dtype=np.float32)


def _class_index(expression: str | int) -> int:
    if isinstance(expression, (int, np.integer)):
        if not 0 <= int(expression) < len(CLASS_NAMES):
            raise ValueError(f"expression index {expression} out of range 0..{len(CLASS_NAMES) - 1}")
        return int(expression)
    if expression not in CLASS_NAMES:
        raise ValueError(f"unknown expression {expression!r}; expected one of {CLASS_NAMES}")
    return CLASS_NAMES.index(expression)


def draw_face(expression: str | int, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """Draw one grayscale (mode "L") cartoon face showing ``expression``, with random nuisance variation."""
    idx = _class_index(expression)
    s = size * _SUPERSAMPLE
    draws = iter(rng.random(40).tolist())

    def uniform(low: float, high: float) -> float:
        """Scalar uniform draw from a pre-drawn batch (one Generator call per face is much faster)."""
        return low + (high - low) * next(draws)

    face_tone = uniform(80, 235)
    bg = uniform(0, 255)
    if abs(bg - face_tone) < 30:
        bg = face_tone - 30 if face_tone > 130 else face_tone + 30
    ink = int(max(0.0, face_tone - uniform(55, 130)))

    a = 0.35 * s * uniform(0.88, 1.06)
    b = a * uniform(1.1, 1.24)
    cx = s * (0.5 + uniform(-0.04, 0.04))
    cy = s * (0.5 + uniform(-0.03, 0.05))
    theta = math.radians(uniform(-15, 15))
    centre = np.array([cx, cy])
    rot_t = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])

    def place(points: np.ndarray | list) -> list[float]:
        """Rotate face-frame points about the face centre; flat x0, y0, x1, ... list for ImageDraw."""
        return ((np.asarray(points, dtype=np.float64) - centre) @ rot_t + centre).ravel().tolist()

    def ellipse(ex: float, ey: float, rx: float, ry: float, n: int) -> list[float]:
        return place(_UNIT_CIRCLES[n] * (rx, ry) + (ex, ey))

    img = Image.new("L", (s, s), int(bg))
    draw = ImageDraw.Draw(img)
    draw.polygon(ellipse(cx, cy, a, b, 48), fill=int(face_tone))

    t = uniform(MIN_INTENSITY, 1.0)
    neutral = _CUES[_NEUTRAL_IDX]
    cue = neutral + t * (_CUES[idx] - neutral) + _JITTER * rng.standard_normal(len(_PARAMS))
    in_dy, out_dy, in_dx, arch, lower_one, eye_open, mouth_w, curve, mouth_open, skew, wrinkle = cue.tolist()
    eye_open = max(0.15, eye_open)
    lw = max(1, round(s * uniform(0.022, 0.03)))
    brow_w = max(1, round(s * uniform(0.03, 0.042)))
    odd_side = 1 if uniform(0, 1) < 0.5 else -1

    eye_y = cy - b * uniform(0.12, 0.2)
    eye_dx = a * uniform(0.36, 0.44)
    eye_hw = a * uniform(0.13, 0.17)
    brow_y = eye_y - b * uniform(0.2, 0.25)
    for side in (-1, 1):
        draw.polygon(ellipse(cx + side * eye_dx, eye_y, eye_hw, eye_hw * eye_open, 16), fill=ink)
        lower = lower_one * b if side == odd_side else 0.0
        inner = (cx + side * a * (0.14 - in_dx), brow_y + in_dy * b + lower)
        outer = (cx + side * a * 0.62, brow_y + out_dy * b + lower * 0.5)
        mid = ((inner[0] + outer[0]) / 2, (inner[1] + outer[1]) / 2 - arch * b)
        draw.line(place([inner, mid, outer]), fill=ink, width=brow_w, joint="curve")

    nose_y = cy + b * 0.14
    draw.line(place([(cx, nose_y - 0.14 * b), (cx - odd_side * 0.05 * a, nose_y)]), fill=ink, width=lw)
    if wrinkle > 0.5:
        for side in (-1, 1):
            for k in (0, 1):
                x0, y0 = cx + side * a * 0.09, nose_y - b * (0.02 + 0.07 * k)
                draw.line(
                    place([(x0, y0), (x0 + side * a * 0.13, y0 - b * 0.05)]), fill=ink, width=max(1, lw - 1)
                )

    mouth_y = cy + b * uniform(0.42, 0.5)
    half_w = mouth_w * a
    u = _PARABOLA_U
    if mouth_open > 0.025:
        draw.polygon(ellipse(cx, mouth_y, half_w, mouth_open * b, 24), fill=ink)
    elif idx == CLASS_NAMES.index("happy") and uniform(0, 1) < 0.4:
        top = np.stack([cx + half_w * u, mouth_y - curve * b * u * u], axis=1)
        bottom = np.stack([cx - half_w * u, mouth_y + 0.02 * b - 2.2 * curve * b * u * u], axis=1)
        draw.polygon(place(np.concatenate([top, bottom])), fill=ink)
    else:
        ys = mouth_y - curve * b * u * u - skew * b * np.maximum(0.0, odd_side * u) ** 1.5
        draw.line(place(np.stack([cx + half_w * u, ys], axis=1)), fill=ink, width=lw + 1, joint="curve")

    if uniform(0, 1) < 0.1:
        r = s * uniform(0.07, 0.15)
        ox, oy = s * uniform(0.15, 0.85), s * uniform(0.15, 0.85)
        draw.ellipse((ox - r, oy - r * uniform(0.6, 1.4), ox + r, oy + r), fill=int(uniform(0, 255)))

    img = img.resize((size, size), Image.LANCZOS, reducing_gap=2.0)
    if uniform(0, 1) < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(uniform(0.3, 0.8)))

    arr = np.asarray(img, dtype=np.float32)
    ramp = _ramp(size)
    angle = uniform(0, 2 * math.pi)
    arr = arr + uniform(0, 25) * (math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None])
    arr += rng.normal(0.0, uniform(2, 10), size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="L")


def _image_rng(seed: int, split: str, class_idx: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), class_idx, index]))


def _render_chunk(
    jobs: Sequence[tuple[str, int, int]], start: int, root: str, seed: int, size: int, rgb: float
) -> int:
    """Draw and save one chunk of (split, class index, image index) jobs; runs in a worker process."""
    for split, class_idx, index in jobs:
        rng = _image_rng(seed, split, class_idx, index)
        as_rgb = rng.random() < rgb
        img = draw_face(class_idx, rng, size)
        if as_rgb:
            img = img.convert("RGB")
        img.save(os.path.join(root, split, CLASS_NAMES[class_idx], f"{index}.png"), compress_level=1)
    return len(jobs)


def _metadata(
    train_per_class: int, eval_per_class: int, seed: int, image_size: int, rgb_fraction: float
) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "train_per_class": int(train_per_class),
        "eval_per_class": int(eval_per_class),
        "seed": int(seed),
        "image_size": int(image_size),
        "rgb_fraction": float(rgb_fraction),
    }


def image_count(train_per_class: int, eval_per_class: int) -> int:
    """Images in a synthetic data set: train plus valid and test, for every class."""
    return (train_per_class + 2 * eval_per_class) * len(CLASS_NAMES)


def generate_synthetic_dataset(
    out_dir: str | Path,
    train_per_class: int,
    eval_per_class: int,
    seed: int = 0,
    image_size: int = 48,
    rgb_fraction: float = 0.3,
) -> Path:
    """Write a fresh synthetic data set to ``out_dir``, built aside and renamed into place; returns the path.

    ``out_dir`` must not exist, be empty, or be a synthetic data set (it holds ``synthetic.json``): a folder
    of anything else is refused, never replaced.
    """
    if train_per_class < 1 or eval_per_class < 1:
        raise ValueError("train_per_class and eval_per_class must be >= 1")
    if not 0.0 <= rgb_fraction <= 1.0:
        raise ValueError("rgb_fraction must be in [0, 1]")
    out = Path(out_dir).resolve()
    fix = (
        "Point data.data_dir (or --out) at a new or empty folder; to train on the images that are there, "
        "use data=folder (any class names) or data=mmafedb with data.data_dir=" + str(out) + "."
    )
    with building_folder(out, METADATA_FILE, "generated faces", fix) as tmp:
        jobs = []
        for split in SPLITS:
            count = train_per_class if split == "train" else eval_per_class
            for class_idx, name in enumerate(CLASS_NAMES):
                (tmp / split / name).mkdir(parents=True)
                jobs.extend((split, class_idx, i) for i in range(count))
        args = (str(tmp), seed, image_size, rgb_fraction)
        map_chunks(_render_chunk, jobs, args, chunk=64, serial_limit=_SERIAL_LIMIT, progress=False)
        meta = _metadata(train_per_class, eval_per_class, seed, image_size, rgb_fraction)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def ensure_synthetic_dataset(
    out_dir: str | Path,
    train_per_class: int,
    eval_per_class: int,
    seed: int = 0,
    image_size: int = 48,
    rgb_fraction: float = 0.3,
) -> Path:
    """Return ``out_dir``, generating it only if its ``synthetic.json`` does not match these parameters
    (a folder without that file is refused, see :func:`generate_synthetic_dataset`)."""
    out = Path(out_dir)
    wanted = _metadata(train_per_class, eval_per_class, seed, image_size, rgb_fraction)
    try:
        if json.loads((out / METADATA_FILE).read_text()) == wanted:
            return out
    except (OSError, ValueError):
        pass
    start = time.perf_counter()
    path = generate_synthetic_dataset(out, train_per_class, eval_per_class, seed, image_size, rgb_fraction)
    logger.info(
        "Generated %d synthetic images in %.1fs at %s",
        image_count(train_per_class, eval_per_class),
        time.perf_counter() - start,
        path,
    )
    return path


@command
def main(argv: list[str] | None = None) -> int:
    """CLI: generate a synthetic MMAFEDB-layout dataset."""
    parser = argparse.ArgumentParser(prog="python -m fer.data.synthetic", description=__doc__)
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output folder: new, empty, or a synthetic data set to replace",
    )
    parser.add_argument("--per-class", required=True, type=int, help="training images per class")
    parser.add_argument("--eval-per-class", type=int, default=None, help="valid/test images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--rgb-fraction", type=float, default=0.3)
    args = parser.parse_args(argv)
    eval_per_class = args.eval_per_class if args.eval_per_class is not None else max(1, args.per_class // 4)
    start = time.perf_counter()
    path = generate_synthetic_dataset(
        args.out, args.per_class, eval_per_class, args.seed, args.image_size, args.rgb_fraction
    )
    total = image_count(args.per_class, eval_per_class)
    print(f"Wrote {total} images to {path} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
