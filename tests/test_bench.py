"""fer.bench: the seed's loss, the generated JPEG tree, the timing loop, and tiny runs of the real CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fer.bench import __main__ as bench_cli
from fer.bench import data as bench_data
from fer.bench import harness, training
from fer.data.sources import EXPRESSIONS as CLASS_NAMES
from fer.data.sources import SPLITS
from fer.losses import CrossEntropyLoss


@pytest.fixture(scope="module")
def jpeg_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 train and 2 valid/test JPEG faces per class."""
    return bench_data.write_jpeg_tree(
        tmp_path_factory.mktemp("bench") / "tree", train_per_class=10, eval_per_class=2
    )


def test_seed_loss_equals_cross_entropy_on_small_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 7, generator=gen) * 3
    target = torch.randint(0, 7, (32,), generator=gen)
    torch.testing.assert_close(training.SeedLoss()(logits, target), F.cross_entropy(logits, target))


def test_seed_loss_overflows_on_huge_logits_where_fer_loss_stays_finite():
    logits = torch.tensor([[1000.0, 0.0, -5.0], [2.0, 1000.0, 999.0]])
    target = torch.tensor([0, 2])
    assert not torch.isfinite(training.SeedLoss()(logits, target))
    ours = CrossEntropyLoss()(logits, target)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, F.cross_entropy(logits, target))


