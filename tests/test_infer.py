"""``fer.infer``: a served ONNX model needs neither torch nor Lightning, its numpy preprocessing gives the
numbers of the torch path, and a calibrated export's temperature is applied."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from fer.data.preprocessing import Preprocessing, model_input
from fer.data.transforms import to_model_input
from fer.errors import CheckpointError
from fer.export import export_onnx
from fer.infer.classifier import softmax
from fer.infer.models import load_classifier
from fer.models import FERModule

ROOT = Path(__file__).resolve().parents[1]
TORCH_FREE_REQUIREMENTS = ROOT / "requirements-onnx.txt"


@pytest.fixture(scope="module")
def onnx_model(module: FERModule, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(module, tmp_path_factory.mktemp("infer") / "tiny.onnx")


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    data = pytest.importorskip("skimage.data")
    return [
        Image.fromarray(data.astronaut()),
        Image.fromarray(data.camera()),
        Image.fromarray(data.chelsea()),
    ]


SERVE = """
import json, sys
import numpy as np
from PIL import Image
from skimage import data
folder = sys.argv[1]
Image.fromarray(data.astronaut()).save(folder + "/astronaut.png")
frames = [np.roll(data.astronaut(), 8 * i, axis=1) for i in range(3)]
Image.fromarray(frames[0]).save(folder + "/clip.gif", save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]])
before = set(sys.modules)
from fer.predict import main
codes = [
    main([sys.argv[2], folder + "/astronaut.png", "--faces", "--out", folder + "/faces.csv"]),
    main([sys.argv[2], folder + "/clip.gif", "--smooth", "--out", folder + "/clip.json",
          "--timeline", folder + "/timeline.png", "--annotate", folder + "/clip.mp4"]),
]
served = sorted({m.split(".")[0] for m in set(sys.modules) - before})
from pathlib import Path
from fer.demo import DemoModel, build_demo, make_model, parse_args
model = make_model(parse_args([sys.argv[2]]), Path(folder))
build_demo(model)
model.image(data.astronaut())
print(json.dumps({"codes": codes, "served": served, "all": sorted(sys.modules)}))
"""


def _distribution_names(requirements: Path) -> set[str]:
    names = set()
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower())
    return names


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _with_dependencies(names: set[str]) -> set[str]:
    """The distributions and, recursively, those they require (extras and other platforms left out)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [_normalized(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(_normalized(requirement.name))
    return seen


def test_served_onnx_model_imports_neither_torch_nor_lightning(onnx_model: Path, tmp_path: Path) -> None:
    """Images, faces, a video with its plots, and the demo page's model, all in one fresh interpreter."""
    pytest.importorskip("gradio")
    result = subprocess.run(
        [sys.executable, "-c", SERVE, str(tmp_path), str(onnx_model)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0, 0]
    loaded = {name.split(".")[0] for name in report["all"]}
    assert not loaded & {"torch", "torchvision", "lightning", "pytorch_lightning", "torchmetrics", "hydra"}
    # every distribution that fer.predict imported is one of the torch-free install's or a dependency of one
    from importlib import metadata

    owners = metadata.packages_distributions()
    imported = {
        _normalized(owners[m][0])
        for m in report["served"]
        if m in owners and m not in sys.stdlib_module_names and m != "fer"
    }
    assert {"onnxruntime", "opencv-python-headless", "numpy", "pillow"} <= imported, imported
    assert imported <= _with_dependencies(_distribution_names(TORCH_FREE_REQUIREMENTS)), imported
    assert (tmp_path / "faces.csv").read_text().count("\n") == 2
    assert len(json.loads((tmp_path / "clip.json").read_text())["predictions"]) == 3


def test_requirements_onnx_lists_the_pins_of_pyproject() -> None:
    """The torch-free install asks for the same versions as the full one."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = {
        re.split(r"[<>=!~ ]", d, maxsplit=1)[0].lower(): d.replace(" ", "") for d in project["dependencies"]
    }
    for line in TORCH_FREE_REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip().replace(" ", "")
        if line:
            name = re.split(r"[<>=!~]", line, maxsplit=1)[0].lower()
            assert pinned[name] == line, name
    assert not {"torch", "torchvision", "lightning"} & _distribution_names(TORCH_FREE_REQUIREMENTS)


@pytest.mark.parametrize("grayscale", [True, False])
@pytest.mark.parametrize("size", [32, 112, 224])
def test_numpy_preprocessing_gives_the_numbers_of_the_torch_path(
    photos: list[Image.Image], grayscale: bool, size: int
) -> None:
    pre = Preprocessing(size, grayscale)
    for photo in [*photos, photos[0].crop((150, 40, 300, 190)), photos[1].resize((20, 30))]:
        image = photo.convert("L" if grayscale else "RGB")
        pixels = torch.from_numpy(np.array(image)).reshape(image.height, image.width, -1).permute(2, 0, 1)
        expected = to_model_input(pixels[None], pre)[0]
        if grayscale:
            expected = expected.expand(3, -1, -1) if expected.shape[0] == 1 else expected
        got = model_input(image, pre)
        assert got.shape == (3, size, size) and got.dtype == np.float32
        # float32 filter weights computed two ways: within 1e-4 of a normalized unit (2e-5 of a gray level)
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=0)


def _with_temperature(model: Path, out: Path, value: str) -> Path:
    graph = onnx.load(str(model))
    graph.metadata_props.add(key="temperature", value=value)
    onnx.save(graph, str(out))
    return out


def test_temperature_in_the_metadata_divides_the_logits_before_the_softmax(
    onnx_model: Path, tmp_path: Path, photos: list[Image.Image]
) -> None:
    plain = load_classifier(onnx_model, "cpu")
    calibrated = load_classifier(_with_temperature(onnx_model, tmp_path / "t.onnx", "2.5"), "cpu")
    assert (plain.info.temperature, calibrated.info.temperature) == (1.0, 2.5)
    batch = np.stack([model_input(p.convert("L"), plain.preprocessing) for p in photos])
    logits = plain.logits(batch)
    np.testing.assert_allclose(calibrated.probabilities(batch), softmax(logits / 2.5), atol=1e-7)
    np.testing.assert_allclose(plain.probabilities(batch), softmax(logits), atol=1e-7)
    assert calibrated.probabilities(batch).max() < plain.probabilities(batch).max()  # flatter
    assert (calibrated.probabilities(batch).argmax(1) == logits.argmax(1)).all()


@pytest.mark.parametrize("value", ["0", "-1", '"warm"', "NaN"])
def test_a_bad_temperature_is_a_clear_error(onnx_model: Path, tmp_path: Path, value: str) -> None:
    with pytest.raises(CheckpointError, match=r"temperature .* must be a positive number"):
        load_classifier(_with_temperature(onnx_model, tmp_path / "t.onnx", value), "cpu")


def test_softmax_matches_torch_for_large_logits() -> None:
    logits = np.array([[1000.0, 999.0, -5.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(softmax(logits), torch.tensor(logits).softmax(1).numpy(), atol=1e-12)
