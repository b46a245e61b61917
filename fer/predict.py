"""``python -m fer.predict MODEL PATH [PATH ...]``: the expression of each image, of each face in photos, or
of each face in each frame of videos and of a webcam.

MODEL is a fer checkpoint (``.ckpt``, loaded with ``weights_only=True``), an ONNX file or a TorchScript file
written by ``fer.export``; each brings its class names and preprocessing, applied as in training (with numpy
and PIL: an ONNX model runs without torch, which is then never imported). PATHs are image files, videos
(``.mp4``, ``.avi``, animated ``.gif`` ...), folders (searched recursively) or glob patterns; ``--camera N``
reads a webcam. Videos and the camera are searched for faces. A file that cannot be read is reported on one
line and skipped; the exit code is 0 when every file was read, 1 when some were not, 2 for a mistake in the
command (a missing model or path, a bad option).
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fer.data.decode import load_image
from fer.data.preprocessing import model_input
from fer.data.sources.folders import IMAGE_EXTENSIONS
from fer.errors import FERError, user_message
from fer.files import atomic_open, check_output_file
from fer.infer.classifier import Classifier
from fer.infer.detectors import DETECTORS, Box, Detector, build_detector
from fer.infer.faces import DEFAULT_MARGIN, face_crop
from fer.infer.models import load_classifier
from fer.infer.pipeline import FaceAnalyzer, classify
from fer.infer.tta import TTA_MODES, with_tta
from fer.infer.video import (
    VIDEO_SUFFIXES,
    FrameSource,
    VideoError,
    is_video,
    open_camera,
    open_video,
    stream_faces,
)
from fer.run.cli import command, one_line

IMAGE_SUFFIXES = IMAGE_EXTENSIONS | {".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pnm"}
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
GLOB_CHARACTERS = "*?["
DEVICES = ("auto", "cpu", "cuda")
OUT_SUFFIXES = (".csv", ".json")
ANNOTATE_SUFFIXES = (".mp4", ".avi")
PROGRESS_MIN_IMAGES = 256  # fewer images finish before a progress bar would tell anything
LIVE_WINDOW = "fer"


# -------------------------------------------------------------------------------------------- inputs


def _is_media_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in MEDIA_SUFFIXES


def _media_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_media_file(p))


def collect_images(specs: Sequence[str]) -> list[Path]:
    """Files named (whatever their suffix), images and videos under folders (recursive) and glob matches,
    in order. A name that is neither a file, a folder nor a pattern that matches something is the user's
    mistake."""
    files: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(_media_under(path))
        elif any(c in spec for c in GLOB_CHARACTERS):
            matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
            if not matches:
                raise FERError(f"{spec}: the pattern matches no file or folder")
            for match in map(Path, matches):
                files.extend(
                    _media_under(match) if match.is_dir() else [match] if _is_media_file(match) else []
                )
        else:
            raise FERError(f"{spec}: no such file or folder")
    unique = list(dict.fromkeys(files))
    if not unique:
        suffixes = ", ".join(sorted(MEDIA_SUFFIXES))
        raise FERError(f"no image or video files in {' '.join(specs)} (looked for {suffixes})")
    return unique


# ---------------------------------------------------------------------------------------- predicting


@dataclass(frozen=True)
class Prediction:
    """One classified image, one face of an image (``box`` set), or one face of a video frame (``frame``,
    ``time`` in seconds and ``face``, its track number, set too)."""

    path: str
    label: str
    probabilities: tuple[float, ...]
    box: Box | None = None
    frame: int | None = None
    time: float | None = None
    face: int | None = None


@dataclass
class PredictionRun:
    """What a run produced: the rows, the files it could not read, the photos without a face (``--faces``)."""

    predictions: list[Prediction] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, message)
    without_face: list[str] = field(default_factory=list)
    images: int = 0
    videos: list[str] = field(default_factory=list)
    frames: int = 0


def _inputs(
    files: Sequence[Path],
    classifier: Classifier,
    detector: Detector | None,
    margin: float,
    align: bool,
    run: PredictionRun,
    report: Callable[[str], None],
) -> Iterator[tuple[str, Box | None, np.ndarray]]:
    """(path, face box, model input) per image or per face; unreadable files are recorded and skipped."""
    pre = classifier.preprocessing
    for file in files:
        run.images += 1
        try:
            image = load_image(file, pre.grayscale and detector is None)
        except (FERError, Image.DecompressionBombError) as error:
            message = one_line(user_message(error))
            run.failed.append((str(file), message))
            report(f"fer: skipped: {message}" if str(file) in message else f"fer: skipped {file}: {message}")
            continue
        if detector is None:
            yield str(file), None, model_input(image, pre)
            continue
        rgb = np.asarray(image)
        faces = detector.detect(rgb)
        if not faces:
            run.without_face.append(str(file))
            report(f"fer: no face found in {file}")
        for face in faces:
            crop = Image.fromarray(face_crop(rgb, face, margin, align))
            yield str(file), face.box, model_input(crop, pre)


def predict_files(
    classifier: Classifier,
    files: Sequence[Path],
    batch_size: int = 64,
    faces: bool = False,
    margin: float = DEFAULT_MARGIN,
    progress: bool | None = None,
    detector: Detector | None = None,
    align: bool = False,
    run: PredictionRun | None = None,
    explain: Callable[[Sequence[tuple[str, Box | None, np.ndarray]], np.ndarray], None] | None = None,
) -> PredictionRun:
    """Classify every image file (or every face found in it) in batches of ``batch_size``.

    ``faces`` without a ``detector`` uses Haar. ``progress``: True/False force the bar on/off; None shows it
    on a terminal for long inputs. ``explain(items, probabilities)`` is given each batch (``--explain``).
    """
    from tqdm import tqdm

    run = run or PredictionRun()
    if faces and detector is None:
        detector = build_detector("haar")
    if not faces:
        detector = None
    disable = (
        (not progress) if progress is not None else (None if len(files) >= PROGRESS_MIN_IMAGES else True)
    )
    with tqdm(total=len(files), unit="image", disable=disable, file=sys.stderr, leave=False) as bar:

        def report(message: str) -> None:
            bar.write(message, file=sys.stderr)

        pending: list[tuple[str, Box | None, np.ndarray]] = []

        def flush() -> None:
            probs = classify(classifier, np.stack([x for _, _, x in pending]), batch_size)
            if explain is not None:
                explain(pending, probs)
            for (path, box, _), row in zip(pending, probs.tolist(), strict=True):
                label = classifier.class_names[int(np.argmax(row))]
                run.predictions.append(Prediction(path, label, tuple(row), box))
            pending.clear()

        done = run.images
        for item in _inputs(files, classifier, detector, margin, align, run, report):
            pending.append(item)
            if len(pending) == batch_size:
                flush()
            bar.update(run.images - done)
            done = run.images
        if pending:
            flush()
        bar.update(run.images - done)
    return run


@dataclass
class VideoOutputs:
    """What a video run draws besides its rows: the annotated video and the timeline plot (or None)."""

    annotate: Path | None = None
    timeline: Path | None = None
    show: bool = False


def predict_stream(
    source: FrameSource,
    analyzer: FaceAnalyzer,
    run: PredictionRun,
    every: int = 1,
    smooth: bool = False,
    outputs: VideoOutputs | None = None,
    limit: int | None = None,
    batch_frames: int | None = None,
    progress: bool | None = None,
) -> None:
    """One row per (analyzed frame, face) of a video or camera into ``run``; the annotated video and the
    timeline when asked. A progress bar with frames/s on a terminal."""
    from tqdm import tqdm

    from fer.infer.drawing import AnnotatedVideo, draw_faces, save_figure, timeline_figure

    outputs = outputs or VideoOutputs()
    video = AnnotatedVideo(outputs.annotate, source.fps or 30.0) if outputs.annotate else None
    first = len(run.predictions)
    total = source.count if limit is None else min(limit, source.count or limit)
    disable = (not progress) if progress is not None else None
    shown_faces: list = []
    kwargs = {} if batch_frames is None else {"batch_frames": batch_frames}
    try:
        with tqdm(
            total=total, unit="frame", disable=disable, file=sys.stderr, leave=False, desc=source.name
        ) as bar:
            for frame, faces in stream_faces(source, analyzer, every, smooth, limit=limit, **kwargs):
                run.frames += 1
                if faces is not None:
                    shown_faces = faces
                    for face in faces:
                        run.predictions.append(
                            Prediction(
                                source.name,
                                face.label,
                                tuple(float(v) for v in face.probabilities),
                                face.box,
                                frame.index,
                                round(frame.time, 4),
                                face.track,
                            )
                        )
                if video is not None or outputs.show:
                    drawn = draw_faces(frame.rgb, shown_faces)
                    if video is not None:
                        video.write(drawn)
                    if outputs.show:
                        _show(drawn)
                bar.update(1)
    except KeyboardInterrupt:
        print(f"fer: stopped at frame {run.frames} of {source.name}", file=sys.stderr)
    except BaseException:
        if video is not None:
            video.discard()
        raise
    finally:
        source.close()
    if video is not None:
        video.close()
    rows = run.predictions[first:]
    if outputs.timeline is not None:
        probabilities = np.array([r.probabilities for r in rows]).reshape(
            len(rows), len(analyzer.classifier.class_names)
        )
        figure = timeline_figure(
            [r.time for r in rows],
            [r.face for r in rows],
            probabilities,
            analyzer.classifier.class_names,
            Path(source.name).name,
        )
        save_figure(figure, outputs.timeline)
    run.videos.append(source.name)


def _show(rgb: np.ndarray) -> None:
    import cv2

    cv2.imshow(LIVE_WINDOW, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
        raise KeyboardInterrupt


def _check_live_window() -> None:
    import cv2

    try:
        cv2.namedWindow(LIVE_WINDOW)
    except cv2.error:
        raise FERError(
            "--show needs an OpenCV with windows (pip install opencv-python instead of "
            "opencv-python-headless) and a display; the rows are written without it"
        ) from None


# -------------------------------------------------------------------------------------------- output


def _has(run: PredictionRun, name: str) -> bool:
    return any(getattr(p, name) is not None for p in run.predictions)


def print_table(run: PredictionRun, class_names: Sequence[str], faces: bool) -> None:
    """One row per image (or face): the label and every class probability, as a readable table."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    video = _has(run, "frame")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("image", overflow="fold")
    if video:
        for name in ("frame", "time", "face"):
            table.add_column(name, justify="right", no_wrap=True)
    if faces:
        table.add_column("face x, y, w, h", no_wrap=True)
    table.add_column("label", style="bold", no_wrap=True)
    for name in class_names:
        table.add_column(name, justify="right", no_wrap=True)
    for p in run.predictions:
        when = ["" if p.frame is None else str(v) for v in (p.frame, p.time, p.face)] if video else []
        face = [", ".join(map(str, p.box)) if p.box else ""] if faces else []
        table.add_row(Text(p.path), *when, *face, p.label, *(f"{v:.3f}" for v in p.probabilities))
    # off a terminal (a pipe, a file) the table keeps its natural width instead of wrapping at 80 columns
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 10_000, highlight=False)
    console.print(table)


