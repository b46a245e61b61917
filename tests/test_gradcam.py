"""Grad-CAM: a model whose classes differ only in the mouth region looks at the mouth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, fer_main

from fer.models import FERModule
from fer.models.gradcam import grad_cam, overlays

SIZE = 64
MOUTH = (slice(38, 58), slice(16, 48))  # rows, columns of the mouth region


def mouth_faces(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy gray faces with two eyes; the label is only in the mouth: a smile (label 0) or a frown (1),
    drawn with the same number of pixels at a random height and width."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.35, size=(count, SIZE, SIZE))
    labels = rng.integers(0, 2, count)
    for image, label in zip(images, labels, strict=True):
        for eye_x in (20 + rng.integers(-2, 3), 44 + rng.integers(-2, 3)):
            eye_y = 20 + rng.integers(-2, 3)
            image[eye_y - 3 : eye_y + 3, eye_x - 3 : eye_x + 3] = 1.0
        x = np.arange(22 + rng.integers(-2, 3), 42 + rng.integers(-2, 3))
        bend = ((x - x.mean()) / (len(x) / 2)) ** 2 * 5
        y = np.round(50 + rng.integers(-2, 3) + (-bend if label == 0 else bend) - (0 if label == 0 else 5))
        for dy in (-1, 0, 1):
            image[(y + dy).astype(int), x] = 1.0
    x = torch.from_numpy(images).float()[:, None].expand(-1, 3, -1, -1)
    return (x - 0.5) / 0.25, torch.from_numpy(labels)


@pytest.mark.slow
def test_grad_cam_of_a_mouth_trained_model_puts_its_mass_on_the_mouth():
    torch.manual_seed(0)
    module = FERModule(
        "resnet18", class_names=["happy", "sad"], bn_momentum=0.1, dropout=0.0,
        preprocessing={"image_size": SIZE, "mean": (0.5,) * 3, "std": (0.25,) * 3},
    )  # fmt: skip
    network = module.model.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    images, labels = mouth_faces(256, seed=0)
    for step in range(30):
        batch = torch.randint(0, len(images), (32,), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(network(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_images, test_labels = mouth_faces(64, seed=1)
    maps, logits = grad_cam(module, test_images)
    assert float((logits.argmax(dim=1) == test_labels).float().mean()) >= 0.9  # it learned the mouth
    mouth = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mouth[MOUTH] = True
    inside, outside = maps[:, mouth].mean(), maps[:, ~mouth].mean()
    assert float(inside) > 1.8 * float(outside), (float(inside), float(outside))  # 0.53 / 0.21 measured
    assert maps.shape == (64, SIZE, SIZE) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    drawn = overlays(test_images[:2], maps[:2], module.preprocessing.mean, module.preprocessing.std)
    assert drawn.shape == (2, 3, SIZE, SIZE) and float(drawn.min()) >= 0 and float(drawn.max()) <= 1


def test_predict_explain_writes_one_overlay_per_image_and_keeps_what_is_there(
    checkpoint, tiny_data, tmp_path
):
    from PIL import Image

    from fer.predict import main

    images = [str(next((tiny_data / "test" / name).iterdir())) for name in ("happy", "sad")]
    folder = tmp_path / "maps"
    assert main([str(checkpoint), *images, "--explain", str(folder)]) == 0
    written = sorted(p.name for p in folder.iterdir())
    assert len(written) == 2 and written[0].startswith("0001_") and written[1].startswith("0002_")
    assert Image.open(folder / written[0]).size == (4 * 32, 4 * 32)  # the 32 px model input, enlarged
    assert_clean_error(
        fer_main("fer.predict", str(checkpoint), *images, "--explain", str(folder), outputs=tmp_path),
        "already holds files",
    )
    onnx = tmp_path / "tiny.onnx"
    onnx.write_bytes(b"")
    from fer.export import export

    export(checkpoint, "onnx", onnx, overwrite=True)
    assert_clean_error(
        fer_main("fer.predict", str(onnx), *images, "--explain", str(tmp_path / "new"), outputs=tmp_path),
        "needs the checkpoint (.ckpt)",
    )
