"""Shared fixtures and helpers: tiny generated data, a tiny checkpoint, and the real entry points run
in-process (Hydra's own main, the real config) or, where the process itself is the point, as subprocesses."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fer.data.sources import EXPRESSIONS as CLASS_NAMES
from fer.data.synthetic import generate_synthetic_dataset

HYDRA_COMMANDS = ("fer.train", "fer.eval", "fer.calibrate")  # key=value command lines, Hydra's own main

# pytest-xdist runs one worker per core: each worker's torch, and the processes it starts, use one thread
# (tiny runs are faster on one thread than on two, and two workers with two threads each fight for the cores)
ONE_THREAD = {"OMP_NUM_THREADS": "1"} if os.environ.get("PYTEST_XDIST_WORKER") else {}


def pytest_configure(config: pytest.Config) -> None:
    if ONE_THREAD:
        import torch

        torch.set_num_threads(1)


# the longest test files (a minute or more of real processes each) start first, so that the workers end
# together instead of one of them running the README's commands alone at the end
LONGEST_FIRST = (
    "test_readme.py",
    "test_slurm.py",
    "test_faults.py",
    "test_launchers.py",
    "test_schedules.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# the TensorBoard figures (confusion matrices, reliability diagrams, the prediction grid with its Grad-CAM maps)
# take a third of a tiny run: tiny runs leave them out, but for the tests that check them
NO_FIGURES = ["~callbacks.confusion_matrix", "~callbacks.reliability_diagram", "~callbacks.prediction_grid"]

# tiny runs: small images, small batches, no workers, no progress bars, no figures
TINY = [
    "data.image_size=32",
    "data.batch_size=16",
    "data.eval_batch_size=64",
    "data.num_workers=0",
    "model.pretrained=false",
    "+trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    *NO_FIGURES,
]


def compose_train(overrides: list[str], output_dir: Path, config_name: str = "train"):
    """fer's real config, composed as ``python -m fer.train <overrides>`` would compose it, with Hydra's
    runtime set so that ``paths.output_dir`` is ``output_dir`` (the config of one job, resolved)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write

    from fer.run.config import CONFIG_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.resolve(cfg)
    return cfg


def tiny_args(data: Path, *extra: str) -> list[str]:
    """A training command line on the tiny tree (MMAFEDB layout), with ``extra`` overrides."""
    return ["data=mmafedb", f"data.data_dir={data}", *TINY, *extra]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic MMAFEDB-like tree: 8 train and 4 valid/test images per class."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    generate_synthetic_dataset(root, train_per_class=8, eval_per_class=4, seed=0, image_size=48)
    return root


@pytest.fixture()
def outputs(tmp_path: Path) -> Path:
    out = tmp_path / "outputs"
    out.mkdir()
    return out


@dataclass
class Result:
    """What a command gave: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def check(result: Result | subprocess.CompletedProcess) -> Result | subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    return result


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def fer_main(
    module: str, *args: str, outputs: Path, env: dict | None = None, cwd: Path | None = None
) -> Result:
    """``python -m <module> <args>`` run in this process through the module's real ``main()`` (Hydra's own
    main for fer.train and fer.eval, argparse for the tools): the same config, the same code, no interpreter
    start-up. Outputs go to ``outputs``; the command runs in ``cwd`` (default: ``outputs``)."""
    import importlib

    imported = importlib.import_module(module)
    entry = imported.main if hasattr(imported, "main") else importlib.import_module(f"{module}.__main__").main
    outputs.mkdir(parents=True, exist_ok=True)
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = sys.argv
    previous = Path.cwd()
    code = 0
    with _environment({"FER_OUTPUT_DIR": str(outputs), **(env or {})}):
        sys.argv = [module, *args]
        os.chdir(cwd or outputs)
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                try:
                    returned = entry() if module in HYDRA_COMMANDS else entry(list(args))
                    code = returned if isinstance(returned, int) and not isinstance(returned, bool) else 0
                    if module in HYDRA_COMMANDS:
                        code = 0
                except SystemExit as exit_:
                    code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        finally:
            sys.argv = argv
            os.chdir(previous)
            _close_run_log_handlers()
    return Result(code, stdout.getvalue(), stderr.getvalue())


def _close_run_log_handlers() -> None:
    """Hydra points the root logger's file handler at each run's log: close it when the run is over."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.close()
            root.removeHandler(handler)