def write_results(out: Path, run: PredictionRun, class_names: Sequence[str], model: str, faces: bool) -> None:
    """CSV: one row per image, face or (frame, face), a column per class. JSON: the same plus the files that
    failed. Written aside and renamed into place."""
    video = _has(run, "frame")
    if out.suffix.lower() == ".csv":
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        header = [
            "path",
            *(["frame", "time", "face"] if video else []),
            *(["x", "y", "w", "h"] if faces else []),
        ]
        writer.writerow([*header, "label", *class_names])
        for p in run.predictions:
            when = ["" if v is None else v for v in (p.frame, p.time, p.face)] if video else []
            box = (list(p.box) if p.box else ["", "", "", ""]) if faces else []
            writer.writerow([p.path, *when, *box, p.label, *(f"{v:.6f}" for v in p.probabilities)])
        with atomic_open(out, "w", what="results file") as handle:
            handle.write(text.getvalue())
        return
    rows = []
    for p in run.predictions:
        row: dict = {"path": p.path}
        if p.frame is not None:
            row.update(frame=p.frame, time=p.time, face=p.face)
        row["label"] = p.label
        if p.box is not None:
            row["box"] = dict(zip(("x", "y", "w", "h"), p.box, strict=True))
        row["probabilities"] = {
            name: round(v, 6) for name, v in zip(class_names, p.probabilities, strict=True)
        }
        rows.append(row)
    document = {
        "model": model,
        "class_names": list(class_names),
        "predictions": rows,
        "failed": [{"path": path, "error": message} for path, message in run.failed],
    }
    if faces:
        document["without_face"] = run.without_face
    with atomic_open(out, "w", what="results file") as handle:
        handle.write(json.dumps(document, indent=2) + "\n")


