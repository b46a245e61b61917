"""Pictures of results: boxes and labels drawn on frames, annotated videos, and the timeline plot of a
video's probabilities. Written aside and renamed into place, like every file fer writes."""

from __future__ import annotations

import io
import os
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fer.files import atomic_open
from fer.infer.pipeline import FaceResult

BOX_COLOR = (255, 200, 0)  # RGB
TEXT_COLOR = (0, 0, 0)
CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
MAX_TIMELINE_FACES = 4  # panels; the faces seen in the most frames first


def draw_faces(rgb: np.ndarray, faces: Sequence[FaceResult]) -> np.ndarray:
    """A copy of the frame with each face's box and its label and probability above it."""
    import cv2

    out = np.ascontiguousarray(rgb).copy()
    thickness = max(2, round(max(out.shape[:2]) / 320))
    scale = max(0.5, max(out.shape[:2]) / 1000)
    for face in faces:
        x, y, w, h = face.box
        cv2.rectangle(out, (x, y), (x + w, y + h), BOX_COLOR, thickness)
        text = f"{face.label} {float(np.max(face.probabilities)):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = y - th - base - 4 if y - th - base - 4 >= 0 else y + h
        cv2.rectangle(out, (x, top), (x + tw + 4, top + th + base + 4), BOX_COLOR, -1)
        cv2.putText(
            out, text, (x + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_COLOR, 1, cv2.LINE_AA
        )
    return out


class AnnotatedVideo:
    """An ``.mp4``/``.avi`` written frame by frame (MPEG-4 Part 2 / MJPG, codecs every OpenCV build has) to
    a hidden sibling, renamed over ``path`` by :meth:`close`; :meth:`discard` removes it instead."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = Path(path)
        self.fps = fps
        self.tmp = self.path.with_name(f".{self.path.stem}.{uuid.uuid4().hex[:8]}{self.path.suffix}")
        self.writer = None

    def write(self, rgb: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter_fourcc(*CODECS.get(self.path.suffix.lower(), "mp4v"))
            height, width = rgb.shape[:2]
            self.writer = cv2.VideoWriter(str(self.tmp), fourcc, self.fps, (width, height))
            if not self.writer.isOpened():
                raise OSError(f"OpenCV cannot write a video to {self.path}")
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.tmp.unlink(missing_ok=True)


def timeline_figure(
    times: Sequence[float],
    tracks: Sequence[int],
    probabilities: np.ndarray,
    class_names: Sequence[str],
    title: str,
):
    """Probabilities over time, one line per class, one panel per face (the most seen faces first)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    rows: dict[int, list[int]] = defaultdict(list)
    for i, track in enumerate(tracks):
        rows[track].append(i)
    shown = sorted(rows, key=lambda t: -len(rows[t]))[:MAX_TIMELINE_FACES]
    figure = Figure(figsize=(10, 2.6 * max(1, len(shown)) + 0.6), layout="constrained")
    axes = figure.subplots(max(1, len(shown)), 1, squeeze=False, sharex=True)[:, 0]
    for ax, track in zip(axes, shown, strict=False):
        at = rows[track]
        for c, name in enumerate(class_names):
            ax.plot([times[i] for i in at], probabilities[at, c], label=name, linewidth=1.5)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"face {track}")
        ax.grid(alpha=0.3)
    if not shown:
        axes[0].text(0.5, 0.5, "no face found", ha="center", va="center", transform=axes[0].transAxes)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    axes[-1].set_xlabel("time (s)")
    figure.suptitle(title)
    return figure


def save_figure(figure, path: Path) -> None:
    """Save a figure as PNG (or any format matplotlib knows by the suffix), all at once."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=100)
    with atomic_open(path, "wb", what="plot") as handle:
        handle.write(buffer.getvalue())
