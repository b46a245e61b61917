"""Sweeps on other launchers than Hydra's basic one: jobs side by side (``hydra/launcher=parallel``, joblib's
real loky processes), Optuna trials n at a time, an interrupted grid sweep resumed in its folder, and the
checks that keep multi-device and SLURM runs honest. (The SLURM launcher's tests are in test_slurm.py.)"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
import yaml
from conftest import assert_clean_error, check, fer_main, process_env, tiny_args

from fer.errors import FERError
from fer.run.launch import check_slurm_allocation
from fer.workers import available_cores

needs_joblib = pytest.mark.skipif(
    find_spec("hydra_plugins.hydra_joblib_launcher") is None,
    reason="needs hydra-joblib-launcher: pip install 'fer[launchers]'",
)
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


@pytest.fixture(scope="module")
def joblib_workers():
    """Joblib keeps its worker processes for the next sweep: the sweeps here share two (each names its
    outputs with ``paths.log_dir``, so the workers' environment does not matter), stopped at the end."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)
    yield
    get_reusable_executor().shutdown(wait=True)


def log_span(job: Path) -> tuple[datetime, datetime]:
    """When a job's log says it started and ended."""
    stamps = [STAMP.match(line) for line in (job / "train.log").read_text().splitlines()]
    times = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") for m in stamps if m]
    return times[0], times[-1]


def sweep_folder(outputs: Path) -> Path:
    (sweep,) = sorted((outputs / "train" / "multiruns").iterdir())
    return sweep


def job_folders(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())


@needs_joblib
def test_parallel_jobs_run_at_once_each_in_its_folder_with_its_share_of_the_cores(
    tiny_data, outputs, joblib_workers
):
    # long enough that the second worker process is up (it imports torch) before the first job ends
    args = tiny_args(tiny_data, "trainer.max_epochs=6", "seed=1,2", f"paths.log_dir={outputs}")
    check(
        fer_main(
            "fer.train", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *args, outputs=outputs
        )
    )
    sweep = sweep_folder(outputs)
    jobs = job_folders(sweep)
    assert [job.name for job in jobs] == ["0_seed=1", "1_seed=2"]
    (start0, end0), (start1, end1) = (log_span(job) for job in jobs)
    assert start0 < end1 and start1 < end0, "the two jobs did not overlap in time"
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert "test/acc" in json.loads((job / "metrics.json").read_text())["metrics"]
        assert f"CPU threads: {max(available_cores() // 2, 1)}" in (job / "train.log").read_text()
    summary = json.loads((sweep / "summary.json").read_text())
    assert [(job["folder"], job["status"]) for job in summary] == [
        ("0_seed=1", "completed"),
        ("1_seed=2", "completed"),
    ]


@needs_joblib
def test_optuna_trials_two_at_a_time_in_shared_sqlite_storage(tiny_data, outputs, joblib_workers):
    database = outputs / "fer.db"
    # jobs of a few seconds each, longer than the gap between the two workers' starts, so that they overlap
    args = tiny_args(tiny_data, "trainer.max_epochs=4", f"paths.log_dir={outputs}")
    check(
        fer_main(
            "fer.train", "hparams_search=optuna", "hparams_search.n_trials=2", f"hparams_search.storage={database}",
            "hydra.sweeper.n_jobs=2", "hydra/launcher=parallel", *args, outputs=outputs,
        )
    )  # fmt: skip
    sweep = sweep_folder(outputs)
    (start0, end0), (start1, end1) = (log_span(job) for job in job_folders(sweep))
    assert start0 < end1 and start1 < end0
    with sqlite3.connect(database) as connection:
        states = [state for (state,) in connection.execute("SELECT state FROM trials ORDER BY number")]
        params = connection.execute(
            "SELECT trial_id, param_name, param_value FROM trial_params ORDER BY trial_id, param_name"
        ).fetchall()
    assert states == ["COMPLETE", "COMPLETE"]
    by_trial: dict[int, tuple] = {}
    for trial, name, value in params:
        by_trial[trial] = (*by_trial.get(trial, ()), (name, value))
    assert len(set(by_trial.values())) == 2  # the two trials asked at once drew different parameters
    assert "best_params" in yaml.safe_load((sweep / "optimization_results.yaml").read_text())


def started_sweep_killed_in_job(args: list[str], outputs: Path, job: str, after_step: int) -> Path:
    """Start ``python -m fer.train -m args`` and kill -9 it once job ``job``'s last.ckpt holds ``after_step``
    steps (the jobs before it finished; the ones after it never started)."""
    env = process_env(outputs)
    process = subprocess.Popen(
        [sys.executable, "-m", "fer.train", "-m", *args], env=env, cwd=outputs, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    try:
        while process.poll() is None and time.monotonic() < deadline:
            found = list((outputs / "train" / "multiruns").glob(f"*/{job}/checkpoints/last.ckpt"))
            try:
                step = torch.load(found[0], map_location="cpu", weights_only=True, mmap=True)["global_step"]
            except (IndexError, Exception):
                step = -1
            if step >= after_step:
                process.kill()
                break
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -9, "the sweep ended before it could be killed"
    return sweep_folder(outputs)


def test_interrupted_grid_sweep_resumes_in_its_folder(tiny_data, outputs):
    args = tiny_args(
        tiny_data, "trainer.max_epochs=1", "callbacks.last_checkpoint.every_n_train_steps=1", "seed=1,2,3"
    )
    sweep = started_sweep_killed_in_job(args, outputs, "1_seed=2", after_step=2)
    finished = (sweep / "0_seed=1" / "metrics.json").read_text()
    assert not (sweep / "1_seed=2" / "metrics.json").exists() and not (sweep / "2_seed=3").exists()

    # another command's sweep is refused in this folder, before any job runs
    other = tiny_args(tiny_data, "trainer.max_epochs=1", "seed=4,5")
    result = fer_main("fer.train", "-m", *other, f"hydra.sweep.dir={sweep}", outputs=outputs)
    assert_clean_error(result, f"hydra.sweep.dir={sweep}", "seed=4,5", "seed=1,2,3")

    result = check(fer_main("fer.train", "-m", *args, f"hydra.sweep.dir={sweep}", outputs=outputs))
    assert [job.name for job in job_folders(sweep)] == ["0_seed=1", "1_seed=2", "2_seed=3"]
    assert (sweep / "0_seed=1" / "metrics.json").read_text() == finished  # not run again
    assert "finished in an earlier start of this sweep" in (sweep / "0_seed=1" / "train.log").read_text()
    assert not list((sweep / "0_seed=1" / ".hydra").glob("resume-*"))
    (resumed,) = (sweep / "1_seed=2" / ".hydra").glob("resume-*")  # continued from its last.ckpt
    assert json.loads((resumed / "run_info.json").read_text())["resumed_from"].endswith("last.ckpt")
    last = torch.load(sweep / "1_seed=2" / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)
    assert last["global_step"] == 4  # its one epoch of 4 steps, not 2 + 4
    for job in job_folders(sweep):
        assert (job / "metrics.json").is_file()
    summary = json.loads((sweep / "summary.json").read_text())
    assert [(job["folder"], job["status"]) for job in summary] == [
        ("0_seed=1", "completed"), ("1_seed=2", "completed"), ("2_seed=3", "completed"),
    ]  # fmt: skip


def test_multi_device_job_of_a_local_sweep_is_one_clear_error(tiny_data, outputs):
    # Lightning would start the second rank by running the command line (the whole sweep) again
    args = tiny_args(tiny_data, "trainer=ddp_sim", "trainer.max_epochs=1", "seed=1,2")
    result = fer_main("fer.train", "-m", *args, outputs=outputs)
    assert result.returncode == 2
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("fer: error:")]
    assert "trainer.devices=2" in line and "hydra/launcher=slurm trainer=slurm" in line


SLURM_JOB = {
    "SLURM_NTASKS": "4",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_JOB_NAME": "train",
}
SLURM_TRAINER = {"plugins": [{"_target_": "lightning.pytorch.plugins.environments.SLURMEnvironment"}]}


@pytest.mark.parametrize(
    ("trainer", "message"),
    [
        ({"devices": 4, "num_nodes": 2}, "trainer.devices=4, but this SLURM job has 2 task(s) per node"),
        ({"devices": 2, "num_nodes": 1}, "trainer.num_nodes=1, but this SLURM job has 2 node(s)"),
    ],
)
def test_trainer_that_differs_from_the_slurm_allocation_names_both_numbers(trainer, message, monkeypatch):
    for key, value in SLURM_JOB.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(FERError, match=re.escape(message)):
        check_slurm_allocation({**SLURM_TRAINER, **trainer})
    check_slurm_allocation({**SLURM_TRAINER, "devices": 2, "num_nodes": 2})  # the allocation's own numbers


def test_slurm_trainer_outside_slurm_is_one_clear_error(tiny_data, outputs, monkeypatch):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    result = fer_main("fer.train", *tiny_args(tiny_data, "trainer=slurm_sim"), outputs=outputs)
    assert_clean_error(result, "not a task of a SLURM job", "hydra/launcher=slurm")


def test_launcher_whose_plugin_is_missing_names_the_extra(monkeypatch, capsys):
    from fer.run import launch

    monkeypatch.setattr(launch, "find_spec", lambda name: None)
    with pytest.raises(SystemExit) as stopped:
        launch.check_launcher_installed("hydra_plugins.fer_launchers._slurm_launcher.SlurmLauncher")
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "fer: error: hydra/launcher=slurm needs the hydra-submitit-launcher package: pip install 'fer[launchers]'."
    )