def check_explain_folder(folder: Path, overwrite: bool) -> None:
    """``--explain DIR``: a new or empty folder, or any folder with ``--overwrite`` (files of the same
    names are replaced, nothing else is touched)."""
    if folder.exists() and not folder.is_dir():
        raise FERError(f"--explain {folder} is a file: give a folder for the heat-map images")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FERError(
            f"--explain {folder} already holds files: choose a new folder, or pass --overwrite to replace "
            "files of the same names"
        )


def grad_cam_writer(model: Path, folder: Path, class_names: Sequence[str]):
    """``explain`` for :func:`predict_files`: one Grad-CAM overlay per image or face, named
    ``<n>_<image name>[_face<k>]_<label>.png``, for the predicted class."""
    if model.suffix.lower() != ".ckpt":
        raise FERError(
            f"--explain needs the checkpoint (.ckpt) of {model.name}: Grad-CAM takes gradients, which an "
            "exported file does not have"
        )
    import torch

    from fer.export import load_fer_checkpoint
    from fer.models.gradcam import grad_cam, overlay_image, overlays

    module = load_fer_checkpoint(model)
    pre = module.preprocessing
    folder.mkdir(parents=True, exist_ok=True)
    written = Counter()

    def explain(items: Sequence[tuple[str, Box | None, np.ndarray]], probabilities: np.ndarray) -> None:
        images = torch.from_numpy(np.stack([x for _, _, x in items]))
        classes = torch.from_numpy(probabilities.argmax(axis=1))
        maps, _ = grad_cam(module, images, classes)
        for (path, box, _), overlay, label in zip(
            items, overlays(images, maps, pre.mean, pre.std), classes.tolist(), strict=True
        ):
            face = f"_face{written[path]}" if box is not None else ""
            written[path] += 1
            name = f"{sum(written.values()):04d}_{Path(path).stem}{face}_{class_names[label]}.png"
            with atomic_open(folder / name, "wb", what="heat-map image") as handle:
                overlay_image(overlay).save(handle, format="PNG")

    return explain


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _summary(run: PredictionRun, faces: bool) -> str:
    parts = []
    if run.images or not run.videos:
        parts.append(_plural(run.images, "image"))
    if run.videos:
        parts.append(f"{_plural(len(run.videos), 'video')} ({_plural(run.frames, 'frame')})")
    if faces:
        parts.append(_plural(len(run.predictions), "face"))
        if run.without_face:
            parts.append(f"{len(run.without_face)} without a face")
    if run.failed:
        parts.append(f"{len(run.failed)} unreadable (skipped)")
    if run.videos:
        labels = Counter(p.label for p in run.predictions if p.frame is not None)
        if labels:
            parts.append("most frequent label " + labels.most_common(1)[0][0])
    return "fer: " + ", ".join(parts)


