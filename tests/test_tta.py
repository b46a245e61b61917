"""Test-time augmentation and ensembles: ``fer.eval tta=...``, ``ckpt_path=[...]``, ``fer.predict --tta`` and
an ensemble exported as one ONNX graph."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import check, fer_main

from fer.infer.classifier import Classifier, softmax
from fer.infer.metadata import ModelInfo
from fer.infer.tta import corner_crops, tta_views, with_tta


def _left_minus_right(batch: np.ndarray) -> np.ndarray:
    half = batch.shape[-1] // 2
    value = batch[..., :half].sum(axis=(1, 2, 3)) - batch[..., half:].sum(axis=(1, 2, 3))
    return np.stack([value, -value], axis=1)


def test_flip_averages_a_mirror_antisymmetric_model_to_zero_and_crops_are_bilinear():
    batch = np.random.default_rng(0).random((3, 3, 16, 16)).astype(np.float32)
    classifier = Classifier(ModelInfo(("a", "b"), None), _left_minus_right, "cpu", "test")
    assert np.abs(classifier.logits(batch)).max() > 1
    assert np.abs(with_tta(classifier, "flip").logits(batch)).max() < 1e-4
    assert len(tta_views(batch, "flip_crops")) == 10
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(batch[..., 2:, 2:]), size=16, mode="bilinear", align_corners=False
    )
    assert np.allclose(corner_crops(batch)[3], expected.numpy(), atol=1e-6)  # 90% of 16 = 14: crop 2..16


def _rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("│ ").split("│")]
        if len(cells) == 7 and cells[0] not in ("model", ""):
            rows[cells[0]] = cells[1:]
    return rows


def test_eval_scores_tta_beside_the_plain_logits_and_an_ensemble_beside_its_members(checkpoint, tmp_path):
    second = tmp_path / "copy.ckpt"
    shutil.copy(checkpoint, second)
    result = check(
        fer_main("fer.eval", f"ckpt_path=[{checkpoint},{second}]", "tta=flip", outputs=tmp_path / "outputs")
    )
    rows = _rows(result.stdout)
    ensemble = "ensemble of 2 (mean of probabilities)"
    assert set(rows) == {"tiny.ckpt", "tiny.ckpt + tta=flip", "copy.ckpt", "copy.ckpt + tta=flip", ensemble,
                         f"{ensemble} + tta=flip"}  # fmt: skip
    assert rows[ensemble] == rows["tiny.ckpt"] == rows["copy.ckpt"]  # two equal members: the member's scores
    assert rows["tiny.ckpt + tta=flip"] != rows["tiny.ckpt"]
    accuracy = float(rows["tiny.ckpt"][0].split()[0])
    low, high = (float(v) for v in rows["tiny.ckpt"][0].split("[")[1].rstrip("]").split(","))
    assert low <= accuracy <= high


def test_predict_tta_flip_in_the_onnx_path_averages_the_logits_of_image_and_mirror(
    module, tmp_path, tiny_data
):
    from fer.export import export_onnx
    from fer.infer.models import load_classifier
    from fer.predict import main

    model = export_onnx(module, tmp_path / "tiny.onnx")
    image = next((tiny_data / "test" / "happy").iterdir())
    out = tmp_path / "flip.csv"
    assert main([str(model), str(image), "--tta", "flip", "--out", str(out)]) == 0
    plain = load_classifier(model, "cpu")
    from PIL import Image

    from fer.infer.pipeline import model_inputs

    x = model_inputs([Image.open(image).convert("RGB")], plain)
    expected = softmax((plain.logits(x) + plain.logits(x[..., ::-1].copy())) / 2)[0]
    written = [float(v) for v in out.read_text().splitlines()[1].split(",")[2:]]
    assert written == pytest.approx(expected.tolist(), abs=1e-5)


def test_an_ensemble_exports_as_one_onnx_graph_of_the_mean_of_its_members_probabilities(module, tmp_path):
    import copy

    from fer.export import export_onnx, read_onnx_metadata
    from fer.infer.models import load_classifier

    warm = copy.deepcopy(module)
    warm.hparams["temperature"] = 2.0  # a calibrated member: its own temperature applies inside the graph
    path = export_onnx([module, warm], tmp_path / "ensemble.onnx")
    assert read_onnx_metadata(path).temperature == 1.0
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        logits = module.model.eval()(torch.from_numpy(x)).numpy()
    expected = (softmax(logits) + softmax(logits, 2.0)) / 2
    assert np.allclose(load_classifier(path, "cpu").probabilities(x), expected, atol=1e-5)
