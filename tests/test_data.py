from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MODES, make_tree, write_image
from PIL import Image

from fer.data import CLASS_NAMES, FERDataModule
from fer.data.decode import load_image
from fer.data.loaders import EpochSampler
from fer.data.preprocessing import Preprocessing
from fer.data.sources import MMAFEDB
from fer.data.transforms import build_eval_transform
from fer.errors import DataLayoutError, FERError


def test_class_index_is_alphabetical_and_skips_non_images(tmp_path):
    root = make_tree(tmp_path / "d")
    index = MMAFEDB(root).index("train")
    assert index.class_names == ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    assert index.class_counts() == [3, 3, 3, 4, 3, 3, 3]
    assert all(
        Path(p).parent.name == CLASS_NAMES[label] for p, label in zip(index.paths, index.labels, strict=True)
    )
    assert not any(Path(p).name in (".DS_Store", "Thumbs.db", "notes.txt") for p in index.paths)


@pytest.mark.parametrize("mode", MODES)
def test_any_image_mode_becomes_a_normalized_3_channel_tensor(tmp_path, mode):
    path = tmp_path / "img.png"
    write_image(path, mode, size=(13, 70), value=204)
    pre = Preprocessing(image_size=40)
    x = build_eval_transform(pre)(load_image(path))
    assert x.shape == (3, 40, 40) and x.dtype == torch.float32
    # 204/255 gray (a web-palette value, so mode P keeps it exactly), normalized per channel with ImageNet mean/std
    expected = (torch.tensor(204 / 255) - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    torch.testing.assert_close(x.mean(dim=(1, 2)), expected, atol=0.02, rtol=0)


def test_sixteen_bit_gray_is_rescaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 65535], [32896, 1000]], dtype=np.uint16)).save(path)
    assert np.asarray(load_image(path)).tolist() == [[0, 255], [128, 4]]


@pytest.mark.parametrize("packed", [True, False])
def test_datamodule_batches_have_expected_shapes_and_labels(tmp_path, packed):
    root = make_tree(tmp_path / "d")
    dm = FERDataModule(
        root, image_size=32, batch_size=5, eval_batch_size=7, augment={"erasing": 0.5}, packed=packed
    )
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (7, 3, 32, 32)
    assert yv.tolist() == [0, 0, 1, 1, 2, 2, 3]  # validation is not shuffled
    dm.setup("test")
    assert len(dm.test_dataloader()) == 2  # 14 images, batches of 7
    assert dm.train_class_counts == [3, 3, 3, 4, 3, 3, 3]


def test_eval_transform_is_deterministic_and_train_transform_is_not(tmp_path):
    root = make_tree(tmp_path / "d")
    dm = FERDataModule(root, image_size=32, grayscale=False, packed=False)
    dm.setup("fit")
    image = dm.datasets["valid"][3][0]
    assert torch.equal(image, dm.datasets["valid"][3][0])
    torch.manual_seed(0)
    views = [dm.datasets["train"][0][0] for _ in range(4)]
    assert any(not torch.equal(views[0], v) for v in views[1:])


def test_balanced_sampler_draws_classes_equally(tmp_path):
    root = make_tree(tmp_path / "d", per_class={"happy": 40, "disgust": 2})
    dm = FERDataModule(root, image_size=16, batch_size=64, sampler="balanced", packed=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSampler) and loader.sampler.weights is not None
    drawn = []
    for epoch in range(30):  # each epoch draws anew, from (seed, epoch)
        loader.sampler.set_epoch(epoch)
        drawn += [dm.datasets["train"].index.labels[i] for i, _ in loader.sampler]
    drawn = torch.tensor(drawn)
    shares = torch.bincount(drawn, minlength=7).double() / len(drawn)
    assert shares.min() > 0.11 and shares.max() < 0.175  # 1/7 = 0.143 each


def test_global_batch_must_divide_across_devices(tmp_path):
    class FakeTrainer:
        world_size = 3

    dm = FERDataModule(make_tree(tmp_path / "d"), batch_size=64)
    dm.trainer = FakeTrainer()
    with pytest.raises(FERError, match="not divisible by the 3 devices"):
        dm.setup("fit")
    dm.batch_size = 66
    dm.setup("fit")
    assert dm.batch_size_per_device == 22


def test_layout_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(DataLayoutError, match="data=synthetic"):
        MMAFEDB(tmp_path / "nowhere").index("train")
    root = make_tree(tmp_path / "d")
    (root / "train" / "Happy_old").mkdir()
    with pytest.raises(DataLayoutError, match=r"Unknown class folder.*Happy_old"):
        MMAFEDB(root).index("train")
