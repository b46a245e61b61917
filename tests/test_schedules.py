"""Learning-rate schedules from config, and a finished run resumed for more epochs with each of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import check, events, fer_main, run_dirs, tiny_args

from fer.errors import FERError
from fer.models import schedules

# 56 training images in batches of 16: 4 steps per epoch
STEPS_PER_EPOCH = 4


def learning_rates(run: Path) -> list[tuple[int, float]]:
    """The learning rate at each epoch start (Lightning's LearningRateMonitor), from TensorBoard."""
    return [(e.step, e.value) for e in events(run).Scalars("lr-AdamW")]


def train(data: Path, outputs: Path, *extra: str) -> Path:
    check(fer_main("fer.train", *tiny_args(data, *extra), outputs=outputs))
    (run,) = run_dirs(outputs)
    return run


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle", "warmup_cosine", "step", "plateau", "none"])
def test_a_run_resumed_for_more_epochs_follows_the_longer_schedule(scheduler, tiny_data, tmp_path):
    """``resume=<run> trainer.max_epochs=4`` after a 2-epoch run: no error, and from the restored step the
    learning rates of a run that was 4 epochs long from the start (schedules rebuilt for the new length);
    the schedules without a length go on as they were (1 epoch, then 1 more, is enough to show it)."""
    extra = [f"scheduler={scheduler}"] + (["scheduler.schedule.step_size=1"] if scheduler == "step" else [])
    rebuilt = scheduler in ("cosine", "onecycle", "warmup_cosine")
    first, total = (2, 4) if rebuilt else (1, 2)
    short = train(tiny_data, tmp_path / "short", *extra, f"trainer.max_epochs={first}")
    resume = [f"resume={short}", f"trainer.max_epochs={total}"]
    result = check(fer_main("fer.train", *resume, outputs=tmp_path / "short"))
    long = train(tiny_data, tmp_path / "long", *extra, f"trainer.max_epochs={total}")

    resumed, fresh = learning_rates(short), learning_rates(long)
    steps = list(range(0, total * STEPS_PER_EPOCH, STEPS_PER_EPOCH))
    assert [step for step, _ in resumed] == [step for step, _ in fresh] == steps
    if rebuilt:
        # the epochs after the restored step run at the longer schedule's rates
        assert [lr for _, lr in resumed[first:]] == pytest.approx([lr for _, lr in fresh[first:]], rel=1e-6)
        assert "rebuilt for" in result.output
    else:
        assert [lr for _, lr in resumed] == pytest.approx([lr for _, lr in fresh], rel=1e-6)
    assert all(lr > 0 for _, lr in resumed), resumed  # never a silent zero
    last = torch.load(short / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (total - 1, total * STEPS_PER_EPOCH)


def test_cosine_over_the_old_length_would_have_restarted_from_zero():
    """What the rebuild prevents: the restored 2-epoch cosine, stepped on, gives 0 then rises again."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    old = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        old.step()
    assert rates[2] == pytest.approx(0.0, abs=1e-12) and rates[3] > 0
    spec = {
        "schedule": {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "_partial_": True},
        "interval": "epoch",
        "run_length_arg": "T_max",
    }
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    restored = schedules.build_scheduler(spec, optimizer, 2)
    for _ in range(2):
        optimizer.step()
        restored.step()
    longer = schedules.extend_schedule(spec, restored, optimizer, 2, 4)
    assert longer.last_epoch == 2 and optimizer.param_groups[0]["lr"] == pytest.approx(
        0.5
    )  # cos(pi/2) halfway


def test_warm_up_then_cosine_gives_the_rest_of_the_run_to_the_cosine():
    spec = {
        "schedule": {
            "_target_": "fer.models.schedules.sequential",
            "_partial_": True,
            "schedules": [
                {
                    "_target_": "torch.optim.lr_scheduler.LinearLR",
                    "_partial_": True,
                    "start_factor": 0.5,
                    "total_iters": 2,
                },
                {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "_partial_": True},
            ],
            "milestones": [2],
            "last_length_arg": "T_max",
        },
        "interval": "epoch",
        "run_length_arg": "run_length",
    }
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = schedules.build_scheduler(spec, optimizer, 6)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:3] == pytest.approx([0.5, 0.75, 1.0])  # warm-up, then the cosine from the full rate
    assert rates[3] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi / 4)).item()))
    assert rates == sorted(rates[:3]) + sorted(rates[3:], reverse=True)


def test_a_scheduler_without_a_partial_target_is_refused():
    with pytest.raises(FERError, match=r"scheduler\.interval"):
        schedules.check_config(
            {"schedule": {"_target_": "torch.optim.lr_scheduler.StepLR"}, "interval": "batch"}
        )
    with pytest.raises(FERError, match="needs a _target_"):
        schedules.check_config({"schedule": {"step_size": 1}})
    with pytest.raises(FERError, match=r"trainer\.max_epochs"):
        schedules.run_length("epoch", -1)
