"""Freezing policies on the generic network split, frozen parts kept fixed, and weights files."""

import functools

import pytest
import torch
from torch import nn

from fer.errors import FERError, IncompatibleCheckpointError, WeightsUnavailableError
from fer.models import FERModule, apply_freeze_policy, build_backbone
from fer.models.freeze import count_parameters

HEAD = 1024 * 7 + 7  # the final Linear of mobilenet_v3_small, 7 classes
CLASSIFIER = 576 * 1024 + 1024 + HEAD


def trainable(model: nn.Module) -> int:
    return count_parameters(model)[0]


def batchnorms(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def test_mobilenet_split_names_its_17_feature_blocks_pooling_and_classifier():
    _, parts = build_backbone("mobilenet_v3_small", 7)
    assert parts.blocks == tuple(f"features.{i}" for i in range(13))
    assert parts.head == "classifier" and parts.last_layer == "classifier.3"
    assert parts.steps[13] == "avgpool" and parts.body == ("features", "avgpool")
    _, large = build_backbone("mobilenet_v3_large", 7)
    assert len(large.blocks) == 17


def test_resnet_split_expands_its_stages_into_residual_blocks():
    _, parts = build_backbone("resnet18", 7)
    assert parts.blocks == ("conv1", "bn1", *(f"layer{s}.{b}" for s in range(1, 5) for b in range(2)))
    assert parts.head == "fc" and parts.last_layer == "fc.1"  # a Dropout before the new Linear


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("last_layer", HEAD), ("backbone", CLASSIFIER), ("gradual", CLASSIFIER)],
)
def test_freeze_policy_trainable_parameter_counts(policy, expected):
    model, parts = build_backbone("mobilenet_v3_small", 7)
    apply_freeze_policy(model, parts, policy)
    assert trainable(model) == expected


def test_freeze_none_trains_everything():
    model, parts = build_backbone("mobilenet_v3_small", 7)
    apply_freeze_policy(model, parts, "none")
    assert trainable(model) == count_parameters(model)[1] == 1_525_031


def test_freeze_partial_trains_the_last_blocks_and_classifier():
    model, parts = build_backbone("mobilenet_v3_small", 7)
    apply_freeze_policy(model, parts, "partial", trainable_blocks=2)
    blocks = sum(p.numel() for block in list(model.features)[-2:] for p in block.parameters())
    assert trainable(model) == CLASSIFIER + blocks
    assert not any(p.requires_grad for p in model.features[0].parameters())
    with pytest.raises(FERError, match="trainable_blocks"):
        apply_freeze_policy(model, parts, "partial", trainable_blocks=99)


def test_large_backbone_builds_with_seven_outputs():
    model, _ = build_backbone("mobilenet_v3_large", 7)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_from_scratch_batchnorm_momentum_is_pytorchs_and_pretrained_keeps_the_architectures(tmp_path):
    scratch, _ = build_backbone("mobilenet_v3_small", 7)
    assert {bn.momentum for bn in batchnorms(scratch)} == {0.1}
    path = tmp_path / "weights.pth"
    torch.save(scratch.state_dict(), path)
    loaded, _ = build_backbone("mobilenet_v3_small", 7, weights_path=path)
    assert {bn.momentum for bn in batchnorms(loaded)} == {0.01}  # torchvision's MobileNetV3 value
    chosen, _ = build_backbone("mobilenet_v3_small", 7, weights_path=path, bn_momentum=0.3)
    assert {bn.momentum for bn in batchnorms(chosen)} == {0.3}


@pytest.mark.parametrize("policy", ["backbone", "last_layer", "partial"])
def test_frozen_batchnorm_stays_in_eval_mode_and_frozen_weights_do_not_move(policy):
    module = FERModule(freeze={"policy": policy, "trainable_blocks": 2}, bn_momentum=0.5)
    module.train()
    frozen_bn = [bn for bn in batchnorms(module.model) if not bn.weight.requires_grad]
    live_bn = [bn for bn in batchnorms(module.model) if bn.weight.requires_grad]
    assert frozen_bn and all(not bn.training for bn in frozen_bn)
    if policy == "partial":
        assert live_bn and all(bn.training for bn in live_bn)
    else:
        assert not live_bn

    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    stats = {n: b.clone() for n, b in module.named_buffers() if "running_mean" in n}
    frozen_stat_names = {n for n, _ in module.named_buffers() if "running_mean" in n} & {
        f"model.{name}.running_mean" for name, m in module.model.named_modules() if m in frozen_bn
    }
    optimizer = module.configure_optimizers()
    x, y = torch.randn(8, 3, 64, 64), torch.randint(0, 7, (8,))
    for _ in range(2):
        optimizer.zero_grad()
        module.criterion(module(x), y).backward()
        optimizer.step()

    for name, before in frozen.items():
        assert torch.equal(before, dict(module.named_parameters())[name]), name
    buffers = dict(module.named_buffers())
    for name in frozen_stat_names:
        assert torch.equal(stats[name], buffers[name]), name
    assert any(
        not torch.equal(p, frozen.get(n, p + 1)) for n, p in module.named_parameters() if p.requires_grad
    )


