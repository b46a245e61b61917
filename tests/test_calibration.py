"""Calibration: the metrics logged beside accuracy, and ``fer.calibrate``'s temperature."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from conftest import assert_clean_error, check, fer_main
from torch.nn import functional as F

from fer.calibrate import fit_temperature
from fer.export import export, read_onnx_metadata
from fer.infer.classifier import softmax
from fer.infer.models import load_classifier
from fer.models import FERModule
from fer.models.calibration import ProbabilityScores, calibration_error
from fer.scoring import recorded_datamodule, score, split_logits


def _overconfident(n: int = 2000, classes: int = 7, scale: float = 4.0, seed: int = 0):
    """Logits of a predictor whose probabilities are right at scale 1, and ``scale`` times too sharp."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator) * 1.5
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)
    return logits * scale, labels


def test_nll_brier_and_reliability_bins_agree_with_their_definitions():
    logits, labels = _overconfident(500, scale=2.0)
    scores = ProbabilityScores()
    for part in range(0, 500, 128):  # in batches, as in an epoch
        scores.update(logits[part : part + 128].log_softmax(dim=1), labels[part : part + 128])
    found = scores.compute()
    probs = logits.softmax(dim=1)
    assert float(found["nll"]) == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    brier = ((probs - F.one_hot(labels, 7)) ** 2).sum(dim=1).mean()
    assert float(found["brier"]) == pytest.approx(float(brier), rel=1e-5)
    # the bins give torchmetrics' L1 calibration error back
    count = found["bin_count"].double()
    gaps = (found["bin_confidence"] - found["bin_accuracy"]).abs().double()
    ece = calibration_error(7)(probs, labels)
    assert float((gaps * count).sum() / count.sum()) == pytest.approx(float(ece), abs=1e-5)
    assert int(count.sum()) == 500


def overconfident_checkpoint(checkpoint: Path, module, out: Path, scale: float = 8.0) -> Path:
    """The tiny checkpoint with its last layer's weights and bias multiplied by ``scale``: the same
    predictions, logits ``scale`` times too large (an overconfident model, as a too-low temperature gives)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for kind in ("weight", "bias"):
        saved["state_dict"][f"model.{module.parts.last_layer}.{kind}"] *= scale
    torch.save(saved, out)
    return out


def test_calibrate_lowers_the_ece_of_an_overconfident_model_and_keeps_its_accuracy(
    checkpoint, module, tmp_path
):
    source = overconfident_checkpoint(checkpoint, module, tmp_path / "sharp.ckpt")
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    result = check(fer_main("fer.calibrate", f"ckpt_path={source}", outputs=tmp_path / "outputs"))
    calibrated = tmp_path / "calibrated_sharp.ckpt"
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before  # the input is left as it was
    model = FERModule.load_from_checkpoint(calibrated, map_location="cpu", weights_only=True)
    assert model.temperature > 2.0  # the logits were made 8 times too large
    datamodule = recorded_datamodule(torch.load(calibrated, weights_only=True), model)
    logits = split_logits(model.eval(), datamodule, "test")
    plain, scaled = (score(softmax(logits.logits, t), logits.labels, False) for t in (1.0, model.temperature))
    assert scaled["ece"] < plain["ece"] - 0.1 and scaled["nll"] < plain["nll"]
    assert scaled["acc"] == plain["acc"]
    assert f"{model.temperature:.3f}" in result.stdout and "test, T=1 (before)" in result.stdout
    # the temperature travels into the exported file and the torch-free classifier applies it
    onnx_file = export(calibrated, "onnx", tmp_path / "calibrated.onnx")
    assert read_onnx_metadata(onnx_file).temperature == pytest.approx(model.temperature)
    assert load_classifier(calibrated, "cpu").info.temperature == pytest.approx(model.temperature)


def test_calibrate_never_replaces_a_file_unless_told_and_never_its_input(checkpoint, tmp_path):
    outputs = tmp_path / "outputs"
    taken = tmp_path / "taken.ckpt"
    taken.write_bytes(b"mine")
    assert_clean_error(
        fer_main("fer.calibrate", f"ckpt_path={checkpoint}", f"out={taken}", outputs=outputs),
        "already exists",
    )
    assert taken.read_bytes() == b"mine"
    assert_clean_error(
        fer_main(
            "fer.calibrate", f"ckpt_path={checkpoint}", f"out={checkpoint}", "overwrite=true", outputs=outputs
        ),
        "is the input checkpoint",
    )


def test_fit_temperature_finds_the_temperature_that_made_the_logits():
    logits, labels = _overconfident(4000, scale=3.0, seed=1)
    assert fit_temperature(logits.numpy(), labels.numpy()) == pytest.approx(3.0, rel=0.1)
