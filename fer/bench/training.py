"""Training rows of the bench: the seed's pipeline as the blog post wrote it, the model alone on random
tensors, and fer's training path (packed data, batched augmentation, frozen-front fusion, feature cache)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision import datasets, transforms

from fer.bench.harness import BenchContext, Measurement, endless, measure_steps, register
from fer.data.sources import EXPRESSIONS as CLASS_NAMES
from fer.data.sources import ImageFolders
from fer.losses import CrossEntropyLoss

# The seed's recipe (blog post): batch 32, Adam lr 0.01, RandomResizedCrop(224), ImageNet mean/std.
SEED_BATCH_SIZE = 32
SEED_LR = 0.01
SEED_CROP = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODEL_ALONE_BATCH_SIZE = {"cpu": 32, "cuda": 256}

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

    from fer.models.features import FeatureCache

    compiled = module.hparams.compile
    timer = _StepTimer(ctx, ctx.warmup_batches + (1 if compiled else 0))
    timer.feature_cache = FeatureCache()
    extra = [timer.feature_cache] if datamodule.feature_cache else []
    trainer = L.Trainer(
        accelerator=ctx.device.type, devices=1, precision="bf16-mixed" if ctx.cuda else "32-true",
        benchmark=ctx.cuda, max_epochs=10_000, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer.callback(), *extra],
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
    from fer.data.packing import pack_split

    index = ImageFolders(ctx.data_dir).index("train")
    with _scratch_cache(ctx) as cache:
        start = time.perf_counter()
        pack_split(index, cache, progress=False)
        seconds = time.perf_counter() - start
        again = time.perf_counter()
        pack_split(ImageFolders(ctx.data_dir).index("train"), cache, progress=False)
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
            stats = small.feature_cache.stats["train"]
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
