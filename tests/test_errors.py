"""Every user error of the data layout, devices and checkpoints, through the real entry point: one clear
message, a non-zero exit code, no traceback (in this process; test_config.py and test_predict.py check the
same as real processes)."""

import shutil
import urllib.request
from pathlib import Path

import pytest
from conftest import TINY, assert_clean_error, fer_main


def copy_tree(tiny_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    return root


def train_on(root: Path, outputs: Path, *extra: str, env: dict | None = None):
    args = ["data=mmafedb", f"data.data_dir={root}", *TINY, *extra]
    return fer_main("fer.train", *args, outputs=outputs, env=env)


def break_missing_split(root: Path) -> str:
    shutil.rmtree(root / "valid")
    return str(root / "valid")


def break_missing_class(root: Path) -> str:
    shutil.rmtree(root / "train" / "sad")  # valid and test may miss a class (a warning)
    return "'sad'"


def break_unknown_class(root: Path) -> str:
    (root / "train" / "contempt").mkdir()
    return "To train on other classes, use data=folder"


def break_empty_split(root: Path) -> str:
    for folder in (root / "valid").iterdir():
        for file in folder.iterdir():
            file.unlink()
        (folder / "readme.txt").write_text("no images here")
    return "No images in"


def break_unreadable_image(root: Path) -> str:
    bad = root / "train" / "fear" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return str(bad)


def test_missing_data_dir_says_how_to_get_mmafedb(tmp_path, outputs):
    args = ["data=mmafedb", f"data.data_dir={tmp_path / 'MMAFEDB'}", *TINY]
    result = fer_main("fer.train", *args, outputs=outputs)
    assert_clean_error(result, str(tmp_path / "MMAFEDB"), "Kaggle", "data=synthetic")


@pytest.mark.parametrize(
    "breaker",
    [
        break_missing_split,
        break_missing_class,
        break_unknown_class,
        break_empty_split,
        break_unreadable_image,
    ],
)
def test_broken_data_layout_gives_one_clear_error(breaker, tiny_data, tmp_path, outputs):
    root = copy_tree(tiny_data, tmp_path)
    expected = breaker(root)
    # data.on_bad_image=error: the default (skip) trains on the readable images (tests/test_messy_data.py)
    result = train_on(root, outputs, "trainer.max_epochs=1", "data.on_bad_image=error")
    assert_clean_error(result, expected)


def test_missing_checkpoint_is_a_clear_error(tiny_data, tmp_path, outputs):
    missing = tmp_path / "nope" / "last.ckpt"
    assert_clean_error(train_on(tiny_data, outputs, f"ckpt_path={missing}"), str(missing))
    assert_clean_error(fer_main("fer.eval", f"ckpt_path={missing}", outputs=outputs), str(missing))
    assert_clean_error(fer_main("fer.eval", outputs=outputs), "ckpt_path is required")


@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_a_gpu_trainer_on_a_machine_without_one_names_the_cpu_options(
    trainer, tiny_data, outputs, monkeypatch
):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # whatever this machine has
    args = ["data=mmafedb", f"data.data_dir={tiny_data}", *(a for a in TINY if "accelerator" not in a)]
    result = fer_main("fer.train", *args, f"trainer={trainer}", outputs=outputs)
    assert_clean_error(result, "trainer.accelerator=gpu", "no CUDA GPU", "trainer=default", "trainer=cpu")


def test_feature_cache_needs_a_frozen_front(tiny_data, outputs):
    result = train_on(tiny_data, outputs, "freeze=none", "data.feature_cache=true")
    assert_clean_error(result, "data.feature_cache=true needs freeze=backbone or freeze=last_layer")


def test_offline_pretrained_download_says_where_to_put_the_weights(tiny_data, tmp_path, outputs):
    env = {
        "TORCH_HOME": str(tmp_path / "torch_home"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    try:
        result = train_on(tiny_data, outputs, "model.pretrained=true", env=env)
    finally:
        # urllib keeps the opener (and the dead proxy) of its first request: later requests get a new one
        urllib.request.install_opener(None)
    assert_clean_error(
        result, "mobilenet_v3_small-047dcff4.pth", "model.weights_path", "model.pretrained=false"
    )


def test_freezing_a_randomly_initialized_backbone_warns_once(tiny_data, outputs):
    result = train_on(tiny_data, outputs, "freeze=backbone", "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.output.count("the frozen layers keep their random initial weights") == 1
    assert "model.pretrained=true" in result.output


def test_a_run_prints_none_of_lightnings_tips(tiny_data, outputs):
    result = train_on(tiny_data, outputs, "debug=fdr")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test/acc" in result.stdout
    for tip in ("litlogger", "Tip:", "already configured with model summary"):
        assert tip not in result.output, tip


@pytest.mark.slow
def test_importing_the_commands_changes_nothing_in_the_process():
    """No import does work: resolvers, warning filters and the allocator are set up when a command starts."""
    import subprocess
    import sys

    script = (
        "import warnings, logging\n"
        "import torch, torchvision, lightning, hydra, torchmetrics, onnx, matplotlib  # their own filters\n"
        "before = list(warnings.filters)\n"
        "import fer.train, fer.eval, fer.export, fer.report, fer.data.audit\n"
        "from omegaconf import OmegaConf\n"
        "assert not any(OmegaConf.has_resolver(n) for n in ('fer.run_dir', 'fer.job_name')), 'resolver'\n"
        "assert warnings.filters == before, 'warning filters'\n"
        "assert not logging.getLogger('lightning.pytorch.utilities.rank_zero').filters, 'log filters'\n"
        "print('clean')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "clean", done.stderr[-2000:]
