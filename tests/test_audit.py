"""``fer.data.audit``: counts, modes, sizes, unreadable files, exact and near duplicates across splits."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from fer.bench.data import write_jpeg_tree
from fer.data import audit as audit_module
from fer.data.audit import HASH_BITS, audit, hamming, main, near_pairs, perceptual_hashes

EXACT = [("train/happy/0.jpg", "test/happy/copy.jpg"), ("train/sad/1.jpg", "valid/angry/copy.jpg")]
NEAR = [
    ("train/fear/2.jpg", "test/fear/requality.jpg"),
    ("train/neutral/0.jpg", "valid/neutral/brighter.jpg"),
]
BROKEN = "test/sad/broken.jpg"
LARGER = "train/surprise/larger.png"  # a distinct face, stored as a 64x64 PNG


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small tree (3 train and 2 valid/test faces per class, gray and RGB JPEGs) with known problems."""
    root = write_jpeg_tree(tmp_path_factory.mktemp("audit") / "data", train_per_class=3, eval_per_class=2)
    for source, copy in EXACT:
        shutil.copyfile(root / source, root / copy)
    with Image.open(root / NEAR[0][0]) as image:
        image.save(root / NEAR[0][1], quality=60)  # the same face, re-encoded at another JPEG quality
    with Image.open(root / NEAR[1][0]) as image:
        ImageEnhance.Brightness(image).enhance(1.08).save(root / NEAR[1][1], quality=90)  # slightly brighter
    (root / BROKEN).write_bytes((root / "test/sad/0.jpg").read_bytes()[:200])  # a truncated JPEG
    with Image.open(root / "valid/surprise/1.jpg") as image:
        image.convert("L").resize((64, 64)).save(root / LARGER)
    (root / "valid/surprise/1.jpg").unlink()  # so that the PNG has no near copy left
    return root


@pytest.fixture(scope="module")
def report(planted: Path) -> dict:
    return audit(planted, workers=1, progress=False)


def pairs(groups: list[dict]) -> set[tuple[str, ...]]:
    return {tuple(sorted(group["paths"])) for group in groups}


def test_audit_finds_exactly_the_planted_exact_and_near_duplicates(report):
    assert pairs(report["exact_duplicates"]) == {tuple(sorted(pair)) for pair in EXACT}
    assert pairs(report["near_duplicates"]) == {tuple(sorted(pair)) for pair in NEAR}
    for group in report["near_duplicates"]:
        assert 0 < group["distances"][1] <= report["near_duplicate_rule"]["max_distance"]
    conflicts = [group for group in report["exact_duplicates"] if len(group["classes"]) > 1]
    assert [sorted(g["paths"]) for g in conflicts] == [sorted(EXACT[1])]


def test_audit_counts_copies_across_splits(report):
    exact, near = report["leakage"]["exact"], report["leakage"]["exact_or_near"]
    assert exact["test"] == {"images": 17, "train": 1, "valid": 0, "test": 0}
    assert exact["valid"] == {"images": 15, "train": 1, "valid": 0, "test": 0}
    assert exact["train"] == {"images": 22, "train": 0, "valid": 1, "test": 1}
    assert near["test"] == {"images": 17, "train": 2, "valid": 0, "test": 0}
    assert near["valid"] == {"images": 15, "train": 2, "valid": 0, "test": 0}
    assert near["train"] == {"images": 22, "train": 0, "valid": 2, "test": 2}


def test_audit_names_the_unreadable_file(report):
    assert [item["path"] for item in report["unreadable"]] == [BROKEN]
    assert report["unreadable_count"] == 1
    assert report["splits"]["test"]["classes"]["sad"]["unreadable"] == 1


