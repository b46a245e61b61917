"""Resuming a run in its own folder: ``resume=<run folder>`` or ``ckpt_path=<run folder>/checkpoints/last.ckpt``.

A resumed run continues the run it comes from: same folder, same TensorBoard log, same log file, and the
same configuration (the run's recorded overrides, then whatever the command line adds, e.g. a higher
``trainer.max_epochs``). Each start of the run records its own configuration under ``.hydra/`` (the first
start in ``.hydra/`` itself, each resume in ``.hydra/resume-<time>/``), so nothing is overwritten.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fer.errors import FERError
from fer.files import temporary_sibling, write_failure_hint
from fer.run.cli import fail

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"
CONFIG_SUBDIR = ".hydra"
# keys that say where to resume from: not carried over from the recorded overrides
RESUME_KEYS = ("resume", "ckpt_path")


def _given(value: object) -> bool:
    return value not in (None, "", "None", "null")


def run_folder_of(checkpoint: object) -> Path | None:
    """The run folder whose ``last.ckpt`` this is (``<run>/checkpoints/last.ckpt`` next to ``<run>/.hydra``)."""
    if not _given(checkpoint):
        return None
    path = Path(str(checkpoint)).expanduser().resolve()
    run = path.parent.parent
    if path.name == LAST_CHECKPOINT and path.parent.name == "checkpoints" and (run / CONFIG_SUBDIR).is_dir():
        return run
    return None


def resume_folder(resume: object) -> Path:
    """The run folder named by ``resume=``, checked: it must hold ``checkpoints/last.ckpt``."""
    folder = Path(str(resume)).expanduser().resolve()
    if not folder.is_dir():
        fail(f"resume={resume}: no such run folder. Pass a folder of outputs/train/runs/ (or of a sweep).")
    if not (folder / "checkpoints" / LAST_CHECKPOINT).is_file():
        found = sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt"))
        if found:
            what = f"the folder holds {found}: pass ckpt_path=<one of them> to start a new run from it"
        else:
            what = "the run stopped before its first checkpoint: start it again"
        fail(f"resume={resume}: {folder / 'checkpoints' / LAST_CHECKPOINT} does not exist; {what}.")
    return folder


def resumed_run(resume: object, ckpt_path: object) -> Path | None:
    """The existing run folder this start continues, if any."""
    if _given(resume):
        return resume_folder(resume)
    return run_folder_of(ckpt_path)


def ensure_writable(folder: str | Path) -> str:
    """Create the run folder now, so an unwritable output folder ends with one clear message."""
    path = Path(str(folder)).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = temporary_sibling(path / "write-test")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        fail(
            f"Cannot write to the output folder {path}: {error.strerror or error}. "
            f"{write_failure_hint(error).capitalize()}."
        )
    return str(folder)


RESUMING_TASKS = ("train",)


def run_dir(task: str, resume: object, ckpt_path: object, default: str) -> str:
    """``hydra.run.dir``: the resumed run's own folder (training only), else a new folder, checked to be
    writable."""
    folder = resumed_run(resume, ckpt_path) if task in RESUMING_TASKS else None
    return ensure_writable(folder if folder is not None else default)


def check_new_folder(folder: Path) -> None:
    """A new run writes into a folder of its own: stop, before anything is written, when the folder already
    holds files (a ``hydra.run.dir`` pointed at an existing folder). The other processes of a multi-device
    run share the folder of rank 0, which checked it."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0 or not folder.is_dir():
        return
    found = sorted(p.name for p in folder.iterdir())
    if found:
        fail(
            f"The run folder {folder} already holds {found[:5]}: fer writes a new run into a folder of its own "
            "and does not replace what is there. Choose a new hydra.run.dir (or leave it at its default), or "
            f"continue the run that is there with resume={folder}."
        )


def resumes(task: str, resume: object, ckpt_path: object) -> bool:
    """Whether this start continues a training run in its own folder."""
    return task in RESUMING_TASKS and (_given(resume) or run_folder_of(ckpt_path) is not None)


FINISHED, INTERRUPTED = "finished", "interrupted"


def sweep_job_state(output_dir: object) -> str | None:
    """What an earlier start of the same sweep left in a job's folder: ``finished`` (its ``metrics.json``),
    ``interrupted`` (a ``checkpoints/last.ckpt`` to resume from), or None (nothing to continue)."""
    if not _given(output_dir):
        return None
    folder = Path(str(output_dir))
    if (folder / "metrics.json").is_file():
        return FINISHED
    if (folder / "checkpoints" / LAST_CHECKPOINT).is_file():
        return INTERRUPTED
    return None


def config_subdir(
    task: str, resume: object, ckpt_path: object, stamp: str, output_dir: object = None, mode: object = None
) -> str | None:
    """``hydra.output_subdir``: ``.hydra`` for a new run, ``.hydra/resume-<time>`` for each resume (also of a
    sweep job cut short in an earlier start of its sweep), nothing for a sweep job that already finished."""
    if resumes(task, resume, ckpt_path):
        return f"{CONFIG_SUBDIR}/resume-{stamp}"
    if task in RESUMING_TASKS and str(mode).endswith("MULTIRUN"):
        state = sweep_job_state(output_dir)
        if state == FINISHED:
            return None
        if state == INTERRUPTED:
            return f"{CONFIG_SUBDIR}/resume-{stamp}"
    return CONFIG_SUBDIR


def earlier_sweep_start() -> tuple[str, Path] | None:
    """In a sweep job: the state an earlier start of the same sweep left in this job's folder, if any."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or not hydra_cfg.runtime.output_dir:
        return None
    folder = Path(str(hydra_cfg.runtime.output_dir))
    state = sweep_job_state(folder)
    return (state, folder) if state else None


class RunFolderCheck(Callback):
    """A Hydra callback: before a single run starts (before Hydra creates its folder, log or records), its
    folder must be new or empty, unless the run resumes in it."""

    def on_run_start(self, config: DictConfig, **kwargs: object) -> None:
        if not resumes(str(config.get("task_name")), config.get("resume"), config.get("ckpt_path")):
            check_new_folder(Path(str(config.hydra.run.dir)))


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def resumed_overrides(run: Path, current: list[str]) -> list[str]:
    """The run's recorded command-line overrides (its first start), then this start's own."""
    recorded_file = run / CONFIG_SUBDIR / "overrides.yaml"
    if not recorded_file.is_file():
        log.warning("%s is missing: resuming with this command line's configuration only.", recorded_file)
        recorded: list[str] = []
    else:
        recorded = [str(o) for o in OmegaConf.load(recorded_file)]
    given_now = {_key(o) for o in current}
    carried = [o for o in recorded if _key(o) not in RESUME_KEYS and _key(o) not in given_now]
    return carried + list(current)


def compose_resumed(run: Path, config_name: str = "train") -> tuple[DictConfig, list[str]]:
    """The configuration of the run being resumed, with this command line's overrides on top (and the
    list of overrides that made it)."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    current = [str(o) for o in HydraConfig.get().overrides.task]
    overrides = resumed_overrides(run, current)
    try:
        composed = compose(config_name=config_name, overrides=overrides)
    except Exception as error:
        raise FERError(
            f"Cannot rebuild the configuration of {run} from its recorded overrides plus this command's "
            f"({overrides}): {error}"
        ) from None
    OmegaConf.set_struct(composed, False)
    composed.ckpt_path = str(run / "checkpoints" / LAST_CHECKPOINT)
    composed.resume = str(run)
    OmegaConf.set_struct(composed, True)
    log.info("Resuming %s with overrides %s", run, overrides)
    return composed, overrides
