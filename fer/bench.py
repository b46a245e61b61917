"""Training throughput of the seed's pipeline against fer's, on the same images: ``python -m fer.bench``.

Speed claims in this project come from here. Each row of the table is a function registered in :data:`ROWS`
(see :func:`register`) that trains or loads for a fixed budget of images or seconds, after a short warm-up,
and returns a :class:`Measurement`; the harness seeds it, tracks its peak memory and prints one markdown table
(and writes the same numbers as JSON). A row names the seed row it is compared to, which gives its ``x seed``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import functools
import gc
import itertools
import json
import math
import os
import platform
import random
import shutil
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torchvision import datasets, transforms

from fer.config import PROJECT_ROOT
from fer.data.layout import CLASS_NAMES, SPLITS, index_split
from fer.data.synthetic import draw_face
from fer.errors import FERError, user_message
from fer.losses import CrossEntropyLoss

SEED = 0
WARMUP_BATCHES = 2
FULL_BUDGET = (2048, 60.0)  # images, seconds per row
QUICK_BUDGET = (512, 6.0)  # the seed's full 224 px fine-tune runs ~50 images/s on 2 CPU cores

# The generated data: MMAFEDB-like 48 px JPEG files, about 31% of them RGB (gray faces saved as RGB).
DATA_FORMAT_VERSION = 1
DATA_KEY_FILE = "bench.json"
TRAIN_IMAGES = 4096
EVAL_PER_CLASS = 40
RGB_FRACTION = 0.31
JPEG_QUALITY = 90
IMAGE_SIZE = 48

# The seed's recipe (blog post): batch 32, Adam lr 0.01, RandomResizedCrop(224), ImageNet mean/std.
SEED_BATCH_SIZE = 32
SEED_LR = 0.01
SEED_CROP = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODEL_ALONE_BATCH_SIZE = {"cpu": 32, "cuda": 256}

B = TypeVar("B")


# ---------------------------------------------------------------------------------------------- data


def default_data_dir() -> Path:
    """``data/bench`` in the project, or under ``$FER_DATA_DIR`` like the rest of fer's data."""
    return Path(os.environ.get("FER_DATA_DIR") or PROJECT_ROOT / "data") / "bench"


