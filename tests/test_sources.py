"""The FER2013, FER+, RAF-DB and AffectNet readers, on small files written in exactly the published formats."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY, assert_clean_error, check, fer_main

from fer.data import formats
from fer.data.audit import audit
from fer.data.sources import CONTEMPT, EXPRESSIONS, FER2013, RAFDB, AffectNet, FERPlus
from fer.errors import DataLayoutError

EIGHT = (*EXPRESSIONS, CONTEMPT)
FOLDERS = {"fer2013": "FER2013", "ferplus": "FERPlus", "rafdb": "RAF-DB", "affectnet": "AffectNet"}


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four data sets in their default folders under one data folder (what FER_DATA_DIR points at)."""
    root = tmp_path_factory.mktemp("published")
    assert formats.write_samples(root) == [root / folder for folder in FOLDERS.values()]
    return root


def test_sample_files_cli_writes_each_data_set_and_never_replaces_a_users_folder(tmp_path, capsys):
    assert formats.main([str(tmp_path), "--data", "rafdb"]) == 0
    assert formats.main([str(tmp_path), "--data", "rafdb"]) == 0  # its own folder: written again
    assert (tmp_path / "RAF-DB/basic/EmoLabel/list_patition_label.txt").is_file()
    (tmp_path / "FER2013").mkdir()
    (tmp_path / "FER2013" / "mine.csv").write_text("keep me")
    assert formats.main([str(tmp_path), "--data", "fer2013"]) == 2
    assert "fer will not write sample fer2013 files into it" in capsys.readouterr().err
    assert (tmp_path / "FER2013" / "mine.csv").read_text() == "keep me"


def counts(source) -> dict[str, list[int]]:
    return {split: source.index(split).class_counts() for split in ("train", "valid", "test")}


def face(value: int = 100) -> np.ndarray:
    return np.full((48, 48), value, dtype=np.uint8)


# ------------------------------------------------------------------------------------------ FER2013


def test_fer2013_maps_usage_to_splits_and_codes_to_fers_names(published, tmp_path):
    assert counts(FER2013(published / "FER2013")) == {"train": [4] * 7, "valid": [2] * 7, "test": [2] * 7}
    # codes 0 Angry ... 6 Neutral: 4 is sad and 6 neutral, whatever fer's own order
    usages = ["Training"] * 7 + ["PublicTest", "PrivateTest"]
    rows = [(code, face(10 * code), usage) for code, usage in zip([*range(7), 4, 6], usages, strict=True)]
    formats.write_fer2013_csv(tmp_path / "fer2013.csv", rows)
    source = FER2013(tmp_path)
    train = source.index("train")
    names = [source.class_names[label] for label in train.labels]
    assert names == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert train.pixels.shape == (7, 48, 48) and train.pixels[4].max() == 40
    assert source.class_names[source.index("valid").labels[0]] == "sad"
    assert source.class_names[source.index("test").labels[0]] == "neutral"
    assert train.paths[0].endswith("fer2013.csv:2")  # the header is line 1


BAD_PIXELS = " ".join(["7"] * 2303)


def test_fer2013_bad_rows_are_named_by_line_and_skipped_or_fatal(tmp_path, caplog):
    rows = [(code, face(), "Training") for code in range(7)]
    rows += [(3, BAD_PIXELS, "Training"), (9, face(), "Training"), (2, face(), "PublicTest")]
    formats.write_fer2013_csv(tmp_path / "fer2013.csv", rows)
    with caplog.at_level(logging.WARNING):
        assert len(FER2013(tmp_path).index("train")) == 7
    assert "line 9: 2303 pixel values, expected 2304" in caplog.text
    assert "line 10: unknown label code 9" in caplog.text
    with pytest.raises(DataLayoutError, match=r"fer2013.csv: line 9: 2303 pixel values.*line 10: unknown"):
        FER2013(tmp_path, on_bad_image="error").index("train")


def test_a_missing_or_headerless_file_is_one_line_naming_it_and_the_fix(tmp_path, outputs):
    result = fer_main(
        "fer.train", "data=fer2013", f"data.data_dir={tmp_path}", *TINY, "debug=fdr", outputs=outputs
    )
    assert_clean_error(result, f"File not found: {tmp_path / 'fer2013.csv'}", "data.data_dir=")
    (tmp_path / "fer2013.csv").write_text("label,image\n1,2\n")
    with pytest.raises(DataLayoutError, match="line 1: the header has no column"):
        FER2013(tmp_path).index("train")


