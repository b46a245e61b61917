"""``python -m fer.bench.detectors``: recall and false positives of each face detector on real photos.

The faces are scikit-image's: ``lfw_subset`` (100 face crops and 100 non-face crops of 25 x 25 px, from
Labeled Faces in the Wild) upscaled to 160 px on a plain 256 px canvas, and the ``astronaut`` photo (one
face). Each is also made harder: turned by 20, 30 and 40 degrees, shrunk to 48 px faces, darkened (gamma 2.5
then x0.5) and blurred (Gaussian, sigma 3). A face counts as found when a box overlaps its true box by an
intersection over union of at least 0.3; every other box is a false positive. Needs scikit-image (dev).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fer.errors import FERError
from fer.infer.detectors import BUILDERS, Box, Detector, build_detector
from fer.infer.tracking import iou

FACE_SIDE = 160
CANVAS = 256
MATCH_IOU = 0.3
ASTRONAUT_FACE: Box = (177, 66, 95, 95)  # Haar's box on the upright photo, checked by eye
ANGLES = (20, 30, 40)


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # uint8 RGB
    face: Box | None  # None: a photo without a face


def _cv2():
    import cv2

    return cv2


def _place(crop: np.ndarray, side: int) -> tuple[np.ndarray, Box]:
    cv2 = _cv2()
    face = cv2.resize(crop, (side, side), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((CANVAS, CANVAS), int(np.median(crop)), dtype=np.uint8)
    at = (CANVAS - side) // 2
    canvas[at : at + side, at : at + side] = face
    return np.repeat(canvas[..., None], 3, axis=2), (at, at, side, side)


def _rotate(image: np.ndarray, box: Box | None, degrees: float) -> tuple[np.ndarray, Box | None]:
    """Turned about its centre (the canvas keeps its size); the true box becomes the turned box's bounds,
    shrunk back to the face's own side (a turned square's bounds are larger than the face)."""
    cv2 = _cv2()
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    turned = cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
    if box is None:
        return turned, None
    x, y, w, h = box
    cx, cy = matrix @ np.array([x + w / 2, y + h / 2, 1.0])
    return turned, (round(cx - w / 2), round(cy - h / 2), w, h)


def _darken(image: np.ndarray) -> np.ndarray:
    return (255 * (image / 255.0) ** 2.5 * 0.5).astype(np.uint8)


def _blur(image: np.ndarray) -> np.ndarray:
    return _cv2().GaussianBlur(image, (0, 0), 3)


def _shrink(image: np.ndarray, box: Box | None, factor: float) -> tuple[np.ndarray, Box | None]:
    cv2 = _cv2()
    small = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    return small, None if box is None else tuple(round(v * factor) for v in box)


def variants() -> dict[str, Callable[[np.ndarray, Box | None], tuple[np.ndarray, Box | None]]]:
    """The harder versions of every photo, by name."""
    out = {"upright": lambda im, box: (im, box)}
    for angle in ANGLES:
        out[f"turned {angle}°"] = lambda im, box, a=angle: _rotate(im, box, a)
    out["small (x0.3)"] = lambda im, box: _shrink(im, box, 0.3)
    out["dark"] = lambda im, box: (_darken(im), box)
    out["blurred"] = lambda im, box: (_blur(im), box)
    return out


def lfw_samples() -> tuple[list[Sample], list[Sample]]:
    """The 100 faces and the 100 non-faces of scikit-image's ``lfw_subset``, upscaled onto a canvas."""
    try:
        from skimage import data
    except ImportError:
        raise FERError("the detector benchmark needs scikit-image: pip install scikit-image") from None
    crops = (data.lfw_subset() * 255).round().astype(np.uint8)
    faces = [Sample(*_place(crop, FACE_SIDE)) for crop in crops[:100]]
    others = [Sample(_place(crop, FACE_SIDE)[0], None) for crop in crops[100:]]
    return faces, others


def astronaut() -> Sample:
    from skimage import data

    return Sample(data.astronaut(), ASTRONAUT_FACE)


