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
import logging
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
from fer.runtime import quiet_known_warnings, tune_cpu_allocator
from fer.system import available_cores, replace_folder

SEED = 0
WARMUP_BATCHES = 2
FULL_BUDGET = (2048, 60.0)  # images, seconds per row
QUICK_BUDGET = (512, 6.0)
# a GPU trains tens of thousands of images per second: budgets in seconds, images only as a cap
CUDA_FULL_BUDGET = (1_000_000, 10.0)
CUDA_QUICK_BUDGET = (1_000_000, 3.0)  # the seed's full 224 px fine-tune runs ~50 images/s on 2 CPU cores

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
        replace_folder(tmp, out)
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
# fer's rows run fer's own code: the packed data module, batched augmentation, FERModule and a Lightning
# Trainer, as ``python -m fer.train`` does, so that per-step framework overhead is part of the figure.

SEED_AUGMENT = {
    "crop_scale": [0.08, 1.0],
    "crop_ratio": [0.75, 4 / 3],
    "hflip": 0.5,
    "rotation": 0,
    "erasing": 0,
}
DEFAULT_SIZE = 112  # conf/data/mmafedb.yaml
DEFAULT_BATCH = {"cpu": 64, "cuda": 256}
MMAFEDB_IMAGES = 92_968 + 17_356 + 17_356
MMAFEDB_TRAIN = 92_968


@contextlib.contextmanager
def _scratch_cache(ctx: BenchContext) -> Iterator[Path]:
    """A fresh cache folder for one row (packs and features are rebuilt, never read from an earlier run)."""
    folder = ctx.data_dir.parent / f".{ctx.data_dir.name}-cache-{uuid.uuid4().hex[:8]}"
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _fer_datamodule(ctx: BenchContext, cache: Path, size: int, batch: int, augment: dict | None = None, **kw):
    from fer.data import FERDataModule

    return FERDataModule(
        ctx.data_dir, image_size=size, batch_size=batch, eval_batch_size=max(batch, 256),
        augment=augment, cache_dir=cache, seed=ctx.seed, **kw,
    )  # fmt: skip


