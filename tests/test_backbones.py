"""The backbone contract: every listed torchvision model builds with fer's head, takes every freeze policy,
trains a step, survives a checkpoint round trip, and exports to ONNX (onnxruntime gives the same logits)
and TorchScript; its frozen front (the feature cache) gives what the whole network gives."""

from __future__ import annotations

import lightning as L
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from fer.export import export_onnx, export_torchscript, read_torchscript
from fer.models import FERModule
from fer.models.freeze import FREEZE_POLICIES, count_parameters
from fer.run.checkpoints import load_module
from fer.run.config import CONFIG_DIR

BACKBONES = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml") if not p.stem.startswith("_"))
SIZE = 32  # every listed backbone downsamples 32 px to at least 1x1


def test_every_listed_backbone_has_a_config_file():
    assert set(BACKBONES) >= {
        "mobilenet_v3_small", "mobilenet_v3_large", "resnet18", "resnet50", "efficientnet_b0",
        "convnext_tiny", "regnet_y_400mf", "shufflenet_v2_x1_0",
    }  # fmt: skip


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.fixture(scope="module", params=BACKBONES)
def backbone(request) -> str:
    return request.param


def test_freeze_policies_train_exactly_their_part(backbone):
    for policy in FREEZE_POLICIES:
        module = FERModule(backbone, pretrained=False, freeze={"policy": policy, "trainable_blocks": 2})
        parts, model = module.parts, module.model
        trainable, total = count_parameters(model)
        head = _numel(model.get_submodule(parts.head))
        expected = {
            "none": total,
            "backbone": head,
            "gradual": head,
            "last_layer": _numel(model.get_submodule(parts.last_layer)),
            "partial": head + sum(_numel(model.get_submodule(b)) for b in parts.blocks[-2:]),
        }[policy]
        assert trainable == expected, policy
        module.train()
        frozen_bn = [bn for bn in _batchnorms(model) if not any(p.requires_grad for p in bn.parameters())]
        assert all(not bn.training for bn in frozen_bn), policy
        assert module(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 7)


def test_one_training_step_moves_only_the_trained_part(backbone):
    torch.manual_seed(0)
    module = FERModule(backbone, pretrained=False, freeze={"policy": "partial", "trainable_blocks": 1})
    module.train()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    optimizer = module.configure_optimizers()
    x, y = torch.randn(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 3])
    loss = module.criterion(module(x), y)
    loss.backward()
    optimizer.step()
    moved = {n for n, p in module.model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert moved and moved <= trainable
    assert loss.isfinite()


def test_checkpoint_round_trip_and_exports_give_the_same_logits(backbone, tmp_path):
    torch.manual_seed(0)
    module = FERModule(
        backbone, pretrained=False, class_names=["a", "b", "c"], preprocessing={"image_size": SIZE}
    )
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.strategy.connect(module)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded, _ = load_module(path)
    loaded.eval()
    module.eval()
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = module(x)
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=1e-6)
    assert loaded.class_names == ("a", "b", "c") and loaded.hparams.backbone == backbone

    onnx_path = export_onnx(loaded, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-4)
    scripted, info = read_torchscript(export_torchscript(loaded, tmp_path / "model.pt"))
    torch.testing.assert_close(scripted(x), expected, rtol=1e-4, atol=1e-4)
    assert info.class_names == ("a", "b", "c")


@pytest.mark.parametrize("policy", ["backbone", "last_layer"])
def test_frozen_front_features_give_the_whole_networks_logits(backbone, policy):
    torch.manual_seed(0)
    module = FERModule(
        backbone, pretrained=False, freeze={"policy": policy}, preprocessing={"image_size": SIZE}
    )
    module.eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        features = module.frozen_front()(x).flatten(1)  # as the feature cache stores them
        torch.testing.assert_close(module.classify_features(features), module.model(x), rtol=1e-4, atol=1e-4)


def test_from_scratch_every_batchnorm_uses_momentum_0_1_and_a_weights_file_keeps_the_architectures(
    backbone, tmp_path
):
    # torchvision's MobileNets set 0.01, which kept validation at one class in short runs from scratch
    scratch = FERModule(backbone=backbone, pretrained=False)
    assert {m.momentum for m in _batchnorms(scratch.model)} <= {0.1}
    reference = FERModule(backbone=backbone, pretrained=False, bn_momentum=0.0123)
    path = tmp_path / "weights.pth"
    torch.save(reference.model.state_dict(), path)
    loaded = FERModule(backbone=backbone, pretrained=False, weights_path=str(path))
    from torchvision.models import get_model

    own = {m.momentum for m in _batchnorms(get_model(backbone))}
    assert {m.momentum for m in _batchnorms(loaded.model)} == own
