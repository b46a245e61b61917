import pytest
import torch
from torch import nn

from fer.errors import FERError
from fer.models import FERModule, apply_freeze_policy, build_backbone
from fer.models.freeze import count_parameters

HEAD = 1024 * 7 + 7  # the final Linear of mobilenet_v3_small, 7 classes
CLASSIFIER = 576 * 1024 + 1024 + HEAD


def trainable(model: nn.Module) -> int:
    return count_parameters(model)[0]


def batchnorms(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("last_layer", HEAD), ("backbone", CLASSIFIER), ("gradual", CLASSIFIER)],
)
def test_freeze_policy_trainable_parameter_counts(policy, expected):
    model = build_backbone("mobilenet_v3_small", 7)
    apply_freeze_policy(model, policy)
    assert trainable(model) == expected


def test_freeze_none_trains_everything():
    model = build_backbone("mobilenet_v3_small", 7)
    apply_freeze_policy(model, "none")
    assert trainable(model) == count_parameters(model)[1] == 1_525_031


def test_freeze_partial_trains_the_last_blocks_and_classifier():
    model = build_backbone("mobilenet_v3_small", 7)
    apply_freeze_policy(model, "partial", trainable_blocks=2)
    blocks = sum(p.numel() for block in list(model.features)[-2:] for p in block.parameters())
    assert trainable(model) == CLASSIFIER + blocks
    assert not any(p.requires_grad for p in model.features[0].parameters())
    with pytest.raises(FERError, match="trainable_blocks"):
        apply_freeze_policy(model, "partial", trainable_blocks=99)


def test_large_backbone_builds_with_seven_outputs():
    model = build_backbone("mobilenet_v3_large", 7)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


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
    model = build_backbone("mobilenet_v3_small", 7, pretrained=True, weights_path=path)
    assert torch.equal(model.features[3].block[0][0].weight, source.features[3].block[0][0].weight)
    assert model.classifier[-1].out_features == 7


def test_a_weights_file_for_another_architecture_is_refused(tmp_path):
    from fer.errors import IncompatibleCheckpointError, WeightsUnavailableError

    path = tmp_path / "large.pth"
    torch.save(build_backbone("mobilenet_v3_large", 7).state_dict(), path)
    with pytest.raises(
        IncompatibleCheckpointError,
        match="holds mobilenet_v3_large weights, but this run builds mobilenet_v3_small",
    ):
        build_backbone("mobilenet_v3_small", 7, weights_path=path)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        build_backbone("mobilenet_v3_small", 7, weights_path=tmp_path / "missing.pth")


def test_gradual_unfreezing_with_one_cycle_is_refused_with_a_clear_error():
    scheduler = {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "max_lr": 0.01, "total_steps": 10}
    module = FERModule(freeze={"policy": "gradual"}, scheduler=scheduler)
    with pytest.raises(FERError, match="scheduler=cosine"):
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


def test_feature_input_goes_through_the_head_only():
    module = FERModule(pretrained=False, freeze={"policy": "last_layer"}).eval()
    x = torch.randn(2, 3, 32, 32)
    features = module.frozen_extractor()(x)
    assert features.shape == (2, 1024)
    assert torch.allclose(module(features), module(x), atol=1e-6)
    with pytest.raises(FERError, match="freeze=backbone or freeze=last_layer"):
        FERModule(pretrained=False, freeze={"policy": "partial", "trainable_blocks": 2}).frozen_extractor()


@pytest.mark.slow
def test_compiled_model_matches_eager_and_keeps_plain_checkpoint_keys():
    torch.manual_seed(0)
    compiled = FERModule(pretrained=False, compile=True).eval()
    eager = FERModule(pretrained=False).eval()
    eager.load_state_dict(compiled.state_dict())
    assert all(key.startswith("model.") for key in compiled.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(compiled(x), eager(x), atol=1e-5)