def default_out_file() -> Path:
    """``outputs/bench/bench-<date>_<time>-<microseconds>.json`` (or under ``$FER_OUTPUT_DIR``)."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    return (
        Path(os.environ.get("FER_OUTPUT_DIR") or PROJECT_ROOT / "outputs") / "bench" / f"bench-{stamp}.json"
    )


def _data_key(train_per_class: int, eval_per_class: int, seed: int) -> dict[str, Any]:
    return {
        "format_version": DATA_FORMAT_VERSION,
        "train_per_class": train_per_class,
        "eval_per_class": eval_per_class,
        "seed": seed,
        "image_size": IMAGE_SIZE,
        "rgb_fraction": RGB_FRACTION,
        "jpeg_quality": JPEG_QUALITY,
    }


def write_jpeg_tree(out_dir: str | Path, train_per_class: int, eval_per_class: int, seed: int = SEED) -> Path:
    """Write ``out_dir/{train,valid,test}/<class>/<i>.jpg`` (replacing it) with drawn faces, atomically.

    JPEG and mixed gray/RGB like MMAFEDB, so the decode cost matches the real data; the tree appears only once
    complete (built in a temporary sibling, then renamed), so an interrupted run leaves nothing half-written.
    """
    if train_per_class < 1 or eval_per_class < 1:
        raise ValueError("train_per_class and eval_per_class must be >= 1")
    out = Path(out_dir).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        for split_idx, split in enumerate(SPLITS):
            count = train_per_class if split == "train" else eval_per_class
            for class_idx, name in enumerate(CLASS_NAMES):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for index in range(count):
                    rng = np.random.default_rng(np.random.SeedSequence([seed, split_idx, class_idx, index]))
                    as_rgb = rng.random() < RGB_FRACTION
                    image = draw_face(class_idx, rng, size=IMAGE_SIZE)
                    if as_rgb:
                        image = image.convert("RGB")
                    image.save(folder / f"{index}.jpg", quality=JPEG_QUALITY)
        key = _data_key(train_per_class, eval_per_class, seed)
        (tmp / DATA_KEY_FILE).write_text(json.dumps(key, indent=2) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_jpeg_tree(
    out_dir: str | Path,
    train_images: int = TRAIN_IMAGES,
    eval_per_class: int = EVAL_PER_CLASS,
    seed: int = SEED,
) -> Path:
    """``out_dir``, generated only when its key file does not match this request (cached across runs)."""
    out = Path(out_dir)
    train_per_class = math.ceil(train_images / len(CLASS_NAMES))
    try:
        if json.loads((out / DATA_KEY_FILE).read_text()) == _data_key(train_per_class, eval_per_class, seed):
            return out
    except (OSError, ValueError):
        pass
    total = (train_per_class + 2 * eval_per_class) * len(CLASS_NAMES)
    _progress(f"generating {total:,} JPEG faces in {display_path(out)} (once) ...")
    start = time.perf_counter()
    write_jpeg_tree(out, train_per_class, eval_per_class, seed)
    _progress(f"  done in {time.perf_counter() - start:.1f} s")
    return out


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
    times = os.times()
    return times.user + times.system


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
            share[0] = min(1.0, max(0.0, others / (elapsed * (os.cpu_count() or 1)))) if elapsed > 0 else None


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


# ----------------------------------------------------------------------------------------- seed rows


class SeedLoss(nn.Module):
    """The seed's ``MyLoss``, as written: softmax by ``exp``/``gather``/``sum``, then ``-log``, mean.

    Kept only as the baseline: ``exp`` overflows float32 above ~88, so large logits give inf/NaN
    (:class:`fer.losses.CrossEntropyLoss` is the stable version).
    """

    def forward(self, pred: Tensor, label: Tensor) -> Tensor:
        exp = torch.exp(pred)
        tmp1 = exp.gather(1, label.unsqueeze(-1)).squeeze()
        tmp2 = exp.sum(1)
        softmax = tmp1 / tmp2
        log = -torch.log(softmax)
        return log.mean()


def seed_loader(train_dir: Path) -> torch.utils.data.DataLoader:
    """The seed's input pipeline: ImageFolder + PIL, torchvision.transforms v1, batch 32, shuffled, no workers."""
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(SEED_CROP),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = datasets.ImageFolder(root=str(train_dir), transform=transform)
    return torch.utils.data.DataLoader(dataset, SEED_BATCH_SIZE, True)


def seed_model(train_backbone: bool) -> nn.Module:
    """MobileNetV3-small with every parameter frozen (unless ``train_backbone``) and a new 7-way last Linear.

    No pretrained weights (offline; the speed is the same). The module stays in train mode, as in the seed,
    so the "frozen" BatchNorm layers keep updating their statistics.
    """
    model = torchvision.models.mobilenet_v3_small(weights=None)
    for param in model.parameters():
        param.requires_grad = train_backbone
    model.classifier[3] = nn.Linear(model.classifier[3].in_features, len(CLASS_NAMES))
    return model.train()


def _seed_training(ctx: BenchContext, train_backbone: bool) -> Measurement:
    """The seed's training loop: forward, its loss, backward, Adam step, batches moved to the device."""
    loader = seed_loader(ctx.train_dir)
    model = seed_model(train_backbone).to(ctx.device)
    criterion = SeedLoss()
    # the seed hands Adam every parameter, frozen ones too (Adam skips those without gradients)
    optimizer = torch.optim.Adam(model.parameters(), lr=SEED_LR)

    def step(batch: tuple[Tensor, Tensor]) -> int:
        images, labels = batch
        optimizer.zero_grad()
        output = model(images.to(ctx.device))
        loss = criterion(output, labels.to(ctx.device))
        loss.backward()
        optimizer.step()
        return len(labels)

    return measure_steps(ctx, endless(loader), step)


