"""Any data set of class folders, any backbone, any loss: from YAML alone, through the real commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import check, fer_main, last_scalar, run_dirs

from fer.data.synthetic import generate_synthetic_dataset
from fer.export import read_onnx_metadata

CLASSES = ("frown", "grin", "yawn")  # any names, any number: the folders of train/


@pytest.fixture(scope="module")
def three_class_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's own 3-class tree, made of drawn faces of 3 expressions under other names."""
    faces = generate_synthetic_dataset(tmp_path_factory.mktemp("faces") / "faces", 8, 4, seed=3)
    root = tmp_path_factory.mktemp("mine") / "three"
    for split in ("train", "valid", "test"):
        for name, expression in zip(CLASSES, ("angry", "happy", "surprise"), strict=True):
            shutil.copytree(faces / split / expression, root / split / name)
    return root


def folder_args(root: Path, *extra: str) -> list[str]:
    return [
        "data=folder", f"data.data_dir={root}", "data.image_size=32", "data.batch_size=8",
        "model.pretrained=false", "+trainer.enable_progress_bar=false", "trainer.accelerator=cpu", *extra,
    ]  # fmt: skip


def test_a_three_class_folder_trains_evaluates_predicts_and_exports_with_its_own_names(
    three_class_folder, tmp_path
):
    outputs = tmp_path / "outputs"
    check(fer_main("fer.train", *folder_args(three_class_folder, "trainer.max_epochs=2"), outputs=outputs))
    (run,) = run_dirs(outputs)
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert {f"test/recall/{name}" for name in CLASSES} <= set(metrics)
    best = Path(json.loads((run / "metrics.json").read_text())["best_checkpoint"])
    saved = torch.load(best, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["class_names"] == list(CLASSES)
    assert saved["fer_data"]["source"]["_target_"].endswith("ImageFolders")

    # eval rebuilds the data from the checkpoint alone (its recorded source), and reproduces the test
    check(fer_main("fer.eval", f"ckpt_path={best}", "+trainer.enable_progress_bar=false", outputs=outputs))
    (evaluation,) = run_dirs(outputs, "eval")
    assert last_scalar(evaluation, "test/acc") == pytest.approx(metrics["test/acc"], abs=1e-6)

    table = tmp_path / "predictions.csv"
    check(
        fer_main(
            "fer.predict", str(best), str(three_class_folder / "test"), "--out", str(table), outputs=outputs
        )
    )
    header, *rows = table.read_text().splitlines()
    assert header.split(",")[-3:] == list(CLASSES) and len(rows) == 12
    assert {row.split(",")[1] for row in rows} <= set(CLASSES)

    onnx_file = tmp_path / "model.onnx"
    check(fer_main("fer.export", str(best), "--out", str(onnx_file), outputs=outputs))
    info = read_onnx_metadata(onnx_file)
    assert info.class_names == CLASSES and info.preprocessing.image_size == 32


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=resnet18", "freeze=partial", "freeze.trainable_blocks=2"],
        ["model.backbone=regnet_y_400mf"],  # any torchvision name, without a YAML file of its own
        ["loss=torch_cross_entropy", "loss.class_weights=balanced", "loss.label_smoothing=0.1"],
        ["loss=focal", "loss.class_weights=balanced"],
        ["scheduler=step", "optimizer=sgd"],
    ],
    ids=["resnet18", "regnet-by-name", "torch-cross-entropy-balanced", "focal-balanced", "steplr-sgd"],
)
def test_yaml_choices_train_without_code(overrides, three_class_folder, tmp_path):
    outputs = tmp_path / "outputs"
    result = check(
        fer_main("fer.train", *folder_args(three_class_folder, "debug=fdr", *overrides), outputs=outputs)
    )
    assert "test/acc" in result.stdout


def test_balanced_weights_reach_torchs_own_loss(three_class_folder, tmp_path):
    from conftest import compose_train

    from fer.train import build_datamodule, build_module

    (three_class_folder / "train" / "grin" / "extra.png").write_bytes(
        (three_class_folder / "train" / "grin" / "0.png").read_bytes()
    )
    cfg = compose_train(
        folder_args(three_class_folder, "loss=torch_cross_entropy", "loss.class_weights=balanced"), tmp_path
    )
    module = build_module(cfg, build_datamodule(cfg))
    assert isinstance(module.criterion, torch.nn.CrossEntropyLoss)
    # 8, 9, 8 training images: N / (C * n_c)
    torch.testing.assert_close(module.criterion.weight, torch.tensor([25 / 24, 25 / 27, 25 / 24]))
    (three_class_folder / "train" / "grin" / "extra.png").unlink()