class _StepTimer:
    """Lightning callback: times the training steps after the warm-up ones, stops at the row's budget."""

    def __init__(self, ctx: BenchContext, warmup: int) -> None:
        self.ctx, self.warmup = ctx, warmup
        self.steps, self.images, self.start, self.seconds, self.warmup_start = (
            0,
            0,
            None,
            0.0,
            time.perf_counter(),
        )

    def callback(self):
        import lightning as L

        timer = self

        class StepTimer(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                timer.steps += 1
                if timer.start is not None:
                    timer.images += len(batch[1])
                    elapsed = time.perf_counter() - timer.start
                    if timer.images >= timer.ctx.images or elapsed >= timer.ctx.seconds:
                        timer.ctx.synchronize()
                        timer.seconds = time.perf_counter() - timer.start
                        trainer.should_stop = True
                elif timer.steps >= timer.warmup:
                    timer.ctx.synchronize()
                    timer.warmup_seconds = time.perf_counter() - timer.warmup_start
                    timer.start = time.perf_counter()

        return StepTimer()


def _fer_module(
    datamodule, policy: str, optimizer: dict, compiled: bool = False, arch: str = "mobilenet_v3_small"
):
    from fer.models import FERModule

    return FERModule(
        arch, freeze={"policy": policy}, optimizer=optimizer, compile=compiled,
        preprocessing=datamodule.preprocessing.as_dict(),
    )  # fmt: skip


def _fer_fit(ctx: BenchContext, datamodule, module) -> _StepTimer:
    """Train fer's module with a Lightning Trainer until the row's budget."""
    import lightning as L

    compiled = module.hparams.compile
    timer = _StepTimer(ctx, ctx.warmup_batches + (1 if compiled else 0))
    trainer = L.Trainer(
        accelerator=ctx.device.type, devices=1, precision="bf16-mixed" if ctx.cuda else "32-true",
        benchmark=ctx.cuda, max_epochs=10_000, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer.callback()],
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    if timer.start is None or timer.seconds == 0.0:
        raise RuntimeError("the training stopped before the timed steps (too few images for the warm-up?)")
    return timer


def _timer_measurement(timer: _StepTimer, notes: str) -> Measurement:
    return Measurement(timer.images, timer.seconds, warmup_seconds=timer.warmup_seconds, notes=notes)


def _fer_training(
    ctx: BenchContext, policy: str, size: int, batch: int, augment: dict | None, optimizer: dict
) -> Measurement:
    with _scratch_cache(ctx) as cache:
        datamodule = _fer_datamodule(ctx, cache, size, batch, augment)
        datamodule.prepare_data()
        datamodule.setup("fit")  # packing is measured by its own row (fer/pack), not here
        timer = _fer_fit(ctx, datamodule, _fer_module(datamodule, policy, optimizer))
    precision = "bf16-mixed" if ctx.cuda else "fp32"
    return _timer_measurement(timer, f"batch {batch}, {precision}, packed data, batched augmentation")


SEED_OPTIMIZER = {"_target_": "torch.optim.Adam", "lr": SEED_LR}
FER_OPTIMIZER = {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.01}


@register(
    "fer/pack",
    "decode the train split once into fer's uint8 pack (all cores); read back memory-mapped afterwards",
)
def fer_pack(ctx: BenchContext) -> Measurement:
    from fer.data.packed import pack_split

    index = index_split(ctx.data_dir, "train")
    with _scratch_cache(ctx) as cache:
        start = time.perf_counter()
        pack_split(index, cache, progress=False)
        seconds = time.perf_counter() - start
        again = time.perf_counter()
        pack_split(index_split(ctx.data_dir, "train"), cache, progress=False)
        reopen = time.perf_counter() - again
    rate = len(index) / seconds
    notes = (
        f"all of MMAFEDB ({MMAFEDB_IMAGES:,} images) at this rate: {MMAFEDB_IMAGES / rate:.0f} s; "
        f"re-opening the pack (index + key + memory map): {reopen:.2f} s for {len(index):,} files"
    )
    return Measurement(len(index), seconds, notes=notes)


def _fer_loader(ctx: BenchContext, size: int, batch: int, augment: dict | None) -> Measurement:
    with _scratch_cache(ctx) as cache:
        datamodule = _fer_datamodule(ctx, cache, size, batch, augment)
        datamodule.setup("fit")
        if ctx.cuda:
            datamodule.packs["train"] = datamodule.packs["train"].to(ctx.device)
        loader = datamodule.train_dataloader()

        def step(batch_: tuple[Tensor, Tensor]) -> int:
            images, labels = batch_
            images.to(ctx.device)
            return len(labels)

        measurement = measure_steps(ctx, endless(loader), step)
    where = "on the GPU" if ctx.cuda else "on the CPU"
    return dataclasses.replace(measurement, notes=f"batch {batch}, augmented {where}")


@register(
    "fer/loader@224",
    "fer's packed batches + batched augmentation alone, seed's crop/flip at 224, batch 32",
    compare_to="seed/loader@224",
)
def fer_loader_224(ctx: BenchContext) -> Measurement:
    return _fer_loader(ctx, SEED_CROP, SEED_BATCH_SIZE, SEED_AUGMENT)


@register(
    "fer/loader@default",
    f"fer's packed batches + default augmentation (crop, flip, rotation, erasing) at {DEFAULT_SIZE} px",
    compare_to="seed/loader@224",
)
def fer_loader_default(ctx: BenchContext) -> Measurement:
    return _fer_loader(ctx, DEFAULT_SIZE, DEFAULT_BATCH[ctx.device.type], None)


@register(
    "fer/last_layer@224",
    "fer, the seed's policy and size: freeze=last_layer, 224 px, seed's crop/flip, batch 32, Adam",
    compare_to="seed/last_layer@224",
)
def fer_last_layer_224(ctx: BenchContext) -> Measurement:
    return _fer_training(ctx, "last_layer", SEED_CROP, SEED_BATCH_SIZE, SEED_AUGMENT, SEED_OPTIMIZER)


@register(
    "fer/full@224",
    "fer, full fine-tuning (freeze=none) at 224 px, seed's crop/flip, batch 32, Adam",
    compare_to="seed/full@224",
)
def fer_full_224(ctx: BenchContext) -> Measurement:
    return _fer_training(ctx, "none", SEED_CROP, SEED_BATCH_SIZE, SEED_AUGMENT, SEED_OPTIMIZER)


@register(
    "fer/full@default",
    f"fer, full fine-tuning at its default {DEFAULT_SIZE} px and augmentation, AdamW",
    compare_to="seed/full@224",
)
def fer_full_default(ctx: BenchContext) -> Measurement:
    return _fer_training(ctx, "none", DEFAULT_SIZE, DEFAULT_BATCH[ctx.device.type], None, FER_OPTIMIZER)


def _fer_end_to_end(ctx: BenchContext, arch: str, size: int, compiled: bool) -> Measurement:
    """fer's whole training path at its defaults on the device: packed data moved to the GPU, batched
    augmentation there, bf16-mixed, channels_last, cuDNN benchmark; optionally torch.compile."""
    batch = DEFAULT_BATCH[ctx.device.type]
    with _scratch_cache(ctx) as cache:
        # equal batches: a smaller last batch would make torch.compile recompile inside the timed steps
        datamodule = _fer_datamodule(ctx, cache, size, batch, None, drop_last=True)
        datamodule.setup("fit")
        timer = _fer_fit(ctx, datamodule, _fer_module(datamodule, "none", FER_OPTIMIZER, compiled, arch))
    epoch = MMAFEDB_TRAIN / (timer.images / timer.seconds)
    precision = "bf16-mixed" if ctx.cuda else "fp32"
    notes = f"batch {batch}, {precision}; an MMAFEDB-size epoch ({MMAFEDB_TRAIN:,} images): {epoch:.1f} s"
    return _timer_measurement(timer, notes)


def _register_end_to_end_rows() -> None:
    """The GPU table: fer's training end to end next to the model alone on random tensors (same batch)."""
    for arch in ("mobilenet_v3_small", "mobilenet_v3_large"):
        for size in (112, 224):
            for compiled in (False, True):
                suffix = "/compiled" if compiled else ""
                register(
                    f"fer/train/{arch}@{size}{suffix}",
                    "fer end to end, full fine-tuning, default augmentation, data on the device"
                    + (", torch.compile" if compiled else ""),
                    compare_to=f"model-alone/{arch}@{size}{suffix}",
                    default_on=("cuda",),
                )(functools.partial(_fer_end_to_end, arch=arch, size=size, compiled=compiled))


_register_end_to_end_rows()


_INFERENCE: dict[int, dict] = {}


def _inference(ctx: BenchContext, runtime: str, part: str) -> Measurement:
    """Inference at fer's default size: PyTorch eager against onnxruntime (one measurement serves 4 rows)."""
    if id(ctx) not in _INFERENCE:
        from fer.data.transforms import Preprocessing
        from fer.inference_bench import inference_latency
        from fer.models import FERModule

        module = FERModule(preprocessing=Preprocessing(DEFAULT_SIZE).as_dict())
        quick_runs = {"runs": 20, "throughput_runs": 1} if ctx.quick else {}
        _INFERENCE[id(ctx)] = inference_latency(module, device=ctx.device.type, **quick_runs)
    result = _INFERENCE[id(ctx)]
    figures = result[runtime]
    if part == "latency":
        # images/s of batch-1 calls = 1000 / median latency; the latency itself is in the notes
        runs = result["latency_runs"]
        median = figures["latency_ms"]
        notes = f"batch 1: median {median:.2f} ms, p90 {figures['latency_ms_p90']:.2f} ms over {runs} calls"
        return Measurement(runs, runs * median / 1000, notes=notes)
    batch = result["throughput_batch"]
    seconds = batch / figures["images_per_s"]
    notes = f"batch {batch}; largest logit difference torch vs onnxruntime {result['max_abs_logit_diff']:.1e}"
    return Measurement(batch, seconds, notes=notes)


for _runtime in ("torch", "onnxruntime"):
    for _part in ("latency", "throughput"):
        register(
            f"inference/{_runtime}/{_part}@{DEFAULT_SIZE}",
            f"inference, {'PyTorch eager' if _runtime == 'torch' else 'onnxruntime'}, "
            + ("batch 1 (images/s = 1000 / median ms)" if _part == "latency" else "batch 256"),
            compare_to=f"inference/torch/{_part}@{DEFAULT_SIZE}",
        )(functools.partial(_inference, runtime=_runtime, part=_part))


HEAD_BATCH = 256  # with features cached, the head alone trains: large batches cost little


_CACHED_RUNS: dict[tuple[int, str], tuple[dict[str, float], _StepTimer, _StepTimer]] = {}


def _fer_cached(ctx: BenchContext, policy: str, part: str) -> Measurement:
    """Feature cache at 224 px with the seed's crop/flip: the caching pass, then head epochs at the seed's
    batch of 32 and at 256 (one run serves the three rows; the second fit reads the stored features)."""
    key = (id(ctx), policy)
    if key not in _CACHED_RUNS:
        with _scratch_cache(ctx) as cache:
            datamodule = _fer_datamodule(
                ctx, cache, SEED_CROP, SEED_BATCH_SIZE, SEED_AUGMENT, feature_cache=True
            )
            module = _fer_module(datamodule, policy, SEED_OPTIMIZER)
            small = _fer_fit(ctx, datamodule, module)
            stats = datamodule.feature_cache_stats["train"]
            large_batches = _fer_datamodule(
                ctx, cache, SEED_CROP, HEAD_BATCH, SEED_AUGMENT, feature_cache=True
            )
            large = _fer_fit(ctx, large_batches, module)
        _CACHED_RUNS[key] = (stats, small, large)
    stats, small, large = _CACHED_RUNS[key]
    if part == "pass":
        return Measurement(
            int(stats["images"]), stats["seconds"],
            notes="the frozen front once per image; x seed > 1: faster than one seed epoch over the same images",
        )  # fmt: skip
    timer = small if part == "epochs" else large
    epoch = MMAFEDB_TRAIN / (timer.images / timer.seconds)
    batch = SEED_BATCH_SIZE if part == "epochs" else HEAD_BATCH
    return _timer_measurement(
        timer, f"batch {batch}; an MMAFEDB-size epoch ({MMAFEDB_TRAIN:,} images): {epoch:.1f} s"
    )


for _policy in ("last_layer", "backbone"):
    for _part, _what in (
        ("pass", "the caching pass (224 px, one augmented view)"),
        ("epochs", "head training on the cached features, batch 32"),
        (f"epochs@{HEAD_BATCH}", f"head training on the cached features, batch {HEAD_BATCH}"),
    ):
        register(
            f"fer/cache/{_policy}/{_part}",
            f"freeze={_policy}, data.feature_cache=true: {_what}",
            compare_to="seed/last_layer@224",
        )(functools.partial(_fer_cached, policy=_policy, part=_part))


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


def display_path(path: Path) -> str:
    """A path relative to the project when inside it, so that output names no folder of this machine."""
    with contextlib.suppress(ValueError):
        return str(Path(path).absolute().relative_to(PROJECT_ROOT))
    return str(path)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
    if device.type == "cuda":
        images, seconds = CUDA_QUICK_BUDGET if args.quick else CUDA_FULL_BUDGET
    else:
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
    quiet_known_warnings()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available" lines per row
    threads_before = torch.get_num_threads()  # restored: main() may run inside another program (tests)
    torch.set_num_threads(args.threads or available_cores())
    try:
        peak_resettable = _reset_peak_memory(ctx.device)
        header = make_header(ctx, peak_resettable)
        # as fer.train does; it applies to every row of this process, the seed's too (conservative ratios)
        header["allocator"] = (
            "heap kept (fer.runtime.tune_cpu_allocator)" if tune_cpu_allocator() else "default"
        )
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
