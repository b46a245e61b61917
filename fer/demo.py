"""``python -m fer.demo MODEL``: a web page (Gradio) that shows what a fer model sees.

An image (uploaded, or from the webcam) comes back with its faces boxed and labelled and a bar chart of
each face's probabilities; a video comes back as the timeline of its probabilities and the per-frame CSV.
The page is served on 127.0.0.1 by default and fetches nothing from the internet (no fonts, no telemetry):
it works offline. The faces and numbers are those of ``fer.predict --faces`` with the same options.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fer.errors import FERError
from fer.infer.classifier import Classifier
from fer.infer.detectors import DETECTORS, build_detector
from fer.infer.faces import DEFAULT_MARGIN
from fer.infer.models import load_classifier
from fer.infer.pipeline import FaceAnalyzer, FaceResult
from fer.run.cli import command

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
MONO_FONTS = ("ui-monospace", "monospace")
MAX_VIDEO_FRAMES = 3000  # about 2 minutes at 25 frames/s: longer videos are cut (the page says so)


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no version check, no telemetry
    try:
        import gradio as gr
    except ImportError:
        raise FERError("fer.demo needs Gradio: pip install 'fer[demo]'") from None
    return gr


def faces_table(faces: Sequence[FaceResult], class_names: Sequence[str]) -> list[dict]:
    """The faces as plain data: box, label and every probability (what the page's JSON output holds)."""
    return [
        {
            "face": i,
            "box": dict(zip(("x", "y", "w", "h"), (int(v) for v in face.box), strict=True)),
            "label": face.label,
            "probabilities": {n: float(p) for n, p in zip(class_names, face.probabilities, strict=True)},
        }
        for i, face in enumerate(faces)
    ]


def bar_charts(faces: Sequence[FaceResult], class_names: Sequence[str]):
    """One horizontal bar chart of the probabilities per face."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    count = max(1, len(faces))
    figure = Figure(figsize=(4.2 * min(count, 3), 2.8 * ((count + 2) // 3)), layout="constrained")
    axes = figure.subplots((count + 2) // 3, min(count, 3), squeeze=False).ravel()
    for ax, (i, face) in zip(axes, enumerate(faces), strict=False):
        ax.barh(list(class_names), face.probabilities, color="#f5a300")
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_title(f"face {i}: {face.label}")
    for ax in axes[len(faces) :]:
        ax.axis("off")
    if not faces:
        axes[0].text(0.5, 0.5, "no face found", ha="center", va="center")
    return figure


class DemoModel:
    """The model and the detector behind the page, and what each of its buttons computes."""

    def __init__(self, classifier: Classifier, analyzer: FaceAnalyzer, work: Path) -> None:
        self.classifier = classifier
        self.analyzer = analyzer
        self.work = work

    def image(self, rgb: np.ndarray | None):
        from fer.infer.drawing import draw_faces

        if rgb is None:
            raise _gradio().Error("Upload an image or take a webcam picture first.")
        rgb = np.ascontiguousarray(rgb[..., :3]) if rgb.ndim == 3 else np.repeat(rgb[..., None], 3, axis=2)
        faces = self.analyzer.analyze([rgb])[0]
        names = self.classifier.class_names
        summary = (
            "\n".join(
                f"- face {i}: **{f.label}** ({float(np.max(f.probabilities)):.2f})"
                for i, f in enumerate(faces)
            )
            or "No face found."
        )
        return draw_faces(rgb, faces), bar_charts(faces, names), faces_table(faces, names), summary

    def video(self, path: str | None):
        from fer.infer.video import open_video
        from fer.predict import PredictionRun, VideoOutputs, predict_stream, write_results

        if not path:
            raise _gradio().Error("Upload a video first.")
        folder = Path(tempfile.mkdtemp(prefix="video-", dir=self.work))
        stem = Path(path).stem
        run = PredictionRun()
        outputs = VideoOutputs(timeline=folder / f"{stem}-timeline.png")
        predict_stream(
            open_video(path), self.analyzer, run, outputs=outputs, limit=MAX_VIDEO_FRAMES, progress=False
        )
        csv_path = folder / f"{stem}.csv"
        write_results(csv_path, run, self.classifier.class_names, "demo", faces=True)
        note = f"{run.frames} frames, {len(run.predictions)} faces" + (
            f" (the first {MAX_VIDEO_FRAMES} frames)" if run.frames >= MAX_VIDEO_FRAMES else ""
        )
        return str(outputs.timeline), str(csv_path), note


def build_demo(model: DemoModel, title: str = "fer: facial expressions"):
    """The Gradio Blocks of the page (not launched)."""
    gr = _gradio()
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}\nFaces are found with the **{model.analyzer.detector.name}** detector.")
        with gr.Tab("Image"):
            with gr.Row():
                image_in = gr.Image(label="image", type="numpy", sources=["upload", "webcam", "clipboard"])
                image_out = gr.Image(label="faces", type="numpy", interactive=False, elem_id="faces-image")
            analyze = gr.Button("Analyze", variant="primary", elem_id="analyze")
            summary = gr.Markdown(elem_id="summary")
            chart = gr.Plot(label="probabilities per face")
            table = gr.JSON(label="faces")
            outputs = [image_out, chart, table, summary]
            analyze.click(model.image, inputs=image_in, outputs=outputs, api_name="analyze_image")
            image_in.upload(model.image, inputs=image_in, outputs=outputs, api_visibility="private")
        with gr.Tab("Video"):
            video_in = gr.Video(label="video", sources=["upload"])
            run_video = gr.Button("Analyze video", variant="primary")
            video_note = gr.Markdown()
            timeline = gr.Image(label="timeline", type="filepath", interactive=False)
            csv_out = gr.File(label="per-frame CSV")
            run_video.click(
                model.video,
                inputs=video_in,
                outputs=[timeline, csv_out, video_note],
                api_name="analyze_video",
            )
    return demo


def theme():
    """Gradio's default look with the system's fonts: nothing is fetched when the page loads."""
    gr = _gradio()
    return gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(MONO_FONTS))


def launch(demo, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, block: bool = True) -> str:
    """Serve the page; returns its URL (after printing it). ``block``: serve until interrupted."""
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        share=False,
        ssr_mode=False,
        footer_links=[],
        theme=theme(),
        allowed_paths=[],
        show_error=True,
    )
    url = demo.local_url
    print(f"fer.demo: serving on {url} (Ctrl-C to stop)", flush=True)
    if block:
        try:
            demo.block_thread()
        finally:
            demo.close()
    return url


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fer.demo", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a fer checkpoint (.ckpt), or an .onnx/.pt file from fer.export")
    parser.add_argument("--detector", choices=DETECTORS, default="haar", help="face detector (default haar)")
    parser.add_argument(
        "--detector-model", type=Path, metavar="PATH", help="a YuNet .onnx face detector file"
    )
    parser.add_argument("--align", action="store_true", help="turn each face so that its eyes are level")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="face box growth per side")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to serve on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser.parse_args(argv)


def make_model(args: argparse.Namespace, work: Path) -> DemoModel:
    classifier = load_classifier(args.model, args.device)
    detector = build_detector(args.detector, args.detector_model)
    if args.align and not detector.gives_landmarks:
        raise FERError("--align needs the eyes of each face: use --detector mtcnn (or yunet)")
    return DemoModel(classifier, FaceAnalyzer(classifier, detector, args.margin, args.align), work)


@command
def main(argv: Sequence[str] | None = None) -> int:
    """Load the model, serve the page until Ctrl-C; 2 with one line for a user error."""
    args = parse_args(argv)
    _gradio()
    with tempfile.TemporaryDirectory(prefix="fer-demo-") as work:
        demo = build_demo(make_model(args, Path(work)))
        with contextlib.suppress(KeyboardInterrupt):
            launch(demo, args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
