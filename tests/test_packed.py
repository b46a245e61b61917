"""Packed data, batched augmentation and cached features: fast paths that must not change the results."""

import contextlib
import math
import os

import lightning as L
import pytest
import torch
from conftest import make_tree
from torchvision.transforms import v2

from fer.data import FERDataModule, packing
from fer.data.augment import BatchAugmentation, _crop_boxes
from fer.data.decode import load_image
from fer.data.loaders import PackedBatches
from fer.data.packing import pack_split
from fer.data.preprocessing import Augmentation, Preprocessing
from fer.data.sources import MMAFEDB
from fer.data.transforms import build_eval_transform, build_train_transform, to_model_input
from fer.models import FERModule
from fer.models.features import FeatureCache


def test_pack_holds_every_image_decoded_and_is_reused_until_the_folder_changes(tmp_path, tiny_data):
    index = MMAFEDB(tiny_data).index("valid")
    pack = pack_split(index, tmp_path / "cache", progress=False)
    assert pack.images.shape == (len(index), 1, 48, 48) and pack.images.dtype == torch.uint8
    assert pack.labels.tolist() == list(index.labels)
    for i in (0, 7, len(index) - 1):
        expected = torch.from_numpy(__import__("numpy").asarray(load_image(index.paths[i])))
        assert torch.equal(pack.images[i, 0], expected)

    folder = next((tmp_path / "cache").iterdir())
    written = (folder / "images.npy").stat().st_mtime_ns
    again = pack_split(MMAFEDB(tiny_data).index("valid"), tmp_path / "cache", progress=False)
    assert again.key == pack.key and (folder / "images.npy").stat().st_mtime_ns == written

    touched = os.stat(index.paths[3])
    os.utime(index.paths[3], ns=(touched.st_atime_ns, touched.st_mtime_ns + 10**9))
    changed = pack_split(MMAFEDB(tiny_data).index("valid"), tmp_path / "cache", progress=False)
    assert changed.key != pack.key
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_a_pack_that_another_rank_finished_first_is_kept_and_used(tiny_data, tmp_path, monkeypatch):
    """Every DDP rank packs a split that is not packed yet: the one that finishes second keeps the first's."""
    index = MMAFEDB(tiny_data).index("valid")
    cache = tmp_path / "cache"
    building = packing.building_folder
    other = {}

    @contextlib.contextmanager
    def racing(target, *args, **kwargs):
        with building(target, *args, **kwargs) as tmp:
            yield tmp
            monkeypatch.setattr(packing, "building_folder", building)
            other["pack"] = pack_split(index, cache, progress=False)  # the other rank's, complete first
            other["written"] = (target / "images.npy").stat().st_mtime_ns

    monkeypatch.setattr(packing, "building_folder", racing)
    pack = pack_split(index, cache, progress=False)
    (folder,) = cache.iterdir()  # no temporary folder left
    assert (folder / "images.npy").stat().st_mtime_ns == other["written"]
    assert torch.equal(pack.images, other["pack"].images) and pack.labels.tolist() == list(index.labels)


def test_pack_resizes_odd_sizes_and_keeps_rgb(tmp_path):
    root = make_tree(tmp_path / "d")  # 48x48 and 13x70 images in 5 modes
    index = MMAFEDB(root).index("train")
    gray = pack_split(index, tmp_path / "c", progress=False)
    assert gray.images.shape == (len(index), 1, 48, 48)
    rgb = pack_split(index, tmp_path / "c", size=32, grayscale=False, progress=False)
    assert rgb.images.shape == (len(index), 3, 32, 32)


def test_eval_inputs_are_identical_in_the_packed_and_per_image_paths(tiny_data, tmp_path):
    pre = Preprocessing(image_size=72)
    index = MMAFEDB(tiny_data).index("test")
    pack = pack_split(index, tmp_path / "cache", progress=False)
    per_image = torch.stack([build_eval_transform(pre)(load_image(p)) for p in index.paths])
    assert torch.equal(to_model_input(pack.images, pre), per_image)