@register(
    "seed/last_layer@224",
    "seed's pipeline and train step; only the last Linear trains (frozen backbone in train mode)",
    compare_to="seed/last_layer@224",
)
def seed_last_layer(ctx: BenchContext) -> Measurement:
    return _seed_training(ctx, train_backbone=False)


@register(
    "seed/full@224",
    "seed's pipeline and train step; every layer trains",
    compare_to="seed/full@224",
)
def seed_full(ctx: BenchContext) -> Measurement:
    return _seed_training(ctx, train_backbone=True)


@register(
    "seed/loader@224",
    "seed's DataLoader alone: decode, crop to 224, flip, normalize, batch of 32 to the device",
    compare_to="seed/loader@224",
)
def seed_loader_alone(ctx: BenchContext) -> Measurement:
    loader = seed_loader(ctx.train_dir)

    def step(batch: tuple[Tensor, Tensor]) -> int:
        images, labels = batch
        images.to(ctx.device)
        labels.to(ctx.device)
        return len(labels)

    return measure_steps(ctx, endless(loader), step)


# ---------------------------------------------------------------------------------- model-alone rows


@contextlib.contextmanager
def _cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """cuDNN autotuning for one row only, so that the seed rows run with torch's defaults."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _model_alone(ctx: BenchContext, arch: str, size: int, compiled: bool) -> Measurement:
    """A training step on one random batch already on the device: the model's ceiling, without any data."""
    batch_size = MODEL_ALONE_BATCH_SIZE[ctx.device.type]
    model = getattr(torchvision.models, arch)(weights=None, num_classes=len(CLASS_NAMES))
    model = model.to(ctx.device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters())
    criterion = CrossEntropyLoss()
    forward = torch.compile(model) if compiled else model
    images = torch.randn(batch_size, 3, size, size, device=ctx.device).contiguous(
        memory_format=torch.channels_last
    )
    labels = torch.randint(len(CLASS_NAMES), (batch_size,), device=ctx.device)

    def step(batch: tuple[Tensor, Tensor]) -> int:
        x, y = batch
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16) if ctx.cuda else contextlib.nullcontext():
            logits = forward(x)
        loss = criterion(logits.float(), y)
        loss.backward()
        optimizer.step()
        return len(y)

    with _cudnn_benchmark(ctx.cuda):
        warmup = ctx.warmup_batches + (1 if compiled else 0)  # compiling takes the first step or two
        measurement = measure_steps(ctx, itertools.repeat((images, labels)), step, warmup=warmup)
    precision = "bf16 autocast" if ctx.cuda else "fp32"
    return dataclasses.replace(measurement, notes=f"batch {batch_size}, {precision}")


def _register_model_alone_rows() -> None:
    """Small and large, 224 and 112 px, eager and compiled; by default only small eager runs on the CPU."""
    for arch in ("mobilenet_v3_small", "mobilenet_v3_large"):
        for size in (224, 112):
            for compiled in (False, True):
                register(
                    f"model-alone/{arch}@{size}" + ("/compiled" if compiled else ""),
                    "train step on random tensors on the device (AdamW, fer loss, channels_last, "
                    + ("torch.compile)" if compiled else "eager)"),
                    compare_to="seed/full@224",
                    default_on=("cpu", "cuda") if arch.endswith("small") and not compiled else ("cuda",),
                )(functools.partial(_model_alone, arch=arch, size=size, compiled=compiled))


_register_model_alone_rows()


