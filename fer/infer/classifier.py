"""A loaded model of any format as one object: a batch of model inputs in, logits out, and the one place
where logits become probabilities (divided by the model's temperature, then the softmax)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fer.data.preprocessing import Preprocessing
from fer.infer.metadata import ModelInfo


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities ``(B, C)`` of logits ``(B, C)`` divided by ``temperature``, in float64."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Classifier:
    """``logits`` maps normalized inputs ``(B, 3, S, S)`` float32 to logits ``(B, C)``, as numpy arrays."""

    info: ModelInfo
    logits: Callable[[np.ndarray], np.ndarray]
    device: str
    runtime: str  # "onnxruntime" or "torch"

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def preprocessing(self) -> Preprocessing:
        return self.info.preprocessing

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return softmax(self.logits(batch), self.info.temperature)