# --------------------------------------------------------------------------------------------- FER+


def write_ferplus(root: Path, votes: list[list[int]], names: list[str] | None = None) -> None:
    usages = ["Training"] * len(votes)
    formats.write_fer2013_csv(root / "fer2013.csv", [(0, face(i), u) for i, u in enumerate(usages)])
    names = names or [f"fer{i:07d}.png" for i in range(len(votes))]
    formats.write_ferplus_csv(root / "fer2013new.csv", list(zip(usages, names, votes, strict=True)))


#           neutral happiness surprise sadness anger disgust fear contempt unknown NF
VOTES = [
    [0, 8, 0, 0, 0, 0, 0, 2, 0, 0],  # happy
    [1, 0, 0, 0, 0, 0, 0, 6, 3, 0],  # contempt
    [4, 4, 2, 0, 0, 0, 0, 0, 0, 0],  # tie: no single top class
    [1, 0, 0, 0, 0, 0, 0, 0, 9, 0],  # top vote unknown
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # top vote NF
    [0, 0, 0, 0, 7, 0, 3, 0, 0, 0],  # angry
]


def test_ferplus_majority_keeps_single_top_votes_and_names_them(tmp_path):
    write_ferplus(tmp_path, [*VOTES, VOTES[0]], names=[*[f"fer{i}.png" for i in range(6)], ""])
    eight = FERPlus(tmp_path).index("train")
    assert [EIGHT[label] for label in eight.labels] == ["happy", "contempt", "angry"]
    assert eight.targets is None
    assert eight.paths[-1].endswith("fer2013.csv:7")  # the pixels of row 6 (line 7), FER+ row 6
    seven = FERPlus(tmp_path, classes=7).index("train")
    assert [EXPRESSIONS[label] for label in seven.labels] == ["happy", "angry"]


def test_ferplus_probability_gives_the_vote_distribution_over_the_kept_classes(tmp_path):
    write_ferplus(tmp_path, VOTES)
    eight = FERPlus(tmp_path, label_mode="probability").index("train")
    happy = dict(zip(EIGHT, eight.targets[0], strict=True))
    assert happy["happy"] == pytest.approx(0.8) and happy["contempt"] == pytest.approx(0.2)
    seven = FERPlus(tmp_path, label_mode="probability", classes=7).index("train")
    assert seven.targets.shape == (2, 7)
    assert seven.targets[0, EXPRESSIONS.index("happy")] == pytest.approx(1.0)  # contempt's votes dropped
    angry = dict(zip(EXPRESSIONS, seven.targets[1], strict=True))
    assert angry["angry"] == pytest.approx(0.7) and angry["fear"] == pytest.approx(0.3)


