"""Loading any fer model file as a :class:`~fer.infer.classifier.Classifier`; ONNX files never import torch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fer.errors import CheckpointError
from fer.infer.classifier import Classifier

MODEL_SUFFIXES = (".ckpt", ".onnx", ".pt", ".pth")


def load_classifier(path: str | Path, device: str = "auto", threads: int = 0) -> Classifier:
    """A checkpoint (``.ckpt``), ONNX (``.onnx``) or TorchScript (``.pt``/``.pth``) model from fer."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(
            f"{path}: no such model file (a fer checkpoint .ckpt, or an .onnx/.pt file from fer.export)."
        )
    if file.suffix.lower() == ".onnx":
        from fer.infer.onnx_model import onnx_classifier

        return onnx_classifier(file, device, threads)
    if importlib.util.find_spec("torch") is None:
        raise CheckpointError(
            f"{path}: .ckpt and .pt models need torch, which this installation lacks: export the model "
            "where fer is fully installed (python -m fer.export CKPT --format onnx) and use the .onnx file, "
            "or pip install fer with its dependencies"
        )
    from fer.infer.torch_model import torch_classifier

    return torch_classifier(file, device)
