"""A trained model answering among some of its classes only: what cross-data-set evaluation compares on."""

from __future__ import annotations

from collections.abc import Sequence

from fer.models.module import FERModule


def restrict_to_classes(module: FERModule, class_names: Sequence[str]) -> FERModule:
    """The same network with its final layer cut to the rows of ``class_names`` (some of its classes, in
    that order): the logits of the other classes are dropped, so every prediction is one of ``class_names``."""
    keep = [module.class_names.index(name) for name in class_names]
    hparams = {**module.hparams, "class_names": list(class_names), "pretrained": False, "weights_path": None}
    weights = (hparams.get("loss") or {}).get("class_weights")
    if isinstance(weights, list | tuple):
        hparams["loss"] = {**hparams["loss"], "class_weights": [weights[i] for i in keep]}
    restricted = FERModule(**hparams)
    state = module.model.state_dict()
    for name in ("weight", "bias"):
        key = f"{module.parts.last_layer}.{name}"
        state[key] = state[key][keep]
    restricted.model.load_state_dict(state)
    return restricted.to(module.device).train(module.training)
