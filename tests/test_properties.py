"""Property-based tests (hypothesis): the loss against torch for any input, the transforms for any image."""

from __future__ import annotations

import tempfile
from pathlib import Path

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from fer.data.augment import BatchAugmentation
from fer.data.decode import load_image
from fer.data.preprocessing import Augmentation, Preprocessing
from fer.data.transforms import build_eval_transform, build_train_transform, to_model_input
from fer.losses import CrossEntropyLoss

IGNORE = -100
REDUCTIONS = ("mean", "sum", "none")
# float64 agrees with torch to rounding; float32 to a few ulps of the largest log-probability (~1e4 here)
TOLERANCE = {torch.float64: {"rtol": 1e-9, "atol": 1e-9}, torch.float32: {"rtol": 1e-5, "atol": 2e-3}}


@st.composite
def loss_cases(draw: st.DrawFn) -> dict:
    """Finite logits of any size (up to +-1e4, where exp overflows), targets (some ignored), weights and
    smoothing in [0, 1)."""
    n = draw(st.integers(1, 12))
    c = draw(st.integers(2, 9))
    scale = draw(st.sampled_from([1e-3, 1.0, 100.0, 1e4]))
    logits = draw(hnp.arrays(np.float64, (n, c), elements=st.floats(-1.0, 1.0))) * scale
    target = draw(st.lists(st.integers(0, c - 1) | st.just(IGNORE), min_size=n, max_size=n))
    if all(t == IGNORE for t in target):
        target[0] = draw(st.integers(0, c - 1))  # torch's mean over no sample is 0/0
    weight = draw(st.none() | hnp.arrays(np.float32, (c,), elements=st.floats(2.0**-10, 10.0, width=32)))
    return {
        "logits": torch.from_numpy(logits),
        "target": torch.tensor(target),
        "weight": None if weight is None else torch.from_numpy(weight),
        "smoothing": draw(st.floats(0.0, 1.0, exclude_max=True)),
        "reduction": draw(st.sampled_from(REDUCTIONS)),
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@settings(max_examples=150, deadline=None)
@given(case=loss_cases())
def test_loss_equals_torch_cross_entropy_with_finite_gradients(dtype, case):
    weight, smoothing, reduction = case["weight"], case["smoothing"], case["reduction"]
    ours_in = case["logits"].to(dtype).requires_grad_()
    torch_in = case["logits"].to(dtype).requires_grad_()
    # the loss keeps its class weights in float32 (a buffer): torch gets the same values
    ours = CrossEntropyLoss(weight=weight, label_smoothing=smoothing, reduction=reduction)(
        ours_in, case["target"]
    )
    theirs = F.cross_entropy(
        torch_in,
        case["target"],
        weight=None if weight is None else weight.to(dtype),
        label_smoothing=smoothing,
        reduction=reduction,
        ignore_index=IGNORE,
    )
    assert ours.dtype == dtype and torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs, **TOLERANCE[dtype])
    ours.sum().backward()
    theirs.sum().backward()
    assert torch.isfinite(ours_in.grad).all()
    torch.testing.assert_close(ours_in.grad, torch_in.grad, rtol=1e-5, atol=1e-6)


MODES = ("1", "L", "LA", "P", "P+transparency", "RGB", "RGBA", "CMYK", "I;16", "I", "F")


def make_image(mode: str, width: int, height: int, content: str, seed: int) -> Image.Image:
    """An image of ``mode`` whose pixels are random, all at the mode's lowest or all at its highest value."""
    rng = np.random.default_rng(seed)
    shape = (height, width)

    def band(low: float, high: float, dtype) -> np.ndarray:
        if content == "low":
            return np.full(shape, low, dtype=dtype)
        if content == "high":
            return np.full(shape, high, dtype=dtype)
        if np.issubdtype(dtype, np.floating):
            return rng.uniform(low, high, shape).astype(dtype)
        return rng.integers(low, high, shape, endpoint=True, dtype=dtype)

    def gray() -> Image.Image:
        return Image.fromarray(band(0, 255, np.uint8))

    if mode == "1":
        return Image.fromarray(band(0, 1, np.uint8).astype(bool))
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return Image.merge(mode, [gray() for _ in mode])
    if mode.startswith("P"):
        image = Image.merge("RGB", [gray() for _ in "RGB"]).quantize(int(rng.integers(2, 256)))
        if mode == "P+transparency":
            image.info["transparency"] = 0
        return image
    if mode == "I;16":
        return Image.fromarray(band(0, 65535, np.uint16))
    if mode == "I":  # 32-bit signed: negative values, and values beyond 16 bits
        return Image.fromarray(band(-(2**31), 2**31 - 1, np.int32))
    top = float(rng.choice([1.0, 255.0, 65535.0, 1e9]))  # F: scaled 0-1, 8-bit, 16-bit or anything
    return Image.fromarray(band(-top, top, np.float32))


def saved(image: Image.Image, mode: str, folder: Path) -> Path:
    """The image as a file (TIFF keeps every mode; PNG keeps a palette's transparency), read back as
    ``mode``."""
    path = folder / ("image.png" if mode == "P+transparency" else "image.tiff")
    image.save(path)
    with Image.open(path) as reread:
        assert reread.mode == mode.split("+")[0]
        assert ("transparency" in reread.info) == (mode == "P+transparency")
    return path


def assert_model_input(x: torch.Tensor, pre: Preprocessing) -> None:
    """Shape (3, S, S), float32, finite, and each channel within the normalized image of [0, 1]."""
    size = pre.image_size
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    low, high = (0 - mean) / std, (1 - mean) / std
    assert (x >= low - 1e-5).all() and (x <= high + 1e-5).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(MODES),
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    content=st.sampled_from(["random", "low", "high"]),
    seed=st.integers(0, 2**32 - 1),
    grayscale=st.booleans(),
    image_size=st.sampled_from([16, 32, 48]),
)
def test_any_image_becomes_a_normalized_3_channel_square_on_every_path(
    mode, width, height, content, seed, grayscale, image_size
):
    pre = Preprocessing(image_size=image_size, grayscale=grayscale)
    aug = Augmentation(crop_scale=(0.08, 1.0), hflip=0.5, rotation=30.0, erasing=0.5)
    with tempfile.TemporaryDirectory() as folder:
        image = load_image(
            saved(make_image(mode, width, height, content, seed), mode, Path(folder)), grayscale
        )
    assert image.mode == ("L" if grayscale else "RGB") and image.size == (width, height)
    torch.manual_seed(seed)  # the per-image train transform draws from torch's global generator

    assert_model_input(build_eval_transform(pre)(image), pre)
    assert_model_input(build_train_transform(pre, aug)(image), pre)
    batch = pil_to_tensor(image)[None]  # uint8 (1, 1 or 3, H, W): what the packed path stores
    assert_model_input(to_model_input(batch, pre)[0], pre)
    augmented = BatchAugmentation(pre, aug)(batch, torch.Generator().manual_seed(seed))
    assert_model_input(augmented[0], pre)
