"""The bench's harness: a row registry, timed measurement on a budget, and the table it prints.

Speed claims in this project come from ``python -m fer.bench``. Each row of the table is a function
registered with :func:`register` that trains or loads for a fixed budget of images or seconds, after a short
warm-up, and returns a :class:`Measurement`; the harness seeds it, tracks its peak memory and the load other
processes put on the machine, and prints one markdown table (and writes the same numbers as JSON). A row
names the row it is compared to, which gives its ratio.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import gc
import json
import math
import os
import platform
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torchvision

from fer.bench.data import DATA_KEY_FILE, display_path
from fer.data.sources import EXPRESSIONS as CLASS_NAMES
from fer.errors import FERError

SEED = 0
WARMUP_BATCHES = 2
FULL_BUDGET = (2048, 60.0)  # images, seconds per row
QUICK_BUDGET = (512, 6.0)
# a GPU trains tens of thousands of images per second: budgets in seconds, images only as a cap
CUDA_FULL_BUDGET = (1_000_000, 10.0)
CUDA_QUICK_BUDGET = (1_000_000, 3.0)  # the seed's full 224 px fine-tune runs ~50 images/s on 2 CPU cores

B = TypeVar("B")


# ----------------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class BenchContext:
    """What every row gets: the data, the device, and its budget (``images`` or ``seconds``, whichever first)."""

    data_dir: Path
    device: torch.device
    images: int
    seconds: float
    warmup_batches: int = WARMUP_BATCHES
    quick: bool = False
    seed: int = SEED

    @property
    def train_dir(self) -> Path:
        return self.data_dir / "train"

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def synchronize(self) -> None:
        """Wait for queued GPU work, so that a timer read afterwards covers it."""
        if self.cuda:
            torch.cuda.synchronize(self.device)


@dataclass(frozen=True)
class Measurement:
    """One row's result: ``images`` processed in ``seconds`` (warm-up excluded), and its peak memory.

    ``other_cpu``: the share of the machine's CPUs that other processes used during the row (Linux); well
    above 0 the row was slowed by them (the harness fills it, like ``peak_memory_mb``).
    """

    images: int
    seconds: float
    peak_memory_mb: float | None = None
    warmup_seconds: float = 0.0
    other_cpu: float | None = None
    notes: str = ""

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def endless(batches: Iterable[B]) -> Iterator[B]:
    """Epoch after epoch of ``batches`` (a DataLoader reshuffles each time), as a long training run sees them."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("no batches to measure: the data set is empty")


def measure_steps(
    ctx: BenchContext, batches: Iterable[B], step: Callable[[B], int], warmup: int | None = None
) -> Measurement:
    """Run ``step`` (returns the images it processed) on ``batches`` until the budget is spent.

    The first ``warmup`` batches are not timed (allocator, cuDNN autotuning, compilation); at least one
    batch is. Fetching each batch is timed with the step: the data pipeline is part of what is measured.
    """
    warmup = ctx.warmup_batches if warmup is None else warmup
    iterator = iter(batches)
    start = time.perf_counter()
    for _ in range(warmup):
        step(next(iterator))
    ctx.synchronize()
    warmup_seconds = time.perf_counter() - start
    images = 0
    start = time.perf_counter()
    while True:
        images += step(next(iterator))
        if images >= ctx.images or time.perf_counter() - start >= ctx.seconds:
            break
    ctx.synchronize()
    return Measurement(images=images, seconds=time.perf_counter() - start, warmup_seconds=warmup_seconds)


def _reset_peak_memory(device: torch.device) -> bool:
    """Start a new high-water mark; False where the platform cannot (the peak is then the process's)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
    except OSError:
        return False
    return True


def _peak_memory_mb(device: torch.device) -> float | None:
    """CUDA: peak tensor memory allocated; CPU: the process's peak resident set size (VmHWM)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


OTHER_CPU_WARNING = 0.1


