"""``python -m fer.predict MODEL PATH [PATH ...]``: the expression of each image, or of each face in photos.

MODEL is a fer checkpoint (``.ckpt``, loaded with ``weights_only=True``), an ONNX file or a TorchScript file
written by ``fer.export``; each brings its class names and preprocessing, applied exactly as in training.
PATHs are image files, folders (searched recursively) or glob patterns. A file that cannot be read is
reported on one line and skipped; the exit code is 0 when every file was read, 1 when some were not, 2 for
a mistake in the command (a missing model or path, a bad option).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from fer.data.decode import load_image
from fer.data.preprocessing import Preprocessing
from fer.data.sources.folders import IMAGE_EXTENSIONS
from fer.data.transforms import build_eval_transform
from fer.errors import CheckpointError, FERError, user_message
from fer.export import load_fer_checkpoint, read_onnx_metadata, read_torchscript
from fer.files import check_output_file
from fer.run.cli import command, one_line

IMAGE_SUFFIXES = IMAGE_EXTENSIONS | {".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pnm"}
GLOB_CHARACTERS = "*?["
DEVICES = ("auto", "cpu", "cuda")
OUT_SUFFIXES = (".csv", ".json")
PROGRESS_MIN_IMAGES = 256  # fewer images finish before a progress bar would tell anything

# OpenCV's frontal-face Haar cascade, with parameters chosen on scikit-image's astronaut photograph (512 px,
# one face of ~95 px): scaleFactor 1.1 with minNeighbors 3 to 8 and minSize 24 to 64 all find exactly that
# face, while scaleFactor 1.05 also "finds" a 127 px face on the suit. minNeighbors 5 and minSize 30 px sit
# in the middle of that range (and are OpenCV's usual values); 30 px still keeps faces of MMAFEDB's size.
FACE_CASCADE = "haarcascade_frontalface_default.xml"
FACE_SCALE_FACTOR = 1.1
FACE_MIN_NEIGHBORS = 5
FACE_MIN_SIZE = 30
DEFAULT_MARGIN = 0.2  # Haar boxes stop at the brows and above the chin; training faces show a little more

Box = tuple[int, int, int, int]  # x, y, width, height in pixels of the decoded image


# ------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Classifier:
    """A loaded model of any format: ``run`` maps a normalized batch ``(B, 3, S, S)`` to logits ``(B, C)``."""

    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    run: Callable[[Tensor], Tensor]
    device: str

    def probabilities(self, batch: Tensor) -> Tensor:
        return self.run(batch).float().softmax(dim=1).cpu()


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cuda`` without one is the user's mistake."""
    if device not in DEVICES:
        raise FERError(f"--device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise FERError("--device cuda: torch sees no CUDA device on this machine; use --device cpu")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _torch_classifier(
    network: torch.nn.Module,
    class_names: tuple[str, ...],
    pre: Preprocessing,
    device: str,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Classifier:
    network = network.to(device).eval()

    @torch.inference_mode()
    def run(batch: Tensor) -> Tensor:
        return network(batch.to(device).contiguous(memory_format=memory_format))

    return Classifier(class_names, pre, run, device)


def _onnx_classifier(path: Path, device: str) -> Classifier:
    import onnxruntime as ort

    class_names, pre = read_onnx_metadata(path)
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise FERError(
            "--device cuda: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu), "
            "or use --device cpu"
        )
    use_cuda = device in ("cuda", "auto") and "CUDAExecutionProvider" in available
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as error:
        raise CheckpointError(f"{path} cannot be loaded by onnxruntime ({error}).") from None
    input_name = session.get_inputs()[0].name

    def run(batch: Tensor) -> Tensor:
        inputs = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
        return torch.from_numpy(session.run(None, {input_name: inputs})[0])

    return Classifier(class_names, pre, run, "cuda" if use_cuda else "cpu")


def load_classifier(path: str | Path, device: str = "auto") -> Classifier:
    """A checkpoint (``.ckpt``), ONNX (``.onnx``) or TorchScript (``.pt``/``.pth``) model from fer."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(
            f"{path}: no such model file (a fer checkpoint .ckpt, or an .onnx/.pt file from fer.export)."
        )
    if file.suffix.lower() == ".onnx":
        return _onnx_classifier(file, device)
    torch_device = resolve_device(device)
    if file.suffix.lower() in (".pt", ".pth"):
        network, class_names, pre = read_torchscript(file)
        return _torch_classifier(network, class_names, pre, torch_device)
    module = load_fer_checkpoint(file)
    # the plain network, as exported: no compiled wrapper to build, no frozen-front bookkeeping
    return _torch_classifier(
        module.model, module.class_names, module.preprocessing, torch_device, module.memory_format
    )


# -------------------------------------------------------------------------------------------- inputs


def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_image_file(p))


def collect_images(specs: Sequence[str]) -> list[Path]:
    """Files named (whatever their suffix), images under folders (recursive) and glob matches, in order.

    A name that is neither a file, a folder nor a pattern that matches something is the user's mistake.
    """
    files: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(_images_under(path))
        elif any(c in spec for c in GLOB_CHARACTERS):
            matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
            if not matches:
                raise FERError(f"{spec}: the pattern matches no file or folder")
            for match in map(Path, matches):
                files.extend(
                    _images_under(match) if match.is_dir() else [match] if _is_image_file(match) else []
                )
        else:
            raise FERError(f"{spec}: no such file or folder")
    unique = list(dict.fromkeys(files))
    if not unique:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise FERError(f"no image files in {' '.join(specs)} (looked for {suffixes})")
    return unique


# --------------------------------------------------------------------------------------------- faces


class FaceDetector:
    """OpenCV's frontal-face Haar cascade, shipped inside opencv-python-headless (nothing is downloaded)."""

    def __init__(self) -> None:
        import cv2

        if not hasattr(cv2, "CascadeClassifier"):
            raise FERError(
                f"--faces needs OpenCV 4's Haar cascades; this OpenCV ({cv2.__version__}) has none: "
                "pip install 'opencv-python-headless<5'"
            )
        self.cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, FACE_CASCADE))
        if self.cascade.empty():
            raise FERError(f"OpenCV could not load its {FACE_CASCADE} from {cv2.data.haarcascades}")

    def detect(self, image: Image.Image) -> list[Box]:
        """Face boxes, left to right (then top to bottom)."""
        gray = np.asarray(image.convert("L"))
        found = self.cascade.detectMultiScale(
            gray,
            scaleFactor=FACE_SCALE_FACTOR,
            minNeighbors=FACE_MIN_NEIGHBORS,
            minSize=(FACE_MIN_SIZE, FACE_MIN_SIZE),
        )
        return sorted(tuple(int(v) for v in box) for box in found)