# ------------------------------------------------------------------------------------------- fer rows
#
# fer's own rows go here: one function per row taking a BenchContext and returning a Measurement (most
# build their pipeline from ctx.data_dir on ctx.device and return measure_steps(ctx, endless(loader), step)),
# decorated with register(name, what, compare_to=<the seed row it replaces>). Planned: fer/last_layer@224
# and fer/full@224 (against the seed rows of the same name), fer/full@default, fer/loader (against
# seed/loader@224), fer/cache/...


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
        memory = "process peak RSS during the row (VmHWM" + (
            ", reset before each row)" if peak_resettable else ")"
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
    """The header lines and the markdown table; ``x seed`` is images/s over the compared seed row's."""
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
        "",
        "| row | what it measures | images | images/s | x seed | peak memory (MB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for result in results:
        m = result.measurement
        if m is None:
            lines.append(f"| {result.row.name} | {result.row.what} | failed: {result.error} | — | — | — |")
            continue
        speedup = ratio(result, results)
        lines.append(
            f"| {result.row.name} | {result.row.what} | {m.images:,} | {_number(m.images_per_s, 1)} "
            f"| {_number(speedup, 2)} | {_number(m.peak_memory_mb, 0)} |"
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
                "x_seed": ratio(result, results),
                "peak_memory_mb": m.peak_memory_mb if m else None,
                "warmup_seconds": m.warmup_seconds if m else None,
                "other_cpu": m.other_cpu if m else None,
                "notes": m.notes if m else "",
                "error": result.error,
            }
        )
    return {"header": header, "rows": rows}


def display_path(path: Path) -> str:
    """A path relative to the project when inside it, so that output names no folder of this machine."""
    with contextlib.suppress(ValueError):
        return str(Path(path).absolute().relative_to(PROJECT_ROOT))
    return str(path)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fer.bench",
        description="Training throughput of the seed's pipeline against fer's, on the same images.",
    )
    parser.add_argument("--quick", action="store_true", help="small budgets: the default rows in ~2 minutes")
    parser.add_argument(
        "--data",
        type=Path,
        help="an MMAFEDB-like tree DIR/{train,valid,test}/<class>/*.jpg (default: generated once in data/bench)",
    )
    parser.add_argument("--images", type=int, help="at most N timed images per row")
    parser.add_argument("--seconds", type=float, help="at most S timed seconds per row (at least one batch)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    parser.add_argument(
        "--out", type=Path, help="JSON results (default: outputs/bench/bench-<timestamp>.json)"
    )
    parser.add_argument(
        "--rows", help="comma-separated row names or patterns, e.g. 'seed/*,model-alone/*@112'"
    )
    return parser.parse_args(argv)


def _context(args: argparse.Namespace) -> BenchContext:
    """Check the arguments a user can get wrong, and prepare the data; FERError for each mistake."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise FERError("--device cuda: torch sees no CUDA device on this machine; use --device cpu")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads is not None and args.threads < 1:
        raise FERError(f"--threads must be at least 1, got {args.threads}")
    images, seconds = QUICK_BUDGET if args.quick else FULL_BUDGET
    images = images if args.images is None else args.images
    seconds = seconds if args.seconds is None else args.seconds
    if images < 1 or seconds <= 0:
        raise FERError("--images must be at least 1 and --seconds above 0")
    if args.data is None:
        data_dir = ensure_jpeg_tree(default_data_dir())
    else:
        data_dir = args.data
        index_split(data_dir, "train")  # the layout check, with its message naming the fix
    return BenchContext(data_dir=data_dir, device=device, images=images, seconds=seconds, quick=args.quick)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the selected rows, print the table to stdout, write the JSON; 1 if a row failed, 2 on bad input."""
    args = parse_args(argv)
    try:
        ctx = _context(args)
        rows = select_rows(args.rows, ctx.device)
    except FERError as error:
        print(f"fer: error: {user_message(error)}", file=sys.stderr)
        return 2
    threads_before = torch.get_num_threads()  # restored: main() may run inside another program (tests)
    torch.set_num_threads(args.threads or _available_cores())
    try:
        peak_resettable = _reset_peak_memory(ctx.device)
        header = make_header(ctx, peak_resettable)
        results = [run_row(row, ctx) for row in rows]
    finally:
        torch.set_num_threads(threads_before)
    print(format_table(header, results), flush=True)
    out = args.out or default_out_file()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results_json(header, results), indent=2) + "\n")
    _progress(f"wrote {display_path(out)}")
    return 1 if any(result.error for result in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
