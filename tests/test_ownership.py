"""fer never deletes, replaces or rewrites what it did not create: every writer, pointed at a real user-owned
file or folder, stops with one message naming it and the fix, and leaves it byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import assert_clean_error, fer_main, tiny_args

from fer.bench.data import write_jpeg_tree
from fer.data.packing import pack_key, pack_split
from fer.data.sources import MMAFEDB
from fer.data.synthetic import generate_synthetic_dataset
from fer.files import NotOwnedError


def snapshot(root: Path) -> dict[str, str]:
    """Every file below ``root`` (or ``root`` itself) with the digest of its bytes."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture()
def user_photos(tmp_path: Path) -> Path:
    """A user's own folder of images in the MMAFEDB layout (3 classes, not fer's)."""
    root = tmp_path / "my_photos"
    for split in ("train", "valid", "test"):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            (folder / "a.jpg").write_bytes(b"\xff\xd8 my own photo " + name.encode())
    (root / "notes.txt").write_text("taken on holiday")
    return root


def test_quickstart_on_a_users_folder_stops_and_keeps_every_file(user_photos, outputs):
    before = snapshot(user_photos)
    result = fer_main(
        "fer.train", "experiment=quickstart", f"data.data_dir={user_photos}", "debug=fdr", outputs=outputs
    )
    assert_clean_error(result, str(user_photos), "no synthetic.json", "data=folder", "data=mmafedb")
    assert snapshot(user_photos) == before


def test_generator_writes_into_new_empty_or_its_own_folders_only(user_photos, tmp_path):
    before = snapshot(user_photos)
    with pytest.raises(NotOwnedError, match="it never deletes or replaces what it did not make"):
        generate_synthetic_dataset(user_photos, 1, 1)
    assert snapshot(user_photos) == before
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    with pytest.raises(NotOwnedError, match="is a file"):
        generate_synthetic_dataset(a_file, 1, 1)
    assert a_file.read_text() == "mine"


def test_synthetic_cli_refuses_a_users_folder(user_photos, outputs):
    before = snapshot(user_photos)
    result = fer_main("fer.data.synthetic", "--out", str(user_photos), "--per-class", "2", outputs=outputs)
    assert_clean_error(result, str(user_photos))
    assert snapshot(user_photos) == before


def test_bench_data_refuses_a_users_folder(user_photos):
    before = snapshot(user_photos)
    with pytest.raises(NotOwnedError, match=r"bench\.json"):
        write_jpeg_tree(user_photos, 1, 1)
    assert snapshot(user_photos) == before


def test_packing_never_replaces_a_folder_it_did_not_make(tiny_data, tmp_path):
    index = MMAFEDB(tiny_data).index("valid")
    cache = tmp_path / "cache"
    squatter = cache / f"valid-{pack_key(index, 48, True)}"  # a user's folder where the pack would go
    squatter.mkdir(parents=True)
    (squatter / "keep.txt").write_text("mine")
    before = snapshot(squatter)
    with pytest.raises(NotOwnedError, match=r"no pack\.json"):
        pack_split(index, cache, progress=False)
    assert snapshot(squatter) == before


def test_a_run_folder_that_holds_files_is_refused_before_anything_is_written(user_photos, tiny_data, outputs):
    before = snapshot(user_photos)
    result = fer_main("fer.train", *tiny_args(tiny_data), f"hydra.run.dir={user_photos}", outputs=outputs)
    assert_clean_error(result, str(user_photos), "resume=")
    assert snapshot(user_photos) == before and not (user_photos / ".hydra").exists()
    result = fer_main("fer.eval", "ckpt_path=x.ckpt", f"hydra.run.dir={user_photos}", outputs=outputs)
    assert_clean_error(result, str(user_photos))
    assert snapshot(user_photos) == before


def test_a_checkpoint_folder_that_holds_checkpoints_is_refused(tiny_data, tmp_path, outputs):
    folder = tmp_path / "my_checkpoints"
    folder.mkdir()
    (folder / "epoch_000.ckpt").write_bytes(b"my best model")
    (folder / "last.ckpt").write_bytes(b"my last model")
    before = snapshot(folder)
    overrides = [
        f"callbacks.model_checkpoint.dirpath={folder}",
        f"callbacks.last_checkpoint.dirpath={folder}",
    ]
    result = fer_main("fer.train", *tiny_args(tiny_data, "trainer.max_epochs=1", *overrides), outputs=outputs)
    assert_clean_error(result, str(folder), "resume=")
    assert snapshot(folder) == before


def test_a_sweep_folder_of_other_files_is_refused(user_photos, tiny_data, outputs):
    before = snapshot(user_photos)
    args = tiny_args(tiny_data, "trainer.max_epochs=1", "seed=1,2", f"hydra.sweep.dir={user_photos}")
    result = fer_main("fer.train", "-m", *args, outputs=outputs)
    assert_clean_error(result, f"hydra.sweep.dir={user_photos}", "notes.txt")
    assert snapshot(user_photos) == before


@pytest.mark.parametrize("tool", ["export", "predict", "audit", "report"])
def test_out_onto_an_existing_file_needs_overwrite(tool, checkpoint, tiny_data, tmp_path, outputs):
    suffix = {"export": ".onnx", "predict": ".csv", "audit": ".json", "report": ".csv"}[tool]
    target = tmp_path / f"mine{suffix}"
    target.write_text("the user's own file")
    before = snapshot(target)
    run = outputs / "train" / "runs" / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"metrics": {"test/acc": 0.5}, "best_checkpoint": None}))
    command = {
        "export": ("fer.export", str(checkpoint), "--out", str(target)),
        "predict": ("fer.predict", str(checkpoint), str(tiny_data / "test" / "happy"), "--out", str(target)),
        "audit": (
            "fer.data.audit",
            str(tiny_data),
            "--format",
            "json",
            "--out",
            str(target),
            "--no-progress",
        ),
        "report": ("fer.report", str(run), "--metrics", "test/acc", "--csv", str(target)),
    }[tool]
    option = "--csv" if tool == "report" else "--out"
    assert_clean_error(
        fer_main(*command, outputs=outputs), f"{option} {target} already exists", "--overwrite"
    )
    assert snapshot(target) == before
    replaced = fer_main(*command, "--overwrite", outputs=outputs)
    assert replaced.returncode == 0, replaced.stderr
    assert target.read_bytes() != b"the user's own file"