def test_audit_counts_images_modes_and_sizes_per_class(report, planted):
    for split, stats in report["splits"].items():
        for name, row in stats["classes"].items():
            files = sorted((planted / split / name).iterdir())
            readable = [f for f in files if f.relative_to(planted).as_posix() != BROKEN]
            modes, sizes = Counter(), Counter()
            for file in readable:
                with Image.open(file) as image:
                    modes[image.mode] += 1
                    sizes[image.size] += 1
            assert row["images"] == len(files), (split, name)
            assert row["modes"] == dict(modes), (split, name)
            assert row["size"] == "48x48" and row["size_count"] == sizes[(48, 48)]
            assert row["other_sizes"] == len(readable) - sizes[(48, 48)]
    assert report["splits"]["train"]["classes"]["surprise"]["other_sizes"] == 1  # the 64x64 PNG
    all_modes = Counter()
    for stats in report["splits"].values():
        for row in stats["classes"].values():
            all_modes.update(row["modes"])
    assert set(all_modes) == {"L", "RGB"} and min(all_modes.values()) >= 10  # the gray/RGB mix is seen


def test_process_pool_scan_gives_the_same_report(planted, report, monkeypatch):
    monkeypatch.setattr(audit_module, "SERIAL_LIMIT", 0)
    pooled = audit(planted, workers=2, progress=False)
    for key in ("splits", "unreadable", "exact_duplicates", "near_duplicates", "leakage"):
        assert pooled[key] == report[key], key


@pytest.mark.parametrize("small_bucket", [2, 32])  # 2: nearly every bucket takes the big-bucket path
def test_near_pairs_finds_what_brute_force_finds(small_bucket, monkeypatch):
    monkeypatch.setattr(audit_module, "SMALL_BUCKET", small_bucket)
    rng = np.random.default_rng(0)
    bits = rng.random((300, HASH_BITS)) < 0.5
    bits[290:300] = bits[2]  # exact copies: distance 0
    bits[200:260] = bits[0] ^ (rng.random((60, HASH_BITS)) < 0.03)  # a crowded neighbourhood: big buckets
    bits[260:280] = bits[1] ^ (rng.random((20, HASH_BITS)) < 0.06)
    hashes = np.packbits(bits, axis=1)
    for max_distance in (0, 2, 4, 16):  # 0 and 2: bands too wide for one integer
        found = near_pairs(hashes, max_distance)
        distance = hamming(hashes[:, None, :], hashes[None, :, :])
        i, j = np.nonzero(np.triu(distance <= max_distance, k=1))
        assert found.tolist() == np.stack([i, j, distance[i, j]], axis=1).tolist()
        assert len(found) > {0: 40, 2: 40, 4: 5, 16: 500}[max_distance]


def test_perceptual_hash_ignores_brightness_and_contrast_scaling():
    rng = np.random.default_rng(1)
    image = rng.integers(40, 200, size=(1, 48, 48)).astype(np.float32)
    same = perceptual_hashes(np.concatenate([image, image * 1.2 + 10]))
    other = perceptual_hashes(rng.integers(40, 200, size=(1, 48, 48)).astype(np.float32))
    assert hamming(same[0], same[1]) == 0
    assert hamming(same[0], other[0]) > 64


def test_cli_writes_json_and_markdown_reports(planted, tmp_path, capsys):
    assert main([str(planted), "--format", "json", "--out", str(tmp_path / "a.json"), "--workers", "1"]) == 0
    saved = json.loads((tmp_path / "a.json").read_text())
    assert pairs(saved["exact_duplicates"]) == {tuple(sorted(pair)) for pair in EXACT}
    assert main([str(planted), "--no-progress", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "**test vs train**: 1 of 17 test images (5.88%) have an exact copy in train; 2 (11.76%)" in text
    assert f"- `{BROKEN}`: " in text
    assert (
        "`train/fear/2.jpg` ~ `test/fear/requality.jpg` (" in text or "`test/fear/requality.jpg` ~ " in text
    )


def test_cli_reports_a_bad_folder_in_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fer: error: Data folder not found:")
    (tmp_path / "data" / "train").mkdir(parents=True)
    assert main([str(tmp_path / "data")]) == 2
    assert "No class folders in" in capsys.readouterr().err
