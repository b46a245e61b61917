"""``python -m fer.report SWEEP_DIR``: one table of a sweep's jobs, and mean ± std over repeated runs.

Reads what every job of a multirun folder (grid or Optuna) left behind: its overrides
(``.hydra/overrides.yaml``) and its final metrics (``metrics.json``, or the last TensorBoard scalars of runs
made before that file existed). A job without either is listed as failed, with the error from its log, and
left out of the means. A single run folder gives one row.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fer.errors import FERError
from fer.files import check_output_file
from fer.results import final_metrics, find_runs
from fer.run.cli import command
from fer.stats import CI_SUFFIXES

DEFAULT_METRICS = ("test/acc", "test/f1_macro", "test/ece", "val/acc_best")
DEFAULT_OPTIMIZED_METRIC = "val/acc_best"
DEFAULT_MATRIX = ("ckpt_path", "data")
MATRIX_METRICS = {
    "test/acc": "Accuracy",
    "test/f1_macro": "Macro-F1",
    "test/acc_balanced": "Balanced accuracy",
}
OK, OK_EVENTS, FAILED = "ok", "ok (events)", "failed"
DIGITS = 4
_ERROR_LINE = re.compile(r"\]\[ERROR\] - (.*)$")
_NUMBER = re.compile(r"[-+]?[\d.]+(e[-+]?\d+)?( ± [\d.]+)?( \[[-\d.]+, [-\d.]+\])?")


@dataclass
class Job:
    """One run of a sweep: its folder, overrides (``key -> value`` as typed), metrics and status."""

    folder: Path
    overrides: dict[str, str]
    metrics: dict[str, float]
    status: str
    error: str | None = None
    best: bool = False

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def ok(self) -> bool:
        return self.status != FAILED


@dataclass
class Sweep:
    """The jobs of a sweep folder (or the one run of a run folder) and the keys the sweep varied."""

    folder: Path
    jobs: list[Job]
    swept: list[str]
    best_from: str | None = None  # where the best mark comes from, said under the table

    @property
    def single_run(self) -> bool:
        return len(self.jobs) == 1 and self.jobs[0].folder == self.folder


# ------------------------------------------------------------------------------------------ reading


def _read_yaml(path: Path) -> Any:
    """A YAML file's content, or None when it is missing or unreadable (a half-written job)."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def override_key(override: str) -> str:
    """``+trainer.x=1`` -> ``trainer.x``: the key an override sets, without Hydra's ``+``/``++``/``~``."""
    return override.split("=", 1)[0].lstrip("+~")


def read_overrides(run: Path) -> dict[str, str]:
    """A run's command-line overrides in their order, as ``key -> value`` (values as Hydra saved them)."""
    listed = _read_yaml(run / ".hydra" / "overrides.yaml") or []
    return {override_key(str(o)): str(o).split("=", 1)[1] if "=" in str(o) else "" for o in listed}


def _events_metrics(run: Path) -> dict[str, float]:
    """The last value of every TensorBoard scalar of a run (empty when it has no event files)."""
    if not any((run / "tensorboard").glob("events.out.tfevents.*")):
        return {}
    from fer.results import scalars

    return {tag: float(values[-1]) for tag, (_steps, values) in scalars(run).items() if values}


def _logged_error(run: Path) -> str | None:
    """The last ERROR line of the job's log: why it failed, in fer's own words."""
    try:
        lines = (run / "train.log").read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if match := _ERROR_LINE.search(line):
            return match.group(1).strip()
    return None


def read_job(run: Path) -> Job:
    """A job's overrides, metrics and status: ``ok`` (metrics.json), ``ok (events)`` or ``failed``."""
    overrides = read_overrides(run)
    metrics = final_metrics(run)
    if metrics is not None:
        return Job(run, overrides, {k: float(v) for k, v in metrics.items()}, OK)
    metrics = _events_metrics(run)
    config = _read_yaml(run / ".hydra" / "config.yaml") or {}
    # a run that got to its last stage (the test, or validation when test=false) finished; others stopped
    last_stage = "test/" if config.get("test", True) else "val/"
    if any(tag.startswith(last_stage) for tag in metrics):
        return Job(run, overrides, metrics, OK_EVENTS)
    return Job(run, overrides, metrics, FAILED, error=_logged_error(run))


