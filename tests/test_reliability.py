"""Writes that never leave a half-written file, and data order that a restored run replays exactly."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from fer.data.loaders import PackedBatches
from fer.files import OutputWriteError, atomic_save, atomic_write_text
from fer.run.sweep import optuna_storage


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_failed_write_keeps_the_previous_file_and_says_what_to_do(tmp_path: Path, monkeypatch, code: int):
    path = tmp_path / "checkpoints" / "last.ckpt"
    atomic_save({"step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def full_disk_open(file, mode="r", *args, **kwargs):
        with open(file, mode, *args, **kwargs) as handle:
            handle.write(b"the first bytes got out")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("fer.files.open", full_disk_open, raising=False)
    with pytest.raises(OutputWriteError) as raised:
        atomic_save({"step": 2, "w": torch.zeros(3)}, path)
    message = str(raised.value)
    assert str(path) in message and "previous version of it is intact" in message
    assert ("Free some space" in message) == (code == errno.ENOSPC)
    assert ("writable" in message) == (code == errno.EACCES)
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_atomic_write_replaces_whole_files(tmp_path: Path):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "first\n")
    atomic_write_text(path, "second\n")
    assert path.read_text() == "second\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def batches(loader: PackedBatches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def noisy(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return images.float() + torch.rand(images.shape, generator=generator, device=images.device)


def test_packed_batches_resume_mid_epoch_with_the_same_order_and_random_numbers():
    data = torch.arange(50 * 4, dtype=torch.uint8).view(50, 1, 2, 2)
    labels = torch.arange(50) % 7
    make = lambda: PackedBatches(data, labels, 8, transform=noisy, shuffle=True, seed=3)  # noqa: E731
    full = make()
    full.set_epoch(2)
    expected = batches(full)

    interrupted = make()
    interrupted.set_epoch(2)
    iterator = iter(interrupted)
    for _ in range(3):
        next(iterator)
    state = interrupted.state_dict()
    assert state["epoch"] == 2 and state["batches"] == 3

    restored = make()  # a new process
    restored.load_state_dict(state)
    restored.set_epoch(2)
    rest = batches(restored)
    assert len(rest) == len(expected) - 3
    for (x, y), (ex, ey) in zip(rest, expected[3:], strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    restored.set_epoch(3)  # the next epoch is whole again
    assert len(batches(restored)) == len(expected)


def test_packed_batches_refuse_a_state_from_other_data():
    loader = PackedBatches(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.zeros(10), 4, seed=1)
    with pytest.raises(Exception, match="seed 1 and 10 images"):
        loader.load_state_dict({"epoch": 0, "batches": 1, "seed": 2, "items": 10})


def test_optuna_storage_accepts_urls_and_file_paths(tmp_path: Path):
    assert optuna_storage(None) is None
    assert optuna_storage("postgresql://host/db") == "postgresql://host/db"
    url = optuna_storage(tmp_path / "studies" / "fer.db")
    assert url == f"sqlite:///{tmp_path / 'studies' / 'fer.db'}" and (tmp_path / "studies").is_dir()


def test_mean_pooling_replaces_adaptive_pooling_with_the_same_outputs():
    from fer.models.backbones import build_backbone
    from fer.models.module import GlobalAvgPool, use_mean_pooling

    torch.manual_seed(0)
    model, _ = build_backbone("mobilenet_v3_small", 7, False, None)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    assert use_mean_pooling(model) == 10  # the classifier's pooling and 9 squeeze-excitation blocks
    assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in model.modules())
    assert sum(isinstance(m, GlobalAvgPool) for m in model.modules()) == 10
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
    model.train()
    model(x).sum().backward()  # a backward pass without adaptive pooling


def test_resume_needs_a_run_folder_with_last_ckpt(tmp_path: Path, capsys):
    from fer.run.resume import resume_folder, run_folder_of

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for target, fragment in [
        (tmp_path / "missing", "no such run folder"),
        (tmp_path / "run", "the run stopped before its first checkpoint"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            resume_folder(target)
        assert stopped.value.code == 2 and fragment in capsys.readouterr().err
    (tmp_path / "run" / "checkpoints" / "epoch_000.ckpt").write_bytes(b"")
    with pytest.raises(SystemExit):
        resume_folder(tmp_path / "run")
    assert "pass ckpt_path=<one of them>" in capsys.readouterr().err
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resume_folder(tmp_path / "run") == (tmp_path / "run").resolve()
    # ckpt_path=<run>/checkpoints/last.ckpt continues that run only in a folder fer.train made (.hydra)
    assert run_folder_of(tmp_path / "run" / "checkpoints" / "last.ckpt") is None
    (tmp_path / "run" / ".hydra").mkdir()
    assert run_folder_of(tmp_path / "run" / "checkpoints" / "last.ckpt") == (tmp_path / "run").resolve()
    assert run_folder_of(tmp_path / "run" / "checkpoints" / "epoch_000.ckpt") is None
