"""Tests for the synthetic MMAFEDB-layout face generator."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer import workers
from fer.data import synthetic
from fer.data.synthetic import (
    CLASS_NAMES,
    SPLITS,
    draw_face,
    ensure_synthetic_dataset,
    generate_synthetic_dataset,
    main,
)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn") / "data", 3, 2, seed=0)


def test_class_names_are_the_seven_mmafedb_expressions_in_alphabetical_order() -> None:
    assert CLASS_NAMES == ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    assert tuple(sorted(CLASS_NAMES)) == CLASS_NAMES
    assert SPLITS == ("train", "valid", "test")


def test_generate_writes_mmafedb_layout_with_expected_counts(small_dataset: Path) -> None:
    assert sorted(p.name for p in small_dataset.iterdir()) == ["synthetic.json", "test", "train", "valid"]
    for split, count in (("train", 3), ("valid", 2), ("test", 2)):
        assert sorted(p.name for p in (small_dataset / split).iterdir()) == list(CLASS_NAMES)
        for name in CLASS_NAMES:
            names = sorted(p.name for p in (small_dataset / split / name).iterdir())
            assert names == sorted(f"{i}.png" for i in range(count))
    meta = json.loads((small_dataset / "synthetic.json").read_text())
    assert meta == {
        "format_version": synthetic.FORMAT_VERSION,
        "train_per_class": 3,
        "eval_per_class": 2,
        "seed": 0,
        "image_size": 48,
        "rgb_fraction": 0.3,
    }


def test_images_are_48px_8bit_and_mix_gray_and_replicated_rgb(small_dataset: Path) -> None:
    modes = set()
    for path in small_dataset.rglob("*.png"):
        img = Image.open(path)
        assert img.size == (48, 48)
        modes.add(img.mode)
        arr = np.asarray(img)
        assert arr.dtype == np.uint8
        if img.mode == "RGB":
            assert np.array_equal(arr[..., 0], arr[..., 1])
            assert np.array_equal(arr[..., 0], arr[..., 2])
        assert arr.std() > 5, "image should not be blank"
    assert modes == {"L", "RGB"}


def test_rgb_fraction_only_changes_the_file_mode_not_the_pixels(tmp_path: Path) -> None:
    gray = generate_synthetic_dataset(tmp_path / "gray", 2, 1, seed=3, rgb_fraction=0.0)
    rgb = generate_synthetic_dataset(tmp_path / "rgb", 2, 1, seed=3, rgb_fraction=1.0)
    gray_files = sorted(gray.rglob("*.png"))
    assert {Image.open(p).mode for p in gray_files} == {"L"}
    assert {Image.open(p).mode for p in rgb.rglob("*.png")} == {"RGB"}
    for path in gray_files:
        assert np.array_equal(_pixels(path), _pixels(rgb / path.relative_to(gray)))


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path, small_dataset: Path) -> None:
    again = _files(generate_synthetic_dataset(tmp_path / "again", 3, 2, seed=0))
    other = _files(generate_synthetic_dataset(tmp_path / "other", 3, 2, seed=1))
    first = _files(small_dataset)
    assert again == first
    assert other.keys() == first.keys()
    assert all(other[k] != first[k] for k in first)


def test_each_image_depends_only_on_seed_split_class_and_index(tmp_path: Path, small_dataset: Path) -> None:
    bigger = _files(generate_synthetic_dataset(tmp_path / "bigger", 5, 3, seed=0))
    first = _files(small_dataset)
    assert len(bigger) == 7 * (5 + 3 + 3)
    assert all(bigger[k] == v for k, v in first.items())


def test_parallel_generation_matches_serial(tmp_path: Path, small_dataset: Path, monkeypatch) -> None:
    monkeypatch.setattr(synthetic, "_SERIAL_LIMIT", 0)
    monkeypatch.setattr(workers, "available_cores", lambda: 2)
    parallel = generate_synthetic_dataset(tmp_path / "parallel", 3, 2, seed=0)
    assert _files(parallel) == _files(small_dataset)


def test_splits_do_not_share_images(tmp_path: Path) -> None:
    root = generate_synthetic_dataset(tmp_path / "d", 8, 8, seed=5)
    hashes = {
        split: {hashlib.sha1(_pixels(p).tobytes()).hexdigest() for p in (root / split).rglob("*.png")}
        for split in SPLITS
    }
    assert all(len(h) == 7 * 8 for h in hashes.values())
    assert not hashes["train"] & hashes["valid"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["valid"] & hashes["test"]


def test_generate_replaces_its_own_data_set_and_leaves_no_temporaries(tmp_path: Path) -> None:
    out = generate_synthetic_dataset(tmp_path / "data", 1, 1, seed=0)
    (out / "train" / "happy" / "stale.png").write_bytes(b"made by an earlier generation")
    generate_synthetic_dataset(out, 2, 1, seed=3)
    assert not (out / "train" / "happy" / "stale.png").exists()
    assert json.loads((out / "synthetic.json").read_text())["seed"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_generate_into_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = generate_synthetic_dataset(tmp_path / "empty", 1, 1)
    assert len(list((out / "train").rglob("*.png"))) == 7


def test_interrupted_generation_keeps_old_dataset_and_cleans_up(tmp_path: Path, monkeypatch) -> None:
    out = generate_synthetic_dataset(tmp_path / "data", 1, 1)
    before = _files(out)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_render_chunk", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(out, 2, 1, seed=9)
    assert _files(out) == before
    assert json.loads((out / "synthetic.json").read_text())["seed"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_ensure_reuses_matching_dataset_and_regenerates_on_change(tmp_path: Path, caplog) -> None:
    out = tmp_path / "data"
    with caplog.at_level(logging.INFO, logger="fer.data.synthetic"):
        ensure_synthetic_dataset(out, 2, 1, seed=0)
    assert len(caplog.records) == 1
    assert "Generated 28 " in caplog.records[0].getMessage()
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fer.data.synthetic"):
        assert ensure_synthetic_dataset(out, 2, 1, seed=0) == out
    assert caplog.records == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes

    with caplog.at_level(logging.INFO, logger="fer.data.synthetic"):
        ensure_synthetic_dataset(out, 2, 1, seed=1)
    assert len(caplog.records) == 1
    assert json.loads((out / "synthetic.json").read_text())["seed"] == 1


def test_cli_writes_tree_with_default_eval_count(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--per-class", "4", "--seed", "2", "--rgb-fraction", "0"]) == 0
    assert len(list((out / "train").rglob("*.png"))) == 7 * 4
    assert len(list((out / "valid").rglob("*.png"))) == 7 * 1
    assert len(list((out / "test").rglob("*.png"))) == 7 * 1
    assert json.loads((out / "synthetic.json").read_text())["seed"] == 2
    printed = capsys.readouterr().out
    assert "42 images" in printed
    assert str(out.resolve()) in printed


def test_draw_face_accepts_name_or_index_and_rejects_unknown() -> None:
    by_name = draw_face("happy", np.random.default_rng(7), size=32)
    by_index = draw_face(3, np.random.default_rng(7), size=32)
    assert by_name.mode == "L"
    assert by_name.size == (32, 32)
    assert np.array_equal(np.asarray(by_name), np.asarray(by_index))
    with pytest.raises(ValueError):
        draw_face("bored", np.random.default_rng(0))
    with pytest.raises(ValueError):
        draw_face(7, np.random.default_rng(0))


def _standardized_centre_crops(seed: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    feats, labels = [], []
    for label in range(len(CLASS_NAMES)):
        for i in range(per_class):
            img = np.asarray(draw_face(label, np.random.default_rng([seed, label, i])), dtype=np.float32)
            crop = img[14:38, 12:36].ravel()
            feats.append((crop - crop.mean()) / (crop.std() + 1e-6))
            labels.append(label)
    return np.stack(feats), np.array(labels)


def test_expressions_are_learnable_but_not_trivial_for_nearest_class_mean() -> None:
    train_x, train_y = _standardized_centre_crops(seed=100, per_class=60)
    test_x, test_y = _standardized_centre_crops(seed=101, per_class=20)
    means = np.stack([train_x[train_y == c].mean(0) for c in range(len(CLASS_NAMES))])
    pred = ((test_x[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    accuracy = (pred == test_y).mean()
    assert 1 / 7 + 0.15 < accuracy < 0.9
