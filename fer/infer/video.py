"""Frames from video files (anything OpenCV's FFmpeg reads; GIFs through PIL) and from cameras, and the
loop that classifies their faces: every Nth frame, in batches of frames, with per-face tracks."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageSequence

from fer.errors import FERError
from fer.infer.pipeline import FaceAnalyzer, FaceResult
from fer.infer.tracking import SMOOTHING, FaceTracker

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})
BATCH_FRAMES = 16  # frames whose faces go through the model together (16 frames of 1080p: ~100 MB)


class VideoError(FERError):
    """A video file or camera that cannot be opened or read."""


@dataclass(frozen=True)
class Frame:
    index: int
    time: float  # seconds from the start of the video (or of the capture)
    rgb: np.ndarray  # (H, W, 3) uint8


@dataclass
class FrameSource:
    """Frames in order; ``fps`` and ``frames`` (the count) where the container tells, else None."""

    name: str
    frames: Iterator[Frame]
    fps: float | None
    count: int | None
    close: Callable[[], None] = lambda: None


def is_video(path: Path) -> bool:
    """A video by its suffix, or an animated GIF (a GIF of one frame is an image)."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return True
    if suffix != ".gif":
        return False
    try:
        with Image.open(path) as image:
            return getattr(image, "n_frames", 1) > 1
    except (OSError, ValueError):
        return False


def _gif(path: Path) -> FrameSource:
    try:
        image = Image.open(path)
        count = getattr(image, "n_frames", 1)
    except (OSError, ValueError) as error:
        raise VideoError(f"cannot read the GIF {path}: {error}") from None

    def frames() -> Iterator[Frame]:
        elapsed = 0.0
        try:
            for index, frame in enumerate(ImageSequence.Iterator(image)):
                yield Frame(index, elapsed, np.asarray(frame.convert("RGB")))
                elapsed += frame.info.get("duration", 100) / 1000
        except (OSError, ValueError) as error:
            raise VideoError(f"{path}: frame {index} cannot be decoded ({error})") from None
        finally:
            image.close()

    durations = [f.info.get("duration", 100) for f in ImageSequence.Iterator(image)]
    fps = 1000 * len(durations) / sum(durations) if sum(durations) else None
    image.seek(0)
    return FrameSource(str(path), frames(), fps, count, image.close)


def _capture_frames(capture: Any, fps: float | None, clock: bool) -> Iterator[Frame]:
    import cv2

    start = time.monotonic()
    for index in itertools.count():
        ok, bgr = capture.read()
        if not ok:
            return
        if clock:
            moment = time.monotonic() - start
        elif fps:
            moment = index / fps
        else:
            moment = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000
        yield Frame(index, moment, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def open_video(path: str | Path) -> FrameSource:
    """A video file's frames as RGB arrays, with their times (from the frame rate the file records)."""
    import cv2

    path = Path(path)
    if path.suffix.lower() == ".gif":
        return _gif(path)
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoError(f"cannot open the video {path} (OpenCV's FFmpeg cannot read it)")
    fps = capture.get(cv2.CAP_PROP_FPS) or None
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    return FrameSource(str(path), _capture_frames(capture, fps, clock=False), fps, count, capture.release)


def default_capture(index: int) -> Any:
    import cv2

    return cv2.VideoCapture(index)


camera_capture: Callable[[int], Any] = default_capture  # what opens a camera; tests give it a video stream


def open_camera(index: int) -> FrameSource:
    """A webcam's frames (``cv2.VideoCapture(index)``), timed by the clock; it runs until stopped."""
    capture = camera_capture(index)
    if not capture.isOpened():
        raise VideoError(f"--camera {index}: no camera can be opened at index {index}")
    return FrameSource(
        f"camera:{index}", _capture_frames(capture, None, clock=True), None, None, capture.release
    )


def stream_faces(
    source: FrameSource,
    analyzer: FaceAnalyzer,
    every: int = 1,
    smooth: bool = False,
    batch_frames: int = BATCH_FRAMES,
    limit: int | None = None,
) -> Iterator[tuple[Frame, list[FaceResult] | None]]:
    """Every frame in order with its faces, or None for the frames skipped by ``every``. Faces carry a
    track number; with ``smooth`` their probabilities are averaged along the track. ``limit``: stop after
    that many frames."""
    tracker = FaceTracker(smoothing=SMOOTHING if smooth else 0.0)
    names = analyzer.classifier.class_names
    pending: list[Frame] = []

    def flush() -> Iterator[tuple[Frame, list[FaceResult] | None]]:
        chosen = [f for f in pending if f.index % every == 0]
        analyzed = dict(
            zip((f.index for f in chosen), analyzer.analyze([f.rgb for f in chosen]), strict=True)
        )
        for frame in pending:
            faces = analyzed.get(frame.index)
            if faces is not None:
                ids, probabilities = tracker.update(
                    [r.box for r in faces], np.array([r.probabilities for r in faces])
                )
                faces = [
                    replace(r, track=i, probabilities=p, label=names[int(np.argmax(p))])
                    for r, i, p in zip(faces, ids, probabilities, strict=True)
                ]
            yield frame, faces
        pending.clear()

    frames = source.frames if limit is None else itertools.islice(source.frames, limit)
    for frame in frames:
        pending.append(frame)
        if sum(f.index % every == 0 for f in pending) >= batch_frames:
            yield from flush()
    yield from flush()