def crop_face(image: Image.Image, box: Box, margin: float) -> Image.Image:
    """The box grown by ``margin`` of its width/height on every side, clipped to the image."""
    x, y, w, h = box
    dx, dy = round(w * margin), round(h * margin)
    return image.crop(
        (max(0, x - dx), max(0, y - dy), min(image.width, x + w + dx), min(image.height, y + h + dy))
    )


# ---------------------------------------------------------------------------------------- predicting


@dataclass(frozen=True)
class Prediction:
    """One classified image, or one face of an image (``box`` set)."""

    path: str
    label: str
    probabilities: tuple[float, ...]
    box: Box | None = None


@dataclass
class PredictionRun:
    """What a run produced: the rows, the files it could not read, the photos without a face (``--faces``)."""

    predictions: list[Prediction] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, message)
    without_face: list[str] = field(default_factory=list)
    images: int = 0


def _inputs(
    files: Sequence[Path],
    pre: Preprocessing,
    detector: FaceDetector | None,
    margin: float,
    run: PredictionRun,
    report: Callable[[str], None],
) -> Iterator[tuple[str, Box | None, Tensor]]:
    """(path, face box, model input) per image or per face; unreadable files are recorded and skipped."""
    transform = build_eval_transform(pre)
    for file in files:
        run.images += 1
        try:
            image = load_image(file, pre.grayscale)
        except (FERError, Image.DecompressionBombError) as error:
            message = one_line(user_message(error))
            run.failed.append((str(file), message))
            report(f"fer: skipped: {message}" if str(file) in message else f"fer: skipped {file}: {message}")
            continue
        if detector is None:
            yield str(file), None, transform(image)
            continue
        boxes = detector.detect(image)
        if not boxes:
            run.without_face.append(str(file))
            report(f"fer: no face found in {file}")
        for box in boxes:
            yield str(file), box, transform(crop_face(image, box, margin))


