"""The end of a multirun: which jobs completed, which failed and why, in the log and in ``summary.md``.

Hydra runs every job of a grid sweep even when some fail, then stops with the first failure's traceback,
which says nothing of the other jobs. :class:`SweepSummary` (a Hydra callback, ``conf/hydra/default.yaml``)
records each job as it ends in ``<sweep folder>/summary.json`` and prints a table of all of them at the
end, also when the sweep ends with an error (grid) and when Optuna recorded failed trials.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fer.errors import user_message
from fer.files import atomic_write_text
from fer.run.cli import fail

log = logging.getLogger("fer.sweep")


def _error_line(error: BaseException) -> str:
    """The error's type and first sentence (the log of the job's folder has the whole message)."""
    lines = user_message(error).splitlines()
    first = lines[0].split(". ", 1)[0] if lines else ""
    return f"{type(error).__name__}: {first}"[:240]


# what a sweep folder of fer's holds besides its jobs' run folders
SWEEP_FILES = frozenset({"multirun.yaml", "summary.json", "summary.md", "optimization_results.yaml"})


def check_sweep_folder(folder: Path) -> None:
    """A sweep writes into a folder of its own (or an earlier sweep's, to resume it): refuse one that holds
    anything else, before a job runs."""
    if not folder.is_dir():
        return
    foreign = sorted(
        p.name for p in folder.iterdir() if p.name not in SWEEP_FILES and not (p / ".hydra").is_dir()
    )
    if foreign:
        fail(
            f"hydra.sweep.dir={folder} already holds {foreign[:5]}, which no fer sweep wrote: a sweep writes "
            "into a folder of its own and does not replace what is there. Choose a new hydra.sweep.dir (or "
            "leave it at its default)."
        )


def failure_of(job_return: JobReturn) -> BaseException | None:
    """The exception a failed job raised (Hydra's public ``return_value`` re-raises it)."""
    try:
        _ = job_return.return_value
    except Exception as raised:
        return raised
    return None


# summaries of sweeps still running in this process: a grid sweep with a failed job ends by raising that
# job's error after every job ran, without Hydra's multirun-end callback; fer's entry point then reports them
PENDING: list[SweepSummary] = []


def report_pending() -> None:
    """Print and write the summary of every sweep that ended without reaching its multirun-end callback."""
    while PENDING:
        PENDING.pop().report()


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.folder: Path | None = None
        self.jobs: list[dict[str, Any]] = []
        self.reported = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.folder = Path(str(config.hydra.sweep.dir))
        check_sweep_folder(self.folder)
        self.jobs = []
        self.reported = False
        PENDING.append(self)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self.folder is None:
            return  # a single run
        output = Path(str(config.hydra.runtime.output_dir))
        root = self.folder.resolve()
        entry: dict[str, Any] = {
            "job": int(config.hydra.job.num),
            "folder": str(output.relative_to(root)) if output.is_relative_to(root) else str(output),
            "overrides": list(job_return.overrides or []),
        }
        if job_return.status == JobStatus.COMPLETED:
            value = job_return.return_value
            entry.update(status="completed", value=value if isinstance(value, int | float) else None)
        else:
            error = failure_of(job_return)
            entry.update(status="failed", error=_error_line(error) if error is not None else "unknown")
            # a warning: the job's own log (still open here) keeps its ERROR line as the last one
            log.warning("Job %d (%s) failed: %s", entry["job"], entry["folder"], entry["error"])
        self.jobs.append(entry)
        self._write_json()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.report()

    def _write_json(self) -> None:
        if self.folder is not None and self.folder.is_dir():
            atomic_write_text(self.folder / "summary.json", json.dumps(self.jobs, indent=2) + "\n", "summary")

    def table(self) -> str:
        failed = [job for job in self.jobs if job["status"] != "completed"]
        lines = [
            f"Sweep {self.folder}: {len(self.jobs)} jobs, {len(self.jobs) - len(failed)} completed, "
            f"{len(failed)} failed",
            "",
            "| job | status | value | folder | error |",
            "|---:|---|---:|---|---|",
        ]
        for job in self.jobs:
            value = job.get("value")
            shown = f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))
            error = job.get("error", "").replace("|", "/")
            lines.append(f"| {job['job']} | {job['status']} | {shown} | {job['folder']} | {error} |")
        return "\n".join(lines) + "\n"

    def report(self) -> None:
        if self in PENDING:
            PENDING.remove(self)
        if self.reported or self.folder is None or not self.jobs:
            return
        self.reported = True
        text = self.table()
        if self.folder.is_dir():
            atomic_write_text(self.folder / "summary.md", text, "summary")
        print(
            "\n" + text, file=sys.stderr if any(j["status"] != "completed" for j in self.jobs) else sys.stdout
        )
        sys.stdout.flush()


# --- Optuna studies kept in a database (hparams_search.storage) ------------------------------------------
def optuna_storage(storage: object) -> str | None:
    """``hparams_search.storage``: a database URL as is, or a file path made into an absolute SQLite URL
    (its folder created), so the study does not depend on the working directory."""
    if storage in (None, "", "None", "null"):
        return None
    text = str(storage)
    if "://" in text:
        return text
    path = Path(text).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


@functools.lru_cache(maxsize=4)  # read once for both the trial count and the sampler seed
def _stored_trials(storage: object, study_name: object) -> list | None:
    """The trials of a stored study (None without storage or for a study not created yet)."""
    if storage in (None, "", "None", "null"):
        return None
    import optuna

    try:
        study = optuna.load_study(study_name=str(study_name), storage=str(storage))
    except KeyError:
        return None
    return study.get_trials(deepcopy=False)


def optuna_trials_to_run(total: object, storage: object, study_name: object) -> int:
    """``hydra.sweeper.n_trials``: what is left of ``total`` trials in a stored study (all of them for a
    new study or without storage). Rerunning an interrupted sweep's command thus finishes it; trials an
    interruption left running are run again."""
    from optuna.trial import TrialState

    total = int(str(total))
    trials = _stored_trials(storage, study_name)
    if trials is None:
        return total
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    interrupted = sum(t.state == TrialState.RUNNING for t in trials)
    left = max(total - len(finished), 0)
    log.info(
        "Optuna study %r in %s: %d of %d trials finished%s; running %d more.",
        study_name, storage, len(finished), total,
        f" ({interrupted} left running by an interrupted sweep, run again)" if interrupted else "", left,
    )  # fmt: skip
    return left


def optuna_sampler_seed(seed: object, storage: object, study_name: object) -> int:
    """The sampler's seed, moved on by the number of trials a stored study already holds: a resumed study
    does not draw its first random trials again."""
    trials = _stored_trials(storage, study_name)
    return int(str(seed)) + (len(trials) if trials else 0)
