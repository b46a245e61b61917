"""Shared fixtures: a tiny generated data set and checkpoint, and a runner for the real entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fer.data.synthetic import generate_synthetic_dataset

# tiny runs: small images, small batches, no workers, no progress bars
TINY = [
    "data.image_size=32",
    "data.batch_size=16",
    "data.eval_batch_size=64",
    "data.num_workers=0",
    "model.pretrained=false",
    "+trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic MMAFEDB-like tree: 8 train and 4 valid/test images per class."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    generate_synthetic_dataset(root, train_per_class=8, eval_per_class=4, seed=0, image_size=48)
    return root


@pytest.fixture()
def outputs(tmp_path: Path) -> Path:
    out = tmp_path / "outputs"
    out.mkdir()
    return out


def run_fer(module: str, *args: str, outputs: Path, timeout: int = 600, env: dict | None = None):
    """Run ``python -m <module> <args>`` as a user would; outputs go to ``outputs``."""
    full_env = {**os.environ, "FER_OUTPUT_DIR": str(outputs), "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=outputs,
    )


def run_dirs(outputs: Path, task: str = "train") -> list[Path]:
    return sorted((outputs / task / "runs").iterdir())


def train_tiny_checkpoint(data: Path, folder: Path) -> Path:
    """A real fer checkpoint: one training step on the tiny data at 32 px (a few seconds on CPU).

    One batch of all 56 training images and BatchNorm momentum 1: the running statistics become those of
    the whole train split, so that in eval mode this barely trained network gives different images
    different outputs with logits of a few units, like a trained one. (With torchvision's 0.01 the statistics
    stay at their initial values and every image gets the same output, which would prove nothing.)
    """
    import lightning as L

    from fer.data import FERDataModule
    from fer.models import FERModule
    from fer.runtime import quiet_known_warnings

    quiet_known_warnings()
    datamodule = FERDataModule(data, image_size=32, batch_size=56, cache_dir=folder / "cache")
    model = FERModule(
        pretrained=False,
        bn_momentum=1.0,
        class_names=list(datamodule.class_names),
        preprocessing=datamodule.preprocessing.as_dict(),
    )
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=datamodule)
    path = folder / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def checkpoint(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real fer checkpoint trained once per session (shared by the predict and export tests)."""
    return train_tiny_checkpoint(tiny_data, tmp_path_factory.mktemp("tiny_checkpoint"))


@pytest.fixture(scope="session")
def module(checkpoint: Path):
    from fer.models import FERModule

    return FERModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