def _busy_cpu_seconds() -> float | None:
    """CPU seconds every process on the machine has used since boot (Linux ``/proc/stat``), else None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields)
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """This process's CPU time, its finished child processes' included (packing uses worker processes)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@contextlib.contextmanager
def other_cpu_meter() -> Iterator[Callable[[], float | None]]:
    """Yields a function giving the share of all CPUs used by other processes during the ``with`` block.

    On a shared machine another job can halve a row's speed (or worse: torch's threads wait for each
    other when one of them is descheduled), so every row says how busy the rest of the machine was.
    """
    wall, busy, own = time.perf_counter(), _busy_cpu_seconds(), _own_cpu_seconds()
    share: list[float | None] = [None]
    try:
        yield lambda: share[0]
    finally:
        busy_after = _busy_cpu_seconds()
        if busy is not None and busy_after is not None:
            elapsed = time.perf_counter() - wall
            others = (busy_after - busy) - (_own_cpu_seconds() - own)
            # under half a second the clock ticks are too coarse to tell (rows that reuse an earlier run)
            share[0] = (
                min(1.0, max(0.0, others / (elapsed * (os.cpu_count() or 1)))) if elapsed > 0.5 else None
            )


def seed_everything(seed: int) -> None:
    """Same shuffles, crops and initial weights in every run, so runs are comparable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------ registry


RowFunction = Callable[[BenchContext], Measurement]


@dataclass(frozen=True)
class Row:
    """A named measurement; ``compare_to`` is the seed row its ``x seed`` ratio divides by (None: no ratio)."""

    name: str
    what: str
    function: RowFunction
    compare_to: str | None
    default_on: frozenset[str]

    @property
    def group(self) -> str:
        return self.name.split("/", 1)[0]


ROWS: dict[str, Row] = {}


def register(
    name: str, what: str, *, compare_to: str | None = None, default_on: Sequence[str] = ("cpu", "cuda")
) -> Callable[[RowFunction], RowFunction]:
    """Add a row: ``@register("fer/full@224", "...", compare_to="seed/full@224")`` over ``def row(ctx)``.

    ``default_on`` lists the device types where the row runs without ``--rows`` naming it; table order is
    registration order.
    """

    def add(function: RowFunction) -> RowFunction:
        if name in ROWS:
            raise ValueError(f"bench row {name!r} registered twice")
        ROWS[name] = Row(name, what, function, compare_to, frozenset(default_on))
        return function

    return add


# --------------------------------------------------------------------------------- running, reporting


@dataclass(frozen=True)
class Result:
    """A row as run: its measurement, or the error that stopped it (the other rows still run)."""

    row: Row
    measurement: Measurement | None = None
    error: str | None = None


def select_rows(spec: str | None, device: torch.device) -> list[Row]:
    """The rows named in ``spec`` (comma-separated names or shell patterns), else the device's default rows."""
    if not spec:
        return [row for row in ROWS.values() if device.type in row.default_on]
    wanted = [part.strip() for part in spec.split(",") if part.strip()]
    for pattern in wanted:
        if not fnmatch.filter(ROWS, pattern):
            raise FERError(f"--rows: no row named {pattern!r}; the rows are: {', '.join(ROWS)}")
    return [row for name, row in ROWS.items() if any(fnmatch.fnmatchcase(name, p) for p in wanted)]


def run_row(row: Row, ctx: BenchContext) -> Result:
    """Seed, reset the memory high-water mark, measure; a failing row is reported, not fatal."""
    _progress(f"measuring {row.name} ...")
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()
    seed_everything(ctx.seed)
    _reset_peak_memory(ctx.device)
    try:
        with other_cpu_meter() as other_cpu:
            measurement = row.function(ctx)
    except Exception as error:
        _progress("".join(traceback.format_exception_only(type(error), error)).rstrip())
        return Result(row, error=f"{type(error).__name__}: {error}".splitlines()[0])
    measurement = dataclasses.replace(
        measurement, peak_memory_mb=_peak_memory_mb(ctx.device), other_cpu=other_cpu()
    )
    busy = (
        f" (other processes used {measurement.other_cpu:.0%} of the CPUs)" if _disturbed(measurement) else ""
    )
    _progress(
        f"  {measurement.images:,} images in {measurement.seconds:.1f} s: "
        f"{measurement.images_per_s:,.1f} images/s{busy}"
    )
    return Result(row, measurement)


def _disturbed(measurement: Measurement) -> bool:
    return measurement.other_cpu is not None and measurement.other_cpu >= OTHER_CPU_WARNING