def _sweep_syntax_keys(folder: Path, jobs: list[Job]) -> list[str]:
    """Keys the sweep was told to vary: grid syntax in ``multirun.yaml``, the sweeper's ``params``."""
    keys: list[str] = []
    multirun = _read_yaml(folder / "multirun.yaml") or {}
    task = ((multirun.get("hydra") or {}).get("overrides") or {}).get("task") or []
    if task:
        from fer.run.config import swept_keys

        varied = swept_keys([str(o) for o in task])
        keys += [override_key(str(o)) for o in task if override_key(str(o)) in varied]
    hydra_cfg = (_read_yaml(jobs[0].folder / ".hydra" / "hydra.yaml") or {}).get("hydra") or {}
    keys += [str(k) for k in ((hydra_cfg.get("sweeper") or {}).get("params") or {})]
    return keys


def swept_keys_of(folder: Path, jobs: list[Job]) -> list[str]:
    """The keys a sweep varied, in command-line order: its sweep syntax, and any key whose value differs."""
    declared = _sweep_syntax_keys(folder, jobs)
    order: list[str] = []
    for job in jobs:
        order += [key for key in job.overrides if key not in order]
    differing = {key for key in order if len({job.overrides.get(key) for job in jobs}) > 1}
    chosen = set(declared) | differing
    return [key for key in order if key in chosen] + [k for k in dict.fromkeys(declared) if k not in order]


def _same_value(written: str | None, wanted: Any) -> bool:
    """An override as saved (text) against a value from ``optimization_results.yaml`` (YAML-typed)."""
    if written is None:
        return False
    try:
        parsed = yaml.safe_load(written) if written else written
    except yaml.YAMLError:
        parsed = written
    if isinstance(wanted, int | float) and isinstance(parsed, int | float) and not isinstance(parsed, bool):
        return math.isclose(float(parsed), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
    return str(parsed) == str(wanted)


def _optimized_metric(jobs: list[Job]) -> tuple[str, bool]:
    """The metric the sweep optimized (``optimized_metric`` of its config) and whether higher is better."""
    config = _read_yaml(jobs[0].folder / ".hydra" / "config.yaml") or {}
    hydra_cfg = (_read_yaml(jobs[0].folder / ".hydra" / "hydra.yaml") or {}).get("hydra") or {}
    direction = str((hydra_cfg.get("sweeper") or {}).get("direction") or "maximize")
    return str(config.get("optimized_metric") or DEFAULT_OPTIMIZED_METRIC), direction != "minimize"


def mark_best(sweep: Sweep) -> None:
    """Mark the best job: Optuna's (``optimization_results.yaml``) when there is one, else by the metric."""
    metric, maximize = _optimized_metric(sweep.jobs)
    results = _read_yaml(sweep.folder / "optimization_results.yaml")
    if isinstance(results, dict) and isinstance(results.get("best_params"), dict):
        params = results["best_params"]
        for job in sweep.jobs:
            if job.ok and all(_same_value(job.overrides.get(str(k)), v) for k, v in params.items()):
                job.best = True
                sweep.best_from = "optimization_results.yaml (Optuna's best trial)"
                return
    scored = [job for job in sweep.jobs if job.ok and metric in job.metrics]
    if len(sweep.jobs) < 2 or not scored:
        return
    best = (max if maximize else min)(scored, key=lambda job: job.metrics[metric])
    best.best = True
    sweep.best_from = f"{'highest' if maximize else 'lowest'} {metric}"


def load_sweep(folder: str | Path) -> Sweep:
    """Every job of a multirun folder, or the single run of a run folder, with the best job marked."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FERError(f"Folder not found: {folder}. Pass a sweep folder (outputs/train/multiruns/<time>).")
    try:
        runs = find_runs(folder)
    except OSError as error:
        raise FERError(f"Cannot read {folder}: {error}") from None
    jobs = [read_job(run) for run in runs]
    single = len(jobs) == 1 and jobs[0].folder == folder
    sweep = Sweep(folder, jobs, [] if single else swept_keys_of(folder, jobs))
    mark_best(sweep)
    return sweep


# -------------------------------------------------------------------------------------------- tables


def default_metrics(jobs: list[Job]) -> list[str]:
    """The default metrics the runs logged (an evaluation sweep has no ``val/acc_best``); all of them when
    no run finished."""
    logged = {name for job in jobs if job.ok for name in job.metrics}
    return [m for m in DEFAULT_METRICS if m in logged] if logged else list(DEFAULT_METRICS)


def job_interval(job: Job, metric: str) -> tuple[float, float] | None:
    """The job's 95% bootstrap interval of ``metric`` (``<metric>_ci_low`` / ``_ci_high``), if logged."""
    low, high = (job.metrics.get(f"{metric}_{side}") for side in CI_SUFFIXES)
    return None if low is None or high is None else (low, high)


def format_interval(interval: tuple[float, float] | None) -> str:
    return "" if interval is None else f" [{format_number(interval[0])}, {format_number(interval[1])}]"


def select_metrics(jobs: list[Job], requested: Sequence[str]) -> list[str]:
    """Metric names to show: each name as given, or the logged names a pattern (``test/recall/*``) matches.
    Interval bounds are shown beside their metric, not as metrics."""
    logged = sorted(
        {name for job in jobs if job.ok for name in job.metrics if not name.endswith(CI_SUFFIXES)}
    )
    chosen: list[str] = []
    for item in requested:
        matches = fnmatch.filter(logged, item) if any(ch in item for ch in "*?[") else [item]
        if logged and not set(matches) & set(logged):  # a typo; without any finished job, nothing to check
            raise FERError(f"--metrics {item!r} matches no logged metric; logged: {', '.join(logged)}")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def group_keys(sweep: Sweep, group_by: str | None, over: str | None) -> list[str] | None:
    """The keys to group by: ``--group-by`` as given, or ``--over``: every swept key but those."""
    if group_by is None and over is None:
        return None
    known = list(dict.fromkeys(key for job in sweep.jobs for key in job.overrides))
    if group_by is not None:
        keys = [k.strip() for k in group_by.split(",") if k.strip()]
        unknown = [k for k in keys if k not in known]
        if unknown or not keys:
            raise FERError(
                f"--group-by {group_by!r}: {', '.join(unknown) or 'no key'} is not an override of these "
                f"jobs; their overrides: {', '.join(known) or 'none'}"
            )
        return keys
    dropped = [k.strip() for k in str(over).split(",") if k.strip()]
    unknown = [k for k in dropped if k not in sweep.swept]
    if unknown:
        raise FERError(
            f"--over {over!r}: {', '.join(unknown)} is not a swept key; "
            f"swept: {', '.join(sweep.swept) or 'none'}"
        )
    return [k for k in sweep.swept if k not in dropped]


def format_number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.{DIGITS}f}"


