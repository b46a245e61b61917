"""Checkpoints (``.ckpt``) and TorchScript files (``.pt``): the only models of ``fer.infer`` that need torch,
imported only when such a file is loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fer.errors import FERError
from fer.infer.classifier import Classifier
from fer.infer.metadata import ModelInfo

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cuda`` without one is the user's mistake."""
    if device not in DEVICES:
        raise FERError(f"--device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise FERError("--device cuda: torch sees no CUDA device on this machine; use --device cpu")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _classifier(
    network: torch.nn.Module,
    info: ModelInfo,
    device: str,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Classifier:
    network = network.to(device).eval()

    @torch.inference_mode()
    def logits(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
        return network(x.contiguous(memory_format=memory_format)).float().cpu().numpy()

    return Classifier(info, logits, device, "torch")


def torch_classifier(path: Path, device: str = "auto") -> Classifier:
    """A fer checkpoint (read with ``weights_only=True``) or a TorchScript file from ``fer.export``."""
    from fer.export import load_fer_checkpoint, read_torchscript

    torch_device = resolve_device(device)
    if path.suffix.lower() in (".pt", ".pth"):
        network, info = read_torchscript(path)
        return _classifier(network, info, torch_device)
    module = load_fer_checkpoint(path)
    info = ModelInfo(module.class_names, module.preprocessing, module.temperature)
    # the plain network, as exported: no compiled wrapper to build, no frozen-front bookkeeping
    return _classifier(module.model, info, torch_device, module.memory_format)
