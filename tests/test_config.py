"""Every option of every config group composes, resolves and builds its objects."""

from __future__ import annotations

import importlib
import sys

import lightning as L
import pytest
import torch
from conftest import compose_train, run_fer
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fer.data import FERDataModule
from fer.errors import FERError
from fer.run.config import CONFIG_DIR, register_resolvers
from fer.train import build_datamodule, build_module

register_resolvers()
GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra")
# group files whose name starts with _ are bases that the options build on, not options themselves
OPTIONS = [
    (g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml")) if not p.stem.startswith("_")
]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes_and_resolves(group, option, tmp_path):
    extra = ["data.data_dir=/some/folder"] if (group, option) == ("data", "folder") else []
    cfg = compose_train([f"{group}={option}", *extra], tmp_path)
    assert cfg.data.image_size >= 16
    if group == "model":
        assert cfg.model.backbone == option
    assert not OmegaConf.missing_keys(cfg)


# (every backbone of the model group is built and trained by tests/test_backbones.py)
@pytest.mark.parametrize("group", ["freeze", "loss", "optimizer", "scheduler"])
def test_model_groups_build_a_module_and_optimizer(group, tiny_data, tmp_path):
    for option in sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if not p.stem.startswith("_")):
        cfg = compose_train(
            [f"{group}={option}", "model.pretrained=false", f"data.data_dir={tiny_data}"], tmp_path
        )
        datamodule: FERDataModule = build_datamodule(cfg)
        module = build_module(cfg, datamodule)
        assert module(torch.randn(2, 3, 32, 32)).shape == (2, 7), option
        assert module.criterion(torch.randn(4, 7), torch.tensor([0, 1, 2, 3])).isfinite()


@pytest.mark.parametrize("scheduler", ["none", "cosine", "onecycle", "plateau", "step", "warmup_cosine"])
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
    datamodule = build_datamodule(cfg)
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
    # a new run's folder (the last argument of fer.run_dir, which picks a resumed run's own folder instead)
    assert hydra_cfg["run"]["dir"].endswith("${now:%H-%M-%S-%f}}")
    assert hydra_cfg["sweep"]["dir"].endswith("${now:%H-%M-%S-%f}")


def unknown_option(override: str, suggestion: str) -> tuple[str, list[str]]:
    """A group option that does not exist: Hydra names it and lists the group's options."""
    group, option = override.split("=")
    return override, [f"Could not find '{group}/{option}'", f"Available options in '{group}'", suggestion]


def unknown_key(override: str, existing: str) -> tuple[str, list[str]]:
    """A key that is not in the config: one line naming it and listing the keys that group has."""
    key = override.split("=")[0]
    return override, [f"fer: error: {key}:", f"no key {key.split('.')[-1]!r}", existing]


TYPOS = [
    ("fer.train", *unknown_option("data=mmafdb", "mmafedb")),
    ("fer.train", *unknown_option("model=mobilenet_v3_tiny", "mobilenet_v3_small")),
    ("fer.train", *unknown_option("freeze=partal", "partial")),
    ("fer.train", *unknown_option("optimizer=adamm", "adamw")),
    ("fer.train", *unknown_option("scheduler=cosin", "cosine")),
    ("fer.train", *unknown_option("trainer=gpuu", "gpu")),
    ("fer.train", *unknown_option("experiment=quickstrat", "quickstart")),
    ("fer.train", *unknown_option("logger=tb", "tensorboard")),
    ("fer.train", *unknown_key("optimizer.learning_rate=0.1", "its keys are: lr, weight_decay")),
    ("fer.train", *unknown_key("data.batchsize=8", "batch_size")),
    ("fer.train", *unknown_key("trainer.max_epoch=1", "max_epochs")),
    ("fer.eval", *unknown_option("trainer=gpuu", "ddp_sim")),
    ("fer.eval", *unknown_option("logger=tb", "csv")),
    ("fer.eval", *unknown_option("data=mmafdb", "synthetic")),
    ("fer.eval", *unknown_key("batchsize=8", "ckpt_path")),
    ("fer.eval", *unknown_key("data.batch_size=8", "eval_batch_size")),
]


@pytest.mark.parametrize(("entry", "typo", "fragments"), TYPOS, ids=[f"{e}:{t}" for e, t, _ in TYPOS])
def test_typo_in_an_override_ends_with_hydras_message(entry, typo, fragments, tmp_path, monkeypatch, capsys):
    """The real Hydra mains, in this process: a typo stops composition with one message and exit 1."""
    module = importlib.import_module(entry)
    monkeypatch.setenv("FER_OUTPUT_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", [entry, typo])
    with pytest.raises(SystemExit) as exited:
        module.main()
    assert exited.value.code not in (0, None)
    err = capsys.readouterr().err
    assert all(fragment in err for fragment in fragments), err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())  # no run folder
    GlobalHydra.instance().clear()


def test_an_argument_the_target_does_not_take_is_named_with_the_ones_it_does(tiny_data, tmp_path):
    cfg = compose_train(
        ["+optimizer.learning_rate=0.1", f"data.data_dir={tiny_data}", "model.pretrained=false"], tmp_path
    )
    module = build_module(cfg, build_datamodule(cfg))
    with pytest.raises(
        FERError,
        match=r"optimizer.learning_rate: torch.optim.AdamW has no argument 'learning_rate'; it takes lr, betas",
    ):
        module.configure_optimizers()


@pytest.mark.slow
def test_typo_on_the_command_line_exits_non_zero_with_one_message(tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    entry, typo, fragments = TYPOS[8]
    result = run_fer(entry, typo, outputs=outputs, timeout=300)
    assert result.returncode == 1
    assert all(fragment in result.stderr for fragment in fragments), result.stderr
    assert "Traceback" not in result.stderr and not any(outputs.iterdir())
