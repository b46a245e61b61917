"""The second face generator (pen sketches), which checks that the defaults hold beyond fer.data.synthetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fer.data.sketches import draw_sketch, generate_sketches, split_counts
from fer.data.sources import ImageFolders
from fer.data.sources.base import EXPRESSIONS
from fer.errors import FERError


def test_split_counts_are_unbalanced_like_fer2013_and_eval_splits_follow_train() -> None:
    counts = split_counts(1500, 0.2)
    assert sum(counts["train"].values()) == pytest.approx(1500, abs=4)
    assert counts["train"]["happy"] > 4 * counts["train"]["disgust"]
    assert counts["valid"] == counts["test"]
    assert counts["valid"]["neutral"] == round(counts["train"]["neutral"] * 0.2)


def test_sketches_are_read_as_an_image_folder_data_set_with_the_seven_classes(tmp_path: Path) -> None:
    root = generate_sketches(tmp_path / "sketches", train_images=70, eval_fraction=0.2, image_size=40)
    index = ImageFolders(root).index("train")
    assert index.class_names == EXPRESSIONS
    assert len(index) == sum(split_counts(70, 0.2)["train"].values())
    assert np.asarray(index.load(0, grayscale=False)).shape == (40, 40, 3)


def test_same_seed_draws_the_same_sketch_and_expressions_differ() -> None:
    one = np.asarray(draw_sketch("happy", np.random.default_rng(3)))
    assert np.array_equal(one, np.asarray(draw_sketch("happy", np.random.default_rng(3))))
    assert not np.array_equal(one, np.asarray(draw_sketch("sad", np.random.default_rng(3))))


def test_a_folder_of_the_users_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"user bytes")
    with pytest.raises(FERError, match="mine"):
        generate_sketches(tmp_path / "mine", train_images=14)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["photo.jpg"]
    assert (tmp_path / "mine" / "photo.jpg").read_bytes() == b"user bytes"
