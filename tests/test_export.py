"""``fer.export``: ONNX and TorchScript files that compute what the checkpoint computes, with its metadata."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fer.bench.inference import inference_latency
from fer.data.decode import load_image
from fer.data.transforms import build_eval_transform
from fer.export import export_onnx, export_torchscript, main, read_onnx_metadata, read_torchscript
from fer.infer.metadata import ModelInfo
from fer.models import FERModule
from fer.predict import main as predict_main

ATOL = 1e-4


@pytest.fixture(scope="session")
def onnx_file(module: FERModule, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(module, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture(scope="session")
def torchscript_file(module: FERModule, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_torchscript(module, tmp_path_factory.mktemp("torchscript") / "tiny.pt")


@pytest.fixture(scope="session")
def real_batch(tiny_data: Path, module: FERModule) -> torch.Tensor:
    """Every test image of the tiny data set (28), preprocessed exactly as in training."""
    transform = build_eval_transform(module.preprocessing)
    files = sorted((tiny_data / "test").rglob("*.png"))
    return torch.stack([transform(load_image(f, module.preprocessing.grayscale)) for f in files])


def torch_logits(module: FERModule, batch: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module(batch).numpy()


def test_onnx_logits_match_pytorch_on_real_images_at_any_batch_size(
    module: FERModule, onnx_file: Path, real_batch: torch.Tensor
) -> None:
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    # the images get different logits and labels: the comparison is not between two constant outputs
    assert len(set(torch_logits(module, real_batch).argmax(1).tolist())) >= 3
    for batch in (real_batch, real_batch[:1]):
        expected = torch_logits(module, batch)
        got = session.run(None, {"input": batch.numpy()})[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
        assert (got.argmax(1) == expected.argmax(1)).all()


def test_onnx_records_class_names_and_preprocessing(module: FERModule, onnx_file: Path) -> None:
    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    pre = module.preprocessing
    assert json.loads(props["class_names"]) == list(module.class_names)
    assert json.loads(props["image_size"]) == pre.image_size == 32
    assert json.loads(props["channels"]) == 3
    assert json.loads(props["grayscale"]) is True
    assert json.loads(props["mean"]) == pytest.approx(list(pre.mean))
    assert json.loads(props["std"]) == pytest.approx(list(pre.std))
    assert read_onnx_metadata(onnx_file) == ModelInfo(module.class_names, pre, temperature=1.0)
    graph_input = onnx.load(str(onnx_file)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in graph_input] == ["batch", 3, 32, 32]


def test_torchscript_logits_match_pytorch_and_it_records_the_metadata(
    module: FERModule, torchscript_file: Path, real_batch: torch.Tensor
) -> None:
    network, info = read_torchscript(torchscript_file)
    with torch.no_grad():
        got = network(real_batch).numpy()
    expected = torch_logits(module, real_batch)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert info == ModelInfo(module.class_names, module.preprocessing, temperature=1.0)


def read_probabilities(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = [c for c in rows[0] if c not in ("path", "label")]
    return [r["label"] for r in rows], np.array([[float(r[n]) for n in names] for r in rows])


def test_predict_gives_the_same_results_from_onnx_torchscript_and_checkpoint(
    checkpoint: Path, onnx_file: Path, torchscript_file: Path, tiny_data: Path, tmp_path: Path
) -> None:
    results = {}
    for model in (checkpoint, onnx_file, torchscript_file):
        out = tmp_path / f"{model.suffix[1:]}.csv"
        assert predict_main([str(model), str(tiny_data / "test"), "--out", str(out)]) == 0
        results[model.suffix] = read_probabilities(out)
    labels, probs = results[".ckpt"]
    assert len(labels) == 28
    for suffix in (".onnx", ".pt"):
        assert results[suffix][0] == labels
        np.testing.assert_allclose(results[suffix][1], probs, atol=1e-5)


def test_export_command_writes_beside_the_checkpoint_by_default(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = shutil.copy(checkpoint, tmp_path / "model.ckpt")
    assert main([str(copy)]) == 0
    assert (tmp_path / "model.onnx").is_file()
    assert "model.onnx" in capsys.readouterr().out
    assert main([str(copy), "--format", "torchscript", "--out", str(tmp_path / "sub" / "m.pt")]) == 0
    assert (tmp_path / "sub" / "m.pt").is_file()


def test_export_of_a_missing_checkpoint_exits_2_with_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main([str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fer: error:") and "missing.ckpt" in err[0]
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_file_without_fer_metadata_is_a_user_error(
    onnx_file: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = onnx.load(str(onnx_file))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    assert predict_main([str(bare), str(tiny_data / "test")]) == 2
    assert "has no fer metadata" in capsys.readouterr().err


def test_inference_latency_measures_both_runtimes(module: FERModule, onnx_file: Path) -> None:
    result = inference_latency(module, onnx_file, runs=3, warmup=1, throughput_batch=4, throughput_runs=1)
    for runtime in ("torch", "onnxruntime"):
        assert result[runtime]["latency_ms"] > 0 and result[runtime]["images_per_s"] > 0
    assert result["image_size"] == 32
    assert result["max_abs_logit_diff"] < ATOL * max(1.0, result["max_abs_logit"])  # float32 rounding
    with pytest.raises(ValueError, match="takes inputs of shape"):
        inference_latency(module, onnx_file, image_size=48, runs=1, warmup=0, throughput_batch=2)