def format_value(text: str) -> str:
    """An override value for the table: Optuna's 0.001078981681647174 as 0.001079, anything else as is."""
    try:
        number = float(text)
    except ValueError:
        return text
    return f"{number:.4g}" if len(text) > 8 and math.isfinite(number) else text


def short_job_name(job: Job, swept: list[str]) -> str:
    """``3`` for ``3_freeze=none,seed=1``: the table shows the swept keys, and folder names start so."""
    number, _, rest = job.name.partition("_")
    return number if swept and rest and number.isdigit() else job.name


def job_rows(sweep: Sweep, metrics: list[str]) -> tuple[list[str], list[list[str]]]:
    """The per-job table: job, the swept keys' values, status, best mark (in a sweep), metrics."""
    marked = sweep.best_from is not None
    header = ["job", *sweep.swept, "status", *(["best"] if marked else []), *metrics]
    rows = []
    for job in sweep.jobs:
        values = [
            format_number(job.metrics.get(m)) + format_interval(job_interval(job, m)) if job.ok else "–"
            for m in metrics
        ]
        swept = [format_value(job.overrides.get(key, "")) for key in sweep.swept]
        best = ["*" if job.best else ""] if marked else []
        rows.append([short_job_name(job, sweep.swept), *swept, job.status, *best, *values])
    return header, rows


