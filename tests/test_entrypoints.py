"""The real entry points (``python -m fer.train`` / ``fer.eval``: Hydra's own main, the real config), run in
this process on tiny generated data; DDP, which starts processes of its own, in a subprocess."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import NO_FIGURES, check, events, fer_main, last_scalar, run_dirs, run_fer, tiny_args

from fer.run.config import CONFIG_DIR

CONTRACT_SCALARS = [
    "train/loss", "train/acc", "val/loss", "val/acc", "val/f1_macro", "val/acc_balanced", "val/acc_best",
    "test/loss", "test/acc", "test/f1_macro", "test/acc_balanced", "val/recall/disgust", "test/recall/happy",
    "lr-AdamW", "model/trainable_params",
    "val/ece", "val/nll", "val/brier", "test/ece", "test/nll", "test/brier",
    "test/acc_ci_low", "test/acc_ci_high", "test/f1_macro_ci_low", "test/acc_balanced_ci_high",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-epoch training run shared by the tests below, with the TensorBoard figures: its run folder."""
    outputs = tmp_path_factory.mktemp("outputs")
    args = [a for a in tiny_args(tiny_data, "trainer.max_epochs=2") if a not in NO_FIGURES]
    check(fer_main("fer.train", *args, outputs=outputs))
    (run,) = run_dirs(outputs)
    return run


def test_train_writes_checkpoints_config_and_tensorboard_scalars(trained):
    checkpoints = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(name.startswith("epoch_") for name in checkpoints)
    assert (trained / ".hydra" / "config.yaml").is_file() and (trained / "train.log").is_file()
    saved = json.loads((trained / "metrics.json").read_text())
    assert saved["metrics"]["test/acc"] == pytest.approx(last_scalar(trained, "test/acc"), abs=1e-6)
    assert saved["best_checkpoint"].endswith(".ckpt")
    found = saved["metrics"]
    assert found["test/acc_ci_low"] <= found["test/acc"] <= found["test/acc_ci_high"]
    for name in ("test/ece", "test/nll", "test/brier"):  # the final numbers are the ones TensorBoard got
        assert found[name] == pytest.approx(last_scalar(trained, name), abs=1e-6), name
    accumulator = events(trained)
    scalars = set(accumulator.Tags()["scalars"])
    assert set(CONTRACT_SCALARS) <= scalars, set(CONTRACT_SCALARS) - scalars
    images = {
        "val/confusion_matrix",
        "test/confusion_matrix",
        "val/predictions",
        "val/reliability",
        "val/gradcam",
    }
    assert images | {"test/reliability"} <= set(accumulator.Tags()["images"])
    assert len(accumulator.Images("val/predictions")) == 2  # one grid per epoch
    assert len(accumulator.Scalars("val/acc")) == 2  # one per epoch, the sanity check not counted
    hparams = accumulator.summary_metadata  # the HPARAMS plugin's session summaries
    assert any(meta.plugin_data.plugin_name == "hparams" for meta in hparams.values())


def test_best_checkpoint_is_tested_and_eval_reproduces_it(trained, tmp_path):
    best = [p for p in (trained / "checkpoints").iterdir() if p.name.startswith("epoch_")]
    assert len(best) == 1
    outputs = tmp_path / "eval_outputs"
    outputs.mkdir()
    result = check(
        fer_main("fer.eval", f"ckpt_path={best[0]}", "+trainer.enable_progress_bar=false", outputs=outputs)
    )
    assert "test/acc" in result.stdout
    (eval_run,) = run_dirs(outputs, "eval")
    saved = json.loads((eval_run / "metrics.json").read_text())["metrics"]
    assert saved["test/acc_ci_low"] <= saved["test/acc"] <= saved["test/acc_ci_high"]
    assert "95% CI (bootstrap)" in result.stdout
    for tag in ("test/acc", "test/f1_macro", "test/acc_balanced", "test/loss"):
        assert last_scalar(eval_run, tag) == pytest.approx(last_scalar(trained, tag), abs=1e-4), tag
    valid = check(fer_main("fer.eval", f"ckpt_path={best[0]}", "split=valid", outputs=outputs))
    assert "val/acc" in valid.stdout


