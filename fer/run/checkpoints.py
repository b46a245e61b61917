"""Reading checkpoints safely: tensors and plain data only, and only into the model they were made for.

Every tool that takes a checkpoint (``fer.eval``, ``fer.predict``, ``fer.export``, ``fer.results``, resuming
in ``fer.train``) reads it with ``torch.load(weights_only=True)``: a file that would run code while being
unpickled is refused, not executed. A checkpoint whose weights do not fit the model (another backbone,
another number of classes) is refused with a message that says what it holds and what was expected,
instead of a list of tensor size mismatches.
"""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fer.errors import CheckpointError, IncompatibleCheckpointError
from fer.models.backbones import backbone_names, head_classes, identify_backbone

if TYPE_CHECKING:
    from fer.models import FERModule

MODEL_PREFIX = "model."  # FERModule keeps the network under ``model``
STATE_KEYS = ("state_dict", "optimizer_states")  # the bulky parts, left out of what load_module returns


def check_checkpoint_path(path: str | None, key: str = "ckpt_path") -> str | None:
    """The checkpoint path as given, or a clear error when the file does not exist."""
    if path in (None, ""):
        return None
    file = Path(str(path)).expanduser()
    if not file.is_file():
        hint = " (runs keep theirs in <run folder>/checkpoints/, e.g. last.ckpt)"
        raise CheckpointError(f"{key}={path}: no such checkpoint file{hint}.")
    return str(file.resolve())


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint at ``path`` as tensors and plain data (``weights_only=True``, on the CPU).

    ``key`` is how the user passed the path (``ckpt_path``, ``checkpoint``), used in the error messages.
    """
    file = check_checkpoint_path(str(path), key=key)
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused is None:
            raise CheckpointError(
                f"{key}={path} is not a readable fer checkpoint ({_first_line(error)})."
            ) from None
        raise CheckpointError(
            f"{key}={path} holds a Python object ({refused.group(1)}), not only tensors and plain data: "
            "loading it could run code, so fer refuses it (checkpoints are read with weights_only=True). "
            "Use a checkpoint written by fer.train, from a source you trust."
        ) from None
    except Exception as error:
        raise CheckpointError(
            f"{key}={path} is not a readable fer checkpoint ({type(error).__name__}: {_first_line(error)})."
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(
            f"{key}={path} is not a readable fer checkpoint (no state_dict: expected a Lightning checkpoint "
            "written by fer.train, <run folder>/checkpoints/*.ckpt)."
        )
    return checkpoint


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def describe(backbone: str | None, class_names: Sequence[str] | None, num_classes: int | None = None) -> str:
    """``mobilenet_v3_small with 7 classes (angry, ...)`` as far as it is known."""
    what = backbone or "an unknown network"
    count = len(class_names) if class_names is not None else num_classes
    if count is None:
        return what
    names = f" ({', '.join(map(str, class_names))})" if class_names is not None else ""
    return f"{what} with {count} classes{names}"


def network_weights(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The network's part of a FERModule state dict, with torchvision's names (``features.0.0.weight``)."""
    return {k[len(MODEL_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(MODEL_PREFIX)}


def describe_weights(
    state_dict: Mapping[str, Any], expected: str | None = None
) -> tuple[str | None, int | None]:
    """The backbone and number of classes that the weights themselves have (None where unrecognised);
    ``expected`` (the recorded backbone) is tried first."""
    network = network_weights(state_dict)
    candidates = [expected] if expected in backbone_names() else []
    backbone = identify_backbone(network, candidates) if candidates else None
    backbone = backbone or identify_backbone(network)
    return backbone, head_classes(network, backbone) if backbone else None


def load_module(
    path: str | Path, key: str = "checkpoint", map_location: str | torch.device = "cpu"
) -> tuple[FERModule, dict[str, Any]]:
    """The FERModule of a fer checkpoint, and the checkpoint's other entries (data settings, epoch ...).

    Read with ``weights_only=True``; the weights must fit the backbone and classes the checkpoint records.
    """
    from fer.models import FERModule

    checkpoint = read_checkpoint(path, key)
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or "backbone" not in hparams or "class_names" not in hparams:
        raise CheckpointError(
            f"{key}={path} is not a readable fer checkpoint: it records no backbone and class names "
            "(hyper_parameters). Use a checkpoint written by fer.train, <run folder>/checkpoints/*.ckpt."
        )
    recorded = describe(hparams["backbone"], hparams["class_names"])
    backbone, num_classes = describe_weights(checkpoint["state_dict"], hparams["backbone"])
    if (backbone, num_classes) != (hparams["backbone"], len(hparams["class_names"])):
        raise IncompatibleCheckpointError(
            f"{key}={path} does not match its own hyper-parameters: they describe {recorded}, its weights "
            f"are {describe(backbone, None, num_classes)}. The file was changed after fer.train wrote it, or "
            "written by another tool: use the checkpoint as fer.train wrote it."
        )
    try:
        # the weights are in the file: loading never downloads or reads other weights, whatever it records
        module = FERModule.load_from_checkpoint(
            path, map_location=map_location, weights_only=True, pretrained=False, weights_path=None
        )
    except RuntimeError as error:
        if "Error(s) in loading state_dict" not in str(error):
            raise CheckpointError(
                f"{key}={path} is not a readable fer checkpoint ({_first_line(error)})."
            ) from None
        raise IncompatibleCheckpointError(
            f"{key}={path}: its weights do not fit the {recorded} it records ({_mismatches(error)}). Use "
            "the checkpoint as fer.train wrote it."
        ) from None
    except Exception as error:
        raise CheckpointError(
            f"{key}={path} is not a readable fer checkpoint ({type(error).__name__}: {_first_line(error)})."
        ) from None
    return module, {k: v for k, v in checkpoint.items() if k not in STATE_KEYS}


def recorded_data_config(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The data config a checkpoint was trained with: the data module's ``_target_`` and every setting
    (its source included), as :class:`fer.run.callbacks.RecordDataConfig` wrote it."""
    recorded = checkpoint.get("fer_data")
    if recorded:
        return copy.deepcopy(dict(recorded))
    settings = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    return {"_target_": "fer.data.FERDataModule", **copy.deepcopy(settings)} if settings else {}


def _mismatches(error: BaseException, limit: int = 3) -> str:
    """The first lines of torch's load_state_dict report (size mismatches, missing or unexpected keys)."""
    lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
    return "; ".join(lines[:limit]) or _first_line(error)


def check_resumable(path: str | Path | None, module: FERModule, key: str = "ckpt_path") -> None:
    """Refuse, before training starts, a checkpoint made for another backbone or other classes than the
    run's freshly built ``module`` (nothing to do without ``path``)."""
    if not path:
        return
    checkpoint = read_checkpoint(path, key)
    check_compatible(checkpoint, module, path, key)


def check_compatible(checkpoint: Mapping[str, Any], module: FERModule, path: str | Path, key: str) -> None:
    """The checkpoint's backbone, class names and weight shapes must be those of ``module``."""
    hparams = checkpoint.get("hyper_parameters") or {}
    state = checkpoint["state_dict"]
    found_backbone, found_classes = describe_weights(state, hparams.get("backbone"))
    backbone = hparams.get("backbone") or found_backbone
    class_names = hparams.get("class_names")
    expected_backbone, expected_names = module.hparams.get("backbone"), list(module.class_names)

    expected_shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    fits = shapes == expected_shapes
    same_model = backbone == expected_backbone
    same_classes = class_names is None or list(class_names) == expected_names
    if fits and same_model and same_classes:
        return
    holds = describe(backbone, class_names, found_classes)
    expects = describe(expected_backbone, expected_names)
    if same_model and same_classes:  # names agree, tensors do not: not a checkpoint fer.train wrote for it
        differ = sorted(set(shapes) ^ set(expected_shapes)) or [
            k for k in shapes if shapes[k] != expected_shapes[k]
        ]
        raise IncompatibleCheckpointError(
            f"{key}={path} records {holds}, but its weights do not fit that model (first differences: "
            f"{', '.join(differ[:3])}). Use a checkpoint as fer.train wrote it, or drop {key} to start a "
            "new run."
        )
    fixes = []
    if not same_model and backbone:
        fixes.append(f"model.backbone={backbone}")
    if not same_classes:
        fixes.append(f"data whose class folders are {', '.join(map(str, class_names))}")
    if fixes:
        resume = f"Resume with {' and '.join(fixes)} (resume=<run folder> reuses the run's own config)"
    else:  # weights of no known backbone: not a checkpoint fer.train wrote
        resume = "Resume from a checkpoint written by fer.train (<run folder>/checkpoints/last.ckpt)"
    finetune = (
        f"; to fine-tune its weights on these classes instead, start a new run with model.weights_path={path}"
        if same_model and not same_classes
        else ""
    )
    raise IncompatibleCheckpointError(
        f"{key}={path} holds {holds}, but this run builds {expects}: a run resumes only with the same model "
        f"and classes. {resume}, or drop {key} to start a new run{finetune}."
    )
