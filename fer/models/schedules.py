"""Learning-rate schedules from the ``scheduler`` config group, and their length when a run is extended.

The group holds a ``_partial_`` scheduler (``schedule``), how Lightning steps it (``interval``,
``frequency``, ``monitor``) and ``run_length_arg``: the one explicit hook for schedules whose length depends
on the run. It names the scheduler argument that receives the run's length counted in ``interval``s (the
total optimizer steps, or ``trainer.max_epochs``), e.g. ``total_steps`` for ``OneCycleLR`` or ``T_max`` for
``CosineAnnealingLR``; ``null`` for schedules that need none (``StepLR``, ``ReduceLROnPlateau``);
``min_run_length`` (optional) is the least length such a schedule is built for.

A run resumed for more epochs (``resume=<run> trainer.max_epochs=30``) rebuilds such a schedule for the new
length and moves it to the restored step: :func:`extend_schedule`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, SequentialLR

from fer.errors import FERError
from fer.instantiate import build

log = logging.getLogger(__name__)

INTERVALS = ("step", "epoch")
LIGHTNING_KEYS = ("interval", "frequency", "monitor")


def sequential(
    optimizer: Optimizer,
    schedules: Sequence[Callable[[Optimizer], LRScheduler]],
    milestones: Sequence[int],
    run_length: int | None = None,
    last_length_arg: str | None = None,
) -> SequentialLR:
    """torch's ``SequentialLR`` over ``_partial_`` schedules (each is given the optimizer), e.g. a
    ``LinearLR`` warm-up then a cosine. ``last_length_arg``: the argument of the last schedule that gets
    the rest of the run (``run_length`` minus the last milestone)."""
    built = [schedule(optimizer) for schedule in schedules[:-1]]
    last = schedules[-1]
    if last_length_arg:
        if run_length is None:
            raise FERError("scheduler: sequential(last_length_arg=...) needs run_length_arg: run_length.")
        last = _with(last, **{last_length_arg: max(int(run_length) - int(milestones[-1]), 1)})
    built.append(last(optimizer))
    return SequentialLR(optimizer, built, list(milestones))


def _with(schedule: Callable, **arguments: Any) -> Callable:
    def build(optimizer: Optimizer) -> LRScheduler:
        return schedule(optimizer, **arguments)

    return build


def check_config(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The scheduler group as a plain dict (None: a constant learning rate), checked."""
    if not config or not config.get("schedule"):
        return None
    spec = dict(config)
    interval = spec.get("interval", "epoch")
    if interval not in INTERVALS:
        raise FERError(f"scheduler.interval={interval!r}: choose one of {list(INTERVALS)}.")
    if not isinstance(spec["schedule"], Mapping) or not spec["schedule"].get("_target_"):
        raise FERError(
            "scheduler.schedule needs a _target_ (a torch.optim.lr_scheduler class, with _partial_: true)."
        )
    return spec


def run_length(interval: str, max_epochs: int | None, stepping_batches: int | float = 0) -> int:
    """The run's length in ``interval``s: optimizer steps or epochs (at least 1)."""
    if interval == "step":
        return max(int(stepping_batches), 1)
    if max_epochs is None or max_epochs < 0:
        raise FERError(
            "scheduler.run_length_arg needs the run's length in epochs: set trainer.max_epochs, or use a "
            "schedule without a length (scheduler=plateau, scheduler=step or scheduler=none)."
        )
    return max(int(max_epochs), 1)


def build_scheduler(spec: Mapping[str, Any], optimizer: Optimizer, length: int | None) -> LRScheduler:
    """The scheduler of a checked group config, with the run's length passed where ``run_length_arg`` says."""
    arguments = {}
    if spec.get("run_length_arg"):
        arguments[spec["run_length_arg"]] = length
    given = ("optimizer", *arguments)
    schedule = build(spec["schedule"], "scheduler.schedule", given=given, _partial_=True)
    try:
        return schedule(optimizer, **arguments)
    except TypeError as error:
        raise FERError(
            f"scheduler.schedule ({spec['schedule']['_target_']}) cannot be built: {error}. Check "
            f"scheduler.run_length_arg={spec.get('run_length_arg')!r}, the argument that takes the run length."
        ) from None


def lightning_config(spec: Mapping[str, Any], scheduler: LRScheduler) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` dict: the scheduler plus how to step it."""
    config: dict[str, Any] = {"scheduler": scheduler, "interval": spec.get("interval", "epoch")}
    for key in ("frequency", "monitor"):
        if spec.get(key) is not None:
            config[key] = spec[key]
    return config


def extend_schedule(
    spec: Mapping[str, Any], current: LRScheduler, optimizer: Optimizer, old_length: int, new_length: int
) -> LRScheduler:
    """A schedule built for ``new_length`` intervals, moved on to where the restored ``current`` one is
    (its ``last_epoch``): the learning rate from there on is that of the longer schedule."""
    for group in optimizer.param_groups:  # the new schedule starts where the first one started
        if "initial_lr" in group:
            group["lr"] = group["initial_lr"]
    scheduler = build_scheduler(spec, optimizer, new_length)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": nothing trains here
        while scheduler.last_epoch < current.last_epoch:
            scheduler.step()
    log.info(
        "Schedule %s rebuilt for %d %ss (was %d) and moved on to %s %d: learning rate %s",
        type(scheduler).__name__, new_length, spec.get("interval", "epoch"), old_length,
        spec.get("interval", "epoch"), scheduler.last_epoch,
        ", ".join(f"{group['lr']:.3g}" for group in optimizer.param_groups),
    )  # fmt: skip
    return scheduler