def test_optimizer_gets_only_trainable_parameters():
    module = FERModule(freeze={"policy": "last_layer"}, optimizer={"_target_": "torch.optim.SGD", "lr": 0.1})
    optimizer = module.configure_optimizers()
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == HEAD


def test_local_weights_file_is_loaded_and_the_head_replaced(tmp_path):
    import torchvision

    source = torchvision.models.mobilenet_v3_small()  # 1000 ImageNet classes, random weights
    path = tmp_path / "mobilenet_v3_small.pth"
    torch.save(source.state_dict(), path)
    model, _ = build_backbone("mobilenet_v3_small", 7, pretrained=True, weights_path=path)
    assert torch.equal(model.features[3].block[0][0].weight, source.features[3].block[0][0].weight)
    assert torch.equal(model.classifier[0].weight, source.classifier[0].weight)  # the head's first Linear too
    assert model.classifier[-1].out_features == 7


def test_a_weights_file_for_another_architecture_is_refused(tmp_path):
    path = tmp_path / "large.pth"
    torch.save(build_backbone("mobilenet_v3_large", 7)[0].state_dict(), path)
    with pytest.raises(
        IncompatibleCheckpointError,
        match="holds mobilenet_v3_large weights, but this run builds mobilenet_v3_small",
    ):
        build_backbone("mobilenet_v3_small", 7, weights_path=path)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        build_backbone("mobilenet_v3_small", 7, weights_path=tmp_path / "missing.pth")


def test_an_unknown_backbone_names_the_choices():
    with pytest.raises(WeightsUnavailableError, match="resnet18"):
        build_backbone("resnet_19", 7)


def test_gradual_unfreezing_with_a_run_length_schedule_is_refused_with_a_clear_error():
    scheduler = {
        "schedule": {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "_partial_": True, "max_lr": 0.01},
        "interval": "step",
        "run_length_arg": "total_steps",
    }
    module = FERModule(freeze={"policy": "gradual"}, scheduler=scheduler)
    with pytest.raises(FERError, match="scheduler=plateau"):
        module.configure_optimizers()


def test_last_layer_policy_keeps_the_whole_frozen_front_in_eval_mode_dropout_included():
    module = FERModule(pretrained=False, freeze={"policy": "last_layer"})
    module.train()
    front = [*module.model.features, module.model.avgpool, *module.model.classifier[:-1]]
    assert not any(m.training for step in front for m in step.modules())
    assert module.model.classifier[-1].training
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(module(x), module(x))  # nothing random before the trained layer


def test_backbone_policy_keeps_head_dropout_active():
    module = FERModule(pretrained=False, freeze={"policy": "backbone"}, dropout=0.5)
    module.train()
    assert not any(m.training for block in module.model.features for m in block.modules())
    assert module.model.classifier[2].training


def test_features_of_the_frozen_front_go_through_the_trained_part_only():
    module = FERModule(pretrained=False, freeze={"policy": "last_layer"}).eval()
    x = torch.randn(2, 3, 32, 32)
    features = module.frozen_front()(x)
    assert features.shape == (2, 1024)
    assert torch.allclose(module.classify_features(features), module(x), atol=1e-5)
    assert torch.allclose(module.model(x), module(x), atol=1e-5)  # the fused front gives the same logits
    with pytest.raises(FERError, match="freeze=backbone or freeze=last_layer"):
        FERModule(pretrained=False, freeze={"policy": "partial", "trainable_blocks": 2}).frozen_front()


def test_compiled_model_matches_eager_and_keeps_plain_checkpoint_keys(monkeypatch):
    # the eager backend: what is checked is fer's wiring of the compiled wrapper, not the compiler
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch.manual_seed(0)
    compiled = FERModule(pretrained=False, compile=True).eval()
    eager = FERModule(pretrained=False).eval()
    eager.load_state_dict(compiled.state_dict())
    assert all(key.startswith(("model.", "train_", "val_acc_best")) for key in compiled.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(compiled(x), eager(x), atol=1e-5)