# ------------------------------------------------------------------------------------------------ CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fer.predict",
        description="Expression probabilities for images, for each face in photos (--faces), and for each "
        "face in each frame of videos or a webcam (--camera). Exit code: 0 all files read, 1 some unreadable "
        "(reported and skipped), 2 a mistake in the command.",
    )
    parser.add_argument("model", help="a fer checkpoint (.ckpt), or an .onnx/.pt file from fer.export")
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="images, videos (.mp4, .avi, .gif ...), folders (recursive), globs",
    )
    parser.add_argument("--out", type=Path, help="also write the results to FILE.csv or FILE.json")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing --out/--annotate/--timeline files"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="images or faces per forward pass (default 64)"
    )
    parser.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda when available")
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="average the logits over test-time views: flip (mirror image), flip_crops (and 4 corner crops "
        "of each); default none",
    )
    faces = parser.add_argument_group("faces")
    faces.add_argument(
        "--faces", action="store_true", help="find the faces in photos and classify each, with its box"
    )
    faces.add_argument(
        "--detector",
        choices=DETECTORS,
        default=None,
        help="face detector: haar (OpenCV, built in), mtcnn (landmarks; pip install 'fer[faces]'), ssd "
        "(OpenCV's SSD, the most robust to turned heads; 'fer[faces]'), yunet (needs --detector-model). "
        "Implies --faces. Default haar",
    )
    faces.add_argument("--detector-model", type=Path, metavar="PATH", help="a YuNet .onnx face detector file")
    faces.add_argument(
        "--detect-size",
        type=int,
        metavar="PIXELS",
        help="look for faces on the image shrunk to this longer side (e.g. 320: 2-3x the frames/s on 640x480 "
        "video; faces must stay 30 px there)",
    )
    faces.add_argument(
        "--align", action="store_true", help="turn each face so that its eyes are level (mtcnn, yunet)"
    )
    faces.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN,
        help=f"grow each face box by this fraction of its size per side (default {DEFAULT_MARGIN})",
    )
    video = parser.add_argument_group("video and camera")
    video.add_argument("--camera", type=int, metavar="INDEX", help="read the webcam INDEX (0: the first)")
    video.add_argument("--frames", type=int, metavar="N", help="stop each video or the camera after N frames")
    video.add_argument(
        "--every", type=int, default=1, metavar="N", help="analyze every Nth frame (default 1)"
    )
    video.add_argument(
        "--smooth", action="store_true", help="average each face's probabilities over its frames"
    )
    video.add_argument("--timeline", type=Path, metavar="PLOT.png", help="plot the probabilities over time")
    video.add_argument(
        "--annotate", type=Path, metavar="OUT.mp4", help="write the video with boxes and labels"
    )
    video.add_argument("--show", action="store_true", help="show the frames with their faces in a window")
    parser.add_argument(
        "--explain",
        type=Path,
        metavar="DIR",
        help="write a Grad-CAM heat map over each image or face (of photos) into DIR: where the evidence for "
        "the predicted class was (needs the .ckpt model)",
    )
    return parser.parse_args(argv)


