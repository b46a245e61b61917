"""``python -m fer.bench.sweeps``: the same tiny sweep jobs through each launcher, timed as a user runs them.

Each row runs ``python -m fer.train -m seed=1,...,N`` (by default one epoch on a generated 48 px data set at
32 px, CPU: jobs so small that the launchers' own cost shows; ``--epochs``/``--image-size`` make them
longer) through one launcher: Hydra's basic launcher (one job after another in one process), ``parallel``
(joblib's loky processes), submitit's local executor (one process per job), and ``slurm`` through the
SLURM cluster that ``sbatch`` reaches (where there is one). It prints a markdown table:

- wall: seconds from starting the command to its end (interpreter start-up included);
- job: the mean time each job's own log spans (first to last line: the training itself);
- at once: how many jobs the launcher runs side by side;
- overhead/job: ``(at once x wall - sum of job spans) / jobs``, the time a job slot spends outside a job's
  own work (starting processes, importing, scheduling, handing results back);
- ratio: the basic launcher's wall time over this row's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fer.data.synthetic import generate_synthetic_dataset
from fer.run.cli import command
from fer.workers import available_cores

TINY_JOB = [
    "data=mmafedb", "data.batch_size=16", "data.eval_batch_size=64", "data.num_workers=0",
    "model.pretrained=false", "+trainer.enable_progress_bar=false", "trainer=cpu", "logger=tensorboard",
]  # fmt: skip
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


@dataclass(frozen=True)
class Launcher:
    name: str
    overrides: tuple[str, ...]
    at_once: int


def launchers(jobs: int) -> list[Launcher]:
    """The launchers this machine can run: SLURM only where ``sbatch`` is found."""
    cores = available_cores()
    rows = [
        Launcher("basic", (), 1),
        Launcher("parallel (joblib)", ("hydra/launcher=parallel",), min(cores, jobs)),
        Launcher("submitit local", ("hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1"), jobs),
    ]
    if shutil.which("sbatch"):
        slurm = ("hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10")
        rows.append(Launcher("slurm", slurm, jobs))
    return rows


def job_span(job: Path) -> float:
    """Seconds between the first and the last line of a job's log."""
    stamps = [STAMP.match(line) for line in (job / "train.log").read_text().splitlines()]
    times = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") for m in stamps if m]
    return (times[-1] - times[0]).total_seconds()


def run_sweep(
    launcher: Launcher, data: Path, outputs: Path, jobs: int, job_args: list[str]
) -> dict[str, float]:
    """Run the sweep through ``launcher``; its wall time and its jobs' spans."""
    seeds = ",".join(str(seed) for seed in range(1, jobs + 1))
    args = [*launcher.overrides, *TINY_JOB, *job_args, f"data.data_dir={data}", f"seed={seeds}"]
    env = {**os.environ, "FER_OUTPUT_DIR": str(outputs), "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "fer.train", "-m", *args], env=env, cwd=outputs, capture_output=True, text=True,
        timeout=1800,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{launcher.name}: the sweep failed:\n{result.stderr[-3000:]}")
    (sweep,) = (outputs / "train" / "multiruns").iterdir()
    spans = [job_span(job) for job in sorted(sweep.iterdir()) if (job / "metrics.json").is_file()]
    if len(spans) != jobs:
        raise RuntimeError(f"{launcher.name}: {len(spans)} of {jobs} jobs finished")
    return {"wall": wall, "job": sum(spans) / jobs, "overhead": (launcher.at_once * wall - sum(spans)) / jobs}


def table(rows: list[tuple[Launcher, dict[str, float]]], jobs: int, job: str, load: float) -> str:
    basic = next((result["wall"] for launcher, result in rows if launcher.name == "basic"), None)
    lines = [
        f"{jobs} jobs ({job}, CPU) on {available_cores()} cores; load average before: "
        f"{load:.1f} (other processes slow every row; rerun on a quiet machine for the README)",
        "",
        "| launcher | wall s | job s | at once | overhead/job s | ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for launcher, result in rows:
        ratio = f"{basic / result['wall']:.2f}x" if basic else ""
        lines.append(
            f"| {launcher.name} | {result['wall']:.1f} | {result['job']:.1f} | {launcher.at_once} | "
            f"{result['overhead']:.1f} | {ratio} |"
        )
    return "\n".join(lines)


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer.bench.sweeps", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="jobs in the sweep (default 4)")
    parser.add_argument("--launchers", help="comma-separated row names (default: every one available)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per job (default 1: a tiny job)")
    parser.add_argument("--image-size", type=int, default=32, help="input size in pixels (default 32)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this new file")
    args = parser.parse_args(argv)
    chosen = launchers(args.jobs)
    if args.launchers:
        names = {name.strip() for name in args.launchers.split(",")}
        chosen = [launcher for launcher in chosen if launcher.name.split(" ")[0] in names]
    if args.json is not None and args.json.exists():
        parser.error(f"--json {args.json} already exists")
    job_args = [f"trainer.max_epochs={args.epochs}", f"data.image_size={args.image_size}"]
    rows = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fer-bench-sweeps-") as scratch:
        data = Path(scratch) / "data"
        generate_synthetic_dataset(data, train_per_class=8, eval_per_class=4, seed=0, image_size=48)
        for launcher in chosen:
            outputs = Path(scratch) / launcher.name.split(" ")[0]
            outputs.mkdir()
            print(f"running {args.jobs} jobs through {launcher.name} ...", file=sys.stderr, flush=True)
            rows.append((launcher, run_sweep(launcher, data, outputs, args.jobs, job_args)))
    print(table(rows, args.jobs, f"{args.epochs} epoch(s) at {args.image_size} px", load), flush=True)
    if args.json is not None:
        args.json.write_text(
            json.dumps({launcher.name: result for launcher, result in rows}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
