"""Faults a long run must survive, through the real entry point: kill -9 and resume, NaN loss, failing sweep
jobs, interrupted Optuna studies, unwritable folders; and the same seed giving the same run.

The runs that are killed (and the one with a file-size limit) are real processes; the others run the same
entry point in this process (``fer_main``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch
from conftest import TINY, check, fer_main, process_env, run_dirs
from lightning import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# 56 training images in batches of 16: 4 steps per epoch, 3 epochs; last.ckpt after every step
RUN = [*TINY, "trainer.max_epochs=3", "callbacks.last_checkpoint.every_n_train_steps=1", "optimizer.lr=0.01"]


def train_args(data: Path, *extra: str) -> list[str]:
    return ["data=mmafedb", f"data.data_dir={data}", *RUN, *extra]


def metrics(run: Path) -> dict[str, float]:
    return json.loads((run / "metrics.json").read_text())["metrics"]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def checkpoint_step(path: Path) -> int | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"]
    except Exception:  # not written yet
        return None


def kill_when(args: list[str], outputs: Path, ready, poll: float = 0.02) -> None:
    """Start ``python -m fer.train args`` and kill -9 it as soon as ``ready()`` holds (the process goes on
    working meanwhile, so the kill lands wherever it is by then)."""
    env = process_env(outputs)
    process = subprocess.Popen(
        [sys.executable, "-m", "fer.train", *args], env=env, cwd=outputs, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if ready():
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(poll)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"


def train_and_kill(data: Path, outputs: Path, after_step: int, *extra: str) -> Path:
    """Start a run, and kill -9 it once its last.ckpt holds at least ``after_step`` steps."""

    def checkpointed() -> bool:
        found = list((outputs / "train" / "runs").glob("*/checkpoints/last.ckpt"))
        step = checkpoint_step(found[0]) if found else None
        return step is not None and step >= after_step

    kill_when(train_args(data, *extra), outputs, checkpointed)
    (run,) = run_dirs(outputs)
    return run


class StopFirstStart(Callback):
    """Ends the first start of a run where a kill would: before training step ``at_step + 1`` (last.ckpt then
    holds ``at_step`` steps), or with no ``at_step`` as its test starts. A resumed start goes on."""

    def __init__(self, at_step: int | None = None) -> None:
        self.at_step = at_step
        self.resumed = False

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.resumed = self.resumed or trainer.state.fn == "fit"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if not self.resumed and trainer.global_step == self.at_step:
            raise RuntimeError(f"stopped after step {self.at_step}")

    def on_test_start(self, trainer, pl_module) -> None:
        if not self.resumed and self.at_step is None:
            raise RuntimeError("stopped as the test starts")


def train_and_stop(data: Path, outputs: Path, at_step: int | None, *extra: str) -> Path:
    """A run of this process stopped by :class:`StopFirstStart` (``at_step``); its folder."""
    stop = [
        f"+callbacks.stop._target_={__name__}.StopFirstStart",
        f"+callbacks.stop.at_step={'null' if at_step is None else at_step}",
    ]
    with pytest.raises(RuntimeError, match=r"^stopped "):
        fer_main("fer.train", *train_args(data, *stop, *extra), outputs=outputs)
    (run,) = run_dirs(outputs)
    return run


@pytest.fixture(scope="module")
def references(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The uninterrupted run of a configuration (extra overrides), trained once per module."""
    runs: dict[tuple[str, ...], Path] = {}

    def reference(*extra: str) -> Path:
        if extra not in runs:
            outputs = tmp_path_factory.mktemp("uninterrupted")
            check(fer_main("fer.train", *train_args(tiny_data, *extra), outputs=outputs))
            (runs[extra],) = run_dirs(outputs)
        return runs[extra]

    return reference


@pytest.fixture(scope="module")
def uninterrupted(references) -> Path:
    return references()


