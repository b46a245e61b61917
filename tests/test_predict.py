"""``fer.predict``: images, folders and globs to labels and probabilities; faces in photos; exit codes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_fer
from PIL import Image

from fer.infer.detectors import FACE_MIN_SIZE
from fer.infer.faces import crop_face
from fer.infer.models import load_classifier
from fer.models import FERModule
from fer.predict import collect_images, main, predict_files

# where OpenCV 4's cascade puts the astronaut's face with fer's parameters (x, y, w, h)
ASTRONAUT_FACE = (177, 66, 95, 95)


@pytest.fixture()
def images(tiny_data: Path, tmp_path: Path) -> Path:
    """A folder with 3 test images at its top and 2 in a sub-folder, one of them a JPEG in RGB."""
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    sources = sorted((tiny_data / "test").rglob("*.png"))
    for i, source in enumerate(sources[:3]):
        Image.open(source).save(folder / f"face{i}.png")
    Image.open(sources[5]).save(folder / "more" / "face3.png")
    Image.open(sources[9]).convert("RGB").save(folder / "more" / "face4.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_writes_label_and_probabilities_of_every_image_in_a_folder(
    checkpoint: Path, module: FERModule, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "predictions.csv"
    assert main([str(checkpoint), str(images), "--out", str(out), "--device", "cpu"]) == 0
    rows = read_csv(out)
    paths = [row["path"] for row in rows]
    assert [Path(p).name for p in paths] == ["face0.png", "face1.png", "face2.png", "face3.png", "face4.jpg"]
    probs = np.array([[float(row[name]) for name in module.class_names] for row in rows])
    expected = module.predict_images(paths).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert [row["label"] for row in rows] == [module.class_names[i] for i in expected.argmax(axis=1)]
    printed = capsys.readouterr()
    for path, label in zip(paths, (row["label"] for row in rows), strict=True):
        line = next(line for line in printed.out.splitlines() if path in line)
        assert label in line
    assert all(name in printed.out for name in module.class_names)
    assert "5 images" in printed.err


def test_batches_give_the_same_probabilities_as_one_batch(
    checkpoint: Path, images: Path, tmp_path: Path
) -> None:
    classifier = load_classifier(checkpoint, "cpu")
    files = collect_images([str(images)])
    whole = predict_files(classifier, files, batch_size=64)
    in_twos = predict_files(classifier, files, batch_size=2)
    assert [p.path for p in whole.predictions] == [p.path for p in in_twos.predictions]
    np.testing.assert_allclose(
        [p.probabilities for p in whole.predictions],
        [p.probabilities for p in in_twos.predictions],
        atol=1e-6,
    )


def test_inputs_are_files_folders_and_globs_without_duplicates(images: Path) -> None:
    files = collect_images([str(images / "face0.png"), str(images / "**" / "*.jpg"), str(images / "more")])
    assert [f.name for f in files] == ["face0.png", "face4.jpg", "face3.png"]
    assert [f.name for f in collect_images([str(images / "face*")])] == [
        "face0.png",
        "face1.png",
        "face2.png",
    ]


def test_unreadable_file_is_reported_skipped_and_exits_1(
    checkpoint: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "predictions.json"
    assert main([str(checkpoint), str(images), "--out", str(out)]) == 1
    document = json.loads(out.read_text())
    assert len(document["predictions"]) == 5
    assert [Path(f["path"]).name for f in document["failed"]] == ["broken.jpg"]
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if "broken.jpg" in line]
    assert len(skipped) == 1 and skipped[0].startswith("fer: skipped")
    assert "1 unreadable" in err


def test_json_output_has_class_names_and_a_probability_per_class(
    checkpoint: Path, module: FERModule, images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "p.json"
    assert main([str(checkpoint), str(images / "face0.png"), "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["class_names"] == list(module.class_names)
    (row,) = document["predictions"]
    assert list(row["probabilities"]) == list(module.class_names)
    assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
    assert document["failed"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing_model}", "{images}"], "no such model file"),
        (["{not_a_checkpoint}", "{images}"], "not a readable fer checkpoint"),
        (["{not_torchscript}", "{images}"], "not a TorchScript file"),
        (["{checkpoint}", "{images}/nothing-here"], "no such file or folder"),
        (["{checkpoint}", "{images}/*.gif"], "matches no file"),
        (["{checkpoint}", "{images}", "--out", "{images}/p.txt"], "must end in .csv or .json"),
        (["{checkpoint}", "{images}", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["{checkpoint}", "{images}", "--faces", "--margin", "-0.1"], "--margin must be 0 or more"),
    ],
)
def test_command_mistakes_exit_2_with_one_message(
    args: list[str],
    message: str,
    checkpoint: Path,
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    not_a_checkpoint = tmp_path / "model.ckpt"
    not_a_checkpoint.write_text("hello")
    (tmp_path / "model.pt").write_text("hello")
    names = {
        "not_torchscript": tmp_path / "model.pt",
        "missing_model": tmp_path / "missing.ckpt",
        "not_a_checkpoint": not_a_checkpoint,
        "checkpoint": checkpoint,
        "images": images,
    }
    assert main([arg.format(**names) for arg in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fer: error:") and message in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_cuda_without_a_gpu_is_a_user_error(
    checkpoint: Path, images: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main([str(checkpoint), str(images), "--device", "cuda"]) == 2
    assert "--device cuda" in capsys.readouterr().err


@pytest.fixture(scope="session")
def astronaut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-image's astronaut (Eileen Collins, 512 x 512 RGB): a real photograph with one face."""
    data = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def test_faces_finds_the_one_face_of_the_astronaut_and_classifies_its_crop(
    checkpoint: Path, module: FERModule, astronaut: Path, tmp_path: Path
) -> None:
    out = tmp_path / "faces.csv"
    assert main([str(checkpoint), str(astronaut), "--faces", "--out", str(out)]) == 0
    (row,) = read_csv(out)
    box = tuple(int(row[k]) for k in ("x", "y", "w", "h"))
    np.testing.assert_allclose(box, ASTRONAUT_FACE, atol=4)
    assert box[2] >= FACE_MIN_SIZE
    # the crop (box + 20% each side), preprocessed as in training: what predict_images gives for it
    crop = crop_face(Image.open(astronaut), box, 0.2)
    assert crop.size == (round(box[2] * 1.4), round(box[3] * 1.4))
    expected = module.predict_images([crop])[0].numpy()
    np.testing.assert_allclose([float(row[name]) for name in module.class_names], expected, atol=1e-5)


