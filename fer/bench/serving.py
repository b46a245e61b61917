"""Serving speed: frames/s of face detection + classification at 640 x 480, and whole ``fer.predict``
processes for one image and for 1,000 images, ``.ckpt`` against ``.onnx``.

Run with ``python -m fer.bench --rows 'serving/*'``. The model is fer's default (MobileNetV3-small at 112 px,
untrained: speed does not depend on the weights), written once per bench process as a checkpoint and its
ONNX export. The video is scikit-image's astronaut photo (one face) moving across a 640 x 480 frame.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fer.bench.harness import BenchContext, Measurement, register

SIZE = 112
BACKBONE = "mobilenet_v3_small"
FRAME = (640, 480)
VIDEO_FRAMES = 30
PROCESS_IMAGES = 1000
DETECTORS = ("haar", "mtcnn", "ssd")
_MODELS: dict[int, tuple[Path, Path, Path]] = {}


def _models(ctx: BenchContext) -> tuple[Path, Path, Path]:
    """(checkpoint, ONNX export, a scratch folder) made once per bench context."""
    if id(ctx) not in _MODELS:
        import lightning

        from fer.data.preprocessing import Preprocessing
        from fer.data.sources import EXPRESSIONS
        from fer.export import export_onnx
        from fer.models import FERModule

        folder = Path(tempfile.mkdtemp(prefix="fer-serving-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        module = FERModule(
            BACKBONE,
            pretrained=False,
            class_names=list(EXPRESSIONS),
            preprocessing=Preprocessing(SIZE).as_dict(),
        ).eval()
        checkpoint = folder / "model.ckpt"
        torch.save(
            {
                "state_dict": module.state_dict(),
                "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__,
            },
            checkpoint,
        )
        _MODELS[id(ctx)] = (checkpoint, export_onnx(module, folder / "model.onnx"), folder)
    return _MODELS[id(ctx)]


def video_frames(count: int = VIDEO_FRAMES, size: tuple[int, int] = FRAME) -> list[np.ndarray]:
    """The astronaut (one ~110 px face) sliding across a ``size`` frame, RGB uint8."""
    import cv2
    from skimage import data

    width, height = size
    photo = cv2.resize(data.astronaut(), (height * 3 // 4, height * 3 // 4))
    frames = []
    for i in range(count):
        frame = np.full((height, width, 3), 90, dtype=np.uint8)
        x = (width - photo.shape[1]) * i // max(1, count - 1)
        y = (height - photo.shape[0]) // 2
        frame[y : y + photo.shape[0], x : x + photo.shape[1]] = photo
        frames.append(frame)
    return frames


def _frames_per_second(
    ctx: BenchContext, detector_name: str, runtime: str, detect_size: int | None = None
) -> Measurement:
    """Frames/s of detection and classification, one frame at a time as from a camera (decoding excluded)."""
    from fer.infer.detectors import build_detector
    from fer.infer.models import load_classifier
    from fer.infer.pipeline import FaceAnalyzer

    checkpoint, onnx, _ = _models(ctx)
    threads = torch.get_num_threads()
    device = ctx.device.type
    classifier = load_classifier(onnx if runtime == "onnxruntime" else checkpoint, device, threads=threads)
    analyzer = FaceAnalyzer(classifier, build_detector(detector_name, max_side=detect_size))
    frames = video_frames()
    for frame in frames[:2]:
        analyzer.analyze([frame])
    faces = 0
    start = time.perf_counter()
    done = 0
    budget = min(ctx.seconds, 20.0)
    while done < len(frames) * 10:
        faces += len(analyzer.analyze([frames[done % len(frames)]])[0])
        done += 1
        if time.perf_counter() - start >= budget and done >= len(frames):
            break
    seconds = time.perf_counter() - start
    notes = f"{faces / done:.2f} faces per frame; {threads} threads"
    return Measurement(done, seconds, notes=notes)


def _whole_process(ctx: BenchContext, model: str, images: int) -> Measurement:
    """Wall time of ``python -m fer.predict MODEL <images>`` from start to exit (a fresh interpreter)."""
    from PIL import Image
    from skimage import data

    checkpoint, onnx, folder = _models(ctx)
    inputs = folder / f"images-{images}"
    if not inputs.exists():
        inputs.mkdir()
        faces = (data.lfw_subset()[:100] * 255).astype(np.uint8)
        for i in range(images):
            Image.fromarray(faces[i % len(faces)]).resize((100, 100)).save(inputs / f"face{i:04d}.png")
    target = str(inputs / "face0000.png") if images == 1 else str(inputs)
    command = [sys.executable, "-m", "fer.predict", str(onnx if model == "onnx" else checkpoint), target]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    runs = []
    for _ in range(1 if ctx.quick or images > 1 else 3):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env, timeout=600)
        runs.append(time.perf_counter() - start)
    seconds = float(np.median(runs))
    return Measurement(images, seconds, notes=f"whole process {seconds:.2f} s (median of {len(runs)})")


for _detector in DETECTORS:
    for _runtime in ("onnxruntime", "torch"):
        register(
            f"serving/{_detector}+{_runtime}@640x480",
            f"frames/s: {_detector} detection + {_runtime} classification, 640x480",
            compare_to=f"serving/haar+{_runtime}@640x480",
            default_on=(),
        )(functools.partial(_frames_per_second, detector_name=_detector, runtime=_runtime))

for _detector in DETECTORS:
    register(
        f"serving/{_detector}@320+onnxruntime@640x480",
        f"frames/s: {_detector} detection on the frame shrunk to 320x240 (--detect-size 320) + onnxruntime",
        compare_to=f"serving/{_detector}+onnxruntime@640x480",
        default_on=(),
    )(functools.partial(_frames_per_second, detector_name=_detector, runtime="onnxruntime", detect_size=320))

for _count in (1, PROCESS_IMAGES):
    for _model in ("onnx", "ckpt"):
        register(
            f"serving/process/{_model}/{_count}-image{'s' * (_count > 1)}",
            f"whole python -m fer.predict process, .{_model}, {_count} image{'s' * (_count > 1)} (images/s)",
            compare_to=f"serving/process/ckpt/{_count}-image{'s' * (_count > 1)}",
            default_on=(),
        )(functools.partial(_whole_process, model=_model, images=_count))