@dataclass
class Group:
    """Runs that share the values of the grouping keys; statistics are over the finished ones."""

    values: tuple[str, ...]
    jobs: list[Job]

    @property
    def finished(self) -> list[Job]:
        return [job for job in self.jobs if job.ok]

    def stats(self, metric: str) -> tuple[float | None, float | None]:
        """Mean and sample standard deviation (None for fewer than 2 values)."""
        values = [job.metrics[metric] for job in self.finished if metric in job.metrics]
        if not values:
            return None, None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None

    def mean_interval(self, metric: str) -> tuple[float, float] | None:
        """The runs' bootstrap intervals of ``metric``, averaged bound by bound (None if none has one)."""
        bounds = [interval for job in self.finished if (interval := job_interval(job, metric))]
        if not bounds:
            return None
        return statistics.fmean(b[0] for b in bounds), statistics.fmean(b[1] for b in bounds)


def group_jobs(jobs: list[Job], keys: list[str]) -> list[Group]:
    """Jobs grouped by the values of ``keys`` (no such override: ``(default)``), in first-seen order."""
    groups: dict[tuple[str, ...], Group] = {}
    for job in jobs:
        values = tuple(job.overrides.get(key, "(default)") for key in keys)
        groups.setdefault(values, Group(values, [])).jobs.append(job)
    return list(groups.values())


def group_rows(groups: list[Group], keys: list[str], metrics: list[str]) -> tuple[list[str], list[list[str]]]:
    header = [*keys, "n", "failed", *metrics]
    rows = []
    for group in groups:
        cells = []
        for metric in metrics:
            mean, std = group.stats(metric)
            cells.append(
                format_number(mean)
                + (f" ± {format_number(std)}" if std is not None else "")
                + format_interval(group.mean_interval(metric))
            )
        failed = len(group.jobs) - len(group.finished)
        rows.append([*group.values, str(len(group.finished)), str(failed), *cells])
    return header, rows


