"""An exported ONNX model run by onnxruntime, its metadata read from the session (no torch, no onnx)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer.errors import CheckpointError, FERError
from fer.infer.classifier import Classifier
from fer.infer.metadata import parse_model_info

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def onnx_classifier(path: Path, device: str = "auto", threads: int = 0) -> Classifier:
    """``device``: ``auto`` (CUDA when this onnxruntime has it), ``cpu`` or ``cuda``; ``threads``: intra-op
    threads (0: onnxruntime's choice, one per core)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise FERError("running .onnx models needs onnxruntime: pip install onnxruntime") from None
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise FERError(
            "--device cuda: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu), "
            "or use --device cpu"
        )
    use_cuda = device in ("cuda", "auto") and CUDA in available
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # warnings about unused initializers are not the user's concern
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=[CUDA, CPU] if use_cuda else [CPU]
        )
    except Exception as error:
        message = " ".join(str(error).split())[:300]
        raise CheckpointError(f"{path} cannot be loaded by onnxruntime ({message}).") from None
    info = parse_model_info(session.get_modelmeta().custom_metadata_map, str(path))
    input_name = session.get_inputs()[0].name

    def logits(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    return Classifier(info, logits, "cuda" if use_cuda else "cpu", "onnxruntime")