def ratio(result: Result, results: Sequence[Result]) -> float | None:
    """images/s over that of the seed row ``result`` is compared to, when both were measured in this run."""
    if result.measurement is None or result.row.compare_to is None:
        return None
    for other in results:
        if other.row.name == result.row.compare_to and other.measurement is not None:
            return result.measurement.images_per_s / other.measurement.images_per_s
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _data_summary(data_dir: Path) -> str:
    """Image counts per split of the measured tree, read from the generator's key file when it is ours."""
    try:
        key = json.loads((data_dir / DATA_KEY_FILE).read_text())
    except (OSError, ValueError):
        return display_path(data_dir)
    train = key["train_per_class"] * len(CLASS_NAMES)
    evaluation = key["eval_per_class"] * len(CLASS_NAMES)
    return (
        f"{display_path(data_dir)} (generated: {train:,} train / {evaluation:,} valid / {evaluation:,} test JPEG, "
        f"{key['image_size']} px, {key['rgb_fraction']:.0%} RGB)"
    )


def make_header(ctx: BenchContext, peak_resettable: bool) -> dict[str, Any]:
    """Where and how the numbers were measured: machine, versions, budget, what "peak memory" means."""
    if ctx.cuda:
        device = f"cuda ({torch.cuda.get_device_name(ctx.device)})"
        memory = "CUDA max_memory_allocated during the row (tensors only)"
    else:
        device = "cpu"
        memory = (
            "process peak RSS during the row (VmHWM, reset before each row; it includes what earlier rows left)"
            if peak_resettable
            else "process peak RSS since the start (VmHWM; this platform cannot reset it per row)"
        )
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "cpu_model": _cpu_model(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "data": _data_summary(ctx.data_dir),
        "budget": {
            "images": ctx.images,
            "seconds": ctx.seconds,
            "warmup_batches": ctx.warmup_batches,
            "quick": ctx.quick,
        },
        "seed": ctx.seed,
        "peak_memory": memory,
    }


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def format_table(header: dict[str, Any], results: Sequence[Result]) -> str:
    """The header lines and the markdown table; ``ratio`` is images/s over that of the row named in ``vs``."""
    budget = header["budget"]
    lines = [
        "## fer.bench: training throughput (images/s, higher is better)",
        "",
        f"- {header['date']} · device {header['device']} · {header['cpu_threads']} CPU threads "
        f"({header['cpu_model']}) · torch {header['torch']} · torchvision {header['torchvision']}",
        f"- data: {header['data']}",
        f"- each row: up to {budget['images']:,} images or {budget['seconds']:g} s, after "
        f"{budget['warmup_batches']} untimed warm-up batches" + (" (--quick)" if budget["quick"] else ""),
        f"- peak memory: {header['peak_memory']}",
        f"- memory allocator: {header.get('allocator', 'default')}",
        "",
        "| row | what it measures | images | images/s | vs | ratio | peak memory (MB) |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for result in results:
        m = result.measurement
        if m is None:
            lines.append(
                f"| {result.row.name} | {result.row.what} | failed: {result.error} | — | — | — | — |"
            )
            continue
        speedup = ratio(result, results)
        lines.append(
            f"| {result.row.name} | {result.row.what} | {m.images:,} | {_number(m.images_per_s, 1)} "
            f"| {result.row.compare_to or '—'} | {_number(speedup, 2)} | {_number(m.peak_memory_mb, 0)} |"
        )
    notes = []
    for result in results:
        m = result.measurement
        if m is None:
            continue
        parts = [m.notes] if m.notes else []
        if _disturbed(m):
            parts.append(f"**other processes used {m.other_cpu:.0%} of the CPUs during this row: rerun it**")
        if parts:
            notes.append(f"- {result.row.name}: {'; '.join(parts)}")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def results_json(header: dict[str, Any], results: Sequence[Result]) -> dict[str, Any]:
    rows = []
    for result in results:
        m = result.measurement
        rows.append(
            {
                "name": result.row.name,
                "what": result.row.what,
                "compare_to": result.row.compare_to,
                "images": m.images if m else None,
                "seconds": m.seconds if m else None,
                "images_per_s": m.images_per_s if m else None,
                "ratio": ratio(result, results),
                "peak_memory_mb": m.peak_memory_mb if m else None,
                "warmup_seconds": m.warmup_seconds if m else None,
                "other_cpu": m.other_cpu if m else None,
                "notes": m.notes if m else "",
                "error": result.error,
            }
        )
    return {"header": header, "rows": rows}


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
