"""Following faces across video frames by box overlap, and smoothing each face's probabilities over time."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Box = tuple[int, int, int, int]

TRACK_IOU = 0.3  # a face in the next frame is the same face when its box overlaps this much,
MAX_JUMP = (
    1.5  # or, failing that, when its centre moved by at most this many box sides (fast motion, --every)
)
SMOOTHING = 0.6  # weight of the past in the exponential moving average of a face's probabilities
MAX_MISSED = 15  # frames a face may go unseen (a blink of the detector) before its track ends


def centre_jump(a: Box, b: Box) -> float:
    """How far the centre of ``b`` lies from that of ``a``, in ``a``'s mean side."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    distance = np.hypot(bx + bw / 2 - ax - aw / 2, by + bh / 2 - ay - ah / 2)
    return float(distance / max(1.0, (aw + ah) / 2))


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = min(ax + aw, bx + bw) - max(ax, bx)
    h = min(ay + ah, by + bh) - max(ay, by)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / (aw * ah + bw * bh - inter)


@dataclass
class Track:
    id: int
    box: Box
    probabilities: np.ndarray
    missed: int = 0


@dataclass
class FaceTracker:
    """Gives each face a track id (greedy matching, best pairs first: by box IoU, then by how little the
    centre moved) and, with ``smoothing``, replaces its probabilities by their exponential moving average
    along the track."""

    smoothing: float = 0.0
    min_iou: float = TRACK_IOU
    max_jump: float = MAX_JUMP
    max_missed: int = MAX_MISSED
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 0

    def update(self, boxes: list[Box], probabilities: np.ndarray) -> tuple[list[int], np.ndarray]:
        """Track ids for this frame's faces and their (smoothed) probabilities, in the order given."""
        pairs = []
        for i, box in enumerate(boxes):
            for j, track in enumerate(self.tracks):
                overlap, jump = iou(track.box, box), centre_jump(track.box, box)
                if overlap >= self.min_iou or jump <= self.max_jump:
                    pairs.append((overlap >= self.min_iou, overlap, -jump, i, j))
        assigned: dict[int, Track] = {}
        used: set[int] = set()
        for *_, i, j in sorted(pairs, reverse=True):
            if i in assigned or j in used:
                continue
            assigned[i] = self.tracks[j]
            used.add(j)
        out = np.array(probabilities, dtype=np.float64, copy=True)
        ids = []
        for i, box in enumerate(boxes):
            track = assigned.get(i)
            if track is None:
                track = Track(self.next_id, box, out[i].copy())
                self.next_id += 1
                self.tracks.append(track)
            else:
                track.probabilities = self.smoothing * track.probabilities + (1 - self.smoothing) * out[i]
                track.box, track.missed = box, 0
                out[i] = track.probabilities
            ids.append(track.id)
        current = {id(t) for t in assigned.values()}
        for track in self.tracks:
            if id(track) not in current and track.id not in ids:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return ids, out
