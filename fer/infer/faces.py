"""Face crops for the classifier: the detector's box grown by a margin, optionally turned so that the eyes
are level (``--align``), as the faces of training sets are."""

from __future__ import annotations

import numpy as np
from PIL import Image

from fer.infer.detectors import Box, Face

DEFAULT_MARGIN = 0.2  # Haar boxes stop at the brows and above the chin; training faces show a little more


def grown_box(box: Box, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the box grown by ``margin`` of its size per side, clipped."""
    x, y, w, h = box
    dx, dy = round(w * margin), round(h * margin)
    return max(0, x - dx), max(0, y - dy), min(width, x + w + dx), min(height, y + h + dy)


def crop_face(image: Image.Image, box: Box, margin: float) -> Image.Image:
    """The box grown by ``margin`` of its width/height on every side, clipped to the image."""
    return image.crop(grown_box(box, margin, image.width, image.height))


def aligned_face(rgb: np.ndarray, face: Face, margin: float) -> np.ndarray:
    """The grown box cut from the frame turned about the box's centre so that the eye line is level; what
    the turn brings in from outside the frame repeats its edge pixels."""
    import cv2

    x, y, w, h = face.box
    dx, dy = round(w * margin), round(h * margin)
    out_w, out_h = w + 2 * dx, h + 2 * dy
    centre = (x + w / 2, y + h / 2)
    matrix = cv2.getRotationMatrix2D(centre, face.eye_angle or 0.0, 1.0)
    matrix[:, 2] += (out_w / 2 - centre[0], out_h / 2 - centre[1])
    return cv2.warpAffine(
        rgb, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def face_crop(rgb: np.ndarray, face: Face, margin: float, align: bool = False) -> np.ndarray:
    """The classifier's view of one face: aligned when asked and the detector gave the eyes, else the
    grown box as it is."""
    if align and face.eyes is not None:
        return aligned_face(rgb, face, margin)
    left, top, right, bottom = grown_box(face.box, margin, rgb.shape[1], rgb.shape[0])
    return rgb[top:bottom, left:right]