def predict_files(
    classifier: Classifier,
    files: Sequence[Path],
    batch_size: int = 64,
    faces: bool = False,
    margin: float = DEFAULT_MARGIN,
    progress: bool | None = None,
) -> PredictionRun:
    """Classify every file (or every face found in it) in batches of ``batch_size``.

    ``progress``: True/False force the bar on/off; None shows it on a terminal for long inputs.
    """
    run = PredictionRun()
    detector = FaceDetector() if faces else None
    disable = (
        (not progress) if progress is not None else (None if len(files) >= PROGRESS_MIN_IMAGES else True)
    )
    with tqdm(total=len(files), unit="image", disable=disable, file=sys.stderr, leave=False) as bar:

        def report(message: str) -> None:
            bar.write(message, file=sys.stderr)

        pending: list[tuple[str, Box | None, Tensor]] = []

        def flush() -> None:
            probs = classifier.probabilities(torch.stack([x for _, _, x in pending]))
            for (path, box, _), row in zip(pending, probs.tolist(), strict=True):
                label = classifier.class_names[int(np.argmax(row))]
                run.predictions.append(Prediction(path, label, tuple(row), box))
            pending.clear()

        done = 0
        for item in _inputs(files, classifier.preprocessing, detector, margin, run, report):
            pending.append(item)
            if len(pending) == batch_size:
                flush()
            bar.update(run.images - done)
            done = run.images
        if pending:
            flush()
        bar.update(run.images - done)
    return run


# -------------------------------------------------------------------------------------------- output


def print_table(run: PredictionRun, class_names: Sequence[str], faces: bool) -> None:
    """One row per image (or face): the label and every class probability, as a readable table."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("image", overflow="fold")
    if faces:
        table.add_column("face x, y, w, h", no_wrap=True)
    table.add_column("label", style="bold", no_wrap=True)
    for name in class_names:
        table.add_column(name, justify="right", no_wrap=True)
    for p in run.predictions:
        face = [", ".join(map(str, p.box))] if faces and p.box else []
        table.add_row(Text(p.path), *face, p.label, *(f"{v:.3f}" for v in p.probabilities))
    # off a terminal (a pipe, a file) the table keeps its natural width instead of wrapping at 80 columns
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 10_000, highlight=False)
    console.print(table)


def write_results(out: Path, run: PredictionRun, class_names: Sequence[str], model: str, faces: bool) -> None:
    """CSV: one row per image or face, a column per class. JSON: the same plus the files that failed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        with out.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", *(["x", "y", "w", "h"] if faces else []), "label", *class_names])
            for p in run.predictions:
                box = list(p.box) if faces and p.box else []
                writer.writerow([p.path, *box, p.label, *(f"{v:.6f}" for v in p.probabilities)])
        return
    rows = []
    for p in run.predictions:
        row = {"path": p.path, "label": p.label}
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
    out.write_text(json.dumps(document, indent=2) + "\n")


def _summary(run: PredictionRun, faces: bool) -> str:
    parts = [f"{run.images} image{'s' * (run.images != 1)}"]
    if faces:
        parts.append(f"{len(run.predictions)} face{'s' * (len(run.predictions) != 1)}")
        if run.without_face:
            parts.append(f"{len(run.without_face)} without a face")
    if run.failed:
        parts.append(f"{len(run.failed)} unreadable (skipped)")
    return "fer: " + ", ".join(parts)


# ------------------------------------------------------------------------------------------------ CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fer.predict",
        description="Expression probabilities for images (or for each face in photos, with --faces). "
        "Exit code: 0 all files read, 1 some unreadable (reported and skipped), 2 a mistake in the command.",
    )
    parser.add_argument("model", help="a fer checkpoint (.ckpt), or an .onnx/.pt file from fer.export")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive), globs")
    parser.add_argument("--out", type=Path, help="also write the results to FILE.csv or FILE.json")
    parser.add_argument("--overwrite", action="store_true", help="with --out: replace an existing file")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda when available")
    parser.add_argument(
        "--faces",
        action="store_true",
        help="find faces in ordinary photos (OpenCV Haar cascade) and classify each, with its box",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN,
        help=f"with --faces: grow each box by this fraction of its size per side (default {DEFAULT_MARGIN})",
    )
    return parser.parse_args(argv)


def _check_options(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise FERError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.margin < 0:
        raise FERError(f"--margin must be 0 or more, got {args.margin}")
    if args.out is not None and args.out.suffix.lower() not in OUT_SUFFIXES:
        raise FERError(f"--out {args.out}: the file name must end in .csv or .json")
    if args.out is not None:
        check_output_file(args.out, args.overwrite)


@command
def main(argv: Sequence[str] | None = None) -> int:
    """Classify, print the table, write ``--out``; 0 ok, 1 some files unreadable, 2 user error."""
    args = parse_args(argv)
    _check_options(args)
    files = collect_images(args.paths)
    classifier = load_classifier(args.model, args.device)
    run = predict_files(classifier, files, args.batch_size, args.faces, args.margin)
    if run.predictions:
        print_table(run, classifier.class_names, args.faces)
    if args.out is not None:
        write_results(args.out, run, classifier.class_names, str(args.model), args.faces)
    print(_summary(run, args.faces), file=sys.stderr)
    return 1 if run.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
