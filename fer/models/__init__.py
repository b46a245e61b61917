"""Models: the backbone registry, freezing policies, schedules and the ``FERModule`` LightningModule."""

from fer.models.backbones import NetworkParts, backbone_names, build_backbone, split_network
from fer.models.freeze import FREEZE_POLICIES, apply_freeze_policy
from fer.models.module import FERModule

__all__ = [
    "FREEZE_POLICIES",
    "FERModule",
    "NetworkParts",
    "apply_freeze_policy",
    "backbone_names",
    "build_backbone",
    "split_network",
]
