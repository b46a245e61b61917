"""``fer.predict`` on videos, animated GIFs and a camera: a row per (frame, face), tracks, smoothing, plots."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import fer.infer.video
from fer.bench.serving import video_frames
from fer.export import export_onnx
from fer.infer.drawing import BOX_COLOR
from fer.infer.tracking import SMOOTHING, FaceTracker, iou
from fer.models import FERModule
from fer.predict import main

pytest.importorskip("skimage")
FPS = 10
FRAMES = 12


def write_video(path: Path, frames: list[np.ndarray], fps: int = FPS) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, frames[0].shape[1::-1])
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def model(module: FERModule, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(module, tmp_path_factory.mktemp("video-model") / "tiny.onnx")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 frames (10 frames/s, 640 x 480) of the astronaut's photo sliding from left to right."""
    return write_video(tmp_path_factory.mktemp("clips") / "clip.mp4", video_frames(FRAMES))


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two astronauts side by side, moving towards each other by 6 px a frame."""
    from skimage import data

    photo = cv2.resize(data.astronaut(), (300, 300))
    frames = []
    for i in range(6):
        frame = np.full((480, 640, 3), 90, dtype=np.uint8)
        frame[90:390, 6 * i : 300 + 6 * i] = photo
        frame[90:390, 334 - 6 * i : 634 - 6 * i] = photo
        frames.append(frame)
    return write_video(tmp_path_factory.mktemp("clips") / "two.mp4", frames)


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def probabilities(document: dict) -> np.ndarray:
    return np.array([list(p["probabilities"].values()) for p in document["predictions"]])


def test_video_gives_one_row_per_frame_and_face_with_its_time_and_box(
    model: Path, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "clip.csv"
    assert main([str(model), str(clip), "--out", str(out)]) == 0
    table = rows(out)
    assert [int(r["frame"]) for r in table] == list(range(FRAMES))
    np.testing.assert_allclose([float(r["time"]) for r in table], np.arange(FRAMES) / FPS, atol=1e-6)
    assert {r["face"] for r in table} == {"0"}  # one face, followed through every frame
    xs = [int(r["x"]) for r in table]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 200  # the face moves right as the photo does
    assert all(abs(int(r["w"]) - 68) <= 8 for r in table)  # the astronaut's face at 360/512 of its size
    probs = np.array([[float(r[n]) for n in list(r)[9:]] for r in table])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert "1 video (12 frames), 12 faces" in capsys.readouterr().err


def test_every_n_frames_and_smoothing_along_the_track(model: Path, clip: Path, tmp_path: Path) -> None:
    raw, smooth = tmp_path / "raw.json", tmp_path / "smooth.json"
    assert main([str(model), str(clip), "--every", "3", "--out", str(raw)]) == 0
    assert main([str(model), str(clip), "--every", "3", "--smooth", "--out", str(smooth)]) == 0
    raw_doc, smooth_doc = json.loads(raw.read_text()), json.loads(smooth.read_text())
    assert [p["frame"] for p in raw_doc["predictions"]] == [0, 3, 6, 9]
    assert [p["time"] for p in smooth_doc["predictions"]] == [0.0, 0.3, 0.6, 0.9]
    r, s = probabilities(raw_doc), probabilities(smooth_doc)
    assert not np.allclose(r, r[0], atol=1e-4)  # the raw probabilities change from frame to frame
    expected = [r[0]]
    for row in r[1:]:
        expected.append(SMOOTHING * expected[-1] + (1 - SMOOTHING) * row)
    np.testing.assert_allclose(s, expected, atol=2e-6)
    labels = [p["label"] for p in smooth_doc["predictions"]]
    assert labels == [smooth_doc["class_names"][int(i)] for i in np.argmax(s, axis=1)]


def test_two_faces_keep_their_track_numbers(model: Path, two_faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "two.csv"
    assert main([str(model), str(two_faces), "--out", str(out)]) == 0
    table = rows(out)
    assert len(table) == 12
    for frame in range(6):
        left, right = sorted((r for r in table if int(r["frame"]) == frame), key=lambda r: int(r["x"]))
        assert (left["face"], right["face"]) == ("0", "1")


def test_annotated_video_and_timeline_are_written(model: Path, clip: Path, tmp_path: Path) -> None:
    annotated, timeline, out = tmp_path / "boxes.mp4", tmp_path / "timeline.png", tmp_path / "rows.csv"
    args = [
        str(model),
        str(clip),
        "--annotate",
        str(annotated),
        "--timeline",
        str(timeline),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    capture = cv2.VideoCapture(str(annotated))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    assert len(frames) == FRAMES and frames[0].shape == (480, 640, 3)
    first = rows(out)[0]
    x, y, w, h = (int(first[k]) for k in ("x", "y", "w", "h"))
    edge = frames[0][y + h, x + 5 : x + w - 5].astype(float)  # the bottom side of the box
    assert np.abs(edge - BOX_COLOR).mean() < 40
    picture = Image.open(timeline)
    assert picture.format == "PNG" and picture.size[0] == 1000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_camera_reads_frames_like_a_video(
    model: Path, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = []

    def capture(index: int) -> cv2.VideoCapture:
        opened.append(index)
        return cv2.VideoCapture(str(clip))

    monkeypatch.setattr(fer.infer.video, "camera_capture", capture)
    out = tmp_path / "camera.csv"
    assert main([str(model), "--camera", "1", "--frames", "5", "--out", str(out)]) == 0
    table = rows(out)
    assert opened == [1]
    assert [(r["path"], int(r["frame"])) for r in table] == [("camera:1", i) for i in range(5)]
    times = [float(r["time"]) for r in table]
    assert times == sorted(times)
    video = rows_of_video = tmp_path / "video.csv"
    assert main([str(model), str(clip), "--frames", "5", "--out", str(video)]) == 0
    for cam, vid in zip(table, rows(rows_of_video), strict=True):  # the same faces and numbers
        assert [cam[k] for k in ("x", "y", "w", "h", "label")] == [
            vid[k] for k in ("x", "y", "w", "h", "label")
        ]


def test_a_camera_that_cannot_be_opened_is_one_error(
    model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(fer.infer.video, "camera_capture", lambda index: cv2.VideoCapture("/nonexistent.mp4"))
    assert main([str(model), "--camera", "3"]) == 2
    assert "--camera 3: no camera can be opened" in capsys.readouterr().err


def test_animated_gif_frames_are_timed_by_their_durations(model: Path, tmp_path: Path) -> None:
    frames = [Image.fromarray(f) for f in video_frames(4, (320, 240))]
    gif = tmp_path / "clip.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=[200, 100, 300, 100], loop=0)
    out = tmp_path / "gif.json"
    assert main([str(model), str(gif), "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert [(p["frame"], p["time"]) for p in document["predictions"]] == [
        (0, 0.0),
        (1, 0.2),
        (2, 0.3),
        (3, 0.6),
    ]


def test_unreadable_video_is_skipped_and_exits_1(
    model: Path, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    out = tmp_path / "rows.json"
    assert main([str(model), str(broken), str(clip), "--out", str(out)]) == 1
    document = json.loads(out.read_text())
    assert [f["path"] for f in document["failed"]] == [str(broken)]
    assert len(document["predictions"]) == FRAMES
    assert "cannot open the video" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--annotate", "{existing}"], "--overwrite"),
        (["--annotate", "{tmp}/a.gif"], "must end in .mp4 or .avi"),
        (["--timeline", "{tmp}/a.txt"], "must end in .png"),
        (["--every", "0"], "--every must be at least 1"),
        (["--frames", "0"], "--frames must be at least 1"),
        (["{copy}", "--timeline", "{tmp}/t.png"], "one video"),
        (["--align"], "--align needs the eyes"),
    ],
)
def test_video_option_mistakes_exit_2_with_one_message(
    extra: list[str], message: str, model: Path, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    existing = tmp_path / "mine.mp4"
    existing.write_bytes(b"the user's own video")
    names = {"existing": existing, "tmp": tmp_path, "copy": shutil.copy(clip, tmp_path / "copy.mp4")}
    assert main([str(model), str(clip), *(a.format(**names) for a in extra)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fer: error:") and message in err[0], err
    assert existing.read_bytes() == b"the user's own video"


def test_tracker_matches_boxes_by_overlap_and_ends_lost_tracks() -> None:
    tracker = FaceTracker(smoothing=0.5, max_missed=1)
    p = np.eye(3)
    ids, _ = tracker.update([(0, 0, 10, 10), (100, 0, 10, 10)], p[:2])
    assert ids == [0, 1]
    ids, smoothed = tracker.update([(102, 1, 10, 10), (1, 1, 10, 10)], p[[2, 2]])
    assert ids == [1, 0]
    np.testing.assert_allclose(smoothed, [[0, 0.5, 0.5], [0.5, 0, 0.5]])
    tracker.update([], np.zeros((0, 3)))
    tracker.update([], np.zeros((0, 3)))
    ids, _ = tracker.update([(0, 0, 10, 10)], p[:1])
    assert ids == [2]  # the old track ended after max_missed frames without its face
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    ids, _ = tracker.update([(14, 0, 10, 10)], p[:1])  # no overlap, but a jump of 1.4 sides: the same face
    assert ids == [2]


def test_serving_bench_row_measures_frames_per_second(tmp_path: Path) -> None:
    import torch

    from fer.bench.harness import ROWS, BenchContext

    ctx = BenchContext(data_dir=tmp_path, device=torch.device("cpu"), images=1, seconds=0.1, quick=True)
    measurement = ROWS["serving/mtcnn@320+onnxruntime@640x480"].function(ctx)
    assert measurement.images == 30  # at least the whole clip, once
    assert measurement.notes.startswith("1.00 faces per frame")