@dataclass
class Score:
    found: int = 0
    faces: int = 0
    false_positives: int = 0
    seconds: float = 0.0
    images: int = 0

    def add(self, detector: Detector, sample: Sample) -> None:
        start = time.perf_counter()
        boxes = [f.box for f in detector.detect(sample.image)]
        self.seconds += time.perf_counter() - start
        self.images += 1
        if sample.face is not None:
            self.faces += 1
            matched = [b for b in boxes if iou(b, sample.face) >= MATCH_IOU]
            self.found += bool(matched)
            self.false_positives += len(boxes) - min(1, len(matched))
        else:
            self.false_positives += len(boxes)


def measure(names: Sequence[str]) -> list[dict]:
    faces, others = lfw_samples()
    photo = astronaut()
    rows = []
    for name in names:
        detector = build_detector(name)
        for variant, make in variants().items():
            lfw, non_faces, space = Score(), Score(), Score()
            for sample in faces:
                lfw.add(detector, Sample(*make(sample.image, sample.face)))
            for sample in others:
                non_faces.add(detector, Sample(*make(sample.image, None)))
            space.add(detector, Sample(*make(photo.image, photo.face)))
            ms = 1000 * (lfw.seconds + non_faces.seconds) / (lfw.images + non_faces.images)
            rows.append(
                {
                    "detector": name,
                    "variant": variant,
                    "lfw_found": lfw.found,
                    "lfw_faces": lfw.faces,
                    "lfw_false_positives": lfw.false_positives,
                    "non_face_false_positives": non_faces.false_positives,
                    "astronaut_found": space.found,
                    "astronaut_false_positives": space.false_positives,
                    "ms_per_256px_image": ms,
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| detector | photos | lfw faces found /100 | extra boxes on lfw faces | boxes on 100 non-faces "
        "| astronaut found | astronaut extra boxes | ms / 256 px image |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['detector']} | {r['variant']} | {r['lfw_found']} | {r['lfw_false_positives']} "
            f"| {r['non_face_false_positives']} | {'yes' if r['astronaut_found'] else 'no'} "
            f"| {r['astronaut_false_positives']} | {r['ms_per_256px_image']:.1f} |"
        )
    return "\n".join(lines)


def alignment(angles: Sequence[int] = (0, *ANGLES)) -> list[dict]:
    """What ``--align`` changes: the eye line's tilt on MTCNN's lfw faces before alignment, and on the
    aligned crop (found again by MTCNN in it)."""
    from fer.infer.faces import DEFAULT_MARGIN, aligned_face

    detector = build_detector("mtcnn")
    faces, _ = lfw_samples()
    rows = []
    for angle in angles:
        before, after = [], []
        for sample in faces:
            image, truth = _rotate(sample.image, sample.face, angle) if angle else (sample.image, sample.face)
            found = [f for f in detector.detect(image) if iou(f.box, truth) >= MATCH_IOU]
            if not found:
                continue
            before.append(abs(found[0].eye_angle))
            again = detector.detect(aligned_face(image, found[0], DEFAULT_MARGIN))
            if again:
                after.append(abs(max(again, key=lambda f: f.box[2]).eye_angle))
        rows.append(
            {
                "turned": angle,
                "faces": len(before),
                "tilt_before": float(np.median(before)) if before else float("nan"),
                "tilt_after": float(np.median(after)) if after else float("nan"),
                "found_again": len(after),
            }
        )
    return rows


def alignment_table(rows: list[dict]) -> str:
    lines = [
        "| lfw faces turned by | faces MTCNN found | median eye-line tilt | after --align (found again) |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['turned']}° | {r['faces']} | {r['tilt_before']:.1f}° | {r['tilt_after']:.1f}° ({r['found_again']}) |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer.bench.detectors", description=__doc__.split("\n")[0])
    parser.add_argument("--detectors", nargs="+", default=list(BUILDERS), help="default: all packaged ones")
    parser.add_argument("--align", action="store_true", help="also: what --align changes (needs mtcnn)")
    args = parser.parse_args(argv)
    try:
        print(table(measure(args.detectors)))
        if args.align:
            print()
            print(alignment_table(alignment()))
    except FERError as error:
        print(f"fer: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
