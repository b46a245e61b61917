"""Checkpoints are read as tensors and plain data only, and only into the model they were made for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, assert_clean_error, fer_main

from fer.errors import CheckpointError, IncompatibleCheckpointError
from fer.export import main as export_main
from fer.models import FERModule
from fer.models.backbones import build_backbone
from fer.predict import main as predict_main
from fer.run.checkpoints import check_resumable, load_module, read_checkpoint

FIVE_CLASSES = ["angry", "fear", "happy", "neutral", "sad"]


class CreatesMarker:
    """Unpickled by a plain ``pickle`` load, this calls ``open(marker, "w")``: code run by reading a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious_checkpoint(folder: Path) -> tuple[Path, Path]:
    """A checkpoint-shaped file with a code-running payload, and the file the payload would create."""
    marker = folder / "payload-ran"
    path = folder / "malicious.ckpt"
    torch.save(
        {
            "state_dict": {},
            "hyper_parameters": {"backbone": "mobilenet_v3_small"},
            "x": CreatesMarker(marker),
        },
        path,
    )
    return path, marker


@pytest.fixture()
def malicious(tmp_path: Path) -> tuple[Path, Path]:
    return write_malicious_checkpoint(tmp_path)


def tampered(source: Path, folder: Path, **hparams) -> Path:
    """A copy of ``source`` whose recorded hyper-parameters say something else than its weights."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"].update(hparams)
    path = folder / "tampered.ckpt"
    torch.save(checkpoint, path)
    return path


def one_image(tiny_data: Path) -> str:
    return str(next((tiny_data / "test").rglob("*.png")))


def test_the_payload_runs_code_when_loaded_without_weights_only(malicious):
    path, marker = malicious
    torch.load(path, map_location="cpu", weights_only=False)  # what fer must never do
    assert marker.exists()


def test_read_checkpoint_refuses_a_file_that_would_run_code(malicious):
    path, marker = malicious
    with pytest.raises(CheckpointError, match="weights_only=True") as raised:
        read_checkpoint(path, key="ckpt_path")
    assert f"ckpt_path={path}" in str(raised.value) and "open" in str(raised.value)
    assert not marker.exists()


@pytest.mark.parametrize("tool", ["predict", "export", "eval", "results"])
def test_every_checkpoint_reader_refuses_the_payload(tool, malicious, tiny_data, capsys):
    path, marker = malicious
    if tool == "predict":
        assert predict_main([str(path), one_image(tiny_data)]) == 2
    elif tool == "export":
        assert export_main([str(path), "--out", str(path.with_suffix(".onnx"))]) == 2
    elif tool == "eval":
        with pytest.raises(CheckpointError, match="weights_only=True"):
            load_module(str(path), key="ckpt_path")
    else:
        from fer.results import predict_split

        with pytest.raises(CheckpointError, match="weights_only=True"):
            predict_split(path)
    if tool in ("predict", "export"):
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("fer: error:") and "weights_only=True" in line and str(path) in line
    assert not marker.exists()


def test_resume_check_refuses_the_payload(malicious):
    path, marker = malicious
    with pytest.raises(CheckpointError, match="weights_only=True"):
        check_resumable(str(path), FERModule())
    assert not marker.exists()


def test_a_garbage_file_is_not_a_readable_checkpoint(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="is not a readable fer checkpoint"):
        read_checkpoint(path)


def test_a_checkpoint_loads_with_its_data_settings(checkpoint):
    module, saved = load_module(checkpoint)
    assert module.hparams.backbone == "mobilenet_v3_small" and len(module.class_names) == 7
    assert "state_dict" not in saved and saved["datamodule_hyper_parameters"]["image_size"] == 32


@pytest.mark.parametrize(
    ("hparams", "fragments"),
    [
        ({"backbone": "mobilenet_v3_large"}, ["they describe mobilenet_v3_large with 7 classes"]),
        ({"class_names": FIVE_CLASSES}, ["they describe mobilenet_v3_small with 5 classes"]),
    ],
    ids=["backbone", "classes"],
)
def test_weights_that_do_not_match_their_own_hparams_are_refused(
    hparams, fragments, checkpoint, tmp_path, tiny_data, capsys
):
    path = tampered(checkpoint, tmp_path, **hparams)
    expected = [*fragments, "its weights are mobilenet_v3_small with 7 classes", str(path)]
    with pytest.raises(IncompatibleCheckpointError) as raised:
        load_module(str(path), key="ckpt_path")
    assert all(fragment in str(raised.value) for fragment in expected), str(raised.value)
    assert predict_main([str(path), one_image(tiny_data)]) == 2
    assert export_main([str(path), "--out", str(tmp_path / "m.onnx")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(f in line for line in lines for f in expected), lines


def test_lightning_strict_load_failure_becomes_a_clear_error(checkpoint, tmp_path):
    checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    checkpoint["state_dict"]["head.weight"] = torch.zeros(3)
    path = tmp_path / "extra.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(IncompatibleCheckpointError, match="its weights do not fit the mobilenet_v3_small"):
        load_module(path)


def test_resume_needs_the_same_backbone(checkpoint):
    with pytest.raises(IncompatibleCheckpointError) as raised:
        check_resumable(str(checkpoint), FERModule(backbone="mobilenet_v3_large"))
    message = str(raised.value)
    for fragment in [
        f"ckpt_path={checkpoint} holds mobilenet_v3_small with 7 classes (angry, disgust",
        "this run builds mobilenet_v3_large with 7 classes",
        "Resume with model.backbone=mobilenet_v3_small",
        "drop ckpt_path to start a new run",
    ]:
        assert fragment in message, message


def test_resume_needs_the_same_classes_and_offers_fine_tuning(checkpoint):
    with pytest.raises(IncompatibleCheckpointError) as raised:
        check_resumable(str(checkpoint), FERModule(class_names=FIVE_CLASSES))
    message = str(raised.value)
    assert "this run builds mobilenet_v3_small with 5 classes (angry, fear, happy, neutral, sad)" in message
    assert f"model.weights_path={checkpoint}" in message


def test_resume_accepts_a_checkpoint_of_the_same_model(checkpoint):
    check_resumable(str(checkpoint), FERModule())
    check_resumable(None, FERModule())


def test_resume_refuses_a_checkpoint_from_another_tool(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(IncompatibleCheckpointError, match="holds an unknown network"):
        check_resumable(str(path), FERModule())


def test_weights_path_of_the_other_backbone_is_refused(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(build_backbone("mobilenet_v3_small")[0].state_dict(), path)
    with pytest.raises(IncompatibleCheckpointError) as raised:
        build_backbone("mobilenet_v3_large", weights_path=path)
    message = str(raised.value)
    assert f"model.weights_path={path} holds mobilenet_v3_small weights" in message
    assert "this run builds mobilenet_v3_large: pass model.backbone=mobilenet_v3_small" in message


def test_weights_path_takes_a_fer_checkpoint_with_other_classes(checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    network, _ = build_backbone("mobilenet_v3_small", num_classes=5, weights_path=checkpoint)
    assert torch.equal(network.state_dict()["features.0.0.weight"], state["model.features.0.0.weight"])
    assert network.classifier[-1].out_features == 5


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["eval", "train"])
def test_entry_points_refuse_the_payload_with_one_message(entry, tmp_path, tiny_data, outputs):
    path, marker = write_malicious_checkpoint(tmp_path)
    if entry == "eval":
        result = fer_main("fer.eval", f"ckpt_path={path}", outputs=outputs)
    else:
        args = ["data=mmafedb", f"data.data_dir={tiny_data}", *TINY, f"ckpt_path={path}"]
        result = fer_main("fer.train", *args, outputs=outputs)
    assert_clean_error(result, f"ckpt_path={path}", "weights_only=True")
    assert not marker.exists()
    assert not list(outputs.rglob("*.ckpt"))


@pytest.mark.slow
def test_train_refuses_to_resume_another_backbone(checkpoint, tiny_data, outputs):
    args = ["data=mmafedb", f"data.data_dir={tiny_data}", *TINY, "model=mobilenet_v3_large"]
    result = fer_main("fer.train", *args, f"ckpt_path={checkpoint}", outputs=outputs)
    assert_clean_error(
        result, "holds mobilenet_v3_small", "builds mobilenet_v3_large", "model.backbone=mobilenet_v3_small"
    )
    assert not list(outputs.rglob("*.ckpt"))