# what the processes that fer starts for a test (jobs, ranks, workers) or a test starts itself get: no
# warnings, and one thread under pytest-xdist
CHILD_ENV = {**ONE_THREAD, "PYTHONWARNINGS": "ignore"}


def process_env(outputs: Path, **extra: str) -> dict[str, str]:
    """The environment of a fer process a test starts: :data:`CHILD_ENV`, its outputs under ``outputs``."""
    return {**os.environ, **CHILD_ENV, "FER_OUTPUT_DIR": str(outputs), **extra}


def run_fer(module: str, *args: str, outputs: Path, timeout: int = 600, env: dict | None = None):
    """Run ``python -m <module> <args>`` as a separate process, as a user would; outputs go to ``outputs``.
    For what only a process shows: exit codes after a crash, kill -9, start-up, the console scripts."""
    full_env = process_env(outputs, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=outputs,
    )


def run_dirs(outputs: Path, task: str = "train") -> list[Path]:
    return sorted((outputs / task / "runs").iterdir())


def events(run: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def last_scalar(run: Path, tag: str) -> float:
    return events(run).Scalars(tag)[-1].value


def train_tiny_checkpoint(data: Path, folder: Path, backbone: str = "mobilenet_v3_small") -> Path:
    """A real fer checkpoint: one training step on the tiny data at 32 px (a few seconds on CPU).

    One batch of all 56 training images and BatchNorm momentum 1: the running statistics become those of
    the whole train split, so that in eval mode this barely trained network gives different images
    different outputs with logits of a few units, like a trained one. (With a small momentum the statistics
    stay near their initial values and every image gets the same output, which would prove nothing.)
    """
    import lightning as L

    from fer.data import FERDataModule
    from fer.models import FERModule
    from fer.run.callbacks import RecordDataConfig
    from fer.run.process import quiet_known_warnings

    quiet_known_warnings()
    L.seed_everything(0)  # the same checkpoint whatever ran before it
    datamodule = FERDataModule(data, image_size=32, batch_size=56, cache_dir=folder / "cache")
    model = FERModule(
        backbone,
        pretrained=False,
        bn_momentum=1.0,
        class_names=list(datamodule.class_names),
        preprocessing=datamodule.preprocessing.as_dict(),
    )
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[RecordDataConfig()],
    )
    trainer.fit(model, datamodule=datamodule)
    path = folder / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def checkpoint(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real fer checkpoint trained once per session (shared by the predict, export and safety tests)."""
    return train_tiny_checkpoint(tiny_data, tmp_path_factory.mktemp("tiny_checkpoint"))


@pytest.fixture(scope="session")
def module(checkpoint: Path):
    from fer.models import FERModule

    return FERModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()


def assert_clean_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("fer: error:")]
    assert len(error_lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]


# ----------------------------------------------------------------------------- hand-made image trees

MODES = ["L", "RGB", "RGBA", "P", "I;16"]


def write_image(path: Path, mode: str, size=(48, 48), value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(np.full(size[::-1], value * 257, dtype=np.uint16)).save(path)
    elif mode == "P":
        Image.new("RGB", size, (value, value, value)).convert("P").save(path)
    else:
        Image.new(mode, size, value if mode == "L" else (value,) * len(mode)).save(path)


def make_tree(root: Path, per_class: dict[str, int] | None = None) -> Path:
    """Every split has each class; train counts per class can differ; files of every mode and odd sizes."""
    for split in ("train", "valid", "test"):
        for label, name in enumerate(CLASS_NAMES):
            count = (per_class or {}).get(name, 3) if split == "train" else 2
            for i in range(count):
                mode = MODES[(label + i) % len(MODES)]
                ext = [".png", ".PNG", ".bmp", ".webp", ".png"][i % 5] if mode in ("L", "RGB") else ".png"
                size = (48, 48) if i % 2 == 0 else (13, 70)
                write_image(root / split / name / f"{i}{ext}", mode, size, value=20 + 30 * label)
            (root / split / name / ".DS_Store").write_bytes(b"\0junk")
            (root / split / name / "Thumbs.db").write_bytes(b"junk")
            (root / split / name / "notes.txt").write_text("not an image")
    write_image(root / "train" / "happy" / "x.JPG", "RGB")
    return root