def assert_same_run(run: Path, reference: Path, exact: bool = False) -> None:
    expected, got = metrics(reference), metrics(run)
    assert set(got) == set(expected)
    for name, value in expected.items():
        if name == "run/seconds":  # wall time: the one number a run does not repeat
            continue
        if exact:
            assert got[name] == value, name
        else:
            assert got[name] == pytest.approx(value, abs=1e-6), name
    mine, theirs = (
        weights(run / "checkpoints" / "last.ckpt"),
        weights(reference / "checkpoints" / "last.ckpt"),
    )
    assert mine.keys() == theirs.keys()
    for key in theirs:
        if exact:
            assert torch.equal(mine[key], theirs[key]), key
        else:
            torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize(
    ("stop", "step", "how", "extra"),
    [
        ("kill -9", 5, "resume", ()),
        ("in-process", 4, "ckpt_path", ()),
        ("in-process", 6, "resume", ("scheduler=onecycle",)),
    ],
    ids=["killed-mid-epoch-1-resume", "epoch-0-end-ckpt_path", "mid-epoch-1-onecycle"],
)
def test_killed_run_resumes_in_its_folder_to_the_same_result(
    stop, step, how, extra, tiny_data, tmp_path, references
):
    # step 4 ends epoch 0: the checkpoint written after every other callback has seen the epoch's end
    # (one-cycle counts the run's steps when its optimizer is built, before the checkpoint is restored)
    uninterrupted = references(*extra)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    if stop == "kill -9":
        run = train_and_kill(tiny_data, outputs, step, *extra)
    else:
        run = train_and_stop(tiny_data, outputs, step, *extra)
        assert checkpoint_step(run / "checkpoints" / "last.ckpt") == step
    assert not (run / "metrics.json").exists()
    target = f"resume={run}" if how == "resume" else f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    # no other override: the run's recorded configuration is used again
    check(fer_main("fer.train", target, outputs=outputs))

    assert run_dirs(outputs) == [run]  # continued in place, no new run folder
    assert_same_run(run, uninterrupted)
    # one TensorBoard history: each epoch's validation logged once, at the steps of the uninterrupted run
    for tag in ("val/acc", "train/loss"):
        got, expected = scalars(run, tag), scalars(uninterrupted, tag)
        assert [step for step, _ in got] == [step for step, _ in expected]
        assert [value for _, value in got] == pytest.approx([value for _, value in expected], abs=1e-6)
    # each start kept its own configuration record; nothing half-written remains
    (resumed,) = (run / ".hydra").glob("resume-*")
    assert (resumed / "run_info.json").is_file() and (run / ".hydra" / "run_info.json").is_file()
    assert json.loads((resumed / "run_info.json").read_text())["resumed_from"].endswith("last.ckpt")
    assert not list((run / "checkpoints").glob(".*.tmp"))


def test_run_stopped_during_its_test_resumes_to_the_full_metrics_of_the_uninterrupted_run(
    tiny_data, outputs, uninterrupted
):
    run = train_and_stop(tiny_data, outputs, None)  # where a kill during the (long) test of a real run lands
    assert not (run / "metrics.json").exists() and (run / "fit_metrics.json").is_file()

    # the resumed start has nothing left to train: the fit's metrics come from the earlier start
    result = check(fer_main("fer.train", f"resume={run}", outputs=outputs))
    assert "was not logged" not in result.output
    assert_same_run(run, uninterrupted)
    assert metrics(run)["val/acc_best"] == metrics(uninterrupted)["val/acc_best"]


def test_same_seed_gives_identical_metrics_and_weights(tiny_data, tmp_path, uninterrupted):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    check(fer_main("fer.train", *train_args(tiny_data), outputs=outputs))
    (run,) = run_dirs(outputs)
    assert_same_run(run, uninterrupted, exact=True)
    # and a different seed gives a different run (the test can tell runs apart)
    other = tmp_path / "other"
    other.mkdir()
    check(fer_main("fer.train", *train_args(tiny_data, "seed=7"), outputs=other))
    (run7,) = run_dirs(other)
    first = next(k for k in weights(run7 / "checkpoints" / "last.ckpt") if k.startswith("model."))
    assert not torch.equal(
        weights(run7 / "checkpoints" / "last.ckpt")[first], weights(run / "checkpoints" / "last.ckpt")[first]
    )


def test_run_folder_records_config_overrides_versions_and_commit(uninterrupted):
    record = uninterrupted / ".hydra"
    resolved = (record / "config_resolved.yaml").read_text()
    assert "${" not in resolved and "every_n_train_steps: 1" in resolved
    info = json.loads((record / "run_info.json").read_text())
    assert "callbacks.last_checkpoint.every_n_train_steps=1" in info["overrides"]
    assert info["packages"]["torch"] == metadata.version("torch")
    assert info["packages"]["lightning"] == metadata.version("lightning") and info["packages"]["python"]
    assert info["seed"] == 42
    git = info["git"]
    assert git["commit"] is None or (len(git["commit"]) == 40 and isinstance(git["dirty"], bool))


def test_nan_loss_stops_naming_step_and_learning_rate_and_keeps_finite_checkpoints(tiny_data, outputs):
    result = fer_main("fer.train", *train_args(tiny_data, "optimizer.lr=1e6"), outputs=outputs)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("fer: error:")]
    assert "The training loss became nan at step" in line and "optimizer.lr=1000000.0" in line
    assert "lower optimizer.lr" in line
    (run,) = run_dirs(outputs)
    last = weights(run / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(t).all() for t in last.values() if t.is_floating_point())


