"""Experiment trackers beside TensorBoard: each run's hyper-parameters and final metrics, read back with the
trackers' own readers (MLflow's client on its real local store, wandb's reader of an offline run)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import check, events, fer_main, run_dirs, tiny_args

mlflow = pytest.importorskip("mlflow", reason="needs the tracking extra: pip install 'fer[tracking]'")

RUN = ["trainer.max_epochs=1", "optimizer.lr=0.002", "seed=3"]


def final_metrics(run: Path) -> dict[str, float]:
    return json.loads((run / "metrics.json").read_text())["metrics"]


def mlflow_run(tracking_uri: str, run: Path):
    client = mlflow.MlflowClient(tracking_uri)
    (found,) = client.search_runs(
        [client.get_experiment_by_name("fer-train").experiment_id], f"attributes.run_name = '{run.name}'"
    )
    return found


def test_mlflow_run_in_the_local_store_holds_hyperparameters_and_final_metrics(
    tiny_data, outputs, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    check(fer_main("fer.train", "logger=mlflow", *tiny_args(tiny_data, *RUN), outputs=outputs))
    (run,) = run_dirs(outputs)
    store = outputs / "mlflow" / "mlflow.db"
    found = mlflow_run(f"sqlite:///{store}", run)
    assert found.info.status == "FINISHED"
    assert found.data.params["optimizer/lr"] == "0.002" and found.data.params["seed"] == "3"
    assert found.data.params["model/backbone"] == "mobilenet_v3_small"
    assert found.data.tags["run_folder"] == str(run)
    expected = final_metrics(run)
    for name in ("val/acc_best", "test/acc", "test/f1_macro"):
        assert found.data.metrics[name] == pytest.approx(expected[name]), name
    assert "test/acc" in events(run).Tags()["scalars"]  # TensorBoard as well


def wandb_offline_summary(run: Path) -> dict:
    """wandb's own reader of the offline run's transaction log (``wandb leet inspect``)."""
    (offline,) = (run / "wandb").glob("offline-run-*")
    wandb_cli = [sys.executable, "-c", "from wandb.cli.cli import cli; cli()"]
    result = subprocess.run(
        [*wandb_cli, "leet", "inspect", "--summary", "--json", str(offline)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_mlflow_from_the_environment_and_wandb_offline_at_once(tiny_data, outputs, tmp_path):
    pytest.importorskip("wandb", reason="needs the tracking extra: pip install 'fer[tracking]'")
    server = f"sqlite:///{tmp_path / 'team.db'}"  # what MLFLOW_TRACKING_URI names: here a database
    env = {
        "MLFLOW_TRACKING_URI": server,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
    }
    check(
        fer_main("fer.train", "logger=[mlflow,wandb]", *tiny_args(tiny_data, *RUN), outputs=outputs, env=env)
    )
    (run,) = run_dirs(outputs)
    expected = final_metrics(run)

    assert not (outputs / "mlflow").exists()  # the environment's store, not the local default
    found = mlflow_run(server, run)
    assert found.data.params["optimizer/lr"] == "0.002"
    assert found.data.metrics["test/acc"] == pytest.approx(expected["test/acc"])

    summary = wandb_offline_summary(run)
    assert summary["state"] == "finished" and summary["name"] == run.name and summary["project"] == "fer"
    assert summary["config"]["optimizer/lr"] == 0.002 and summary["config"]["seed"] == 3
    for name in ("val/acc_best", "test/acc"):
        assert summary["summary"][name] == pytest.approx(expected[name]), name
    assert "test/acc" in events(run).Tags()["scalars"]


def test_tracker_that_is_not_installed_names_the_extra(monkeypatch, tmp_path):
    from conftest import compose_train

    from fer.errors import FERError
    from fer.run import tracking

    cfg = compose_train(["logger=wandb"], tmp_path)
    monkeypatch.setattr(tracking, "find_spec", lambda name: None if name == "wandb" else shutil)
    with pytest.raises(
        FERError, match=r"logger=wandb needs the wandb package: pip install 'fer\[tracking\]'"
    ):
        tracking.check_logger_packages(cfg.logger)
