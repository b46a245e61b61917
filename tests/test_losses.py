import pytest
import torch
import torch.nn.functional as F

from fer.losses import CrossEntropyLoss, balanced_class_weights, log_softmax


def reference(logits, target, weight=None, smoothing=0.0, reduction="mean"):
    return F.cross_entropy(logits, target, weight=weight, label_smoothing=smoothing, reduction=reduction)


def assert_matches_torch(logits, target, weight=None, smoothing=0.0, reduction="mean"):
    ours = CrossEntropyLoss(weight=weight, label_smoothing=smoothing, reduction=reduction)(logits, target)
    theirs = reference(logits, target, weight, smoothing, reduction)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0, 1e4])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_equals_torch_cross_entropy(scale, smoothing, weighted, reduction):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 7, generator=gen) * scale
    target = torch.randint(0, 7, (32,), generator=gen)
    weight = torch.rand(7, generator=gen) + 0.1 if weighted else None
    assert_matches_torch(logits, target, weight, smoothing, reduction)


def test_loss_is_stable_for_huge_logits():
    logits = torch.tensor([[1e4, -1e4, 0, 5e3, -5e3, 1e4 - 1, 1.0], [-1e4] * 7])
    target = torch.tensor([1, 3])
    loss = CrossEntropyLoss()(logits, target)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, reference(logits, target), rtol=1e-6, atol=1e-6)
    # the seed's softmax-by-exp version overflows where this one does not
    naive = -torch.log(
        torch.exp(logits).gather(1, target[:, None]) / torch.exp(logits).sum(1, keepdim=True)
    ).mean()
    assert not torch.isfinite(naive)


def test_loss_batch_of_one_with_weights_and_smoothing():
    logits = torch.tensor([[2.0, -1.0, 0.5, 1e4, 0.0, -3.0, 1.0]])
    target = torch.tensor([4])
    weight = torch.tensor([0.5, 3.0, 1.0, 1.0, 2.0, 0.7, 1.2])
    assert_matches_torch(logits, target, weight, 0.2)


def test_loss_ignore_index_matches_torch():
    logits = torch.randn(10, 7)
    target = torch.tensor([0, -100, 2, 3, -100, 5, 6, 1, 2, 3])
    weight = torch.rand(7) + 0.5
    for w in (None, weight):
        for s in (0.0, 0.3):
            ours = CrossEntropyLoss(weight=w, label_smoothing=s)(logits, target)
            torch.testing.assert_close(ours, F.cross_entropy(logits, target, weight=w, label_smoothing=s))


def test_loss_gradient_equals_torch():
    logits = (torch.randn(16, 7) * 50).requires_grad_()
    target = torch.randint(0, 7, (16,))
    weight = torch.rand(7) + 0.1
    CrossEntropyLoss(weight=weight, label_smoothing=0.1)(logits, target).backward()
    ours = logits.grad.clone()
    logits.grad = None
    reference(logits, target, weight, 0.1).backward()
    torch.testing.assert_close(ours, logits.grad, rtol=1e-5, atol=1e-7)


def test_log_softmax_keeps_the_largest_log_probability_exact():
    logits = torch.tensor([[1e4, 0.0, -1e4]])
    assert log_softmax(logits)[0, 0].item() == 0.0


def test_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction"):
        CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        CrossEntropyLoss()(torch.randn(7), torch.tensor(1))


def test_balanced_class_weights_are_inverse_frequency():
    weights = balanced_class_weights([10, 30, 60, 0])
    assert weights == pytest.approx([100 / 40, 100 / 120, 100 / 240, 0.0])


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_probability_targets_match_torch(smoothing, weighted, reduction):
    torch.manual_seed(0)
    logits = torch.randn(6, 5, dtype=torch.float64) * 4
    target = torch.softmax(torch.randn(6, 5, dtype=torch.float64), dim=1)  # e.g. a vote distribution
    # (fer keeps class weights in float32: these are exact in float32)
    weight = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.75], dtype=torch.float64) if weighted else None
    ours = CrossEntropyLoss(weight=weight, label_smoothing=smoothing, reduction=reduction)(logits, target)
    theirs = torch.nn.functional.cross_entropy(
        logits, target, weight=weight, label_smoothing=smoothing, reduction=reduction
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_focal_loss_is_cross_entropy_at_gamma_zero_and_discounts_easy_samples():
    from fer.losses import FocalLoss

    torch.manual_seed(0)
    logits, target = torch.randn(8, 7, dtype=torch.float64), torch.randint(0, 7, (8,))
    weight = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.75, 1.25, 1.0], dtype=torch.float64)
    torch.testing.assert_close(
        FocalLoss(gamma=0.0, weight=weight)(logits, target),
        torch.nn.functional.cross_entropy(logits, target, weight=weight),
    )
    # one sample: p_true = 0.9 -> (1 - 0.9)^2 * -log(0.9)
    easy = torch.log(torch.tensor([[0.9, 0.1]], dtype=torch.float64))
    value = FocalLoss(gamma=2.0)(easy, torch.tensor([0]))
    torch.testing.assert_close(value, torch.tensor(0.01 * -torch.log(torch.tensor(0.9, dtype=torch.float64))))