def test_checkpoint_alone_gives_a_model_that_predicts(trained, tiny_data):
    from fer.models import FERModule

    model = FERModule.load_from_checkpoint(
        trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    images = [next((tiny_data / "test" / name).iterdir()) for name in ("angry", "happy", "surprise")]
    probabilities = model.predict_images(images)
    assert list(model.class_names) == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert model.preprocessing.image_size == 32
    assert probabilities.shape == (3, 7)
    assert torch.allclose(probabilities.sum(1), torch.ones(3))


def test_resume_from_last_checkpoint_continues_at_the_next_epoch(trained, tiny_data, tmp_path):
    # a copy of the run folder: resuming continues a run in its own folder
    outputs = tmp_path / "resume"
    run = outputs / "train" / "runs" / trained.name
    shutil.copytree(trained, run)
    last = run / "checkpoints" / "last.ckpt"
    before = torch.load(last, map_location="cpu", weights_only=True)
    check(
        fer_main(
            "fer.train", *tiny_args(tiny_data, "trainer.max_epochs=3", f"ckpt_path={last}"), outputs=outputs
        )
    )
    assert run_dirs(outputs) == [run]
    after = torch.load(last, map_location="cpu", weights_only=True)
    steps_per_epoch = before["global_step"] // 2
    assert (before["epoch"], after["epoch"]) == (1, 2)
    assert after["global_step"] == before["global_step"] + steps_per_epoch
    # one validation per epoch in the run's single TensorBoard history: two from the first start, one now
    assert len(events(run).Scalars("val/acc")) == 3


def test_grid_multirun_gives_each_job_its_folder_checkpoint_and_logs(tiny_data, outputs):
    check(
        fer_main(
            "fer.train",
            "-m",
            *tiny_args(tiny_data, "trainer.max_epochs=1", "freeze=none,backbone"),
            outputs=outputs,
        )
    )
    (sweep,) = sorted((outputs / "train" / "multiruns").iterdir())
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_freeze=none", "1_freeze=backbone"]
    for job in jobs:
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        assert "test/acc" in events(sweep / job).Tags()["scalars"]


def test_optuna_sweep_runs_trials_and_reports_the_best(tiny_data, outputs):
    check(
        fer_main(
            "fer.train",
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            *tiny_args(tiny_data, "trainer.max_epochs=1"),
            outputs=outputs,
        )
    )
    (sweep,) = sorted((outputs / "train" / "multiruns").iterdir())
    assert len([p for p in sweep.iterdir() if p.is_dir()]) == 2
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {
        "optimizer.lr",
        "optimizer.weight_decay",
        "freeze",
        "loss.label_smoothing",
    }
    best = max(
        json.loads((job / "metrics.json").read_text())["metrics"]["val/acc_best"]
        for job in sweep.iterdir()
        if job.is_dir()
    )
    assert results["best_value"] == pytest.approx(best)


def test_optuna_records_a_failed_trial_and_the_study_goes_on(tiny_data, outputs):
    # with sampler seed 1 the second trial draws freeze=partial, which 99 trainable blocks make fail
    result = check(
        fer_main(
            "fer.train",
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.sampler.seed=1",
            "++freeze.trainable_blocks=99",
            *tiny_args(tiny_data, "trainer.max_epochs=1"),
            outputs=outputs,
        )
    )
    assert "Failed experiment" in result.stdout + result.stderr
    (sweep,) = sorted((outputs / "train" / "multiruns").iterdir())
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 3 and "freeze=partial" in jobs[1]
    assert (
        not (sweep / jobs[1] / "checkpoints").exists()
        and (sweep / jobs[2] / "checkpoints" / "last.ckpt").is_file()
    )
    assert (
        yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_params"]["freeze"]
        != "partial"
    )


# the recipes of the published data sets run on their own generated files (tests/test_sources.py)
PUBLISHED_DATA_RECIPES = {"fer2013", "ferplus", "rafdb", "affectnet"}
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e not in PUBLISHED_DATA_RECIPES])
def test_every_experiment_runs_with_fast_dev_run(experiment, tiny_data, outputs):
    # MMAFEDB and the ImageNet weights are not available offline: the tiny tree and no pretraining stand in.
    result = fer_main(
        "fer.train",
        f"experiment={experiment}",
        "debug=fdr",
        *tiny_args(tiny_data, "data.batch_size=8"),
        outputs=outputs,
    )
    check(result)
    assert "test/acc" in result.stdout