def test_jpeg_tree_has_mmafedb_layout_with_gray_and_rgb_files(jpeg_tree: Path):
    modes = set()
    for split in SPLITS:
        assert sorted(p.name for p in (jpeg_tree / split).iterdir()) == list(CLASS_NAMES)
        for name in CLASS_NAMES:
            files = sorted((jpeg_tree / split / name).iterdir())
            assert len(files) == (10 if split == "train" else 2)
            assert {f.suffix for f in files} == {".jpg"}
            for file in files:
                with Image.open(file) as image:
                    assert image.format == "JPEG" and image.size == (48, 48)
                    modes.add(image.mode)
    assert modes == {"L", "RGB"}
    assert json.loads((jpeg_tree / bench_data.DATA_KEY_FILE).read_text())["train_per_class"] == 10
    assert not [p for p in jpeg_tree.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_jpeg_tree_is_reused_until_the_request_changes(tmp_path: Path):
    out = tmp_path / "bench"
    bench_data.ensure_jpeg_tree(out, train_images=7, eval_per_class=1)
    first = (out / "train" / "angry" / "0.jpg").stat().st_mtime_ns
    time.sleep(0.01)
    bench_data.ensure_jpeg_tree(out, train_images=7, eval_per_class=1)
    assert (out / "train" / "angry" / "0.jpg").stat().st_mtime_ns == first
    bench_data.ensure_jpeg_tree(out, train_images=14, eval_per_class=1)
    assert len(list((out / "train" / "angry").iterdir())) == 2


def _context(tmp_path: Path, images: int) -> harness.BenchContext:
    return harness.BenchContext(data_dir=tmp_path, device=torch.device("cpu"), images=images, seconds=60.0)


def test_measure_steps_times_the_budget_after_untimed_warmup(tmp_path: Path):
    calls = []

    def step(batch: int) -> int:
        calls.append(batch)
        return 4

    measurement = harness.measure_steps(_context(tmp_path, images=10), iter(range(100)), step)
    assert calls == [0, 1, 2, 3, 4]  # 2 warm-up batches, then 3 batches of 4 reach 10 images
    assert measurement.images == 12 and measurement.seconds > 0


def test_endless_starts_a_new_epoch_and_refuses_empty_data():
    assert [b for _, b in zip(range(5), harness.endless([1, 2]), strict=False)] == [1, 2, 1, 2, 1]
    with pytest.raises(ValueError, match="empty"):
        next(harness.endless([]))


def test_seed_model_trains_only_the_last_layer_and_stays_in_train_mode():
    model = training.seed_model(train_backbone=False)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.3.weight", "classifier.3.bias"]
    assert model.classifier[3].out_features == 7
    assert model.training and all(m.training for m in model.modules())


def test_x_seed_divides_by_the_compared_seed_row(tmp_path: Path):
    def row(name: str, compare_to: str | None) -> harness.Row:
        return harness.Row(name, "test", lambda ctx: None, compare_to, frozenset({"cpu"}))

    results = [
        harness.Result(
            row("seed/a", "seed/a"), harness.Measurement(images=100, seconds=2.0, peak_memory_mb=10)
        ),
        harness.Result(
            row("fer/a", "seed/a"), harness.Measurement(images=100, seconds=0.5, peak_memory_mb=12)
        ),
        harness.Result(row("fer/b", None), harness.Measurement(images=10, seconds=1.0, other_cpu=0.5)),
        harness.Result(row("fer/c", "seed/a"), error="RuntimeError: boom"),
    ]
    assert [harness.ratio(r, results) for r in results] == [1.0, 4.0, None, None]
    header = harness.make_header(_context(tmp_path, images=100), peak_resettable=True)
    table = harness.format_table(header, results)
    assert "| fer/a | test | 100 | 200.0 | seed/a | 4.00 | 12 |" in table
    assert "| fer/c | test | failed: RuntimeError: boom |" in table
    assert "- fer/b: **other processes used 50% of the CPUs during this row: rerun it**" in table


def test_other_cpu_meter_gives_the_share_of_the_machine_that_other_processes_used(monkeypatch):
    # the machine's busy CPU seconds grew by 1.0 in 1 s of wall time on 2 CPUs, this process's own by 0.2
    busy, own, clock = iter([100.0, 101.0]), iter([10.0, 10.2]), iter([0.0, 1.0])
    monkeypatch.setattr(harness, "_busy_cpu_seconds", lambda: next(busy))
    monkeypatch.setattr(harness, "_own_cpu_seconds", lambda: next(own))
    monkeypatch.setattr(harness.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(harness.os, "cpu_count", lambda: 2)
    with harness.other_cpu_meter() as other_cpu:
        pass
    assert other_cpu() == pytest.approx(0.4)


def test_bench_prints_a_table_and_writes_json(jpeg_tree: Path, tmp_path: Path, capsys):
    out = tmp_path / "b.json"
    args = ["--data", str(jpeg_tree), "--rows", "seed/loader@224", "--images", "64", "--threads", "1"]
    assert bench_cli.main([*args, "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| row | what it measures | images | images/s | vs | ratio | peak memory (MB) |" in table
    assert "| seed/loader@224 |" in table
    result = json.loads(out.read_text())
    assert result["header"]["device"] == "cpu" and result["header"]["cpu_threads"] == 1
    (row,) = result["rows"]
    assert row["name"] == "seed/loader@224" and row["images"] >= 64
    assert row["images_per_s"] > 0 and row["ratio"] == 1.0 and row["error"] is None


@pytest.mark.slow
def test_bench_seed_training_and_model_alone_rows_run(jpeg_tree: Path, tmp_path: Path):
    out = tmp_path / "b.json"
    rows = "seed/last_layer@224,seed/full@224,model-alone/mobilenet_v3_small@112"
    args = ["--data", str(jpeg_tree), "--rows", rows, "--images", "32", "--threads", "1", "--out", str(out)]
    assert bench_cli.main(args) == 0
    result = {row["name"]: row for row in json.loads(out.read_text())["rows"]}
    assert list(result) == rows.split(",")
    assert all(row["images_per_s"] > 0 for row in result.values())
    assert result["model-alone/mobilenet_v3_small@112"]["ratio"] > 0


def test_cuda_without_a_gpu_is_a_one_line_error(jpeg_tree: Path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert bench_cli.main(["--data", str(jpeg_tree), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fer: error: --device cuda") and err.count("\n") == 1


def test_unknown_row_and_missing_data_are_user_errors(jpeg_tree: Path, tmp_path: Path, capsys):
    assert bench_cli.main(["--data", str(jpeg_tree), "--rows", "seed/nope"]) == 2
    assert "no row named 'seed/nope'" in capsys.readouterr().err
    assert bench_cli.main(["--data", str(tmp_path / "missing"), "--rows", "seed/loader@224"]) == 2
    assert capsys.readouterr().err.startswith("fer: error: Data folder not found")


@pytest.mark.slow
def test_fer_rows_run_on_fer_code_and_compare_to_the_seed(jpeg_tree: Path, tmp_path: Path):
    out = tmp_path / "b.json"
    rows = "seed/last_layer@224,fer/pack,fer/loader@224,fer/last_layer@224,fer/cache/last_layer/*"
    args = ["--data", str(jpeg_tree), "--rows", rows, "--images", "32", "--threads", "1", "--out", str(out)]
    assert bench_cli.main(args) == 0
    result = {row["name"]: row for row in json.loads(out.read_text())["rows"]}
    assert result["fer/pack"]["images"] == 70 and "all of MMAFEDB" in result["fer/pack"]["notes"]
    assert result["fer/last_layer@224"]["compare_to"] == "seed/last_layer@224"
    assert result["fer/last_layer@224"]["ratio"] > 0 and result["fer/loader@224"]["images"] >= 32
    assert result["fer/cache/last_layer/pass"]["images"] == 70  # one view of every train image
    assert result["fer/cache/last_layer/epochs@256"]["images_per_s"] > 0
    assert not list(jpeg_tree.parent.glob(".*-cache-*"))  # scratch caches are removed
