"""Pen sketches of faces with the 7 expressions, in the MMAFEDB folder layout, drawn unlike ``fer.data.synthetic``.

A second, independent generator to check that fer's defaults generalize: outline-only faces in ink on
textured paper, expressions carried by stroke shapes (arcs, slants, zigzags) rather than by shifted
parameters of one template, classes as unbalanced as in real FER data sets, a share of faces with a cue
missing, and a few wrong labels. ``<out>/{train,valid,test}/<class>/<index>.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fer.data.sources.base import EXPRESSIONS, SPLITS
from fer.files import building_folder
from fer.run.cli import command

METADATA_FILE = "sketches.json"
FORMAT_VERSION = 1
# relative class frequencies, shaped like FER2013's (happy most common, disgust rare)
CLASS_WEIGHTS = {"angry": 1.0, "disgust": 0.35, "fear": 1.0, "happy": 1.8, "neutral": 1.25, "sad": 1.2,
                 "surprise": 0.8}  # fmt: skip
_SCALE = 4  # drawn at 4x, then shrunk: anti-aliased strokes


def draw_sketch(
    expression: str, rng: np.random.Generator, size: int = 48, cue_drop: float = 0.15
) -> Image.Image:
    """One face sketch showing ``expression`` (one of fer's seven names); ``cue_drop``: chance that one of
    its cues (brows, eyes or mouth) is drawn neutral."""
    big = size * _SCALE
    paper = rng.uniform(170, 250)
    ink = tuple(int(v) for v in rng.uniform(0, 90, 3))
    texture = rng.normal(0, rng.uniform(3, 14), (big // 8 + 1, big // 8 + 1))
    shade = np.linspace(rng.uniform(-25, 0), rng.uniform(0, 25), big)[None, :]
    base = np.clip(paper + np.kron(texture, np.ones((8, 8)))[:big, :big] + shade, 0, 255)
    tint = rng.uniform(0.85, 1.0, 3)
    img = Image.fromarray(np.stack([base * t for t in tint], axis=2).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    pen = max(2, int(big * rng.uniform(0.018, 0.035)))

    cx, cy = big * (0.5 + rng.uniform(-0.07, 0.07)), big * (0.5 + rng.uniform(-0.06, 0.06))
    rx, ry = big * rng.uniform(0.3, 0.4), big * rng.uniform(0.36, 0.46)
    tilt = math.radians(rng.uniform(-15, 15))

    def at(u: float, v: float) -> tuple[float, float]:
        """A point in face units (u right, v down, both -1..1), tilted with the head."""
        x, y = u * rx, v * ry
        return (cx + x * math.cos(tilt) - y * math.sin(tilt), cy + x * math.sin(tilt) + y * math.cos(tilt))

    def stroke(points: list[tuple[float, float]], width: int = pen) -> None:
        draw.line([at(u, v) for u, v in points], fill=ink, width=width, joint="curve")

    outline = [
        (math.cos(t) * (1 + rng.uniform(-0.03, 0.03)), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 40)
    ]
    stroke(outline)
    if rng.random() < 0.5:  # hair
        for u in np.linspace(-0.8, 0.8, int(rng.integers(4, 9))):
            stroke([(u, -0.95), (u + rng.uniform(-0.2, 0.2), -1.15)], max(1, pen // 2))

    cues = {"brows": expression, "eyes": expression, "mouth": expression}
    if rng.random() < cue_drop:
        cues[str(rng.choice(list(cues)))] = "neutral"
    jitter = lambda: rng.uniform(-0.04, 0.04)  # noqa: E731
    ey, eu = -0.2 + jitter(), 0.38 + jitter()
    for side in (-1, 1):
        _draw_brow(stroke, cues["brows"], side, eu, ey - 0.22 + jitter())
        _draw_eye(stroke, draw, at, ink, pen, cues["eyes"], side, eu, ey, rx)
    _draw_mouth(stroke, cues["mouth"], 0.45 + jitter(), 0.32 + jitter(), rng)
    if expression == "disgust" and cues["mouth"] == "disgust":  # nose wrinkles
        for u in (-0.12, 0.12):
            stroke([(u - 0.05, 0.05), (u + 0.05, 0.1), (u - 0.05, 0.15)], max(1, pen // 2))

    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * _SCALE / 2))
    return img.resize((size, size), Image.Resampling.LANCZOS)


def _draw_brow(stroke, expression: str, side: int, u: float, v: float) -> None:
    inner, outer = u * 0.4, u * 1.3
    lift = {"angry": (0.1, -0.08), "sad": (-0.1, 0.06), "fear": (-0.12, -0.06), "surprise": (-0.14, -0.14),
            "disgust": (0.06, 0.0)}.get(expression, (0.0, 0.0))  # fmt: skip
    stroke([(side * inner, v + lift[0]), (side * outer, v + lift[1])])


def _draw_eye(stroke, draw, at, ink, pen, expression: str, side: int, u: float, v: float, rx: float) -> None:
    x = side * u * 0.85
    if expression == "happy":  # closed, smiling eyes
        stroke([(x - 0.14, v + 0.03), (x, v - 0.06), (x + 0.14, v + 0.03)])
    elif expression in ("surprise", "fear"):
        r = rx * (0.16 if expression == "surprise" else 0.12)
        px, py = at(x, v)
        draw.ellipse([px - r, py - r, px + r, py + r], outline=ink, width=pen)
    elif expression in ("angry", "disgust"):  # narrowed
        stroke(
            [
                (x - 0.14, v),
                (x + 0.14, v + (0.03 if side * (1 if expression == "angry" else -1) > 0 else -0.03)),
            ]
        )
    else:
        r = rx * 0.05
        px, py = at(x, v)
        draw.ellipse([px - r, py - r, px + r, py + r], fill=ink)


def _draw_mouth(stroke, expression: str, v: float, half: float, rng: np.random.Generator) -> None:
    us = np.linspace(-half, half, 9)
    if expression == "happy":
        stroke([(u, v + 0.18 * (1 - (u / half) ** 2)) for u in us])
    elif expression == "sad":
        stroke([(u, v + 0.1 - 0.15 * (1 - (u / half) ** 2)) for u in us])
    elif expression == "surprise":
        stroke([(0.14 * math.cos(t), v + 0.05 + 0.16 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 20)])
    elif expression == "fear":  # wavy, stretched
        stroke([(u * 1.2, v + 0.05 * math.sin(6 * u / half)) for u in us])
    elif expression == "angry":  # tight, turned down at the corners
        stroke([(-half * 0.7, v + 0.06), (-half * 0.4, v), (half * 0.4, v), (half * 0.7, v + 0.06)])
    elif expression == "disgust":  # one corner raised
        stroke([(u, v - 0.12 * (u / half + 1) / 2 * rng.uniform(0.8, 1.2)) for u in us])
    else:
        stroke([(-half * 0.8, v), (half * 0.8, v)])


def split_counts(train_images: int, eval_fraction: float) -> dict[str, dict[str, int]]:
    """Images per split and class: ``train_images`` spread by :data:`CLASS_WEIGHTS`, valid and test each
    ``eval_fraction`` of that, same proportions."""
    total = sum(CLASS_WEIGHTS.values())
    per_class = {name: max(2, round(train_images * CLASS_WEIGHTS[name] / total)) for name in EXPRESSIONS}
    evals = {name: max(1, round(count * eval_fraction)) for name, count in per_class.items()}
    return {"train": per_class, "valid": evals, "test": evals}


def generate_sketches(
    out_dir: str | Path,
    train_images: int = 1500,
    eval_fraction: float = 0.2,
    image_size: int = 48,
    seed: int = 0,
    label_noise: float = 0.03,
) -> Path:
    """Write a sketch data set to ``out_dir`` (new, empty, or a sketch data set of its own; anything else is
    refused, never replaced); returns the path."""
    out = Path(out_dir).resolve()
    counts = split_counts(train_images, eval_fraction)
    fix = "Give --out a new or empty folder."
    with building_folder(out, METADATA_FILE, "face sketches", fix) as tmp:
        for split in SPLITS:
            for class_idx, name in enumerate(EXPRESSIONS):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for i in range(counts[split][name]):
                    rng = np.random.default_rng([seed, SPLITS.index(split), class_idx, i])
                    drawn = name
                    if split == "train" and rng.random() < label_noise:
                        drawn = str(rng.choice([c for c in EXPRESSIONS if c != name]))
                    draw_sketch(drawn, rng, image_size).save(folder / f"{i}.png", compress_level=1)
        meta = {"format_version": FORMAT_VERSION, "counts": counts, "image_size": image_size, "seed": seed,
                "label_noise": label_noise}  # fmt: skip
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


@command
def main(argv: list[str] | None = None) -> int:
    """CLI: write a sketch data set (train on it with data=folder data.data_dir=OUT)."""
    parser = argparse.ArgumentParser(prog="python -m fer.data.sketches", description=__doc__)
    parser.add_argument("--out", required=True, type=Path, help="a new or empty folder")
    parser.add_argument("--train-images", type=int, default=1500, help="training images over all classes")
    parser.add_argument(
        "--eval-fraction", type=float, default=0.2, help="valid and test, each, per train image"
    )
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-noise", type=float, default=0.03, help="share of training labels made wrong")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = generate_sketches(
        args.out, args.train_images, args.eval_fraction, args.image_size, args.seed, args.label_noise
    )
    total = sum(sum(c.values()) for c in split_counts(args.train_images, args.eval_fraction).values())
    print(f"Wrote {total} sketches to {path} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
