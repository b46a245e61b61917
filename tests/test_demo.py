"""``fer.demo``: the running page driven by a real Gradio client and by headless Chromium."""

from __future__ import annotations

import csv
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from fer.demo import build_demo, launch, make_model, parse_args
from fer.export import export_onnx
from fer.models import FERModule
from fer.predict import main as predict_main

pytest.importorskip("gradio")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def onnx_model(module: FERModule, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(module, tmp_path_factory.mktemp("demo") / "tiny.onnx")


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("demo-photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def server(onnx_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """The demo serving the tiny ONNX model on a free port of 127.0.0.1 for the module's tests."""
    work = tmp_path_factory.mktemp("demo-work")
    demo = build_demo(make_model(parse_args([str(onnx_model)]), work))
    url = launch(demo, port=_free_port(), block=False)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def expected(onnx_model: Path, photo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What ``fer.predict MODEL photo --faces`` writes for the astronaut: its one face."""
    out = tmp_path_factory.mktemp("demo-expected") / "faces.csv"
    assert predict_main([str(onnx_model), str(photo), "--faces", "--out", str(out)]) == 0
    with out.open(newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    return row


def test_demo_serves_on_loopback_only(server: str) -> None:
    assert urlparse(server).hostname == "127.0.0.1"


def test_gradio_client_gets_the_astronauts_face_as_fer_predict_does(
    server: str, photo: Path, expected: dict, module: FERModule
) -> None:
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    image, _chart, faces, summary = client.predict(handle_file(str(photo)), api_name="/analyze_image")
    (face,) = faces
    assert face["box"] == {k: int(expected[k]) for k in ("x", "y", "w", "h")}
    assert face["label"] == expected["label"]
    np.testing.assert_allclose(
        [face["probabilities"][n] for n in module.class_names],
        [float(expected[n]) for n in module.class_names],
        atol=1e-6,
    )
    assert f"face 0: **{expected['label']}**" in summary
    drawn = np.asarray(Image.open(image))
    assert drawn.shape == (512, 512, 3)
    x, y = int(expected["x"]), int(expected["y"])
    assert tuple(drawn[y + 40, x]) != tuple(np.asarray(Image.open(photo))[y + 40, x])  # the box is drawn


def test_video_gives_a_timeline_and_a_csv_row_per_frame_and_face(server: str, tmp_path: Path) -> None:
    import cv2
    from gradio_client import Client, handle_file

    from fer.bench.serving import video_frames

    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (640, 480))
    for frame in video_frames(12):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    timeline, table, note = Client(server, verbose=False).predict(
        handle_file(str(clip)), api_name="/analyze_video"
    )
    assert Image.open(timeline).size[0] == 1000
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["frame"]) for r in rows] == list(range(12))
    assert note == "12 frames, 12 faces"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_page_in_chromium_shows_the_label_of_the_uploaded_photo(
    server: str, photo: Path, expected: dict, tmp_path: Path
) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    outside: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.set_default_timeout(TIMEOUT_MS)
            page.on(
                "request",
                lambda r: (
                    outside.append(r.url)
                    if urlparse(r.url).hostname not in ("127.0.0.1", None) and not r.url.startswith("data:")
                    else None
                ),
            )
            page.goto(server, wait_until="networkidle")
            page.locator("input[type=file]").first.set_input_files(str(photo))
            summary = page.locator("#summary")
            summary.get_by_text("face 0").wait_for()
            page.locator("#faces-image img").wait_for()
            page.wait_for_load_state("networkidle")
            text = summary.inner_text()
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
        finally:
            browser.close()
    assert f"face 0: {expected['label']}" in text
    assert outside == []  # the page loaded nothing from outside this machine
    assert (tmp_path / "demo.png").stat().st_size > 10_000