def test_photo_without_a_face_gives_no_row_and_a_note(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    blank = tmp_path / "wall.png"
    Image.new("RGB", (200, 150), (120, 130, 140)).save(blank)
    out = tmp_path / "faces.json"
    assert main([str(checkpoint), str(blank), "--faces", "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["predictions"] == [] and document["without_face"] == [str(blank)]
    assert f"no face found in {blank}" in capsys.readouterr().err


def test_crop_face_grows_the_box_and_stays_inside_the_image() -> None:
    image = Image.new("L", (100, 80))
    assert crop_face(image, (40, 30, 20, 20), 0.25).size == (30, 30)
    assert crop_face(image, (0, 0, 50, 50), 0.2).size == (60, 60)  # clipped at the top-left corner
    assert crop_face(image, (70, 50, 30, 30), 0.0).size == (30, 30)


@pytest.mark.slow
def test_python_m_fer_predict_runs_as_a_command(checkpoint: Path, images: Path, outputs: Path) -> None:
    (images / "broken.png").write_bytes(b"garbage")
    result = run_fer("fer.predict", str(checkpoint), str(images), outputs=outputs, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "face4.jpg" in result.stdout and "broken.png" not in result.stdout
    assert sum("broken.png" in line for line in result.stderr.splitlines()) == 1
