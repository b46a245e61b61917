"""Frames to classified faces: detect, crop (and align), preprocess with numpy/PIL, classify in batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fer.data.preprocessing import model_input
from fer.infer.classifier import Classifier
from fer.infer.detectors import Box, Detector, Face
from fer.infer.faces import DEFAULT_MARGIN, face_crop


@dataclass(frozen=True)
class FaceResult:
    """One classified face of a frame; ``track`` numbers the same face across a video's frames."""

    box: Box
    probabilities: np.ndarray
    label: str
    score: float = 1.0
    eye_angle: float | None = None
    track: int | None = None


def model_inputs(images: Sequence[Image.Image | np.ndarray], classifier: Classifier) -> np.ndarray:
    """A batch ``(N, 3, S, S)`` float32 of images (PIL or uint8 arrays), preprocessed as in evaluation."""
    pre = classifier.preprocessing
    arrays = [model_input(im if isinstance(im, Image.Image) else Image.fromarray(im), pre) for im in images]
    size = pre.image_size
    return np.stack(arrays) if arrays else np.zeros((0, 3, size, size), dtype=np.float32)


def classify(classifier: Classifier, batch: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities ``(N, C)`` of a batch, run ``batch_size`` inputs at a time."""
    if len(batch) == 0:
        return np.zeros((0, len(classifier.class_names)))
    return np.concatenate(
        [classifier.probabilities(batch[i : i + batch_size]) for i in range(0, len(batch), batch_size)]
    )


@dataclass
class FaceAnalyzer:
    """A detector and a classifier: every face of a frame (RGB uint8) with its probabilities."""

    classifier: Classifier
    detector: Detector
    margin: float = DEFAULT_MARGIN
    align: bool = False
    batch_size: int = 64

    def analyze(self, frames: Sequence[np.ndarray]) -> list[list[FaceResult]]:
        """The faces of each frame, left to right; the crops of all frames go through the model together."""
        found: list[list[Face]] = [self.detector.detect(frame) for frame in frames]
        crops = [
            face_crop(frame, face, self.margin, self.align)
            for frame, faces in zip(frames, found, strict=True)
            for face in faces
        ]
        probabilities = classify(self.classifier, model_inputs(crops, self.classifier), self.batch_size)
        names = self.classifier.class_names
        results, at = [], 0
        for faces in found:
            row = []
            for face in faces:
                p = probabilities[at]
                at += 1
                angle = face.eye_angle if self.align else None
                row.append(FaceResult(face.box, p, names[int(np.argmax(p))], face.score, angle))
            results.append(row)
        return results