def test_order_derives_from_seed_and_epoch_and_ranks_split_it():
    labels = torch.arange(10)
    loader = PackedBatches(labels.view(10, 1), labels, 4, shuffle=True, seed=3)

    def epoch(e: int, rank: int = 0, world: int = 1) -> list[int]:
        shard = PackedBatches(
            labels.view(10, 1), labels, 4, shuffle=True, seed=3, rank=rank, world_size=world
        )
        shard.set_epoch(e)
        return [int(v) for _, y in shard for v in y]

    assert len(loader) == 3
    assert epoch(0) == epoch(0) and epoch(0) != epoch(1)
    assert sorted(epoch(1)) == list(range(10))
    ranks = [epoch(1, r, 3) for r in range(3)]
    assert [len(r) for r in ranks] == [4, 4, 4]  # padded to equal length, as DistributedSampler
    assert {v for r in ranks for v in r} == set(range(10))


def test_balanced_weights_draw_classes_equally_in_packed_batches():
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = (1.0 / torch.bincount(labels).double())[labels]
    loader = PackedBatches(labels.view(-1, 1), labels, 50, seed=0, weights=weights)
    drawn = []
    for e in range(20):
        loader.set_epoch(e)
        drawn += [int(v) for _, y in loader for v in y]
    assert 0.45 < sum(drawn) / len(drawn) < 0.55


def test_torchvision_v2_samples_one_crop_per_call_the_batch_path_one_per_image():
    images = torch.randint(0, 256, (32, 1, 48, 48), dtype=torch.uint8)
    images[:] = images[0]  # 32 copies of one image
    torch.manual_seed(0)
    v2_out = v2.RandomResizedCrop(48, scale=(0.3, 1.0))(images)
    assert all(torch.equal(v2_out[0], v) for v in v2_out[1:])  # one set of parameters for the batch
    aug = BatchAugmentation(Preprocessing(48), Augmentation(crop_scale=(0.3, 1.0), rotation=15, erasing=0.5))
    ours = aug(images, torch.Generator().manual_seed(0))
    distinct = {tuple(v.flatten()[:200].tolist()) for v in ours}
    assert len(distinct) == 32


def test_batched_crops_follow_torchvision_random_resized_crop():
    aug = Augmentation(crop_scale=(0.5, 1.0), crop_ratio=(0.75, 1.333))
    top, left, h, w = _crop_boxes(20000, 48, 48, aug, torch.Generator().manual_seed(0), "cpu")
    ours_area, ours_ratio = (h * w / 48**2), w / h
    torch.manual_seed(0)
    params = torch.tensor(
        [
            v2.RandomResizedCrop.get_params(torch.empty(1, 48, 48), [0.5, 1.0], [0.75, 1.333])
            for _ in range(20000)
        ],
        dtype=torch.float64,
    )
    tv_area, tv_ratio = params[:, 2] * params[:, 3] / 48**2, params[:, 3] / params[:, 2]
    for ours, theirs in ((ours_area, tv_area), (ours_ratio, tv_ratio)):
        assert abs(ours.mean() - theirs.mean()) < 0.01 and abs(ours.std() - theirs.std()) < 0.01
    assert (top + h <= 48).all() and (left + w <= 48).all() and (top >= 0).all() and (left >= 0).all()
    centre = (left + w / 2) / 48
    tv_centre = (params[:, 1] + params[:, 3] / 2) / 48
    assert abs(centre.mean() - tv_centre.mean()) < 0.01 and abs(centre.std() - tv_centre.std()) < 0.01