def test_grid_sweep_runs_every_job_and_ends_with_a_summary_of_failures(tiny_data, outputs):
    result = fer_main(
        "fer.train",
        "-m",
        *train_args(tiny_data, "trainer.max_epochs=1", "optimizer.lr=1e6,0.001"),
        outputs=outputs,
    )
    assert result.returncode != 0  # a sweep with a failed job fails, after running all of them
    (sweep,) = sorted((outputs / "train" / "multiruns").iterdir())
    jobs = json.loads((sweep / "summary.json").read_text())
    assert [(job["job"], job["status"]) for job in jobs] == [(0, "failed"), (1, "completed")]
    assert jobs[0]["error"].startswith("NonFiniteLossError: The training loss became nan at step")
    assert (sweep / jobs[1]["folder"] / "metrics.json").is_file()
    summary = (sweep / "summary.md").read_text()
    assert "2 jobs, 1 completed, 1 failed" in summary and "2 jobs, 1 completed, 1 failed" in result.stderr


def finished_trials(database: Path) -> list[str]:
    """The states of the study's trials; none while Optuna has not yet created its tables."""
    with sqlite3.connect(database) as connection:
        if not connection.execute("SELECT name FROM sqlite_master WHERE name = 'trials'").fetchall():
            return []
        return [state for (state,) in connection.execute("SELECT state FROM trials ORDER BY number")]


def test_optuna_study_in_sqlite_resumes_after_the_sweep_is_killed(tiny_data, outputs):
    database = outputs / "studies" / "fer.db"
    args = [
        "hparams_search=optuna",
        "hparams_search.n_trials=3",
        f"hparams_search.storage={database}",
        *["data=mmafedb", f"data.data_dir={tiny_data}", *TINY, "trainer.max_epochs=1"],
    ]
    kill_when(
        args,
        outputs,
        lambda: database.is_file() and finished_trials(database).count("COMPLETE") >= 1,
        poll=0.1,
    )
    before = finished_trials(database)
    assert before.count("COMPLETE") in (1, 2) and len(before) <= 3

    result = check(fer_main("fer.train", *args, outputs=outputs))
    assert "trials finished" in result.stdout + result.stderr
    after = finished_trials(database)
    assert after.count("COMPLETE") == 3  # the interrupted trial was run again, nothing more
    with sqlite3.connect(database) as connection:
        params = connection.execute(
            "SELECT trial_id, param_value FROM trial_params WHERE param_name = 'optimizer.lr'"
        ).fetchall()
    assert len({value for _, value in params}) == len(params)  # no trial repeated a stored one


def test_unwritable_output_folder_is_one_clear_error(tiny_data, tmp_path, outputs):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    result = fer_main(
        "fer.train", *train_args(tiny_data), outputs=outputs, env={"FER_OUTPUT_DIR": str(blocker / "outputs")}
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("fer: error:")]
    assert "Cannot write to the output folder" in line and str(blocker) in line and "paths.log_dir" in line


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Writes past ``limit`` bytes fail the way they do on a full disk (the OS refuses them), in this process."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_checkpoint_that_does_not_fit_is_one_clear_error(tiny_data, outputs):
    with file_size_limit(2_000_000):  # the ~10 MB checkpoint does not fit
        result = fer_main("fer.train", *train_args(tiny_data, "trainer.max_epochs=1"), outputs=outputs)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("fer: error:")]
    assert "Cannot write the checkpoint" in line and "File too large" in line
    (run,) = run_dirs(outputs)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_deterministic_mode_trains_and_repeats_exactly(tiny_data, tmp_path):
    runs = []
    for name in ("first", "second"):
        outputs = tmp_path / name
        outputs.mkdir()
        result = check(
            fer_main(
                "fer.train",
                *train_args(tiny_data, "trainer.max_epochs=1", "trainer.deterministic=true"),
                outputs=outputs,
            )
        )
        assert "global average pooling computed as a mean" in result.stdout + result.stderr
        (run,) = run_dirs(outputs)
        runs.append(run)
    assert_same_run(runs[1], runs[0], exact=True)


def test_per_image_path_resumes_to_the_same_result_whatever_the_workers(tiny_data, tmp_path):
    """data.packed=false: the order and each image's augmentation come from (seed, epoch, position), so a
    run loaded by 2 worker processes, killed and resumed, equals one loaded in the main process."""
    reference_outputs = tmp_path / "reference"
    reference_outputs.mkdir()
    check(fer_main("fer.train", *train_args(tiny_data, "data.packed=false"), outputs=reference_outputs))
    (reference,) = run_dirs(reference_outputs)

    outputs = tmp_path / "outputs"
    outputs.mkdir()
    run = train_and_stop(tiny_data, outputs, 6, "data.packed=false", "data.num_workers=2")
    check(fer_main("fer.train", f"resume={run}", outputs=outputs))
    assert_same_run(run, reference)
