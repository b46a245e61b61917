"""Messy data: unreadable files are skipped (listed in the run folder) or stop the run (data.on_bad_image),
odd image modes and sizes are trained on, and folder quirks (case, symlinks, a class missing in valid or
test) are either accepted or named in one clear error."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, assert_clean_error, fer_main, run_dirs
from PIL import Image

from fer.data import CLASS_NAMES, FERDataModule
from fer.data.decode import BadImageError, load_image
from fer.data.packing import find_bad_images, pack_split
from fer.data.preprocessing import Augmentation, Preprocessing
from fer.data.sources import MMAFEDB
from fer.data.synthetic import generate_synthetic_dataset
from fer.data.transforms import build_eval_transform, build_train_transform
from fer.errors import DataLayoutError, FERError

TRAIN_PER_CLASS = 4
EVAL_PER_CLASS = 2


def _noise(size: tuple[int, int], mode: str = "L", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = size[::-1] if mode == "L" else (*size[::-1], 3)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def _palette_with_transparency(size: tuple[int, int]) -> Image.Image:
    image = _noise(size, "RGB", seed=3).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 0
    return image


# every odd-but-valid kind of image: (name, builder); each must decode and be trained on
ODD_IMAGES = {
    "cmyk.jpg": lambda: _noise((48, 48), "RGB", seed=1).convert("CMYK"),
    "deep16.png": lambda: Image.fromarray(np.linspace(0, 65535, 48 * 48, dtype=np.uint16).reshape(48, 48)),
    "palette_transparent.png": lambda: _palette_with_transparency((48, 48)),
    "rgba.png": lambda: _noise((48, 48), "RGB", seed=2).convert("RGBA"),
    "gray_alpha.png": lambda: _noise((48, 48)).convert("LA"),
    "bilevel.png": lambda: _noise((48, 48)).convert("1"),
    "one_pixel.png": lambda: Image.new("L", (1, 1), 200),
    "huge.jpg": lambda: Image.linear_gradient("L").resize((4000, 3000)),
    "wide.png": lambda: _noise((90, 20), "RGB", seed=4),
}


def _save_odd(path: Path, name: str) -> Path:
    image = ODD_IMAGES[name]()
    kwargs = {"transparency": 0} if image.mode == "P" else {}
    image.save(path, **kwargs)
    return path


def _truncated_jpeg(path: Path, source: Path) -> None:
    Image.open(source).convert("RGB").save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@dataclass
class MessyTree:
    root: Path
    bad: dict[str, list[Path]] = field(default_factory=dict)  # split -> unreadable files (as listed)
    odd: list[Path] = field(default_factory=list)
    good_train: int = 0


def build_messy_tree(base: Path) -> MessyTree:
    """A synthetic tree with every messy case: unreadable files (train and test), odd modes and sizes,
    a class folder spelled ``Happy`` in valid, a symlinked file and class folder, a broken symlink, and
    valid/test without a ``disgust`` folder."""
    root = generate_synthetic_dataset(base / "messy", TRAIN_PER_CLASS, EVAL_PER_CLASS, seed=0, image_size=48)
    outside = base / "elsewhere"
    outside.mkdir()
    tree = MessyTree(root)
    train = root / "train"
    face = next((train / "fear").glob("*.png"))

    _truncated_jpeg(train / "fear" / "truncated.jpg", face)
    (train / "angry" / "garbage.jpg").write_bytes(b"this is a text file, not a JPEG\n" * 20)
    (train / "sad" / "empty.png").write_bytes(b"")
    os.symlink(outside / "does-not-exist.png", train / "sad" / "gone.png")
    tree.bad["train"] = [
        train / "angry" / "garbage.jpg",
        train / "fear" / "truncated.jpg",
        train / "sad" / "empty.png",
        train / "sad" / "gone.png",
    ]
    for name, folder in zip(ODD_IMAGES, CLASS_NAMES * 2, strict=False):
        tree.odd.append(_save_odd(train / folder / name, name))
    # a symlinked file (to a face outside the tree) and a symlinked class folder
    shutil.copy(face, outside / "linked_face.png")
    os.symlink(outside / "linked_face.png", train / "neutral" / "linked.png")
    shutil.move(root / "test" / "surprise", outside / "surprise_test")
    os.symlink(outside / "surprise_test", root / "test" / "surprise")

    (root / "valid" / "happy").rename(root / "valid" / "Happy")
    for split in ("valid", "test"):
        shutil.rmtree(root / split / "disgust")
    _truncated_jpeg(root / "test" / "neutral" / "cut.jpg", face)
    tree.bad["test"] = [root / "test" / "neutral" / "cut.jpg"]
    tree.good_train = 7 * TRAIN_PER_CLASS + len(ODD_IMAGES) + 1
    return tree


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> MessyTree:
    return build_messy_tree(tmp_path_factory.mktemp("messy"))


def _copy(tree: MessyTree, tmp_path: Path) -> Path:
    """A private copy of the tree (symlinks copied as symlinks), for tests that change it."""
    root = tmp_path / "copy"
    shutil.copytree(tree.root, root, symlinks=True)
    return root


# --- odd modes and sizes decode into the model's input -------------------------------------------------
@pytest.mark.parametrize("name", list(ODD_IMAGES))
@pytest.mark.parametrize("grayscale", [True, False])
def test_odd_modes_and_sizes_decode_to_8bit_images_of_their_own_size(tmp_path, name, grayscale):
    path = _save_odd(tmp_path / name, name)
    width, height = Image.open(path).size
    array = np.asarray(load_image(path, grayscale))
    assert array.dtype == np.uint8
    assert array.shape == ((height, width) if grayscale else (height, width, 3))
    if name == "deep16.png":  # 16-bit values rescaled to the full 8-bit range, not clipped at 255
        assert array.min() == 0 and array.max() == 255 and len(np.unique(array)) > 200
    pre = Preprocessing(image_size=32, grayscale=grayscale)
    for transform in (build_eval_transform(pre), build_train_transform(pre, Augmentation(erasing=0.5))):
        x = transform(load_image(path, grayscale))
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_float_images_within_0_1_span_the_8bit_range(tmp_path):
    path = tmp_path / "float.tiff"
    Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)).save(path)
    assert np.asarray(load_image(path)).tolist() == [[0, 128], [255, 64]]


@pytest.mark.parametrize(
    ("name", "reason"),
    [("empty.png", "empty file (0 bytes)"), ("garbage.jpg", "not an image file"), ("cut.jpg", "truncated")],
)
def test_unreadable_files_raise_a_bad_image_error_with_the_reason(tmp_path, name, reason):
    path = tmp_path / name
    if name == "empty.png":
        path.write_bytes(b"")
    elif name == "garbage.jpg":
        path.write_bytes(b"not an image")
    else:
        _noise((48, 48)).save(tmp_path / "full.png")
        _truncated_jpeg(path, tmp_path / "full.png")
    with pytest.raises(BadImageError, match=re.escape(str(path))) as raised:
        load_image(path)
    assert reason in raised.value.reason


def test_a_broken_symlink_is_a_bad_image_named_as_such(tmp_path):
    os.symlink(tmp_path / "nowhere.png", tmp_path / "link.png")
    with pytest.raises(BadImageError) as raised:
        load_image(tmp_path / "link.png")
    assert raised.value.reason.startswith("broken symbolic link")


# --- folder quirks ----------------------------------------------------------------------------------------
def test_folders_are_matched_case_insensitively_and_symlinks_followed(messy):
    valid = MMAFEDB(messy.root).index("valid")
    assert Path(valid.paths[valid.labels.index(CLASS_NAMES.index("happy"))]).parent.name == "Happy"
    assert valid.missing == ("disgust",) and valid.class_counts()[CLASS_NAMES.index("disgust")] == 0
    test = MMAFEDB(messy.root).index("test")
    assert test.class_counts()[CLASS_NAMES.index("surprise")] == EVAL_PER_CLASS  # symlinked class folder
    train = MMAFEDB(messy.root).index("train")
    names = {Path(p).name for p in train.paths}
    assert {"linked.png", "gone.png"} <= names  # a symlinked file, and a broken one (to be reported)


def test_class_folders_differing_only_in_case_are_a_clear_error(messy, tmp_path):
    root = _copy(messy, tmp_path)
    (root / "valid" / "happy").mkdir()
    with pytest.raises(DataLayoutError, match=r"'Happy' and 'happy'.*differ only in case.*merge"):
        MMAFEDB(root).index("valid")


def test_a_class_missing_in_train_is_an_error_and_in_valid_a_warning(messy, tmp_path, caplog):
    root = _copy(messy, tmp_path)
    with caplog.at_level("WARNING", logger="fer.data.layout"):
        MMAFEDB(root).index("valid")
    assert str(root.resolve() / "valid" / "disgust") in caplog.text
    shutil.rmtree(root / "train" / "disgust")
    with pytest.raises(DataLayoutError, match=r"\['disgust'\] missing in .*train"):
        MMAFEDB(root).index("train")


def test_a_train_class_with_only_unreadable_images_is_an_error(tiny_data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(tiny_data, root)
    for file in (root / "train" / "fear").iterdir():
        file.write_bytes(b"")
    dm = FERDataModule(root, image_size=32, cache_dir=tmp_path / "cache")
    with pytest.raises(DataLayoutError, match=r"No readable training images of class\(es\) \['fear'\]"):
        dm.setup("fit")


# --- both data paths skip unreadable files, or stop naming them ----------------------------------------
def test_the_pack_holds_only_readable_images_and_remembers_what_it_left_out(messy, tmp_path):
    index = MMAFEDB(messy.root).index("train")
    pack = pack_split(index, tmp_path / "cache", progress=False)
    bad = {str(p) for p in messy.bad["train"]}
    assert {path for path, _ in pack.skipped} == bad
    assert len(pack) == messy.good_train == len(index) - len(bad)
    kept = [i for i, path in enumerate(index.paths) if path not in bad]
    assert pack.labels.tolist() == [index.labels[i] for i in kept]
    (huge_path,) = [str(p) for p in messy.odd if p.name == "huge.jpg"]
    huge = kept.index(index.paths.index(huge_path))
    assert pack.images.shape[1:] == (1, 48, 48) and pack.images[huge].float().std() > 0  # resized, not blank
    reused = pack_split(MMAFEDB(messy.root).index("train"), tmp_path / "cache", progress=False)
    assert reused.skipped == pack.skipped and len(reused) == len(pack)
    with pytest.raises(DataLayoutError, match=re.escape(str(messy.bad["train"][0]))):
        pack_split(index, tmp_path / "cache", progress=False, on_bad_image="error")  # the cached pack


def test_the_per_image_check_finds_the_same_files_and_caches_its_answer(messy, tmp_path):
    index = MMAFEDB(messy.root).index("train")
    bad = find_bad_images(index, tmp_path / "cache", progress=False)
    assert [path for path, _ in bad] == [str(p) for p in messy.bad["train"]]
    assert len(list((tmp_path / "cache").glob("checked-train-*.json"))) == 1
    assert find_bad_images(index, tmp_path / "cache", progress=False) == bad
    with pytest.raises(DataLayoutError, match=r"data\.on_bad_image=skip"):
        find_bad_images(index, tmp_path / "cache", progress=False, on_bad_image="error")


class _Trainer:
    world_size = 1
    is_global_zero = True

    def __init__(self, root: Path) -> None:
        self.default_root_dir = str(root)


@pytest.mark.parametrize("packed", [True, False])
def test_datamodule_leaves_bad_images_out_and_lists_them_in_the_run_folder(messy, tmp_path, packed, caplog):
    dm = FERDataModule(messy.root, image_size=32, batch_size=64, packed=packed, cache_dir=tmp_path / "c")
    dm.trainer = _Trainer(tmp_path)
    with caplog.at_level("WARNING"):
        dm.setup("fit")
        dm.setup("test")
    dm.trainer = None  # the stand-in trainer only gave the run folder
    assert f"train: 4 of {messy.good_train + 4} images cannot be read" in caplog.text
    listed = [line.split("\t") for line in (tmp_path / "skipped_images.txt").read_text().splitlines()]
    assert [path for path, _ in listed] == [str(p) for p in messy.bad["train"] + messy.bad["test"]]
    assert all(reason for _, reason in listed)
    assert sum(dm.train_class_counts) == messy.good_train
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (messy.good_train, 3, 32, 32) and len(y) == messy.good_train
    assert sum(len(y) for _, y in dm.test_dataloader()) == 6 * EVAL_PER_CLASS  # disgust missing, 1 bad


def test_on_bad_image_must_be_skip_or_error(tmp_path):
    with pytest.raises(FERError, match=r"data.on_bad_image='ignore' is not one of \['skip', 'error'\]"):
        FERDataModule(tmp_path, on_bad_image="ignore")
    assert FERDataModule(tmp_path).hparams.on_bad_image == "skip"


# --- the real entry point on the messy tree -----------------------------------------------------------
def _train(root: Path, outputs: Path, *extra: str):
    args = ["data=mmafedb", f"data.data_dir={root}", f"data.cache_dir={outputs / 'cache'}", *TINY]
    return fer_main("fer.train", *args, "trainer.max_epochs=1", *extra, outputs=outputs)


@pytest.mark.slow
@pytest.mark.parametrize("packed", ["true", "false"])
def test_training_on_a_messy_tree_skips_the_bad_files_and_reports_them(messy, outputs, packed):
    result = _train(messy.root, outputs, f"data.packed={packed}")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(outputs)
    listed = [line.split("\t")[0] for line in (run / "skipped_images.txt").read_text().splitlines()]
    assert listed == [str(p) for p in messy.bad["train"] + messy.bad["test"]]
    assert not set(listed) & {str(p) for p in messy.odd}
    log = (run / "train.log").read_text()
    assert f"train: 4 of {messy.good_train + 4} images cannot be read and are left out" in log
    assert "test: 1 of 13 images cannot be read" in log
    assert f"train: {messy.good_train} images in " in log
    assert "Class folder(s)" in log and "disgust" in log  # valid/test without a disgust folder: a warning
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    for name in CLASS_NAMES:
        assert np.isfinite(metrics[f"test/recall/{name}"])
    assert metrics["test/recall/disgust"] == 0.0


@pytest.mark.slow
def test_on_bad_image_error_stops_naming_the_file(messy, outputs):
    result = _train(messy.root, outputs, "data.on_bad_image=error")
    assert_clean_error(result, str(messy.bad["train"][0]), "data.on_bad_image=skip")