@pytest.mark.slow
def test_ddp_simulated_on_two_cpu_processes(tiny_data, outputs):
    check(
        run_fer(
            "fer.train", "trainer=ddp_sim", *tiny_args(tiny_data, "trainer.max_epochs=1"), outputs=outputs
        )
    )
    (run,) = run_dirs(outputs)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # 56 train images, global batch 16 = 8 per process: 4 steps per epoch on each of the 2 processes
    assert checkpoint["global_step"] == 4


def test_cfg_job_prints_a_readable_config_and_help_lists_groups(outputs):
    result = check(fer_main("fer.train", "--cfg", "job", "experiment=quickstart", outputs=outputs))
    config = yaml.safe_load(result.stdout)
    assert config["model"]["backbone"] == "mobilenet_v3_small" and config["freeze"]["policy"] == "none"
    assert config["data"]["synthetic"]["train_per_class"] > 0
    help_text = check(fer_main("fer.train", "--help", outputs=outputs)).stdout
    for line in (
        "freeze: backbone, gradual, last_layer, none, partial",
        "trainer: cpu, ddp, ddp_sim, default, gpu, mps",
        "experiment: affectnet, fer2013, ferplus, finetune, quickstart, rafdb, seed",
    ):
        assert line in help_text


def test_feature_cache_trains_the_head_and_eval_accepts_the_checkpoint(tiny_data, outputs, tmp_path):
    extra = ["freeze=last_layer", "data.feature_cache=true", f"data.cache_dir={tmp_path / 'cache'}"]
    result = check(
        fer_main("fer.train", *tiny_args(tiny_data, "trainer.max_epochs=2", *extra), outputs=outputs)
    )
    (run,) = run_dirs(outputs)
    log = (run / "train.log").read_text()
    assert "train: computed features (1, 56, 1024)" in log and "valid: computed features (1, 28, 1024)" in log
    assert "test/acc" in result.stdout
    best = next(p for p in (run / "checkpoints").iterdir() if p.name.startswith("epoch_"))
    eval_outputs = tmp_path / "eval"
    eval_outputs.mkdir()
    check(
        fer_main("fer.eval", f"ckpt_path={best}", "+trainer.enable_progress_bar=false", outputs=eval_outputs)
    )
    (eval_run,) = run_dirs(eval_outputs, "eval")
    assert last_scalar(eval_run, "test/acc") == pytest.approx(last_scalar(run, "test/acc"), abs=1e-4)
    # validation on cached features gave the accuracy that the whole network gives on the images
    check(fer_main("fer.eval", f"ckpt_path={best}", "split=valid", outputs=eval_outputs))
    (_, valid_run) = run_dirs(eval_outputs, "eval")
    assert last_scalar(valid_run, "val/acc") == pytest.approx(last_scalar(run, "val/acc_best"), abs=1e-4)


def test_per_image_path_trains_with_packed_off(tiny_data, outputs):
    result = check(
        fer_main(
            "fer.train", *tiny_args(tiny_data, "trainer.max_epochs=1", "data.packed=false"), outputs=outputs
        )
    )
    assert "test/acc" in result.stdout
    (run,) = run_dirs(outputs)
    assert "Packed" not in (run / "train.log").read_text()
