"""Models: MobileNetV3 backbones, freezing policies and the ``FERModule`` LightningModule."""

from fer.models.backbone import BACKBONES, build_backbone
from fer.models.freeze import FREEZE_POLICIES, apply_freeze_policy
from fer.models.module import FERModule

__all__ = ["BACKBONES", "FREEZE_POLICIES", "FERModule", "apply_freeze_policy", "build_backbone"]
