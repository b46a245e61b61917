"""What an exported fer model records beside its graph, read without torch: class names, preprocessing and
the softmax temperature (a calibrated export stores the one it was fitted with; 1.0 when absent)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from fer.data.preprocessing import Preprocessing
from fer.errors import CheckpointError

TEMPERATURE_KEY = "temperature"


@dataclass(frozen=True)
class ModelInfo:
    """A model's classes, the preprocessing its inputs need, and the temperature its logits are divided by."""

    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    temperature: float = 1.0


def _temperature(metadata: Mapping[str, str], source: str) -> float:
    if TEMPERATURE_KEY not in metadata:
        return 1.0
    try:
        value = float(json.loads(metadata[TEMPERATURE_KEY]))
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise CheckpointError(
            f"{source} records temperature {metadata[TEMPERATURE_KEY]!r}: it must be a positive number "
            "(export the model again)"
        )
    return value


def parse_model_info(metadata: Mapping[str, str], source: str) -> ModelInfo:
    """The keys written by ``fer.export`` (every value JSON text); a clear error when they are absent."""
    try:
        class_names = tuple(json.loads(metadata["class_names"]))
        pre = Preprocessing(
            image_size=int(json.loads(metadata["image_size"])),
            grayscale=bool(json.loads(metadata["grayscale"])),
            mean=tuple(json.loads(metadata["mean"])),
            std=tuple(json.loads(metadata["std"])),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{source} has no fer metadata ({type(error).__name__}: {error}): export it with "
            "python -m fer.export CKPT --format onnx --out FILE.onnx"
        ) from None
    return ModelInfo(class_names, pre, _temperature(metadata, source))