def group_csv_rows(groups: list[Group], keys: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """The grouped table with mean and std as separate numeric columns (empty where undefined)."""
    rows = []
    for group in groups:
        row: dict[str, Any] = dict(zip(keys, group.values, strict=True))
        row["n"] = len(group.finished)
        row["failed"] = len(group.jobs) - len(group.finished)
        for metric in metrics:
            mean, std = group.stats(metric)
            row[f"{metric} mean"] = "" if mean is None else mean
            row[f"{metric} std"] = "" if std is None else std
            if any(job_interval(job, metric) for group in groups for job in group.finished):
                interval = group.mean_interval(metric)
                for side, bound in zip(CI_SUFFIXES, interval or ("", ""), strict=True):
                    row[f"{metric} {side} mean"] = bound
        rows.append(row)
    return rows


def job_csv_rows(sweep: Sweep, metrics: list[str]) -> list[dict[str, Any]]:
    """One row per job with full-precision metrics (empty for a failed job)."""
    rows = []
    for job in sweep.jobs:
        row: dict[str, Any] = {"job": job.name}
        row.update({key: job.overrides.get(key, "") for key in sweep.swept})
        row.update({"status": job.status, "best": job.best, "error": job.error or ""})
        for m in metrics:
            row[m] = job.metrics.get(m, "") if job.ok else ""
            if any(job_interval(other, m) for other in sweep.jobs if other.ok):
                for side in CI_SUFFIXES:
                    row[f"{m}_{side}"] = job.metrics.get(f"{m}_{side}", "") if job.ok else ""
        rows.append(row)
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table, numbers right-aligned."""
    numeric = []
    for i in range(len(header)):
        cells = [row[i] for row in rows if row[i] not in ("", "–")]
        numeric.append(bool(cells) and all(_NUMBER.fullmatch(cell) for cell in cells))
    escape = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(escape(h) for h in header) + " |"]
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render(sweep: Sweep, metrics: list[str], keys: list[str] | None) -> str:
    """The whole report: a heading, the job table, the grouped table if asked, and the failed jobs' errors."""
    failed = [job for job in sweep.jobs if not job.ok]
    if sweep.single_run:
        title = f"Run {sweep.folder}"
    else:
        title = (
            f"Sweep {sweep.folder}: {len(sweep.jobs)} jobs, {len(failed)} failed; "
            f"swept: {', '.join(sweep.swept) or 'nothing'}"
        )
    parts = [title, "", markdown_table(*job_rows(sweep, metrics))]
    if sweep.best_from:
        parts.append(f"\n`*` best job, by {sweep.best_from}.")
    if any(job_interval(job, m) for job in sweep.jobs if job.ok for m in metrics):
        parts.append(
            "`[low, high]`: 95% bootstrap interval over the evaluated images (1000 resamples, seeded); "
            "`±`: sample std over the runs; grouped rows average the runs' intervals."
        )
    if any(job.status == OK_EVENTS for job in sweep.jobs):
        parts.append(f"`{OK_EVENTS}`: no metrics.json; the last TensorBoard scalars of that run.")
    if keys is not None:
        groups = group_jobs(sweep.jobs, keys)
        parts += [
            "",
            f"Mean ± sample std over the finished runs of each group (n), grouped by "
            f"{', '.join(keys) or 'nothing'}:",
            "",
            markdown_table(*group_rows(groups, keys, metrics)),
        ]
    parts += ["", provenance(sweep.jobs)]
    if failed:
        parts += ["", "Failed jobs (left out of every mean):"]
        unknown = "no metrics.json and no finished TensorBoard log"
        parts += [f"- job {short_job_name(job, sweep.swept)}: {job.error or unknown}" for job in failed]
    return "\n".join(parts) + "\n"


def matrix_axes(sweep: Sweep, given: str | None) -> tuple[str, str] | None:
    """The (rows, columns) keys of the matrix tables: ``--matrix`` as given, else ``ckpt_path,data`` when
    the sweep varied both (``fer.eval -m ckpt_path=A,B data=...``), else none."""
    if given is None:
        return DEFAULT_MATRIX if set(DEFAULT_MATRIX) <= set(sweep.swept) else None
    keys = [k.strip() for k in given.split(",") if k.strip()]
    if len(keys) != 2 or keys[0] == keys[1] or not set(keys) <= set(sweep.swept):
        raise FERError(
            f"--matrix {given!r}: give two different swept keys, rows then columns; swept: "
            f"{', '.join(sweep.swept) or 'none'}"
        )
    return keys[0], keys[1]


def _row_labels(values: list[str], key: str) -> dict[str, str]:
    """Checkpoint paths without the folders they all share (the rest tells them apart); others as they are."""
    if key != "ckpt_path" or len(values) < 2:
        return {value: value for value in values}
    common = os.path.commonpath(values)
    return {value: os.path.relpath(value, common) for value in values}


def _evaluated(job: Job) -> dict[str, Any]:
    """What ``fer.eval`` recorded in the job's ``metrics.json`` besides the metrics (model, classes)."""
    recorded = _read_json(job.folder / "metrics.json")
    return recorded if isinstance(recorded, dict) else {}


def render_matrices(sweep: Sweep, rows_key: str, columns_key: str) -> str:
    """One table per metric of :data:`MATRIX_METRICS`: a row per value of ``rows_key`` (e.g. a model), a
    column per value of ``columns_key`` (e.g. a test set); means over the jobs of a cell, ``failed`` for a
    cell whose jobs all failed, and the classes each cell left out."""
    rows = list(dict.fromkeys(job.overrides.get(rows_key, "(default)") for job in sweep.jobs))
    columns = list(dict.fromkeys(job.overrides.get(columns_key, "(default)") for job in sweep.jobs))
    cells: dict[tuple[str, str], list[Job]] = {}
    for job in sweep.jobs:
        cells.setdefault(
            (job.overrides.get(rows_key, "(default)"), job.overrides.get(columns_key, "(default)")), []
        ).append(job)
    labels = _row_labels(rows, rows_key)
    trained_on = {}
    for row in rows:
        models = [_evaluated(job).get("model") for (r, _), jobs in cells.items() if r == row for job in jobs]
        model = next((m for m in models if isinstance(m, dict)), None)
        if model:
            trained_on[row] = f"{model.get('trained_on') or '?'}, {len(model.get('classes') or [])} classes"
    parts = []
    for metric, title in MATRIX_METRICS.items():
        header = [rows_key, *(["trained on"] if trained_on else []), *columns]
        table = []
        for row in rows:
            cells_text = []
            for column in columns:
                jobs = cells.get((row, column), [])
                values = [job.metrics[metric] for job in jobs if job.ok and metric in job.metrics]
                if values:
                    cells_text.append(format_number(statistics.fmean(values)))
                else:
                    cells_text.append("failed" if jobs and not any(job.ok for job in jobs) else "–")
            table.append([labels[row], *([trained_on.get(row, "")] if trained_on else []), *cells_text])
        parts += [f"{title} ({metric}), {rows_key} x {columns_key}:", "", markdown_table(header, table), ""]
    notes = []
    for (row, column), jobs in cells.items():
        classes = next((c for job in jobs if isinstance(c := _evaluated(job).get("classes"), dict)), {})
        left_out = [f"{n} (only the model)" for n in classes.get("model_only", [])]
        left_out += [f"{n} (only the data)" for n in classes.get("data_only", [])]
        if left_out:
            notes.append(f"- {labels[row]} on {column}: left out {', '.join(left_out)}")
    if notes:
        parts += ["Classes matched by name; the metrics cover the shared classes:", *notes, ""]
    return "\n".join(parts)


def provenance(jobs: list[Job]) -> str:
    """When, with which code and on what the runs were made, from their run records (``run_info.json``)."""
    records = [
        r for job in jobs if isinstance(r := _read_json(job.folder / ".hydra" / "run_info.json"), dict)
    ]
    if not records:
        return "Runs: no run record (.hydra/run_info.json)."
    days = sorted({str(r.get("started", ""))[:10] for r in records if r.get("started")})
    commits = sorted({
        f"{r['git']['commit'][:7]}{' with uncommitted changes' if r['git'].get('dirty') else ''}"
        for r in records if (r.get("git") or {}).get("commit")
    })  # fmt: skip
    packages, machine = records[0].get("packages") or {}, records[0].get("machine") or {}
    when = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}" if days else "unknown dates"
    return (
        f"Runs: {len(records)}, started {when}; code git {', '.join(commits) or 'unknown (not a checkout)'}; "
        f"torch {packages.get('torch')}, lightning {packages.get('lightning')}; {machine.get('cpu_threads')} CPU "
        f"threads, GPU {', '.join(machine.get('gpus') or []) or 'none'}."
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


# ----------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fer-report",
        description="Summarize a sweep (outputs/train/multiruns/<time>) or a run folder as a markdown table.",
    )
    parser.add_argument("folder", type=Path, help="a multirun folder (grid or Optuna) or one run folder")
    parser.add_argument(
        "--metrics",
        help=f"comma-separated metric names or glob patterns (default: those of {','.join(DEFAULT_METRICS)} "
        "the runs logged; e.g. 'test/recall/*')",
    )
    grouping = parser.add_mutually_exclusive_group()
    grouping.add_argument(
        "--group-by", metavar="KEY[,KEY]", help="mean ± std over the runs sharing these keys"
    )
    grouping.add_argument(
        "--over",
        metavar="KEY[,KEY]",
        help="mean ± std over these keys (e.g. seed): group by every other swept key",
    )
    parser.add_argument(
        "--matrix",
        metavar="ROWS,COLUMNS",
        help="also tables of test accuracy, macro-F1 and balanced accuracy with one swept key as rows and "
        "another as columns (default for an evaluation sweep over ckpt_path and data: ckpt_path,data)",
    )
    parser.add_argument(
        "--csv", type=Path, metavar="FILE", help="also write the table (grouped if asked) as CSV"
    )
    parser.add_argument("--overwrite", action="store_true", help="with --csv: replace an existing file")
    return parser.parse_args(argv)


@command
def main(argv: Sequence[str] | None = None) -> int:
    """Print the report to stdout (and ``--csv``); 2 with one ``fer: error:`` line for a user mistake."""
    args = parse_args(argv)
    if args.csv is not None:
        check_output_file(args.csv, args.overwrite, "--csv")
    sweep = load_sweep(args.folder)
    if args.metrics is None:
        metrics = default_metrics(sweep.jobs)
    else:
        metrics = select_metrics(sweep.jobs, [m.strip() for m in args.metrics.split(",") if m.strip()])
    if not metrics:
        raise FERError("--metrics: give at least one metric name")
    keys = group_keys(sweep, args.group_by, args.over)
    axes = matrix_axes(sweep, args.matrix)
    print(render(sweep, metrics, keys), end="")
    if axes is not None:
        print("\n" + render_matrices(sweep, *axes), end="")
    if args.csv is not None:
        if keys is None:
            rows = job_csv_rows(sweep, metrics)
        else:
            rows = group_csv_rows(group_jobs(sweep.jobs, keys), keys, metrics)
        write_csv(args.csv, rows)
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