def test_ferplus_probability_batches_carry_the_soft_targets_to_the_loss(published, tmp_path):
    import torch

    from fer.data import FERDataModule
    from fer.losses import CrossEntropyLoss

    source = FERPlus(published / "FERPlus", label_mode="probability")
    datamodule = FERDataModule(source=source, image_size=32, batch_size=8, cache_dir=tmp_path / "cache")
    datamodule.setup("fit")
    images, labels, targets = next(iter(datamodule.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and targets.shape == (8, 8)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
    assert torch.equal(targets.argmax(dim=1), labels)  # the metrics' label is the majority vote
    logits = torch.randn(8, 8)
    assert CrossEntropyLoss()(logits, targets) != CrossEntropyLoss()(logits, labels)


def test_ferplus_rows_must_match_fer2013_row_by_row(tmp_path):
    write_ferplus(tmp_path, VOTES)
    formats.write_fer2013_csv(tmp_path / "fer2013.csv", [(0, face(), "Training")] * 5)
    with pytest.raises(DataLayoutError, match=r"fer2013new.csv line 7: more rows than the 5"):
        FERPlus(tmp_path).index("train")


def test_ferplus_bad_vote_row_is_named(tmp_path):
    write_ferplus(tmp_path, VOTES)
    text = (tmp_path / "fer2013new.csv").read_text().replace("fer0000005.png,0,0,0,0,7", "fer5.png,0,0,0,0,x")
    (tmp_path / "fer2013new.csv").write_text(text)
    with pytest.raises(DataLayoutError, match=r"fer2013new\.csv: line 7: a vote count is not a number"):
        FERPlus(tmp_path, on_bad_image="error").index("train")


# ------------------------------------------------------------------------------------------- RAF-DB


def test_rafdb_maps_codes_and_carves_a_seeded_stratified_valid_split(published):
    root = published / "RAF-DB"
    source = RAFDB(root, val_fraction=0.2)
    assert counts(source) == {"train": [5] * 7, "valid": [1] * 7, "test": [2] * 7}
    listed = dict(
        line.split() for line in (root / "basic/EmoLabel/list_patition_label.txt").read_text().splitlines()
    )
    test = source.index("test")
    for path, label in zip(test.paths, test.labels, strict=True):
        code = listed[Path(path).name.replace("_aligned", "")]
        # 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral
        assert (
            EXPRESSIONS[label]
            == ["surprise", "fear", "disgust", "happy", "sad", "angry", "neutral"][int(code) - 1]
        )
    valid = set(source.index("valid").paths)
    assert valid == set(RAFDB(root, val_fraction=0.2).index("valid").paths)  # the same seed, the same images
    assert valid != set(RAFDB(root, val_fraction=0.2, val_seed=1).index("valid").paths)
    assert not valid & set(source.index("train").paths)
    assert all("train_" in path for path in valid)


def test_rafdb_bad_line_and_missing_image_are_named(published, tmp_path):
    import shutil

    root = shutil.copytree(published / "RAF-DB", tmp_path / "raf")
    labels = root / "basic/EmoLabel/list_patition_label.txt"
    labels.write_text(labels.read_text() + "train_09999.jpg 8\ntest_0001.jpg\n")
    (root / "basic/Image/aligned/train_00003_aligned.jpg").unlink()
    with pytest.raises(DataLayoutError) as error:
        RAFDB(root, on_bad_image="error").index("train")
    message = str(error.value)
    assert "line 3: its image" in message and "train_00003_aligned.jpg is missing" in message
    assert "line 57: unknown label code 8" in message and "line 58:" in message
    assert len(RAFDB(root).index("train")) + len(RAFDB(root).index("valid")) == 41


# ---------------------------------------------------------------------------------------- AffectNet


def test_affectnet_leaves_out_codes_crops_faces_and_keeps_valence_arousal(published, caplog):
    root = published / "AffectNet"
    with caplog.at_level(logging.INFO):
        eight = AffectNet(root, classes=8)
        assert counts(eight) == {"train": [5] * 8, "valid": [1] * 8, "test": [2] * 8}
    assert (
        "codes left out (8 classes): 1 of code 8 (None), 1 of code 9 (Uncertain), 1 of code 10" in caplog.text
    )
    assert counts(AffectNet(root, classes=7))["test"] == [2] * 7  # contempt (code 7) left out too
    rows = {
        line.split(",")[0]: line.split(",")
        for line in (root / "Manually_Annotated_file_lists/validation.csv").read_text().splitlines()[1:]
    }
    test = eight.index("test")
    first = rows[str(Path(test.paths[0]).relative_to(root / "Manually_Annotated_Images"))]
    assert test.boxes[0] == tuple(int(v) for v in first[1:5])
    assert test.records["valence"][0] == float(first[7]) and test.records["arousal"][0] == float(first[8])
    assert test.load(0).size == (48, 48)  # the face box, not the whole photo
    assert AffectNet(root, crop_faces=False).index("test").boxes is None


def test_affectnet_bad_row_is_named(published, tmp_path):
    import shutil

    root = shutil.copytree(published / "AffectNet", tmp_path / "an")
    training = root / "Manually_Annotated_file_lists/training.csv"
    training.write_text(training.read_text() + "1/nothing.jpg,0,0,10,10,1;2,1,0.1,0.2\n1/x.jpg,0,0,10\n")
    with pytest.raises(DataLayoutError) as error:
        AffectNet(root, on_bad_image="error").index("train")
    assert "training.csv: line 53: its image" in str(error.value)
    assert "line 54: 4 fields, the header has 9" in str(error.value)


# -------------------------------------------------------------------------------- pack, audit, train


def test_fer2013_audit_finds_a_test_row_copied_from_training(tmp_path):
    rows = formats.fer2013_rows({"train": 3, "valid": 1, "test": 1}, seed=4)
    written = [
        (formats.FER2013_CODE[name], pixels, formats.SPLIT_USAGE[split]) for split, name, pixels in rows
    ]
    train_face = next(pixels for split, _, pixels in rows if split == "train")
    written.append((0, train_face, "PrivateTest"))
    formats.write_fer2013_csv(tmp_path / "fer2013.csv", written)
    report = audit(FER2013(tmp_path), progress=False)
    assert report["images"] == 36
    assert report["leakage"]["exact"]["test"]["train"] == 1
    assert report["leakage"]["exact"]["valid"]["train"] == 0
    (group,) = report["exact_duplicates"]
    assert group["splits"] == ["train", "test"]


RECIPES = {"fer2013": EXPRESSIONS, "ferplus": EIGHT, "rafdb": EXPRESSIONS, "affectnet": EIGHT}


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipe_fine_tunes_pretrained_mobilenet_v3_large_on_its_data_set(name, tmp_path):
    from conftest import compose_train

    cfg = compose_train([f"experiment={name}"], tmp_path)
    assert cfg.model.backbone == "mobilenet_v3_large" and cfg.model.pretrained and cfg.freeze.policy == "none"
    assert cfg.data.image_size == 112 and cfg.data.data_dir.endswith(FOLDERS[name])
    assert cfg.data.source._target_.rsplit(".", 1)[1].lower() == name
    if name == "ferplus":
        assert cfg.data.label_mode == "probability" and cfg.loss.label_smoothing == 0
        assert cfg.data.source.label_mode == "probability"  # handed on to the source
    assert cfg.data.grayscale == (name in ("fer2013", "ferplus"))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
def test_each_reader_trains_and_tests_through_its_recipe(published, name, outputs):
    result = check(
        fer_main(
            "fer.train", f"experiment={name}", *TINY, "debug=fdr", f"data.cache_dir={outputs / 'cache'}",
            outputs=outputs, env={"FER_DATA_DIR": str(published)},
        )
    )  # fmt: skip
    assert "test/acc" in result.stdout
    for class_name in EIGHT:
        assert (f"test/recall/{class_name}" in result.stdout) == (class_name in RECIPES[name])
    (run,) = (outputs / "train" / "runs").iterdir()
    assert f"images in {published / FOLDERS[name]}" in (run / "train.log").read_text()


# ------------------------------------------------------------------------------ cross-data-set evaluation


def test_a_model_restricted_to_shared_classes_keeps_their_logits(module):
    import torch

    from fer.models.subset import restrict_to_classes

    names = ["surprise", "happy", "angry"]
    restricted = restrict_to_classes(module, names).eval()
    images = torch.rand(4, 3, 32, 32)
    keep = [module.class_names.index(name) for name in names]
    with torch.no_grad():
        torch.testing.assert_close(restricted(images), module(images)[:, keep])
    assert restricted.class_names == tuple(names)


def test_shared_classes_relabel_and_renormalize_soft_targets(tmp_path):
    from fer.data.sources import SharedClasses

    write_ferplus(tmp_path, VOTES)
    spec = {"_target_": "fer.data.sources.FERPlus", "root": str(tmp_path), "label_mode": "probability"}
    shared = SharedClasses(spec, ["angry", "contempt"]).index("train")
    assert shared.labels == (1, 0) and shared.class_names == ("angry", "contempt")
    np.testing.assert_allclose(shared.targets, [[0.0, 1.0], [1.0, 0.0]])


@pytest.mark.slow
def test_eval_matches_classes_by_name_and_report_prints_the_model_by_test_set_matrix(
    published, checkpoint, tmp_path
):
    env = {"FER_DATA_DIR": str(published)}
    outputs = tmp_path / "outputs"
    quiet = "+trainer.enable_progress_bar=false"  # packs go to FER_DATA_DIR/cache
    train = ["data=ferplus", *TINY, "trainer.max_epochs=1", "+trainer.limit_train_batches=1"]
    check(fer_main("fer.train", *train, outputs=outputs, env=env))
    (run,) = (outputs / "train" / "runs").iterdir()
    ferplus = run / "checkpoints" / "last.ckpt"
    saved = torch_load(ferplus)
    assert saved["hyper_parameters"]["class_names"] == list(EIGHT)
    assert saved["fer_data"]["source"]["_target_"] == "fer.data.sources.ferplus.FERPlus"

    # two models (FER+ 8 classes, MMAFEDB 7 classes) x the four test sets, and the report's matrix
    sweep = check(
        fer_main(
            "fer.eval", "-m", f"ckpt_path={ferplus},{checkpoint}", "data=fer2013,ferplus,rafdb,affectnet",
            quiet, outputs=outputs, env=env,
        )
    )  # fmt: skip
    assert "8 jobs" in sweep.stdout
    # the 8-class FER+ model on 7-class RAF-DB: contempt is left out, named, and recorded
    assert "left out: contempt (only the model has it)" in sweep.stdout
    (folder,) = (outputs / "eval" / "multiruns").iterdir()
    (job,) = folder.glob("2_*data=rafdb")
    recorded = json.loads((job / "metrics.json").read_text())
    assert recorded["classes"] == {
        "evaluated": list(EXPRESSIONS),
        "model_only": ["contempt"],
        "data_only": [],
    }
    assert "test/recall/contempt" not in recorded["metrics"] and "test/recall/surprise" in recorded["metrics"]
    report = check(fer_main("fer.report", str(folder), outputs=outputs)).stdout
    for title in ("Accuracy (test/acc)", "Macro-F1 (test/f1_macro)", "Balanced accuracy (test/acc_balanced)"):
        assert f"{title}, ckpt_path x data:" in report
    assert "| ckpt_path | trained on | fer2013 | ferplus | rafdb | affectnet |" in report
    assert "FERPlus, 8 classes" in report and "MMAFEDB, 7 classes" in report
    assert f"{checkpoint.name} on ferplus: left out contempt (only the data)" in report
    accuracy = report.split("Accuracy (test/acc)")[1].split("\n\n")[1].splitlines()
    assert len(accuracy) == 4 and all(line.count("0.") >= 4 or "1.0000" in line for line in accuracy[2:])


def torch_load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def test_the_fer2013_packing_bench_row_reads_and_packs_every_row(tmp_path, monkeypatch):
    import torch

    import fer.bench.tables as tables
    from fer.bench.harness import BenchContext

    monkeypatch.setenv("FER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(tables, "USAGE_ROWS", {"Training": 30, "PublicTest": 10, "PrivateTest": 10})
    ctx = BenchContext(data_dir=tmp_path / "data" / "bench", device=torch.device("cpu"), images=1, seconds=1)
    measurement = tables.fer_pack_fer2013(ctx)
    assert measurement.images == 50 and measurement.seconds > 0
    assert "reading and parsing the CSV" in measurement.notes
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["bench-fer2013"]  # the scratch packs are gone


def test_report_matrix_means_cells_marks_failed_ones_and_refuses_unswept_keys(tmp_path, capsys):
    from fer.report import main as report

    def job(number: int, ckpt: str, data: str, acc: float | None) -> None:
        folder = tmp_path / f"{number}_data={data}"
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump([f"ckpt_path={ckpt}", f"data={data}"])
        )
        if acc is not None:
            metrics = {"test/acc": acc, "test/f1_macro": acc / 2, "test/acc_balanced": acc}
            (folder / "metrics.json").write_text(json.dumps({"metrics": metrics}))

    job(0, "/runs/a/last.ckpt", "rafdb", 0.5)
    job(1, "/runs/a/last.ckpt", "fer2013", None)
    job(2, "/runs/b/last.ckpt", "rafdb", 0.7)
    job(3, "/runs/b/last.ckpt", "fer2013", 0.25)
    assert report([str(tmp_path), "--metrics", "test/acc"]) == 0
    out = capsys.readouterr().out
    assert "| ckpt_path | rafdb | fer2013 |" in out
    assert "| a/last.ckpt | 0.5000 | failed |" in out and "| b/last.ckpt | 0.7000 | 0.2500 |" in out
    assert "| a/last.ckpt | 0.2500 | failed |" in out  # macro-F1
    assert report([str(tmp_path), "--matrix", "data,seed"]) == 2
    assert "--matrix 'data,seed': give two different swept keys" in capsys.readouterr().err


def test_data_set_options_are_data_keys_handed_to_the_source(tmp_path):
    from conftest import compose_train

    cfg = compose_train(["data=ferplus", "data.label_mode=probability", "data.classes=7"], tmp_path)
    assert (cfg.data.source.label_mode, cfg.data.source.classes) == ("probability", 7)
    cfg = compose_train(["data=affectnet", "data.crop_faces=false", "data.val_fraction=0.2"], tmp_path)
    assert (cfg.data.source.crop_faces, cfg.data.source.val_fraction) == (False, 0.2)
    cfg = compose_train(["data=rafdb", "data.val_seed=3"], tmp_path)
    assert cfg.data.source.val_seed == 3