@pytest.mark.parametrize(
    "aug",
    [
        Augmentation(crop_scale=(0.6, 1.0), hflip=0.5, rotation=0, erasing=0),
        Augmentation(crop_scale=(0.8, 1.0), hflip=0.5, rotation=20, erasing=0.5, erasing_scale=(0.05, 0.2)),
    ],
    ids=["crop-flip", "all"],
)
def test_batched_augmentation_matches_the_per_image_distribution(tiny_data, tmp_path, aug):
    pre = Preprocessing(image_size=56)
    path = MMAFEDB(tiny_data).index("train").paths[5]
    image = load_image(path)
    pack = pack_split(MMAFEDB(tiny_data).index("train"), tmp_path / "c", progress=False)
    n = 1500
    batch = pack.images[5:6].expand(n, -1, -1, -1)
    ours = BatchAugmentation(pre, aug)(batch, torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    transform = build_train_transform(pre, aug)
    theirs = torch.stack([transform(image) for _ in range(n)])
    assert ours.shape == theirs.shape == (n, 3, 56, 56)
    # the average image, and the spread of images around it, agree
    mean_ours, mean_theirs = ours.mean(0), theirs.mean(0)
    assert (mean_ours - mean_theirs).abs().mean() < 0.03
    assert abs(ours.std(0).mean() - theirs.std(0).mean()) < 0.03
    # per-image statistics (brightness, contrast, erased share) have the same distribution
    for stat in (
        lambda x: x.mean((1, 2, 3)),
        lambda x: x.std((1, 2, 3)),
        lambda x: (x == 0).float().mean((1, 2, 3)),
    ):
        a, b = stat(ours), stat(theirs)
        assert (
            abs(a.mean() - b.mean()) < 0.02 + 0.05 * b.std() and abs(a.std() - b.std()) < 0.02 + 0.1 * b.std()
        )
    # flips: the left-right brightness difference changes sign as often
    lr_ours = (ours[..., :28].mean((1, 2, 3)) > ours[..., 28:].mean((1, 2, 3))).float().mean()
    lr_theirs = (theirs[..., :28].mean((1, 2, 3)) > theirs[..., 28:].mean((1, 2, 3))).float().mean()
    assert abs(lr_ours - lr_theirs) < 0.06


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _head_losses(tiny_data, tmp_path, policy: str, feature_cache: bool) -> tuple[list[float], FERModule]:
    L.seed_everything(7)
    dm = FERDataModule(
        tiny_data,
        image_size=48,
        batch_size=8,
        augment={"crop_scale": None, "hflip": 0, "rotation": 0, "erasing": 0},
        cache_dir=tmp_path / "cache",
        feature_cache=feature_cache,
        seed=7,
    )
    model = FERModule(
        pretrained=False,
        freeze={"policy": policy},
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.5},
    )
    recorder = LossRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder, *([FeatureCache()] if feature_cache else [])],
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    return recorder.losses, model


@pytest.mark.parametrize("policy", ["last_layer", "backbone"])
def test_head_training_on_cached_features_follows_the_normal_path(tiny_data, tmp_path, policy):
    normal, normal_model = _head_losses(tiny_data, tmp_path, policy, feature_cache=False)
    cached, cached_model = _head_losses(tiny_data, tmp_path, policy, feature_cache=True)
    assert len(normal) == len(cached) == 14  # 2 epochs of 56 images in batches of 8
    assert normal[0] != normal[-1]  # the head really trains
    assert cached == pytest.approx(normal, rel=1e-4, abs=1e-5)
    for (name, a), (_, b) in zip(
        normal_model.state_dict().items(), cached_model.state_dict().items(), strict=True
    ):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), name
    assert any((tmp_path / "cache").glob("features-train-*.npy"))


def test_feature_cache_views_hold_distinct_augmented_views(tiny_data, tmp_path):
    dm = FERDataModule(
        tiny_data,
        image_size=40,
        batch_size=8,
        cache_dir=tmp_path / "c",
        feature_cache=True,
        feature_cache_views=3,
    )
    model = FERModule(pretrained=False, freeze={"policy": "backbone"})
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[FeatureCache()])  # fmt: skip
    trainer.fit(model, datamodule=dm)
    loader = trainer.train_dataloader
    assert loader.views == 3 and loader.data.shape[:2] == (3, 56)
    # an untrained backbone gives tiny features: compare relative to their size
    assert (loader.data[0] - loader.data[1]).abs().max() > 0.01 * loader.data.abs().max()
    assert math.isclose(float(loader.data.shape[2]), 576)
