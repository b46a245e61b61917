"""``python -m fer.export CKPT --format onnx|torchscript --out FILE``: the network alone, for serving.

The exported graph is the checkpoint's network in eval mode: normalized images ``(B, 3, S, S)`` float32 in,
logits ``(B, C)`` out, any batch size. Preprocessing is not in the graph; the file records what it needs
(class names, image size, grayscale, mean/std, and the softmax temperature of a calibrated checkpoint:
ONNX ``metadata_props``, TorchScript extra file ``fer.json``), so that ``fer.predict`` and other programs
reproduce the training-time input and probabilities exactly.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from fer.errors import CheckpointError, FERError
from fer.files import check_output_file
from fer.infer.metadata import TEMPERATURE_KEY, ModelInfo, parse_model_info
from fer.models import FERModule
from fer.run.checkpoints import load_module
from fer.run.cli import command

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 17  # Hardswish needs 14; 17 runs on every onnxruntime from 1.11 on
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
TORCHSCRIPT_METADATA_FILE = "fer.json"


def load_fer_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> FERModule:
    """A fer checkpoint, loaded with ``weights_only=True`` (a checkpoint cannot run code), in eval mode."""
    module, _ = load_module(path, key="checkpoint", map_location=map_location)
    return module.eval()


def export_metadata(module: FERModule, image_size: int | None = None) -> dict[str, str]:
    """What a consumer needs beside the graph; every value is JSON text (ONNX metadata holds strings)."""
    pre = module.preprocessing
    return {
        "fer_format": "1",
        "class_names": json.dumps(list(module.class_names)),
        "image_size": json.dumps(image_size or pre.image_size),
        "channels": json.dumps(3),  # gray inputs are replicated to 3 channels, as in training
        "grayscale": json.dumps(pre.grayscale),
        "mean": json.dumps(list(pre.mean)),
        "std": json.dumps(list(pre.std)),
        "backbone": json.dumps(module.hparams.get("backbone")),
        "input": json.dumps(INPUT_NAME),
        "output": json.dumps(OUTPUT_NAME),
        TEMPERATURE_KEY: json.dumps(module.temperature),
    }


class EnsembleNetwork(torch.nn.Module):
    """Members sharing classes and preprocessing as one network: its output is the log of the mean of the
    members' probabilities (each member's logits divided by its own temperature), so that the softmax of
    the output, as every consumer of an export computes it, is the ensemble's probabilities."""

    def __init__(self, networks: Sequence[torch.nn.Module], temperatures: Sequence[float]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(networks)
        self.register_buffer("temperatures", torch.tensor([float(t) for t in temperatures]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = [
            (member(x) / self.temperatures[i]).softmax(dim=1) for i, member in enumerate(self.members)
        ]
        return torch.stack(probabilities).mean(dim=0).clamp_min(1e-12).log()


def _exported(models: FERModule | Sequence[FERModule], image_size: int | None = None):
    """(first module, network, metadata) of one model or of an ensemble of models."""
    members = [models] if isinstance(models, FERModule) else list(models)
    first = members[0]
    for other in members[1:]:
        if tuple(other.class_names) != tuple(first.class_names) or other.preprocessing != first.preprocessing:
            raise FERError(
                "an ensemble's checkpoints need the same class names and preprocessing (image size, "
                f"grayscale, mean/std): {list(other.class_names)} {other.preprocessing} differs from "
                f"{list(first.class_names)} {first.preprocessing}"
            )
    metadata = export_metadata(first, image_size)
    if len(members) == 1:
        return first, _network(first), metadata
    network = EnsembleNetwork([_network(m) for m in members], [m.temperature for m in members]).eval()
    metadata[TEMPERATURE_KEY] = json.dumps(1.0)  # applied inside the graph, member by member
    metadata["ensemble"] = json.dumps([m.hparams.get("backbone") for m in members])
    return first, network, metadata


def read_onnx_metadata(path: str | Path) -> ModelInfo:
    """Class names, preprocessing and temperature recorded in an ONNX file written by :func:`export_onnx`."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable ONNX file ({error}).") from None
    return parse_model_info({p.key: p.value for p in model.metadata_props}, str(path))


def _network(module: FERModule) -> torch.nn.Module:
    """A CPU copy of the plain network in eval mode (the module itself stays where it is)."""
    return copy.deepcopy(module.model).cpu().eval()


def _example_input(module: FERModule, image_size: int | None, batch: int = 2) -> torch.Tensor:
    size = image_size or module.preprocessing.image_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def export_onnx(
    module: FERModule | Sequence[FERModule], out: str | Path, image_size: int | None = None
) -> Path:
    """Write the eval-mode network (or an ensemble of them, as one graph) as ONNX with a dynamic batch axis
    and fer's metadata.

    ``image_size`` (default: the checkpoint's) fixes the graph's input side; the metadata records it.
    """
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module, network, metadata = _exported(module, image_size)
    # The TorchScript-based exporter (dynamo=False), not torch 2.9+'s default torch.export-based one: it
    # needs no onnxscript, exports MobileNetV3 in under a second (the dynamo path took ~19 s on 2 busy cores),
    # writes one self-contained file, and has had the same arguments from torch 2.2 (before `dynamo`
    # existed) to 2.14. It is deprecated: when torch removes it, switch to dynamo=True with dynamic_shapes
    # (and add onnxscript to the dependencies).
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.onnx.export(
            network,
            (_example_input(module, image_size),),
            str(out),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            **legacy,
        )
    model = onnx.load(str(out))
    onnx.helper.set_model_props(model, metadata)
    model.doc_string = "fer expression classifier: normalized images (B, 3, S, S) -> logits (B, C)"
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def export_torchscript(module: FERModule | Sequence[FERModule], out: str | Path) -> Path:
    """Write the eval-mode network (or an ensemble as one network) traced as TorchScript, fer's metadata in
    its extra file ``fer.json``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module, network, metadata = _exported(module)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch 2.14 deprecates TorchScript
        traced = torch.jit.trace(network, _example_input(module, None))
        torch.jit.save(traced, str(out), _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(metadata)})
    return out


def read_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, ModelInfo]:
    """A TorchScript file written by :func:`export_torchscript`, with its class names and preprocessing."""
    extra = {TORCHSCRIPT_METADATA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            network = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as error:
        raise CheckpointError(f"{path} is not a TorchScript file from fer.export ({error}).") from None
    return network, parse_model_info(json.loads(extra[TORCHSCRIPT_METADATA_FILE] or "{}"), str(path))


def export(
    checkpoint: str | Path | Sequence[str | Path],
    format: str,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a checkpoint, or several as one ensemble; ``out`` defaults to the (first) checkpoint's name with
    the format's suffix beside it. An existing ``out`` is replaced only with ``overwrite``."""
    if format not in FORMATS:
        raise FERError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    checkpoints = [checkpoint] if isinstance(checkpoint, str | Path) else list(checkpoint)
    if len(checkpoints) > 1 and not out:
        raise FERError("an ensemble of checkpoints needs --out FILE: where to write the one exported file")
    target = Path(out) if out else Path(checkpoints[0]).with_suffix(SUFFIXES[format])
    if target.is_dir():
        raise FERError(
            f"--out {target} is a folder: give a file name, e.g. {target / 'model'}{SUFFIXES[format]}"
        )
    check_output_file(target, overwrite)
    modules = [load_fer_checkpoint(path) for path in checkpoints]
    return (export_onnx if format == "onnx" else export_torchscript)(
        modules[0] if len(modules) == 1 else modules, target
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fer.export",
        description="Export a fer checkpoint's network (eval mode) as ONNX or TorchScript, with its class "
        "names and preprocessing recorded in the file.",
    )
    parser.add_argument(
        "checkpoint",
        nargs="+",
        help="a fer checkpoint (.ckpt); several: one ensemble (the mean of their probabilities) in one file",
    )
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="default: onnx")
    parser.add_argument(
        "--out", type=Path, help="output file (default: the checkpoint's path with .onnx or .pt)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    return parser.parse_args(argv)


@command
def main(argv: Sequence[str] | None = None) -> int:
    """Export; prints the written file. Exit 2 with one ``fer: error:`` line for a user error."""
    args = parse_args(argv)
    out = export(args.checkpoint, args.format, args.out, args.overwrite)
    print(f"wrote {out} ({args.format}, {out.stat().st_size / 2**20:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
