"""Every option of every config group composes, resolves and builds its objects."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict, read_write

from fer.config import CONFIG_DIR, register_resolvers
from fer.data import FERDataModule
from fer.train import build_module

register_resolvers()
GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(group, p.stem) for group in GROUPS for p in sorted((CONFIG_DIR / group).glob("*.yaml"))]


def compose_train(overrides: list[str], tmp_path: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.resolve(cfg)
    return cfg


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes_and_resolves(group, option, tmp_path):
    cfg = compose_train([f"{group}={option}"], tmp_path)
    assert cfg.data.image_size >= 16 and cfg.model.backbone.startswith("mobilenet_v3")
    assert not OmegaConf.missing_keys(cfg)


@pytest.mark.parametrize("group", ["model", "freeze", "loss", "optimizer", "scheduler"])
def test_model_groups_build_a_module_and_optimizer(group, tiny_data, tmp_path):
    for option in sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")):
        cfg = compose_train(
            [f"{group}={option}", "model.pretrained=false", f"data.data_dir={tiny_data}"], tmp_path
        )
        datamodule: FERDataModule = instantiate(cfg.data, _convert_="all")
        module = build_module(cfg, datamodule)
        assert module(torch.randn(2, 3, 32, 32)).shape == (2, 7), option


@pytest.mark.parametrize("scheduler", ["none", "cosine", "onecycle", "plateau"])
def test_each_scheduler_trains_an_epoch(scheduler, tiny_data, tmp_path):
    cfg = compose_train(
        [
            f"scheduler={scheduler}",
            "model.pretrained=false",
            f"data.data_dir={tiny_data}",
            "data.image_size=32",
            "data.batch_size=28",
            "data.num_workers=0",
        ],
        tmp_path,
    )
    datamodule = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, datamodule)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 4


def test_trainer_options_build_trainers(tmp_path):
    for option in ("cpu", "ddp_sim", "default"):
        cfg = compose_train([f"trainer={option}"], tmp_path)
        trainer = instantiate(cfg.trainer, logger=False)
        assert trainer.max_epochs == cfg.trainer.max_epochs
    gpu = compose_train(["trainer=gpu"], tmp_path).trainer
    assert (gpu.accelerator, gpu.precision, gpu.benchmark) == ("gpu", "bf16-mixed", True)


def test_seed_experiment_is_the_blog_posts_setup_without_its_flaws(tmp_path):
    cfg = compose_train(["experiment=seed"], tmp_path)
    assert cfg.model.backbone == "mobilenet_v3_small" and cfg.model.pretrained
    assert cfg.freeze.policy == "last_layer"
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 0.01
    assert (cfg.data.batch_size, cfg.trainer.max_epochs, cfg.data.image_size) == (32, 10, 224)
    assert cfg.data.augment.crop_scale == [0.08, 1.0] and cfg.data.augment.hflip == 0.5
    assert cfg.data.mean == [0.485, 0.456, 0.406] and cfg.data.data_dir.endswith("MMAFEDB")


def test_quickstart_runs_on_cpu_offline(tmp_path):
    cfg = compose_train(["experiment=quickstart"], tmp_path)
    assert cfg.trainer.accelerator == "cpu" and not cfg.model.pretrained and cfg.data.synthetic


def test_run_folders_are_unique_to_the_microsecond():
    hydra_cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "hydra" / "default.yaml"), resolve=False)
    assert hydra_cfg["run"]["dir"].endswith("${now:%H-%M-%S-%f}")
    assert hydra_cfg["sweep"]["dir"].endswith("${now:%H-%M-%S-%f}")
