"""``python -m fer.calibrate ckpt_path=PATH``: temperature scaling, fitted on ``valid``, in a new checkpoint.

One number T divides the logits before the softmax; it is fitted by minimizing the negative log-likelihood
of the valid split (LBFGS on log T), so the predicted classes, and so accuracy, do not change while the
confidences come closer to how often the model is right. The new checkpoint (``out``, by default
``calibrated_<name>`` beside the input) carries T; ``fer.eval``, ``fer.predict``, ``fer.demo`` and
``fer.export`` (ONNX and TorchScript metadata) apply it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn import functional as F

from fer.errors import CheckpointError
from fer.files import atomic_save, check_output_file
from fer.infer.classifier import softmax
from fer.run.checkpoints import check_checkpoint_path, load_module, read_checkpoint
from fer.run.cli import hydra_entry_point
from fer.scoring import check_same_classes, print_score_table, score, split_logits

log = logging.getLogger("fer.calibrate")
FIT_SPLIT = "valid"
PREFIX = "calibrated_"


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimizes the mean NLL of ``softmax(logits / T)`` for ``labels``."""
    x = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def output_path(cfg: DictConfig, source: Path) -> Path:
    """Where the calibrated checkpoint goes: never the input itself, an existing file only with overwrite."""
    target = Path(cfg.out).expanduser() if cfg.get("out") else source.with_name(PREFIX + source.name)
    if target.resolve() == source.resolve():
        raise CheckpointError(
            f"out={cfg.out} is the input checkpoint: fer.calibrate writes a new checkpoint and leaves the input "
            "as it is; choose another out=<file>.ckpt"
        )
    return check_output_file(target, bool(cfg.get("overwrite")), "out")


def calibrate(cfg: DictConfig) -> dict[str, Any]:
    """Fit T on valid, write the new checkpoint, print valid and test scores before and after."""
    from fer.eval import build_datamodule, data_config

    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise CheckpointError(
            "ckpt_path is required: python -m fer.calibrate ckpt_path=<run>/checkpoints/<file>.ckpt"
        )
    source = Path(check_checkpoint_path(cfg.ckpt_path))
    target = output_path(cfg, source)
    model, checkpoint = load_module(source, key="ckpt_path")
    datamodule = build_datamodule(data_config(cfg, checkpoint, model))
    check_same_classes(model, datamodule, f"ckpt_path={cfg.ckpt_path}")
    fitted = split_logits(model.eval(), datamodule, FIT_SPLIT)
    temperature = fit_temperature(fitted.logits, fitted.labels)
    rows: dict[str, dict[str, float]] = {}
    for split, logits in ((FIT_SPLIT, fitted), ("test", split_logits(model, datamodule, "test"))):
        rows[f"{split}, T=1 (before)"] = score(softmax(logits.logits), logits.labels, intervals=False)
        rows[f"{split}, T={temperature:.3f} (after)"] = score(
            softmax(logits.logits, temperature), logits.labels, intervals=False
        )
    saved = read_checkpoint(source, "ckpt_path")
    saved["hyper_parameters"] = {**saved.get("hyper_parameters", {}), "temperature": temperature}
    saved["fer"] = {
        **(saved.get("fer") or {}),
        "calibration": {"temperature": temperature, "fitted_on": FIT_SPLIT, "source": str(source)},
    }
    atomic_save(saved, target, "calibrated checkpoint")
    print_score_table(
        "temperature scaling (fitted on valid by NLL)",
        rows,
        {
            "checkpoint": str(source),
            "temperature": f"{temperature:.4f}",
            "calibrated checkpoint": str(target),
        },
    )
    return {"temperature": temperature, "out": str(target), "scores": rows}


main = hydra_entry_point("calibrate", calibrate)


if __name__ == "__main__":
    from fer.calibrate import main as importable_main

    importable_main()
