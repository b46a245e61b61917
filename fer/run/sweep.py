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
from fer.run.launch import check_launcher_installed

log = logging.getLogger("fer.sweep")


def _error_line(error: BaseException) -> str:
    """The error's type and first sentence (the log of the job's folder has the whole message)."""
    lines = user_message(error).splitlines()
    first = lines[0].split(". ", 1)[0] if lines else ""
    return f"{type(error).__name__}: {first}"[:240]


# what a sweep folder of fer's holds besides its jobs' run folders: Hydra's and the Optuna sweeper's records,
# fer's own (the sweep's command line; each job's outcome, in .job-<folder>.json) and submitit's job files
SWEEP_RECORD = "sweep.json"
JOB_RECORD = ".job-{}.json"
SWEEP_FILES = frozenset(
    {"multirun.yaml", "optimization_results.yaml", "summary.json", "summary.md", SWEEP_RECORD, ".submitit"}
)


def _is_job_record(name: str) -> bool:
    prefix, suffix = JOB_RECORD.split("{}")
    return name.startswith(prefix) and name.endswith(suffix)


def check_sweep_folder(folder: Path, overrides: list[str] | None = None) -> None:
    """A sweep writes into a folder of its own, or into an earlier sweep's to resume it with the same command
    line (``overrides``): refuse one that holds anything else, or another command's sweep, before a job runs."""
    if not folder.is_dir():
        return
    foreign = sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in SWEEP_FILES and not _is_job_record(p.name) and not (p / ".hydra").is_dir()
    )
    if foreign:
        fail(
            f"hydra.sweep.dir={folder} already holds {foreign[:5]}, which no fer sweep wrote: a sweep writes "
            "into a folder of its own and does not replace what is there. Choose a new hydra.sweep.dir (or "
            "leave it at its default)."
        )
    recorded = read_sweep_record(folder)
    if overrides is not None and recorded is not None and sorted(recorded["overrides"]) != sorted(overrides):
        fail(
            f"hydra.sweep.dir={folder} holds the sweep of the overrides {recorded['overrides']}, not of "
            f"{overrides}: a sweep resumes only with the command line that started it. Run that command again "
            "to resume it, or choose a new hydra.sweep.dir for this one."
        )


def read_sweep_record(folder: Path) -> dict[str, Any] | None:
    """What fer recorded of the sweep in ``folder``: its command-line overrides and the keys it varies."""
    path = folder / SWEEP_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def write_sweep_record(folder: Path, overrides: list[str], sweeper_params: list[str]) -> None:
    """The sweep's command line and the keys it varies, read by every job (in whatever process or machine it
    runs) to name its folder, and by a later start of the same command to resume the sweep."""
    from fer.run.config import swept_keys

    varied = sorted(swept_keys(overrides) | set(sweeper_params))
    record = {"overrides": list(overrides), "varied": varied}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / SWEEP_RECORD, json.dumps(record, indent=2) + "\n", "sweep record")


def failure_of(job_return: JobReturn) -> BaseException | None:
    """The exception a failed job raised (Hydra's public ``return_value`` re-raises it)."""
    try:
        _ = job_return.return_value
    except Exception as raised:
        return raised
    return None


def job_entry(job: int, folder: str, overrides: list[str], error: BaseException | None, value: Any) -> dict:
    """One job's line of the summary: completed with the value it returned, or failed with its error."""
    entry: dict[str, Any] = {"job": job, "folder": folder, "overrides": list(overrides)}
    if error is None:
        entry.update(status="completed", value=value if isinstance(value, int | float) else None)
    else:
        entry.update(status="failed", error=_error_line(error))
    return entry


def write_job_entry(sweep: Path, entry: dict[str, Any]) -> None:
    """Record one job's outcome in ``<sweep>/.job-<its folder>.json`` (jobs running side by side, in other
    processes or on other machines, never write the same file), then refresh ``summary.json``."""
    name = JOB_RECORD.format(entry["folder"].replace("/", "_"))
    atomic_write_text(sweep / name, json.dumps(entry, indent=2) + "\n", "job record")
    write_summary_json(sweep)


def job_entries(sweep: Path) -> list[dict[str, Any]]:
    """Every job's recorded outcome, by job number."""
    entries = [json.loads(p.read_text()) for p in sweep.glob(JOB_RECORD.format("*"))]
    return sorted(entries, key=lambda entry: (entry["job"], entry["folder"]))


def write_summary_json(sweep: Path) -> None:
    atomic_write_text(sweep / "summary.json", json.dumps(job_entries(sweep), indent=2) + "\n", "summary")


# summaries of sweeps still running in this process: a grid sweep with a failed job ends by raising that
# job's error after every job ran, without Hydra's multirun-end callback; fer's entry point then reports them
PENDING: list[SweepSummary] = []


def report_pending() -> None:
    """Print and write the summary of every sweep that ended without reaching its multirun-end callback."""
    while PENDING:
        PENDING.pop().report()


def _is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return rank_zero_only.rank == 0


class SweepSummary(Callback):
    """Each job records its own outcome where it runs (this process, a joblib worker, a SLURM node); the
    process that launched the sweep gathers them at the end."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.reported = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_launcher_installed(config.hydra.launcher.get("_target_"))
        self.folder = Path(str(config.hydra.sweep.dir))
        overrides = [str(o) for o in config.hydra.overrides.task]
        check_sweep_folder(self.folder, overrides)
        params = [str(k) for k in (config.hydra.sweeper.get("params") or {})]
        write_sweep_record(self.folder, overrides, params)
        self.reported = False
        PENDING.append(self)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self.folder is None or not _is_rank_zero():
            return  # a single run, or another rank of a multi-process job (rank 0 records it)
        output = Path(str(config.hydra.runtime.output_dir))
        root = self.folder.resolve()
        folder = str(output.relative_to(root)) if output.is_relative_to(root) else str(output)
        error = None if job_return.status == JobStatus.COMPLETED else failure_of(job_return)
        if job_return.status != JobStatus.COMPLETED and error is None:
            error = RuntimeError("unknown")
        value = job_return.return_value if error is None else None
        entry = job_entry(int(config.hydra.job.num), folder, list(job_return.overrides or []), error, value)
        if error is not None:
            # a warning: the job's own log (still open here) keeps its ERROR line as the last one
            log.warning("Job %d (%s) failed: %s", entry["job"], entry["folder"], entry["error"])
        write_job_entry(self.folder, entry)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.report()

    def table(self, jobs: list[dict[str, Any]]) -> str:
        failed = [job for job in jobs if job["status"] != "completed"]
        lines = [
            f"Sweep {self.folder}: {len(jobs)} jobs, {len(jobs) - len(failed)} completed, {len(failed)} failed",
            "",
            "| job | status | value | folder | error |",
            "|---:|---|---:|---|---|",
        ]
        for job in jobs:
            value = job.get("value")
            shown = f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))
            error = job.get("error", "").replace("|", "/")
            lines.append(f"| {job['job']} | {job['status']} | {shown} | {job['folder']} | {error} |")
        return "\n".join(lines) + "\n"

    def report(self) -> None:
        if self in PENDING:
            PENDING.remove(self)
        if self.reported or self.folder is None or not self.folder.is_dir():
            return
        jobs = job_entries(self.folder)
        if not jobs:
            return
        self.reported = True
        write_summary_json(self.folder)
        text = self.table(jobs)
        atomic_write_text(self.folder / "summary.md", text, "summary")
        print("\n" + text, file=sys.stderr if any(j["status"] != "completed" for j in jobs) else sys.stdout)
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
