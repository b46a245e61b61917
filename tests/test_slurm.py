"""Sweeps through a real SLURM cluster (``.ci/slurm-up`` starts a one-node one): ``hydra/launcher=slurm``
submits each job with submitit, ``trainer=slurm_sim`` runs it as 2 SLURM tasks that are 2 gloo DDP ranks, and
a requeued job continues from the last.ckpt in its own folder.

The requeued sweep is a real ``python -m fer.train`` process, as a user starts it (its task, defined in
``__main__``, must pickle by reference to fer.train); the other two run the real main in this process. Their
SLURM jobs start interpreters of their own: about a minute for the module on 2 cores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CHILD_ENV, check, fer_main, process_env, tiny_args

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs a SLURM cluster (sbatch): .ci/slurm-up"),
    pytest.mark.skipif(
        find_spec("hydra_plugins.hydra_submitit_launcher") is None,
        reason="needs hydra-submitit-launcher: pip install 'fer[launchers]'",
    ),
]

TIMEOUT = 400  # seconds for one sweep, queueing included
# 56 training images in global batches of 16 (8 per rank): 4 steps per epoch, 2 epochs; last.ckpt every step
RUN = ["trainer.max_epochs=2", "callbacks.last_checkpoint.every_n_train_steps=1", "optimizer.lr=0.01"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10"]


def start_sweep(outputs: Path, *args: str) -> subprocess.Popen:
    env = process_env(outputs)
    return subprocess.Popen(
        [sys.executable, "-m", "fer.train", "-m", *args], env=env, cwd=outputs, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def finish(process: subprocess.Popen) -> str:
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        subprocess.run(["scancel", "--user", os.environ.get("USER", "root")], check=False)
        pytest.fail(f"the sweep did not end within {TIMEOUT} s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-5000:]
    return output


def run_sweep(outputs: Path, *args: str) -> str:
    """``python -m fer.train -m args`` through its real main in this process (its SLURM jobs with one CPU
    thread each, as the processes that the tests start): what it printed."""
    return check(fer_main("fer.train", "-m", *args, outputs=outputs, env=CHILD_ENV)).output


def sweep_folder(outputs: Path) -> Path:
    (sweep,) = sorted((outputs / "train" / "multiruns").iterdir())
    return sweep


def metrics(job: Path) -> dict[str, float]:
    return json.loads((job / "metrics.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def grid(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-job grid sweep through SLURM, each job 2 tasks (2 DDP ranks on CPU): its sweep folder."""
    outputs = tmp_path_factory.mktemp("slurm_grid")
    run_sweep(outputs, *SLURM, *tiny_args(tiny_data, "trainer=slurm_sim", *RUN, "seed=1,2"))
    return sweep_folder(outputs)


def test_grid_sweep_runs_each_job_as_two_slurm_tasks_in_its_own_folder(grid):
    jobs = sorted(p.name for p in grid.iterdir() if (p / ".hydra").is_dir())
    assert jobs == ["0_seed=1", "1_seed=2"]
    for job in jobs:
        assert (grid / job / "checkpoints" / "last.ckpt").is_file()
        assert "test/acc" in metrics(grid / job)
        log = (grid / job / "train.log").read_text()
        assert "World size 2 (this process: rank 0)" in log and "World size 2 (this process: rank 1)" in log
    (script,) = grid.glob(".submitit/*/*_submission.sh")
    lines = script.read_text().splitlines()
    assert "#SBATCH --ntasks-per-node=2" in lines and "#SBATCH --nodes=1" in lines
    assert "#SBATCH --array=0-1%2" in lines  # one array task per job
    summary = json.loads((grid / "summary.json").read_text())
    assert [(job["folder"], job["status"]) for job in summary] == [
        ("0_seed=1", "completed"),
        ("1_seed=2", "completed"),
    ]


def test_optuna_sweep_through_slurm_writes_its_results(tiny_data, outputs):
    args = tiny_args(tiny_data, "trainer=cpu", "trainer.max_epochs=1")
    output = run_sweep(
        outputs, "hparams_search=optuna", "hparams_search.n_trials=2", "hydra.sweeper.n_jobs=2", *SLURM, *args
    )
    sweep = sweep_folder(outputs)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = max(metrics(job)["val/acc_best"] for job in sweep.iterdir() if (job / ".hydra").is_dir())
    assert results["best_value"] == pytest.approx(best)
    assert "2 jobs, 2 completed, 0 failed" in output


def last_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:  # not written yet, or being replaced
        return -1


def scontrol(*args: str) -> None:
    check(subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30))


def release_requeued(job_id: str, timeout: float = 60) -> None:
    """SLURM holds a requeued batch job for about 2 minutes (its BeginTime): once it is pending again, let it
    start now."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        squeue = ["squeue", "-h", "-j", job_id, "-o", "%T %r"]
        state = subprocess.run(squeue, capture_output=True, text=True, timeout=30).stdout.split()
        if state[:2] == ["PENDING", "BeginTime"]:
            scontrol("update", f"JobId={job_id}", "StartTime=now")
            return
        time.sleep(0.2)
    pytest.fail(f"SLURM job {job_id} was not pending again {timeout} s after its requeue")


def test_job_requeued_at_its_time_limit_signal_continues_from_its_last_checkpoint_to_the_same_result(
    tiny_data, outputs, grid
):
    process = start_sweep(outputs, *SLURM, *tiny_args(tiny_data, "trainer=slurm_sim", *RUN, "seed=1"))
    deadline = time.monotonic() + TIMEOUT
    requeued = None
    while process.poll() is None and time.monotonic() < deadline and requeued is None:
        found = list((outputs / "train" / "multiruns").glob("*/0/checkpoints/last.ckpt"))
        if found and last_step(found[0]) >= 5:  # in the last epoch: its train sums come from the checkpoint
            (job_id,) = [p.name for p in found[0].parents[2].glob(".submitit/*") if p.name.isdigit()]
            # the signal SLURM sends before a job's time limit: submitit's handler (the one owner of the
            # requeue; Lightning's is off) requeues the job, which runs the same sweep job again
            check(
                subprocess.run(
                    ["scancel", "--signal=USR2", job_id], capture_output=True, text=True, timeout=30
                )
            )
            release_requeued(job_id)
            requeued = job_id
        time.sleep(0.1)
    assert requeued is not None, "the job ended before it could be requeued"
    finish(process)

    job = sweep_folder(outputs) / "0"
    (resumed,) = (job / ".hydra").glob("resume-*")  # the second start continued the run in its folder
    assert json.loads((resumed / "run_info.json").read_text())["resumed_from"] == str(
        job / "checkpoints" / "last.ckpt"
    )
    expected = metrics(grid / "0_seed=1")  # the same configuration, never interrupted
    got = metrics(job)
    assert set(got) == set(expected)
    for name, value in expected.items():
        if name != "run/seconds":  # a wall time
            assert got[name] == pytest.approx(value, abs=1e-6), name