def _check_options(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise FERError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.margin < 0:
        raise FERError(f"--margin must be 0 or more, got {args.margin}")
    if args.every < 1:
        raise FERError(f"--every must be at least 1, got {args.every}")
    if args.frames is not None and args.frames < 1:
        raise FERError(f"--frames must be at least 1, got {args.frames}")
    if not args.paths and args.camera is None:
        raise FERError("give at least one image, video or folder, or --camera INDEX")
    if args.out is not None and args.out.suffix.lower() not in OUT_SUFFIXES:
        raise FERError(f"--out {args.out}: the file name must end in .csv or .json")
    if args.annotate is not None and args.annotate.suffix.lower() not in ANNOTATE_SUFFIXES:
        raise FERError(f"--annotate {args.annotate}: the file name must end in .mp4 or .avi")
    if args.timeline is not None and args.timeline.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise FERError(f"--timeline {args.timeline}: the file name must end in .png, .svg or .pdf")
    if args.align and args.detector in (None, "haar", "ssd") and args.detector_model is None:
        raise FERError("--align needs the eyes of each face: use --detector mtcnn (or yunet)")
    for option in ("out", "annotate", "timeline"):
        if getattr(args, option) is not None:
            check_output_file(getattr(args, option), args.overwrite)


def _sources(args: argparse.Namespace, videos: Sequence[Path]) -> Iterator[FrameSource | tuple[Path, str]]:
    """The camera and the videos to read, in order; an unreadable video as (path, message)."""
    if args.camera is not None:
        yield open_camera(args.camera)
    for path in videos:
        try:
            yield open_video(path)
        except VideoError as error:
            yield path, one_line(str(error))


@command
def main(argv: Sequence[str] | None = None) -> int:
    """Classify, print the table, write ``--out``; 0 ok, 1 some files unreadable, 2 user error."""
    args = parse_args(argv)
    _check_options(args)
    files = collect_images(args.paths) if args.paths else []
    videos = [f for f in files if is_video(f)]
    images = [f for f in files if f not in set(videos)]
    streams = len(videos) + (args.camera is not None)
    if streams > 1 and (args.annotate or args.timeline):
        raise FERError("--annotate and --timeline draw one video: give one video (or --camera) at a time")
    if streams == 0 and (args.annotate or args.timeline or args.show):
        raise FERError("--annotate, --timeline and --show draw videos: give a video or --camera")
    if args.show:
        _check_live_window()
    if args.explain is not None:
        check_explain_folder(args.explain, args.overwrite)
    faces = args.faces or args.detector is not None or args.detector_model is not None or streams > 0
    classifier = with_tta(load_classifier(args.model, args.device), args.tta)
    detector = (
        build_detector(args.detector or "haar", args.detector_model, args.detect_size) if faces else None
    )
    run = PredictionRun()
    explain = (
        grad_cam_writer(Path(args.model), args.explain, classifier.class_names) if args.explain else None
    )
    if images:
        predict_files(
            classifier,
            images,
            args.batch_size,
            faces,
            args.margin,
            detector=detector,
            align=args.align,
            run=run,
            explain=explain,
        )
    if streams:
        analyzer = FaceAnalyzer(classifier, detector, args.margin, args.align, args.batch_size)
        outputs = VideoOutputs(args.annotate, args.timeline, args.show)
        for source in _sources(args, videos):
            if isinstance(source, tuple):
                run.failed.append((str(source[0]), source[1]))
                print(f"fer: skipped: {source[1]}", file=sys.stderr)
                continue
            live = source.count is None and source.fps is None
            predict_stream(
                source,
                analyzer,
                run,
                args.every,
                args.smooth,
                outputs,
                args.frames,
                batch_frames=1 if live else None,
            )
    if run.predictions and (args.out is None or not run.videos):
        print_table(run, classifier.class_names, faces)
    if args.out is not None:
        write_results(args.out, run, classifier.class_names, str(args.model), faces)
    print(_summary(run, faces), file=sys.stderr)
    return 1 if run.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
