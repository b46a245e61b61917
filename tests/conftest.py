"""Shared fixtures: a tiny generated data set, and a runner for the real entry points."""

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
